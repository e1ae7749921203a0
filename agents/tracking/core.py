"""Carrier tracking (物流轨迹) per waybill, as a state machine that only moves forward (pure). Key: ``tenant:waybill``.

Carriers report scans late, twice and out of order. The state keeps the furthest progress reached —
created → picked up → in transit → out for delivery → delivered — and whether an exception (异常) is open on top
of it. An event is applied as:

* a **duplicate** (its carrier event id was seen): nothing;
* **after final**: the parcel was delivered or returned; the event is kept in the history, the state stays;
* **progress** beyond the current stage: the stage moves there; an open exception older than the scan is closed
  (the parcel moves again: ``recovered``); delivered is final;
* **late**: a stage at or before the current one (or an exception older than the last progress): history only;
* an **exception** newer than the last progress opens one; **returned to sender** is final from any stage before
  delivery.

So whatever order the events come in, the stage never goes backwards, and the same events in any order end in
the same stage (unless a carrier reports both delivered and returned: the first of the two stands). Time is the
carrier's ``occurred_at`` for ordering scans; ``now`` (the record's time) stamps the updates.

Shipping registers each waybill with the orders its parcel carries (``WaybillRegistered``); every visible change
is told to those orders (``OrderTracking``, to aftersales). Events that arrive before the registration (a carrier
faster than our log) are applied all the same, and the registration tells the orders where the parcel already is.
"""

from __future__ import annotations

import msgspec

from engine.runtime.kit import Step
from schemas.aftersales import OrderTracking, WaybillRegistered
from schemas.shipping import CarrierEvent, TrackingStatus, TrackingUpdate

PROGRESS = {
    TrackingStatus.CREATED: 0,
    TrackingStatus.PICKED_UP: 1,
    TrackingStatus.IN_TRANSIT: 2,
    TrackingStatus.OUT_FOR_DELIVERY: 3,
    TrackingStatus.DELIVERED: 4,
}
FINAL = frozenset({TrackingStatus.DELIVERED, TrackingStatus.RETURNED})
#: Carrier event ids remembered per waybill (for duplicates) and history entries kept.
RECENT_EVENTS = 64


class Tracking(msgspec.Struct):
    tenant: str
    carrier: str
    waybill: str
    status: TrackingStatus = TrackingStatus.CREATED
    progress_at: int = 0  # carrier time of the scan that set ``status``
    exception_at: int | None = None  # an exception open since (carrier time)
    history: list[tuple[int, str, str]] = msgspec.field(default_factory=list)  # (occurred_at, status, event id)
    seen: list[str] = msgspec.field(default_factory=list)
    shipment_id: str | None = None  # known once shipping registered the waybill
    order_ids: list[str] = msgspec.field(default_factory=list)
    registered_at: int | None = None
    closed_at: int | None = None  # record time it became final
    updated_at: int = 0  # record time of the last change: forgotten a retention after it

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def copy(self) -> Tracking:
        return msgspec.structs.replace(self, history=list(self.history), seen=list(self.seen))


def apply_event(state: Tracking | None, event: CarrierEvent, now: int) -> Step[Tracking]:
    """Apply one carrier event to its waybill's tracking. Pure: ``state`` is not modified.

    The step holds the waybill's tracking (``changed`` when it is a new one to write), the visible update and what
    each order of the waybill is told (``outputs``: the ``TrackingUpdate`` first), and a note: duplicate,
    after_final, late, progress, exception, recovered or final."""
    tracking, update, note = _apply(state, event, now)
    applied = Step(tracking, tracking is not state, note=note)
    if update is not None:
        if tracking.final and tracking.closed_at is None:
            tracking.closed_at = now
        applied.outputs = [update, *_tell_orders(tracking, update.occurred_at, now)]
    return applied


def register(state: Tracking | None, registered: WaybillRegistered, now: int) -> Step[Tracking]:
    """Shipping says which orders the waybill carries. If scans came first, the orders hear where it is (note:
    registered, or duplicate_registration)."""
    if state is not None and state.registered_at is not None:
        return Step(state, note="duplicate_registration")
    new = (state or Tracking(registered.tenant, registered.carrier, registered.waybill)).copy()
    new.shipment_id, new.order_ids, new.registered_at = registered.shipment_id, list(registered.order_ids), now
    applied = Step(new, True, note="registered")
    if new.status is not TrackingStatus.CREATED or new.exception_at is not None:
        applied.outputs = _tell_orders(new, max(new.progress_at, new.exception_at or 0), now)
    return applied


def _tell_orders(state: Tracking, occurred_at: int, now: int) -> list[OrderTracking]:
    return [
        OrderTracking(
            tenant=state.tenant,
            order_id=order_id,
            carrier=state.carrier,
            waybill=state.waybill,
            status=state.status,
            exception=state.exception_at is not None,
            final=state.final,
            occurred_at=occurred_at,
            ts=now,
        )
        for order_id in state.order_ids
    ]


def _apply(state: Tracking | None, event: CarrierEvent, now: int) -> tuple[Tracking, TrackingUpdate | None, str]:
    """(the tracking after the event, the visible update if the state the carrier shows changed, the note)"""
    base = state or Tracking(event.tenant, event.carrier, event.waybill)
    if event.event_id in base.seen:
        return base, None, "duplicate"
    new = base.copy()
    new.seen = [*new.seen, event.event_id][-RECENT_EVENTS:]
    new.history = sorted([*new.history, (event.occurred_at, event.status.value, event.event_id)])[-RECENT_EVENTS:]
    if new.final:
        return new, None, "after_final"
    if event.status is TrackingStatus.RETURNED:
        new.status, new.progress_at, new.exception_at = TrackingStatus.RETURNED, event.occurred_at, None
        return new, _update(new, event, "final", now), "final"
    if event.status is TrackingStatus.EXCEPTION:
        if new.exception_at is not None or event.occurred_at < new.progress_at:
            return new, None, "late"  # already open, or older than the last move
        new.exception_at = event.occurred_at
        return new, _update(new, event, "exception", now), "exception"
    rank, current = PROGRESS[event.status], PROGRESS[new.status]
    recovers = new.exception_at is not None and event.occurred_at >= new.exception_at
    if rank > current or (rank == current and recovers and rank > 0):
        new.status, new.progress_at = event.status, max(new.progress_at, event.occurred_at)
        if recovers:
            new.exception_at = None
        reason = "final" if new.final else "recovered" if recovers else "progress"
        return new, _update(new, event, reason, now), reason
    return new, None, "late"


def _update(state: Tracking, event: CarrierEvent, reason: str, now: int) -> TrackingUpdate:
    return TrackingUpdate(
        tenant=state.tenant,
        carrier=state.carrier,
        waybill=state.waybill,
        status=state.status,
        exception=state.exception_at is not None,
        final=state.final,
        occurred_at=event.occurred_at,
        reason=reason,  # type: ignore[arg-type]
        ts=now,
    )
