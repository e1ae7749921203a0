"""Records of the reservation saga: the inventory's answer per line, and the order's one decision."""

from __future__ import annotations

import enum
from typing import Annotated

from msgspec import Meta

from schemas import keys
from schemas.common import EpochMs, Ident, Key, Quantity, Record, Tenant, Text
from schemas.order import Channel


class LineStatus(enum.StrEnum):
    RESERVED = "reserved"
    REJECTED = "rejected"


class RejectReason(enum.StrEnum):
    """Why a line or an order was rejected."""

    INSUFFICIENT_STOCK = "insufficient_stock"  # 库存不足
    UNKNOWN_SKU = "unknown_sku"  # no stock record at all for this SKU
    NOT_RESERVABLE = "not_reservable"  # the line was already released or shipped (a replayed reserve)
    INVALID_ORDER = "invalid_order"
    REVIEW = "review"  # a review rule (审单) or an operator rejected it; the review decision says which
    CANCELLED = "cancelled"  # the channel cancelled it before it was decided
    ENGINE_ERROR = "engine_error"  # the engine could not process a line: a bug or a broken invariant, never a sale


#: Rejections the engine caused itself: a run with any of them has failed, whatever the invariants say.
ENGINE_REASONS = frozenset({RejectReason.ENGINE_ERROR})


class LineResult(Record, tag="line_result", tag_field="kind", kw_only=True):
    """The inventory agent's answer to one reserve command. Key: the order's buyer key (the order side's inbox)."""

    v: int = 1
    result_id: Ident
    tenant: Tenant
    order_id: Ident
    line_id: Ident
    sku: Ident
    status: LineStatus
    reason: RejectReason | None = None
    warehouse: Ident | None = None
    quantity: Quantity
    reply_to: Key
    ts: EpochMs

    @property
    def key(self) -> str:
        return self.reply_to


class StockQuote(Record, tag="stock_quote", tag_field="kind", kw_only=True):
    """A SKU writer's answer to a quote: units available per warehouse at that point of its log. Key: the order's
    buyer key (the order side's inbox). The order side allocates on it, then reserves — and since another
    order may take the units in between, each reserve still falls back to the ranking."""

    v: int = 1
    quote_id: Ident
    tenant: Tenant
    order_id: Ident
    sku: Ident
    available: dict[str, Annotated[int, Meta(ge=0)]]
    reply_to: Key
    ts: EpochMs

    @property
    def key(self) -> str:
        return self.reply_to


class DecisionStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CANCELLED = "cancelled"  # cancelled by the channel (or an operator) before a decision was reached


class DecisionLine(Record, kw_only=True):
    line_id: Ident
    sku: Ident
    quantity: Quantity
    warehouse: Ident | None = None


class OrderDecision(Record, kw_only=True):
    """The one terminal decision of an order. Key: ``tenant:order_id``.

    ``decision_id`` is deterministic and so is every field (``decided_at`` is the time of the input record
    that completed the decision): a redelivered copy is byte-identical.
    """

    v: int = 1
    decision_id: Ident
    tenant: Tenant
    order_id: Ident
    channel: Channel
    status: DecisionStatus
    reason: RejectReason | None = None
    detail: Text = ""
    lines: Annotated[list[DecisionLine], Meta(min_length=0)]
    order_created_at: EpochMs
    ingested_at: EpochMs
    decided_at: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


def result_id(tenant: str, line_id: str, status: LineStatus) -> str:
    return f"result.{tenant}.{line_id}.{status.value}"


def decision_id(tenant: str, order_id: str) -> str:
    return f"decision.{tenant}.{order_id}"
