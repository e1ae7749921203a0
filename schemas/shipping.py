"""Shipping records (发货): carrier choice rules, carrier tracking events and the tracking state they build.

Carrier tracking arrives from carriers (a topic, a webhook) keyed by waybill, late and duplicated as carriers do;
the state per waybill only ever moves forward (agents.shipping.tracking). Money is integer fen, weights grams.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.common import EpochMs, Ident, Record, Tenant, Text
from schemas.fulfilment import RegionName

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


class ShippingPolicy(Record, kw_only=True):
    """How a tenant picks a carrier per parcel: the shop's preference, then the first matching rule, then the
    cheapest rate that takes the weight, then the warehouse's default carrier."""

    shop_carriers: dict[str, list[Ident]] = msgspec.field(default_factory=dict)
    rules: list[CarrierRule] = msgspec.field(default_factory=list)
    rates: list[CarrierRate] = msgspec.field(default_factory=list)


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
        return f"{self.tenant}:{self.waybill}"


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
        return f"{self.tenant}:{self.waybill}"
