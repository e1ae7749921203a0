"""The fulfilment rules for one warehouse (履约), pure: ``(state, record) -> step``.

What the stage decides, given the state it read for one record (agents.fulfilment.agent reads and writes it):

* **accept** a parcel of an accepted order into its merge group (合单): its lines travel together, but a
  ship-alone SKU leaves in a parcel of its own; the carrier is the warehouse's default in the tenant's layout;
  each shipment the parcel opens is due a merge window later (at once with no window);
* **withdraw** a cancelled order (or some of its lines) from its merge group: it leaves while it waits, and is
  ``too_late`` once its shipment was released;
* **release** what waited in a merge group for its window (the shipments leave, oldest first), and say when
  the group is due again;
* **wave** the released shipments (波次): each joins its wave group; a group that reaches its count or cap, or
  whose oldest shipment waited long enough, leaves as a wave with its pick lists; a shipment asking for a SKU
  without a bin waits for a layout change;
* **confirm** a picker's report against its pick list (拣货确认): a report that does not match (an unknown or
  other warehouse's pick list, one confirmed already with other lines, an over-pick, a stop missing) is refused
  with its reasons and nothing is applied; one that matches is applied, a shipment whose last pick list it was
  is picked (to packing and waybills), and every short stop (缺货) sends the inventory a ``ShortPick`` and tells
  the order side (``LineShort``), which re-reserves the units elsewhere or ships partial.

State handed in is the stage's own copy for this record (decoded from its table): the functions change it in
place and return it in their step. They read no table, write none and send nothing; time is the record time
they are given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from agents.fulfilment import merge, picking, waves
from engine.runtime.kit import Step
from engine.runtime.stamp import Stamp
from schemas.deadletter import ReasonCode
from schemas.fulfilment import (
    DEFAULT_MERGE_WINDOW_S,
    Layout,
    LineShort,
    OrderWithdrawn,
    ParcelAccepted,
    PickConfirmation,
    PickedShipmentLine,
    PickedStop,
    PickList,
    PickOutcome,
    Shipment,
    ShipmentPicked,
    WithdrawalOutcome,
)
from schemas.inventory import ShortPick, short_id

log = logging.getLogger("oms.fulfilment")

UNASSIGNED_CARRIER = "unassigned"  # a warehouse with no layout yet: its waves wait for one


@dataclass
class WarehouseState:
    """Per warehouse: where the merge clock stands. Every parcel reads it, so it stays small: the wave groups
    (each at most a wave's worth of shipments) are a record of their own (``<tenant>:<warehouse>:book``), read only
    when shipments are released, and shipments that cannot be waved yet — no layout with this warehouse, or a SKU
    without a bin — are kept one key each in the ``blocked-shipments`` table, counted here."""

    tenant: str
    warehouse: str
    clock_s: int  # merge buckets up to this second have been released
    blocked: int = 0  # shipments waiting in ``blocked-shipments``
    blocked_version: int = 0  # the layout version they were last tried with (0: no layout had this warehouse)


@dataclass
class PickTask:
    """A released pick list until it is confirmed (and for the retention after, to answer a confirmation sent
    twice). What a short of a stop needs — its order and inbox key — is in the stop's shipment-picking record."""

    pick_list: PickList
    expires_at: int
    confirmed: PickConfirmation | None = None


@dataclass
class ShipmentPicking:
    """A released shipment until every pick list it is on is confirmed; then it is picked (拣货完成)."""

    shipment: Shipment
    lists: list[str]  # the pick lists it is on
    pending: list[str]  # those not confirmed yet
    picked: dict[str, int]  # line id -> units picked so far
    expires_at: int


# -- the layout's say ----------------------------------------------------------------------------------------
def merge_window_s(layout: Layout | None) -> int:
    return layout.merge_window_s if layout else DEFAULT_MERGE_WINDOW_S


def carriers(layout: Layout | None, warehouse: str) -> list[str]:
    """The warehouse's carriers as the layout names them now (default first): a fact for shipping."""
    spec = next((w for w in layout.warehouses if w.warehouse == warehouse), None) if layout else None
    return list(spec.carriers) if spec is not None else []


def wavable(layout: Layout | None, warehouse: str) -> bool:
    """Whether the layout has the warehouse; until one does, its shipments wait (blocked, version 0)."""
    return layout is not None and any(w.warehouse == warehouse for w in layout.warehouses)


def retry_blocked(state: WarehouseState, layout: Layout) -> bool:
    """Shipments that could not be waved are tried again under every new layout version."""
    return bool(state.blocked) and state.blocked_version != layout.version


def keep(group: merge.MergeGroup, now: int, retention_ms: int) -> int | None:
    """A group with nothing waiting is kept (to refuse late withdrawals) for the retention, then forgotten."""
    group.expires_at = None if group.waiting else now + retention_ms
    return group.expires_at


# -- merging -------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Accepted(Step[merge.MergeGroup]):
    due: list[int] = field(default_factory=list)  # when each shipment the parcel opened is due (record time)
    release_now: bool = False  # no merge window: what is due leaves at once


def accept(
    layout: Layout | None, group: merge.MergeGroup | None, parcel: ParcelAccepted, retention_ms: int
) -> Accepted:
    """A parcel joins its merge group (a new one if None); note ``merged`` when it joined a shipment that was
    already waiting."""
    spec = next((w for w in layout.warehouses if w.warehouse == parcel.warehouse), None) if layout else None
    carrier = spec.carriers[0] if spec is not None and spec.carriers else UNASSIGNED_CARRIER
    alone = set(layout.allocation.ship_alone_skus) if layout else set()
    together = tuple(ln for ln in parcel.lines if ln.sku not in alone)
    reason = "short_pick" if parcel.reallocated else None
    plans = [merge.ParcelPlan(parcel.warehouse, carrier, together, reason)] if together else []
    plans += [
        merge.ParcelPlan(parcel.warehouse, carrier, (ln,), "ship_alone", alone=True)
        for ln in parcel.lines
        if ln.sku in alone
    ]
    group = group or merge.MergeGroup(parcel.tenant, parcel.shop_id)
    group.reply_to = group.reply_to or parcel.reply_to
    group.receiver = group.receiver or parcel.receiver
    before = {w.shipment_id for w in group.waiting}
    merge.add_order(group, parcel.order_id, plans, parcel.ts, parcel.reallocated)
    window = merge_window_s(layout)
    opened = [w for w in group.waiting if w.shipment_id not in before]
    merged = any(w.shipment_id in before for w in group.waiting if parcel.order_id in w.order_ids)
    keep(group, parcel.ts, retention_ms)
    due = [w.opened_ts + window * 1000 for w in opened]
    return Accepted(group, True, note="merged" if merged else "", due=due, release_now=window == 0)


def withdraw(group: merge.MergeGroup | None, item: OrderWithdrawn, retention_ms: int) -> Step[merge.MergeGroup]:
    """A cancelled order leaves its merge group if it still waits; the order side hears the outcome."""
    outcome = "unknown" if group is None else merge.cancel_order(group, item.order_id, set(item.line_ids) or None)
    shipments = group.released.get(item.order_id, []) if group is not None else []
    if group is not None:
        keep(group, item.ts, retention_ms)
    told = WithdrawalOutcome(
        tenant=item.tenant,
        order_id=item.order_id,
        warehouse=item.warehouse,
        outcome="too_late" if outcome == "refused" else outcome,
        shipment_ids=list(shipments),
        ts=item.ts,
    )
    return Step(group, group is not None, [told], note=f"withdrawn_{outcome}")


@dataclass(slots=True)
class Released(Step[merge.MergeGroup]):
    shipments: list[Shipment] = field(default_factory=list)
    later: int | None = None  # when the group is due again (it opened another shipment since), record time


def release(group: merge.MergeGroup, now: int, window_s: int, retention_ms: int) -> Released:
    """The group's shipments whose merge window has passed at ``now`` leave."""
    shipments = merge.release_due(group, now, window_s)
    keep(group, now, retention_ms)
    return Released(group, True, shipments=shipments, later=merge.next_due(group, window_s))


# -- waves ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Waved(Step[waves.WaveBook]):
    blocked: list[waves.Pending] = field(default_factory=list)  # no bin for a SKU: they wait for a layout change
    tasks: list[PickTask] = field(default_factory=list)  # the released pick lists, until confirmed
    picking: list[ShipmentPicking] = field(default_factory=list)  # the waved shipments, until picked


def wave(book: waves.WaveBook, layout: Layout, waiting: list[waves.Pending], now: int, retention_ms: int) -> Waved:
    """Shipments join the warehouse's wave groups; the waves that leave (by count or cap as they join, then by
    time at ``now``) are the outputs, each followed by its pick lists."""
    known = {p.shipment.shipment_id: p.shipment for items in book.groups.values() for p in items}
    known.update((p.shipment.shipment_id, p.shipment) for p in waiting)
    step = Waved(book, True, counts={})
    counts = step.counts
    assert counts is not None
    released = []
    for pending in waiting:
        try:
            released += waves.add_shipment(book, layout, pending.shipment, pending.arrived_ts)
        except waves.LayoutError as exc:
            step.blocked.append(pending)
            counts["shipment_without_bin"] = counts.get("shipment_without_bin", 0) + 1
            log.warning("fulfilment: %s waits for a layout change: %s", pending.shipment.shipment_id, exc)
    released += waves.release_due(book, layout, now)
    for released_wave, pick_lists in released:
        step.outputs.append(released_wave)
        lists_of: dict[str, set[str]] = {}
        for pick_list in pick_lists:
            step.outputs.append(pick_list)
            step.tasks.append(PickTask(pick_list, expires_at=now + retention_ms))
            for stop in pick_list.stops:
                lists_of.setdefault(stop.shipment_id, set()).add(pick_list.pick_list_id)
        for shipment_id in released_wave.shipment_ids:
            lists = sorted(lists_of.get(shipment_id, ()))
            step.picking.append(ShipmentPicking(known[shipment_id], lists, lists, {}, now + retention_ms))
        counts["waves"] = counts.get("waves", 0) + 1
        counts["pick_lists"] = counts.get("pick_lists", 0) + len(pick_lists)
    return step


# -- picking -------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Confirmed(Step[PickTask]):
    #: shipment id -> its picking record after the confirmation (None: picked, forgotten), those it changed
    picking: dict[str, ShipmentPicking | None] = field(default_factory=dict)


def confirm(
    task: PickTask | None,
    item: PickConfirmation,
    shipments: Mapping[str, ShipmentPicking | None],
    layout: Layout | None,
    stamp: Stamp,
    now: int,
) -> Confirmed:
    """A picker's report for the pick list ``task`` (None: not one this stage released, or forgotten).
    ``shipments`` are the picking records of the shipments on its stops (None: forgotten after the retention);
    ``layout`` names the carriers a picked shipment may ship with; ``stamp`` numbers the short-pick commands. A
    picker's clock is not the log's: the report's ``ts`` is never used as time (``now``, the record's, is)."""
    if task is None or task.pick_list.warehouse != item.warehouse:
        detail = f"{item.pick_list_id} is not a pick list {item.warehouse} released (or it was forgotten)"
        return _refused(item, ReasonCode.UNKNOWN_PICK_LIST, [detail], now)
    if task.confirmed is not None:
        if task.confirmed.lines == item.lines:
            return Confirmed(task, note="duplicate_pick")  # the same report sent again: applied once
        return _refused(item, ReasonCode.PICK_REFUSED, [f"{item.pick_list_id} is confirmed already"], now)
    outcome = picking.confirm(task.pick_list, item)
    if not outcome.ok:
        return _refused(item, ReasonCode.PICK_REFUSED, outcome.errors, now)
    task.confirmed = item
    stops = [
        PickedStop(
            shipment_id=s.shipment_id,
            line_id=s.line_id,
            sku=s.sku,
            asked=s.quantity,
            picked=outcome.picked[(s.shipment_id, s.line_id)],
        )
        for s in task.pick_list.stops
    ]
    common = {"tenant": item.tenant, "warehouse": item.warehouse, "pick_list_id": item.pick_list_id}
    step = Confirmed(task, True, counts={"picks_confirmed": 1})
    step.outputs.append(PickOutcome(**common, status="confirmed", stops=stops, picker=item.picker, ts=now))
    found = _picked(step, item, stops, shipments, layout, now)
    for i, short in enumerate(outcome.shorts):
        shipment = found[short.shipment_id]
        order_id = next(ln.order_id for ln in shipment.lines if ln.line_id == short.line_id)
        step.outputs.append(
            ShortPick(
                command_id=short_id(item.tenant, short.line_id),
                tenant=item.tenant,
                sku=short.sku,
                origin=stamp.origin,
                seq=stamp.seq(i),
                ts=now,
                order_id=order_id,
                line_id=short.line_id,
                quantity=short.missing,
                pick_list_id=item.pick_list_id,
            )
        )
        if shipment.reply_to:
            step.outputs.append(
                LineShort(
                    **common,
                    order_id=order_id,
                    line_id=short.line_id,
                    sku=short.sku,
                    missing=short.missing,
                    picked=short.picked,
                    reply_to=shipment.reply_to,
                    ts=now,
                )
            )
        _count(step, "short_picks")
    return step


def _picked(
    step: Confirmed,
    item: PickConfirmation,
    stops: list[PickedStop],
    records: Mapping[str, ShipmentPicking | None],
    layout: Layout | None,
    now: int,
) -> dict[str, Shipment]:
    """A shipment whose last pick list this was is picked: what its carts hold goes to packing. Returns the
    shipments of the confirmed stops."""
    found: dict[str, Shipment] = {}
    by_shipment: dict[str, list[PickedStop]] = {}
    for stop in stops:
        by_shipment.setdefault(stop.shipment_id, []).append(stop)
    for shipment_id, picked in sorted(by_shipment.items()):
        record = records.get(shipment_id)
        if record is None:
            continue  # forgotten after the retention (a pick list confirmed as late as that)
        found[shipment_id] = record.shipment
        record.pending = [p for p in record.pending if p != item.pick_list_id]
        record.picked.update({stop.line_id: stop.picked for stop in picked})
        if record.pending:
            step.picking[shipment_id] = record
            continue
        shipment = record.shipment
        step.outputs.append(
            ShipmentPicked(
                tenant=shipment.tenant,
                shipment_id=shipment.shipment_id,
                warehouse=shipment.warehouse,
                carrier=shipment.carrier,
                order_ids=list(shipment.order_ids),
                lines=[
                    PickedShipmentLine(
                        order_id=ln.order_id,
                        line_id=ln.line_id,
                        sku=ln.sku,
                        asked=ln.quantity,
                        picked=record.picked.get(ln.line_id, 0),
                    )
                    for ln in shipment.lines
                ],
                pick_list_ids=record.lists,
                shop_id=shipment.shop_id,
                receiver=shipment.receiver,
                carriers=carriers(layout, shipment.warehouse),
                ts=now,
            )
        )
        step.picking[shipment_id] = None
        _count(step, "shipments_picked")
    return found


def _refused(item: PickConfirmation, reason: ReasonCode, errors: list[str], now: int) -> Confirmed:
    """Nothing is applied; the picker hears why (``pick-outcomes``) and the report is dead-lettered."""
    told = PickOutcome(
        tenant=item.tenant,
        warehouse=item.warehouse,
        pick_list_id=item.pick_list_id,
        status="refused",
        errors=[e[:2000] for e in errors[:50]],
        picker=item.picker,
        ts=now,
    )
    return Confirmed(None, outputs=[told], note="picks_refused", refused=(reason, "; ".join(errors)[:2000]))


def _count(step: Step, what: str) -> None:
    assert step.counts is not None
    step.counts[what] = step.counts.get(what, 0) + 1
