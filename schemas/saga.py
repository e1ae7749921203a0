"""Records of the order saga: line results from the inventory agent, timeouts, and order decisions."""

from __future__ import annotations

import enum
from typing import Annotated

from msgspec import Meta

from schemas.common import EpochMs, Ident, Quantity, Record, Tenant, Text, join_key
from schemas.order import Channel


class LineStatus(enum.StrEnum):
    RESERVED = "reserved"
    REJECTED = "rejected"


class RejectReason(enum.StrEnum):
    """Why a line or an order was rejected."""

    INSUFFICIENT_STOCK = "insufficient_stock"  # 库存不足
    UNKNOWN_SKU = "unknown_sku"  # no stock record at all for this SKU
    NOT_RESERVABLE = "not_reservable"  # line already released or shipped (a redelivered reserve)
    TIMEOUT = "timeout"  # no answer from inventory within the saga timeout
    INVALID_ORDER = "invalid_order"
    REVIEW = "review"  # a review rule (审单) rejected it; the review decision names the rules
    CANCELLED = "cancelled"  # the channel cancelled it before it was decided


class LineResult(Record, kw_only=True):
    """The inventory agent's answer to one reserve command. Key: ``tenant:order_id``."""

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
    ts: EpochMs

    @property
    def key(self) -> str:
        return join_key(self.tenant, self.order_id)


class SagaTimeout(Record, kw_only=True):
    """A tick telling the coordinator that an order's saga passed its deadline. Key: ``tenant:order_id``."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    deadline: EpochMs
    ts: EpochMs

    @property
    def key(self) -> str:
        return join_key(self.tenant, self.order_id)


class DecisionStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CANCELLED = "cancelled"  # cancelled by the channel before a decision was reached


class DecisionLine(Record, kw_only=True):
    line_id: Ident
    sku: Ident
    quantity: Quantity
    warehouse: Ident | None = None


class OrderDecision(Record, kw_only=True):
    """The one terminal decision of an order's reservation saga. Key: ``tenant:order_id``.

    ``decision_id`` is deterministic; a redelivered copy is identical except for ``decided_at``.
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
        return join_key(self.tenant, self.order_id)


def result_id(tenant: str, line_id: str, status: LineStatus) -> str:
    return f"result.{tenant}.{line_id}.{status.value}"


def decision_id(tenant: str, order_id: str) -> str:
    return f"decision.{tenant}.{order_id}"
