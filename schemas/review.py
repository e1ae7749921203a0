"""Review (审单) records: rule sets, review outcomes, operator actions, and the requests and
cancellations that review sends on.

The order stage reviews every order (rules per tenant, versioned in the log), records what it decided and
which rules fired on ``review-decisions``, and records cancellations and return requests on
``order-cancellations``.
"""

from __future__ import annotations

import enum
import zlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.common import EpochMs, Fen, Ident, Record, Tenant, Text
from schemas.order import Channel


class Action(enum.StrEnum):
    APPROVE = "approve"  # an explicit allow-list rule: beats hold, not reject
    HOLD = "hold"  # 挂起: wait for an operator
    REJECT = "reject"


FieldPath = Literal[
    "buyer.id", "buyer.phone", "buyer.nick", "receiver.phone", "receiver.name", "receiver.street", "shop_id"
]
MessageField = Literal["buyer_message", "seller_memo"]
Words = Annotated[list[Annotated[str, Meta(min_length=1, max_length=200)]], Meta(max_length=10_000)]


class _Rule(Record, tag_field="kind", kw_only=True):
    id: Ident
    action: Action
    reason: Ident  # the reason code recorded when the rule fires
    channels: list[Channel] = msgspec.field(default_factory=list)  # empty: every channel
    description: Text = ""


class AmountOver(_Rule, tag="amount_over", kw_only=True):
    """Goods plus shipping, in fen, above a threshold."""

    threshold_fen: Fen


class UnitsOver(_Rule, tag="units_over", kw_only=True):
    """Total units across lines above a threshold."""

    threshold: Annotated[int, Meta(ge=1)]


class Blacklist(_Rule, tag="blacklist", kw_only=True):
    """A field of the order equals one of the values (buyer ids, phones, addresses …)."""

    field: FieldPath
    values: Words


class AddressIncomplete(_Rule, tag="address_incomplete", kw_only=True):
    """Receiver name, phone, province, city or street missing (or shorter than ``min_street_chars``)."""

    min_street_chars: Annotated[int, Meta(ge=0, le=50)] = 3


class AddressKeywords(_Rule, tag="address_keywords", kw_only=True):
    """Suspicious words in the receiver address (e.g. 测试, 代收, a parcel locker where not allowed)."""

    keywords: Words


class MessageKeywords(_Rule, tag="message_keywords", kw_only=True):
    """Words in the buyer's message or the seller's memo (e.g. 改地址, 不要发货, 退款)."""

    keywords: Words
    fields: list[MessageField] = msgspec.field(default_factory=lambda: ["buyer_message", "seller_memo"])


class Velocity(_Rule, tag="velocity", kw_only=True):
    """More than ``max_orders`` orders from one buyer within ``window_s`` seconds (by channel time)."""

    max_orders: Annotated[int, Meta(ge=1)]
    window_s: Annotated[int, Meta(ge=1, le=30 * 86400)]


class PlatformRisk(_Rule, tag="platform_risk", kw_only=True):
    """The channel flagged the order (JD ``LOCKED``, Shopify risk recommendation, Taobao ``top_hold`` …)."""

    flags: Annotated[list[Ident], Meta(min_length=1)]


Rule = (
    AmountOver | UnitsOver | Blacklist | AddressIncomplete | AddressKeywords | MessageKeywords | Velocity | PlatformRisk
)


class RuleSet(Record, kw_only=True):
    """One tenant's review rules. Key on the ``review-rules`` topic: ``tenant``."""

    v: int = 1
    tenant: Tenant
    version: Annotated[int, Meta(ge=0)] = 0  # a later version replaces an earlier one
    rules: Annotated[list[Rule], Meta(max_length=500)] = msgspec.field(default_factory=list)

    @property
    def key(self) -> str:
        return keys.tenant(self.tenant)


class Outcome(enum.StrEnum):
    APPROVED = "approved"
    HELD = "held"  # 挂起: waiting for an operator (an open state, listed in the holds read model)
    REJECTED = "rejected"
    RELEASED = "released"  # an operator released a held order (or acknowledged an amendment)
    CANCELLED = "cancelled"  # cancelled by the channel (or an operator) before it was approved
    AWAITING_PAYMENT = "awaiting_payment"  # seen, not paid: nothing is reserved until it is (an open state)
    SHIPPED = "shipped"  # first seen already shipped (by the platform itself): nothing to reserve


class FiredRule(Record, kw_only=True):
    rule_id: Ident
    kind: str
    action: Action
    reason: Ident
    detail: Text = ""


class ReviewDecision(Record, kw_only=True):
    """What review decided about an order and why. Key: ``tenant:order_id``."""

    v: int = 1
    review_id: Ident  # deterministic: order, version and outcome
    tenant: Tenant
    order_id: Ident
    channel: Channel
    outcome: Outcome
    reasons: list[Ident] = msgspec.field(default_factory=list)
    fired: list[FiredRule] = msgspec.field(default_factory=list)
    skipped: list[Ident] = msgspec.field(default_factory=list)  # rules that could not be evaluated
    rules_version: int = 0
    order_version: int = 0
    actor: Ident = "rules"  # "rules" or the operator who released / rejected
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class OperatorActionKind(enum.StrEnum):
    RELEASE = "release"
    REJECT = "reject"
    CANCEL = "cancel"  # an accepted order is called off before it leaves (an unclaimed store pickup)


class CancellationKind(enum.StrEnum):
    ORDER = "order"  # the whole order, before shipment: everything reserved is released
    LINES = "lines"  # some lines, before shipment
    RETURN_REQUESTED = "return_requested"  # after shipment: a return to receive, nothing to release


class OrderCancellation(Record, kw_only=True):
    """A cancellation (or, after shipment, a return request) and what it released. Key: ``tenant:order_id``."""

    v: int = 1
    cancellation_id: Ident
    tenant: Tenant
    order_id: Ident
    kind: CancellationKind
    line_ids: list[Ident] = msgspec.field(default_factory=list)
    released_line_ids: list[Ident] = msgspec.field(default_factory=list)
    reason: Ident
    stage: Ident  # the stage that recorded it ("orders")
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


def review_id(tenant: str, order_id: str, version: int, outcome: Outcome) -> str:
    return f"review.{tenant}.{order_id}.{version}.{outcome.value}"


def cancellation_id(tenant: str, order_id: str, kind: CancellationKind, lines: list[str]) -> str:
    """Deterministic; a set of lines is named by a stable (not Python-salted) checksum of its ids."""
    suffix = "all" if not lines else f"{zlib.crc32('|'.join(sorted(lines)).encode()):08x}"
    return f"cancel.{tenant}.{order_id}.{kind.value}.{suffix}"
