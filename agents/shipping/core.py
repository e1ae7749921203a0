"""The shipping rules for one shipment (发货), pure: ``(state, event) -> (state, outputs)``.

A picked shipment is packed into parcels (agents.shipping.packing), each parcel gets a carrier by the tenant's
policy (agents.shipping.carriers), and a waybill is asked for per parcel (``waybill_wanted``, to the carrier
gateway). Answers come back one per request:

* a number: kept; when every parcel has one, the shipment ships — the shipment record, an ``issue`` command per
  line to the inventory (on_hand and reserved go down), a goods-issued record per order for finance (and for
  aftersales: write-back, notification), and each waybill registered with tracking;
* ``timeout`` / ``unavailable``: asked again of the same carrier, with the same parcel id (the carrier's
  idempotency key: a number it issued before the answer was lost comes back, never a second one), up to the
  policy's attempts;
* ``range_exhausted`` / ``rejected: …``, or attempts used up: the next of the warehouse's carriers that takes
  the parcel (reason ``fallback``); none left: the shipment fails (``ShipmentFailed``), stock stays reserved.

An answer to anything but the parcel's current request (a late or duplicated one) changes nothing. Time is the
record's time; the policy and the warehouse's carriers come from the log.
"""

from __future__ import annotations

import enum

import msgspec

from agents.shipping.carriers import NoCarrier, choose_carrier, price, rate_for
from agents.shipping.packing import PackLine, pack
from engine.runtime.kit import Step
from engine.runtime.stamp import Stamp
from schemas import keys
from schemas.aftersales import WaybillRegistered
from schemas.fulfilment import ShipmentPicked
from schemas.inventory import Issue, issue_id
from schemas.order import Address
from schemas.shipping import (
    GoodsIssued,
    PackedLine,
    ShipmentFailed,
    ShipmentShipped,
    ShippedParcel,
    ShippingPolicy,
    WaybillAnswer,
    WaybillWanted,
)

#: Requests per parcel, over every carrier tried (the request id carries the attempt).
MAX_REQUESTS = 20
#: Errors after which the same carrier is asked again; any other error moves to the next carrier.
RETRYABLE = ("timeout", "unavailable")


class Phase(enum.StrEnum):
    AWAITING_WAYBILLS = "awaiting_waybills"
    SHIPPED = "shipped"
    FAILED = "failed"


class ParcelState(msgspec.Struct, kw_only=True):
    parcel_id: str
    lines: list[PackedLine]
    weight_g: int
    volume_cm3: int
    oversize: bool = False
    carrier: str
    carrier_reason: str
    cost_fen: int | None = None
    untried: list[str] = msgspec.field(default_factory=list)  # carriers still to fall back on, in order
    attempt: int = 1  # of the current request (request id ``<parcel>#<attempt>``)
    tries: int = 1  # requests to the current carrier
    waybill: str | None = None
    errors: list[str] = msgspec.field(default_factory=list)

    @property
    def request_id(self) -> str:
        return f"{self.parcel_id}#{self.attempt}"


class ShipmentState(msgspec.Struct, kw_only=True):
    """One shipment from picked to shipped (key ``tenant:shipment_id``)."""

    tenant: str
    shipment_id: str
    warehouse: str
    shop_id: str
    order_ids: list[str]
    receiver: Address
    phase: Phase
    parcels: list[ParcelState]
    picked_at: int
    shipped_at: int | None = None
    closed_at: int | None = None  # shipped or failed: kept a retention after for late answers, then forgotten

    @property
    def key(self) -> str:
        return keys.shipment(self.tenant, self.shipment_id)  # reply_to of its waybill requests


def on_picked(
    state: ShipmentState | None, picked: ShipmentPicked, policy: ShippingPolicy, carriers: list[str], now: int
) -> Step:
    """Pack, choose carriers, ask for waybills. A second copy of the same shipment changes nothing."""
    if state is not None:
        return Step(state, note="duplicate_picked")
    if picked.receiver is None:
        return Step(None, refused=("missing_receiver", f"shipment {picked.shipment_id} has no receiver"))
    lines = [PackLine(ln.order_id, ln.line_id, ln.sku, ln.picked) for ln in picked.lines if ln.picked > 0]
    if not lines:
        return Step(None, note="nothing_picked")  # every line came up short: nothing leaves
    receiver = picked.receiver
    packed = pack(
        picked.shipment_id,
        lines,
        policy.sku_sizes,
        policy.default_size,
        policy.max_parcel_g,
        policy.max_parcel_cm3,
    )
    parcels = []
    for parcel in packed:
        try:
            choice = choose_carrier(
                policy, carriers, picked.shop_id or "", receiver.province, receiver.city, parcel.weight_g
            )
        except NoCarrier as exc:
            return Step(None, refused=("no_carrier", f"{picked.warehouse}: {exc}"))
        parcels.append(
            ParcelState(
                parcel_id=parcel.parcel_id,
                lines=[
                    PackedLine(order_id=x.order_id, line_id=x.line_id, sku=x.sku, units=x.units) for x in parcel.lines
                ],
                weight_g=parcel.weight_g,
                volume_cm3=parcel.volume_cm3,
                oversize=parcel.oversize,
                carrier=choice.carrier,
                carrier_reason=choice.reason,
                cost_fen=choice.cost_fen,
                untried=[c for c in carriers if c != choice.carrier],
            )
        )
    state = ShipmentState(
        tenant=picked.tenant,
        shipment_id=picked.shipment_id,
        warehouse=picked.warehouse,
        shop_id=picked.shop_id or "",
        order_ids=list(picked.order_ids),
        receiver=receiver,
        phase=Phase.AWAITING_WAYBILLS,
        parcels=parcels,
        picked_at=now,
    )
    return Step(state, True, [_wanted(state, parcel, now) for parcel in parcels], note="packed")


def on_answer(
    state: ShipmentState | None, answer: WaybillAnswer, policy: ShippingPolicy, stamp: Stamp, now: int
) -> Step:
    """One carrier answer: keep the number (and ship when every parcel has one), or ask again, or fall back."""
    if state is None:
        return Step(None, note="orphan_answer")
    found = next((i for i, p in enumerate(state.parcels) if p.parcel_id == answer.parcel_id), None)
    if found is None or state.phase is not Phase.AWAITING_WAYBILLS:
        return Step(state, note="late_answer")
    current = state.parcels[found]
    if current.waybill is not None or answer.request_id != current.request_id:
        return Step(state, note="late_answer")  # a duplicate, or the answer to a request already given up
    new = msgspec.structs.replace(state, parcels=[msgspec.structs.replace(p) for p in state.parcels])
    parcel = new.parcels[found]
    if answer.waybill:
        parcel.waybill = answer.waybill
        if all(p.waybill for p in new.parcels):
            return _ship(new, stamp, now)
        return Step(new, True, note="waybill")
    error = answer.error or "unknown"
    parcel.errors = [*parcel.errors, f"{parcel.carrier}#{parcel.attempt}: {error}"][-10:]
    if parcel.attempt >= MAX_REQUESTS:
        return _fail(new, parcel, now)
    if error.startswith(RETRYABLE) and parcel.tries < policy.waybill_attempts:
        parcel.attempt += 1
        parcel.tries += 1
        return Step(new, True, [_wanted(new, parcel, now)], note="waybill_retry")
    receiver = new.receiver
    while parcel.untried:
        carrier, parcel.untried = parcel.untried[0], parcel.untried[1:]
        rate = rate_for(policy.rates, carrier, receiver.province, receiver.city)
        if rate is not None and parcel.weight_g > rate.max_g:
            continue  # this carrier does not take the parcel's weight
        parcel.carrier, parcel.carrier_reason = carrier, "fallback"
        parcel.cost_fen = None if rate is None else price(rate, parcel.weight_g)
        parcel.attempt += 1
        parcel.tries = 1
        return Step(new, True, [_wanted(new, parcel, now)], note="waybill_fallback")
    return _fail(new, parcel, now)


def _wanted(state: ShipmentState, parcel: ParcelState, now: int) -> WaybillWanted:
    return WaybillWanted(
        request_id=parcel.request_id,
        tenant=state.tenant,
        shipment_id=state.shipment_id,
        parcel_id=parcel.parcel_id,
        carrier=parcel.carrier,
        warehouse=state.warehouse,
        attempt=parcel.attempt,
        weight_g=parcel.weight_g,
        receiver=state.receiver,
        order_ids=sorted({ln.order_id for ln in parcel.lines}),
        lines=parcel.lines,
        reply_to=state.key,
        ts=now,
    )


def _fail(state: ShipmentState, parcel: ParcelState, now: int) -> Step:
    state.phase, state.closed_at = Phase.FAILED, now
    failed = ShipmentFailed(
        tenant=state.tenant,
        shipment_id=state.shipment_id,
        warehouse=state.warehouse,
        parcel_id=parcel.parcel_id,
        attempts=parcel.attempt,
        errors=parcel.errors,
        ts=now,
    )
    return Step(state, True, [failed], note="waybill_failed")


def _ship(state: ShipmentState, stamp: Stamp, now: int) -> Step:
    """Every parcel has its waybill: the goods leave. One ``issue`` per line (a line split over parcels is one
    reservation), one goods-issued record per order."""
    state.phase, state.shipped_at, state.closed_at = Phase.SHIPPED, now, now
    units: dict[str, PackedLine] = {}
    waybills: dict[str, list[str]] = {}
    for parcel in state.parcels:
        for ln in parcel.lines:
            held = units.get(ln.line_id)
            units[ln.line_id] = ln if held is None else msgspec.structs.replace(held, units=held.units + ln.units)
            waybills.setdefault(ln.order_id, [])
            if parcel.waybill not in waybills[ln.order_id]:
                waybills[ln.order_id].append(parcel.waybill or "")
    lines = sorted(units.values(), key=lambda ln: ln.line_id)
    issues = [
        Issue(
            command_id=issue_id(state.tenant, ln.line_id),
            tenant=state.tenant,
            sku=ln.sku,
            origin=stamp.origin,
            seq=stamp.seq(i),
            ts=now,
            order_id=ln.order_id,
            line_id=ln.line_id,
            shipment_id=state.shipment_id,
        )
        for i, ln in enumerate(lines)
    ]
    shipped = ShipmentShipped(
        tenant=state.tenant,
        shipment_id=state.shipment_id,
        warehouse=state.warehouse,
        shop_id=state.shop_id,
        order_ids=state.order_ids,
        parcels=[
            ShippedParcel(
                parcel_id=p.parcel_id,
                carrier=p.carrier,
                carrier_reason=p.carrier_reason,
                cost_fen=p.cost_fen,
                waybill=p.waybill or "",
                weight_g=p.weight_g,
                volume_cm3=p.volume_cm3,
                oversize=p.oversize,
                lines=p.lines,
            )
            for p in state.parcels
        ],
        ts=now,
    )
    goods = [
        GoodsIssued(
            issue_id=f"{state.shipment_id}.{order_id}",
            tenant=state.tenant,
            order_id=order_id,
            shipment_id=state.shipment_id,
            warehouse=state.warehouse,
            lines=[ln for ln in lines if ln.order_id == order_id],
            waybills=waybills[order_id],
            carriers={p.waybill or "": p.carrier for p in state.parcels if p.waybill in waybills[order_id]},
            ts=now,
        )
        for order_id in sorted(waybills)
    ]
    registered = [  # tracking learns which orders each waybill carries
        WaybillRegistered(
            tenant=state.tenant,
            carrier=p.carrier,
            waybill=p.waybill or "",
            shipment_id=state.shipment_id,
            parcel_id=p.parcel_id,
            order_ids=sorted({ln.order_id for ln in p.lines}),
            ts=now,
        )
        for p in state.parcels
    ]
    return Step(state, True, [shipped, *issues, *goods, *registered], note="shipped")
