"""After the goods leave (售后与履约跟踪): tracking per waybill, channel write-back, customer notifications,
returns (退货) and store pickup (门店自提), as records.

Two stages own them. **Tracking** (key ``tenant:waybill``) learns each waybill from shipping
(``WaybillRegistered``) and applies carriers' events. **Aftersales** (key ``tenant:order_id``) knows each order
from its approval (``OrderOpened``) and follows it: goods issued, tracking, write-back answers, returns, pickups.
Money is integer fen.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.common import EpochMs, Fen, Ident, Key, Quantity, Record, Tenant, Text
from schemas.fulfilment import Tick
from schemas.order import Address, Channel, Delivery
from schemas.shipping import CarrierEvent, GoodsIssued, TrackingStatus

#: Most lines one return request or one return receipt may name: far more than any order has (at most
#: ``MAX_LINES_PER_ORDER`` lines, plus remainder lines after short picks), few enough that the record stays small.
#: More is a schema violation on the topic (dead-lettered) and a 413 at the API.
MAX_RETURN_LINES = 500

#: What a received return line is fit for: back on the shelf, or set aside (次品, a quarantine location).
Disposition = Literal["sellable", "damaged"]
QUARANTINE_SUFFIX = "/quarantine"


def quarantine(warehouse: str) -> str:
    """The stock location damaged returns of ``warehouse`` go to: counted, never reserved."""
    return f"{warehouse}{QUARANTINE_SUFFIX}"


def is_quarantine(location: str) -> bool:
    return location.endswith(QUARANTINE_SUFFIX)


# -- the tracking inbox (key tenant:waybill) ----------------------------------------------------------------
class WaybillRegistered(Record, tag="waybill", tag_field="kind", kw_only=True):
    """A parcel left with this waybill (from shipping): which orders it carries, so tracking can tell them."""

    v: int = 1
    tenant: Tenant
    carrier: Ident
    waybill: Ident
    shipment_id: Ident
    parcel_id: Ident
    order_ids: Annotated[list[Ident], Meta(min_length=1)]
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.waybill(self.tenant, self.waybill)


TrackingRecord = WaybillRegistered | CarrierEvent


# -- the aftersales inbox (key tenant:order_id) -------------------------------------------------------------
class SoldLine(Record, kw_only=True):
    line_id: Ident
    line_no: int
    sku: Ident
    quantity: Quantity
    paid_fen: Fen  # what the buyer paid for the line (the refund basis of a return)
    platform_line_id: Annotated[str, Meta(max_length=128)] = ""


class OrderOpened(Record, tag="order", tag_field="kind", kw_only=True):
    """An order was approved: what aftersales needs of it later (platform ids for write-back, what was paid for
    returns, the receiver's phone for notifications, how it is delivered). Sent by the order stage."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    channel: Channel
    shop_id: Ident
    platform_order_id: Annotated[str, Meta(min_length=1, max_length=128)]
    receiver: Address
    lines: Annotated[list[SoldLine], Meta(min_length=1)]
    delivery: Delivery = "ship"
    pickup_store: Ident | None = None
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class PickupLine(Record, kw_only=True):
    line_id: Ident
    sku: Ident
    quantity: Quantity


class PickupReady(Record, tag="pickup_ready", tag_field="kind", kw_only=True):
    """A pickup (or counter) order is reserved in its store (sent by the order stage on acceptance)."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    store: Ident
    lines: Annotated[list[PickupLine], Meta(min_length=1)]
    reply_to: Key  # the order's inbox key (an expired pickup is cancelled there)
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class PickupClaim(Record, tag="pickup_claim", tag_field="kind", kw_only=True):
    """The buyer showed a pickup code at the store (API). ``claim_id`` is the client's idempotency key: the same
    claim sent again gets its first answer (without one, order, store and code make the claim). ``store`` is
    required (a claim without it is refused; optional here only so such a record is refused, not unreadable);
    ``actor`` is the API caller as its token says, never what a body claims."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    code: Annotated[str, Meta(min_length=1, max_length=32)]
    store: Ident | None = None
    claim_id: Ident | None = None
    actor: Ident = "store"
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class OrderTracking(Record, tag="tracking", tag_field="kind", kw_only=True):
    """A waybill of the order changed state (from the tracking stage)."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    carrier: Ident
    waybill: Ident
    status: TrackingStatus
    exception: bool = False
    final: bool = False
    occurred_at: EpochMs
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class WriteBackResult(Record, tag="writeback_result", tag_field="kind", kw_only=True):
    """The platform's answer to one write-back request (from the channel gateway)."""

    v: int = 1
    request_id: Ident
    tenant: Tenant
    order_id: Ident
    idempotency_key: Ident
    attempt: int
    ok: bool
    error: Text = ""
    platform_ref: Annotated[str, Meta(max_length=128)] = ""
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class ReturnLine(Record, kw_only=True):
    line_id: Ident
    quantity: Quantity


class ReturnRequested(Record, tag="return_requested", tag_field="kind", kw_only=True):
    """A buyer asks to return lines of a shipped order (退货申请): from the channel (refund after shipment) or the
    API. ``return_id`` is deterministic per request: a second copy is the same request."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    return_id: Ident
    lines: Annotated[list[ReturnLine], Meta(min_length=1, max_length=MAX_RETURN_LINES)]
    reason: Text = ""
    source: Literal["channel", "api"] = "api"
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class ReceivedLine(Record, kw_only=True):
    line_id: Ident
    quantity: Quantity
    disposition: Disposition


class ReturnReceived(Record, tag="return_received", tag_field="kind", kw_only=True):
    """The returned goods arrived at a warehouse and were inspected (退货入库), per line."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    return_id: Ident
    warehouse: Ident
    lines: Annotated[list[ReceivedLine], Meta(min_length=1, max_length=MAX_RETURN_LINES)]
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


AftersalesRecord = (
    OrderOpened
    | GoodsIssued
    | OrderTracking
    | WriteBackResult
    | ReturnRequested
    | ReturnReceived
    | PickupReady
    | PickupClaim
    | Tick
)


# -- result topics ------------------------------------------------------------------------------------------
class WriteBackRequest(Record, kw_only=True):
    """One request to a platform in its own shape (the outbox: the channel gateway sends it). Key:
    ``tenant:order_id``. ``idempotency_key`` is the same for every attempt; ``request_id`` is per attempt."""

    schema_version: int = 1
    request_id: Ident  # <idempotency key>#<attempt>
    tenant: Tenant
    order_id: Ident
    platform: Ident
    method: Ident
    request: dict[str, Any]
    idempotency_key: Ident
    attempt: int
    waybill: Ident
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class CustomerNotification(Record, kw_only=True):
    """What the customer is told (发货通知, 签收通知, 自提码): a template and its parameters; the phone masked (the
    sender looks the number up). Key: ``tenant:order_id``."""

    schema_version: int = 1
    notification_id: Ident
    tenant: Tenant
    order_id: Ident
    template: Literal["shipped", "delivered", "pickup_ready", "picked_up", "pickup_expired", "refunded"]
    channel: Literal["sms", "email"] = "sms"
    to_masked: Annotated[str, Meta(max_length=40)]
    params: dict[str, str] = msgspec.field(default_factory=dict)
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class ProgressEvent(enum.StrEnum):
    SHIPPED = "shipped"  # a parcel of it left (partial until every line did)
    DELIVERED = "delivered"  # every waybill of it delivered
    EXCEPTION = "exception"  # a waybill of it has an open exception
    RETURNED_TO_SENDER = "returned_to_sender"
    WRITTEN_BACK = "written_back"  # a platform acknowledged a write-back
    WRITEBACK_FAILED = "writeback_failed"  # a write-back gave up after its attempts
    RETURN_REQUESTED = "return_requested"
    RETURN_RECEIVED = "return_received"
    PICKUP_READY = "pickup_ready"
    PICKED_UP = "picked_up"
    PICKUP_EXPIRED = "pickup_expired"


class OrderProgress(Record, kw_only=True):
    """Where an order stands after acceptance, one record per change. Key: ``tenant:order_id``."""

    schema_version: int = 1
    progress_id: Ident  # deterministic: the same change always has the same id
    tenant: Tenant
    order_id: Ident
    event: ProgressEvent
    detail: Text = ""
    waybill: Ident | None = None
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class SettledLine(Record, kw_only=True):
    line_id: Ident
    sku: Ident
    quantity: Quantity
    disposition: Disposition
    location: Ident  # where the units went: the warehouse, or its quarantine
    refund_fen: Fen  # the line's paid amount pro rata to the units returned


class ReturnSettled(Record, kw_only=True):
    """A received return (退货入库) as finance reverses it: per line, units, where they went, the refund. Key:
    ``tenant:order_id``."""

    schema_version: int = 1
    return_id: Ident
    tenant: Tenant
    order_id: Ident
    warehouse: Ident
    lines: list[SettledLine]
    refund_fen: Fen
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)
