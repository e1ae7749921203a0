"""The canonical Order: what every channel adapter produces and every stage downstream consumes."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.common import (
    MAX_LINES_PER_ORDER,
    Currency,
    EpochMs,
    Fen,
    Ident,
    Quantity,
    Record,
    Tenant,
    Text,
    UnitPriceFen,
)
from schemas.keys import buyer_key  # re-exported: the order's key on the order inbox


class Channel(enum.StrEnum):
    """Sales channel (渠道)."""

    TMALL = "tmall"
    TAOBAO = "taobao"
    JD = "jd"
    DOUYIN = "douyin"
    SHOPIFY = "shopify"
    WEB = "web"  # the retailer's own web store
    POS = "pos"  # physical store point of sale


class OrderStatus(enum.StrEnum):
    """Normalised channel status: every channel's own statuses map onto these."""

    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"  # paid, waiting to ship (待发货)
    HOLD_BY_PLATFORM = "hold_by_platform"  # platform says don't ship yet (JD LOCKED, refund pending, …)
    REFUNDING = "refunding"
    CANCELLED = "cancelled"
    SHIPPED = "shipped"
    FINISHED = "finished"


class Address(Record, kw_only=True):
    """Receiver address (收货地址). Channels may mask PII; masked values are kept as received."""

    name: Annotated[str, Meta(min_length=1, max_length=100)]
    phone: Annotated[str, Meta(max_length=40)] = ""
    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}$")] = "CN"
    province: Annotated[str, Meta(max_length=60)] = ""
    city: Annotated[str, Meta(max_length=60)] = ""
    district: Annotated[str, Meta(max_length=60)] = ""
    street: Annotated[str, Meta(max_length=300)] = ""
    postal_code: Annotated[str, Meta(max_length=20)] = ""


class Buyer(Record, kw_only=True):
    id: Annotated[str, Meta(min_length=1, max_length=128)]
    nick: Annotated[str, Meta(max_length=128)] = ""
    phone: Annotated[str, Meta(max_length=40)] = ""


LineNo = Annotated[int, Meta(ge=1, le=MAX_LINES_PER_ORDER)]


class LineState(enum.StrEnum):
    """A line's own state on the channel: a refund can cover some lines of an order."""

    ACTIVE = "active"
    REFUNDING = "refunding"  # refund requested, not settled: do not ship
    CANCELLED = "cancelled"  # refunded / removed before shipment


#: How an order reaches its buyer: shipped by a carrier, picked up in a store (门店自提) or sold at its counter (POS).
Delivery = Literal["ship", "pickup", "counter"]


class OrderLine(Record, kw_only=True):
    line_no: LineNo
    sku: Ident
    quantity: Quantity
    unit_price_fen: UnitPriceFen
    paid_fen: Fen | None = None  # what the buyer paid for the line after discounts (revenue basis)
    status: LineState = LineState.ACTIVE
    platform_line_id: Annotated[str, Meta(max_length=128)] = ""
    title: Annotated[str, Meta(max_length=300)] = ""


class Order(Record, kw_only=True):
    """A customer order in canonical form. Key: ``tenant:order_id`` (schemas.keys.order); on the order inbox it
    travels in an ``OrderSnapshot`` under its buyer key (schemas.keys.buyer_key)."""

    v: int = 1
    tenant: Tenant
    order_id: Ident
    channel: Channel
    shop_id: Ident
    platform_order_id: Annotated[str, Meta(min_length=1, max_length=128)]
    status: OrderStatus = OrderStatus.PAID
    buyer: Buyer
    receiver: Address
    lines: Annotated[list[OrderLine], Meta(min_length=1, max_length=MAX_LINES_PER_ORDER)]
    currency: Currency = "CNY"
    shipping_fen: Fen = 0
    created_at: EpochMs  # channel (event) time
    paid_at: EpochMs | None = None
    ingested_at: EpochMs  # processing time at the edge; latency is measured from here
    buyer_message: Text = ""
    seller_memo: Text = ""
    version: Annotated[int, Meta(ge=0)] = 0  # the channel's modification time (ms): later supersedes earlier
    risk_flags: Annotated[list[Ident], Meta(max_length=20)] = msgspec.field(default_factory=list)
    delivery: Delivery = "ship"
    pickup_store: Ident | None = None  # the store that hands it over (pickup, counter): its stock is reserved

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)

    @property
    def goods_fen(self) -> int:
        return sum(line.unit_price_fen * line.quantity for line in self.lines)

    def line_id(self, line: OrderLine) -> str:
        return line_id(self.order_id, line.line_no)


def order_id(channel: Channel | str, shop_id: str, platform_order_id: str) -> str:
    """Canonical order id: deterministic from where the order came from, so redeliveries collide."""
    ch = channel.value if isinstance(channel, Channel) else channel
    return f"{ch}-{shop_id}-{platform_order_id}"


def line_id(order_id: str, line_no: int) -> str:
    return f"{order_id}#{line_no}"


#: A short-picked line's units re-reserved elsewhere travel as a remainder line: ``<line id>/r``.
REMAINDER = "/r"


def root_line(line: str) -> str:
    """The order line a (remainder of a remainder of a …) line belongs to."""
    while line.endswith(REMAINDER):
        line = line[: -len(REMAINDER)]
    return line


def validate_order(order: Order) -> list[str]:
    """Cross-field checks msgspec cannot express; returns problems (empty when fine)."""
    problems = []
    numbers = [line.line_no for line in order.lines]
    if len(set(numbers)) != len(numbers):
        problems.append("duplicate line_no")
    if order.delivery != "ship" and not order.pickup_store:
        problems.append(f"delivery {order.delivery!r} needs a pickup_store")
    return problems


__all__ = [
    "Address",
    "Buyer",
    "Channel",
    "LineState",
    "Order",
    "OrderLine",
    "OrderStatus",
    "buyer_key",
    "line_id",
    "order_id",
    "validate_order",
]
