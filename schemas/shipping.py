"""Shipping records (发货): carrier choice rules, carrier tracking events and the tracking state they build.

Carrier tracking arrives from carriers (a topic, a webhook) keyed by waybill, late and duplicated as carriers do;
the state per waybill only ever moves forward (agents.tracking.core). Money is integer fen, weights grams.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.common import EpochMs, Ident, Key, Record, Tenant, Text
from schemas.fulfilment import RegionName, ShipmentPicked
from schemas.order import Address

Grams = Annotated[int, Meta(ge=0, le=1_000_000, description="A weight in grams")]
FenAmount = Annotated[int, Meta(ge=0, le=100_000_000, description="Money in integer fen (分)")]


class CarrierRate(Record, kw_only=True):
    """A carrier's price to a region (运费表): first weight (首重) up to ``first_g``, then each started ``step_g``
    (续重). The most specific region wins (``province/city`` over ``province``; ``*`` for anywhere)."""

    carrier: Ident
    region: Annotated[str, Meta(min_length=1, max_length=120)] = "*"
    first_g: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    first_fen: FenAmount
    step_g: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    step_fen: FenAmount = 0
    max_g: Grams = 50_000  # heavier parcels this carrier does not take


class CarrierRule(Record, kw_only=True):
    """An explicit choice (指定快递): parcels matching every condition given go with ``carrier``."""

    rule_id: Ident
    carrier: Ident
    regions: list[RegionName] = msgspec.field(default_factory=list)  # empty: anywhere
    min_g: Grams = 0
    max_g: Grams | None = None
    shops: list[Ident] = msgspec.field(default_factory=list)  # empty: every shop


class ItemSize(Record, kw_only=True):
    """One unit of a SKU as packing sees it (from the catalog)."""

    weight_g: Annotated[int, Meta(ge=1, le=1_000_000)]
    volume_cm3: Annotated[int, Meta(ge=0, le=10_000_000)] = 0


class ShippingPolicy(Record, kw_only=True):
    """How a tenant packs and ships (agents.shipping): unit sizes and parcel limits for packing; per parcel the
    carrier — the shop's preference, then the first matching rule, then the cheapest rate that takes the weight,
    then the warehouse's default carrier; how often a waybill is asked for before the parcel is given up."""

    shop_carriers: dict[str, list[Ident]] = msgspec.field(default_factory=dict)
    rules: list[CarrierRule] = msgspec.field(default_factory=list)
    rates: list[CarrierRate] = msgspec.field(default_factory=list)
    sku_sizes: dict[str, ItemSize] = msgspec.field(default_factory=dict)
    default_size: ItemSize = msgspec.field(default_factory=lambda: ItemSize(weight_g=500, volume_cm3=2_000))
    max_parcel_g: Annotated[int, Meta(ge=1, le=1_000_000)] = 20_000
    max_parcel_cm3: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    waybill_attempts: Annotated[int, Meta(ge=1, le=20)] = 3


class PackedLine(Record, kw_only=True):
    order_id: Ident
    line_id: Ident
    sku: Ident
    units: Annotated[int, Meta(ge=1, le=10_000)]


class WaybillWanted(Record, tag="waybill_wanted", tag_field="kind", kw_only=True):
    """Ask a carrier for the waybill number of one parcel (电子面单取号). Key: ``tenant:carrier:warehouse`` (the
    carrier gateway batches per carrier and warehouse). ``parcel_id`` is the carrier's idempotency key: asking
    again, in any attempt, gets the number issued the first time."""

    v: int = 1
    request_id: Ident  # <parcel>#<attempt>
    tenant: Tenant
    shipment_id: Ident
    parcel_id: Ident
    carrier: Ident
    warehouse: Ident
    attempt: Annotated[int, Meta(ge=1, le=20)]
    weight_g: Grams
    receiver: Address
    order_ids: list[Ident]
    lines: list[PackedLine]
    reply_to: Key  # the shipment's key in the shipping inbox
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.waybill_batch(self.tenant, self.carrier, self.warehouse)


class WaybillAnswer(Record, tag="waybill_answer", tag_field="kind", kw_only=True):
    """The carrier's answer for one parcel: a number, or why not. ``error`` kinds: ``timeout`` and
    ``unavailable`` (ask the same carrier again), ``range_exhausted`` and ``rejected: …`` (that carrier will not
    give one). Key: ``reply_to`` of the request (``tenant:shipment_id``)."""

    v: int = 1
    request_id: Ident
    tenant: Tenant
    shipment_id: Ident
    parcel_id: Ident
    carrier: Ident
    attempt: Annotated[int, Meta(ge=1, le=20)]
    waybill: Ident | None = None
    error: Text | None = None
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.shipment(self.tenant, self.shipment_id)


class ShippedParcel(Record, kw_only=True):
    parcel_id: Ident
    carrier: Ident
    carrier_reason: Annotated[str, Meta(max_length=120)]  # shop, rule:<id>, cheapest, default, fallback
    cost_fen: FenAmount | None = None
    waybill: Ident
    weight_g: Grams
    volume_cm3: Annotated[int, Meta(ge=0, le=100_000_000)]
    oversize: bool = False
    lines: list[PackedLine]


class ShipmentShipped(Record, kw_only=True):
    """A shipment left the warehouse (发货): its parcels, each with its carrier and waybill. Key:
    ``tenant:shipment_id``."""

    schema_version: int = 1
    tenant: Tenant
    shipment_id: Ident
    warehouse: Ident
    shop_id: Ident
    order_ids: list[Ident]
    parcels: list[ShippedParcel]
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.shipment(self.tenant, self.shipment_id)


class ShipmentFailed(Record, kw_only=True):
    """No carrier would give a waybill for a parcel of the shipment after every attempt: it waits for an operator
    (its stock stays reserved). Key: ``tenant:shipment_id``."""

    schema_version: int = 1
    tenant: Tenant
    shipment_id: Ident
    warehouse: Ident
    parcel_id: Ident
    attempts: int
    errors: list[Text]
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.shipment(self.tenant, self.shipment_id)


class GoodsIssued(Record, tag="goods_issued", tag_field="kind", kw_only=True):
    """Goods left a warehouse for one order (销售出库), what finance books revenue and cost on: the order's lines
    in the shipment and the units issued. Key: ``tenant:order_id``."""

    schema_version: int = 1
    issue_id: Ident  # <shipment>.<order>: one per order and shipment
    tenant: Tenant
    order_id: Ident
    shipment_id: Ident
    warehouse: Ident
    lines: list[PackedLine]
    waybills: list[Ident]  # empty: handed over in a store (自提, counter sale)
    carriers: dict[str, Ident] = msgspec.field(default_factory=dict)  # waybill -> carrier
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)


class TrackingStatus(enum.StrEnum):
    """Where a parcel is, by the carrier (物流轨迹)."""

    CREATED = "created"  # waybill issued, not yet collected
    PICKED_UP = "picked_up"  # 揽收
    IN_TRANSIT = "in_transit"  # 运输中
    OUT_FOR_DELIVERY = "out_for_delivery"  # 派送中
    DELIVERED = "delivered"  # 签收
    EXCEPTION = "exception"  # 异常 (lost, damaged, refused, address problem): may still recover
    RETURNED = "returned_to_sender"  # 退回


class CarrierEvent(Record, tag="carrier_event", tag_field="kind", kw_only=True):
    """One tracking event as a carrier reports it. Key: ``tenant:waybill``. ``event_id`` is the carrier's own id
    of the event (a redelivery repeats it); ``occurred_at`` is the carrier's time of the scan."""

    v: int = 1
    tenant: Tenant
    carrier: Ident
    waybill: Ident
    event_id: Ident
    status: TrackingStatus
    occurred_at: EpochMs
    location: Annotated[str, Meta(max_length=200)] = ""
    detail: Text = ""

    @property
    def key(self) -> str:
        return keys.waybill(self.tenant, self.waybill)


class TrackingUpdate(Record, kw_only=True):
    """A waybill's visible tracking state changed. Key: ``tenant:waybill``."""

    schema_version: int = 1
    tenant: Tenant
    carrier: Ident
    waybill: Ident
    status: TrackingStatus
    exception: bool = False  # an exception is open on top of ``status``
    final: bool = False  # delivered or returned: nothing moves it any more
    occurred_at: EpochMs
    reason: Literal["progress", "exception", "recovered", "final"]
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.waybill(self.tenant, self.waybill)


class ShippingPolicyVersion(Record, tag="shipping_policy", tag_field="kind", kw_only=True):
    """A tenant's shipping policy, one copy per partition of the shipping inbox (key: the tenant): each
    partition sees each version at one point of its log."""

    v: int = 1
    tenant: Tenant
    version: Annotated[int, Meta(ge=0)]
    policy: ShippingPolicy

    @property
    def key(self) -> str:
        return keys.tenant(self.tenant)


#: The shipping inbox (key ``tenant:shipment_id``; policies one copy per partition).
ShippingRecord = ShipmentPicked | WaybillAnswer | ShippingPolicyVersion
