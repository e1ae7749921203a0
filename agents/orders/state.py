"""The order stage's persisted state, as typed records (msgspec structs, JSON in the changelog).

* ``orders`` (key ``tenant:order_id``): where one order stands — its review, its reservation saga (预占) and
  its decision — plus the snapshot while it still waits for payment or an operator;
* ``buyers`` (key ``tenant:shop:b-<buyer>``, the inbox key): the buyer's recent orders (for velocity rules;
  next, the 合单 merge window);
* ``rules`` (key ``tenant:rules@p<partition>``): the tenant's review rules as this partition last saw them.
"""

from __future__ import annotations

import enum

import msgspec

from schemas.order import Address, Order
from schemas.order import LineState as ChannelLineState
from schemas.review import RuleSet
from schemas.saga import RejectReason


class Phase(enum.StrEnum):
    """Where an order stands on the order side."""

    AWAITING_PAYMENT = "awaiting_payment"  # seen, not paid (支付减库存: nothing is reserved yet)
    HELD = "held"  # 挂起: waits for an operator before approval
    RESERVING = "reserving"  # approved; reserves sent, answers pending
    ACCEPTED = "accepted"  # every line reserved
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    SHIPPED = "shipped"  # the channel says it left (refunds now become return requests)


OPEN_PHASES = frozenset({Phase.AWAITING_PAYMENT, Phase.HELD, Phase.RESERVING})
APPROVED_PHASES = frozenset({Phase.RESERVING, Phase.ACCEPTED})


class SagaLineState(enum.StrEnum):
    """One line in the reservation saga."""

    AWAITING = "awaiting"  # reserve sent, no answer yet
    RESERVED = "reserved"
    REFUSED = "refused"  # the inventory said no
    RELEASED = "released"  # was reserved, given back (the order was rejected or cancelled)
    CANCELLED = "cancelled"  # the channel cancelled (refunded) the line; a reservation in flight is given back


class SagaLine(msgspec.Struct, kw_only=True):
    line_id: str
    line_no: int
    sku: str
    quantity: int
    state: SagaLineState = SagaLineState.AWAITING
    warehouse: str | None = None
    #: a short pick took this many units out of the line (reported by ``short_by``, a pick list id)
    short: int = 0
    short_by: str | None = None
    #: a remainder line: the units another line came up short, re-reserved away from ``exclude``
    remainder_of: str | None = None
    exclude: list[str] = msgspec.field(default_factory=list)


class HoldKind(enum.StrEnum):
    REVIEW = "review"  # before approval: release approves, reject rejects
    AMENDMENT = "amendment"  # after approval, the channel changed what the engine cannot apply by itself


class Hold(msgspec.Struct, kw_only=True):
    kind: HoldKind
    reasons: list[str]
    rules: list[str] = msgspec.field(default_factory=list)
    held_at: int  # record time
    version: int  # the channel version that caused it
    buyer: str = ""  # for the holds list: who, and how much
    amount_fen: int = 0
    currency: str = "CNY"


class Decided(msgspec.Struct, kw_only=True):
    status: str  # schemas.saga.DecisionStatus value
    reason: RejectReason | None = None
    detail: str = ""
    decided_at: int


class OrderState(msgspec.Struct, kw_only=True):
    tenant: str
    order_id: str
    inbox_key: str
    channel: str
    shop_id: str
    version: int  # the channel version last applied
    phase: Phase
    created_at: int
    ingested_at: int
    snapshot: Order | None = None  # while it may still be approved (awaiting payment, held for review)
    channel_lines: dict[str, ChannelLineState] = msgspec.field(default_factory=dict)  # line_no -> state
    lines: list[SagaLine] = msgspec.field(default_factory=list)
    hold: Hold | None = None
    decided: Decided | None = None
    expires_at: int | None = None  # channel time after which it is forgotten (set once decided)
    #: tenant, shop, buyer and receiver digest (agents.fulfilment.merge.merge_key): what must match to merge
    ship_group: str = ""
    receiver: Address | None = None  # where it ships (kept from approval: the snapshot is dropped then)
    #: the warehouses that may ship it, best first (分仓), as ranked at approval: a short pick re-reserves by it
    ranking: list[str] = msgspec.field(default_factory=list)
    strategy: str = "fullest"  # the allocation strategy at approval ("fullest": no layout)
    quoted: bool = False  # allocated on the SKUs' quotes
    #: 分仓 by stock (fewest-parcels, stock-first): SKUs whose quote is awaited, and the answers so far
    quoting: list[str] = msgspec.field(default_factory=list)
    quotes: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    delivery: str = "ship"  # ship, pickup, counter (the store's stock is reserved; aftersales hands it over)
    pickup_store: str | None = None

    @property
    def key(self) -> str:
        return f"{self.tenant}:{self.order_id}"


class BuyerState(msgspec.Struct, kw_only=True):
    """A buyer's orders in the last velocity window: (created_at, order_id), oldest first."""

    recent: list[tuple[int, str]] = msgspec.field(default_factory=list)
    expires_at: int | None = None


class RulesState(msgspec.Struct, kw_only=True):
    rules: RuleSet
