"""The fulfilment stage (履约): merge, waves and pick lists, one writer per warehouse.

Reads the fulfilment inbox (key ``tenant:warehouse``): the parcels of accepted orders (an order whose lines were
reserved in two warehouses sends two — that is the split, 拆单), withdrawals of cancelled orders, pick
confirmations, layout versions (one copy per partition) and ticks. Parcels wait in their merge group (same
tenant, shop, buyer, receiver, warehouse and carrier) for the layout's merge window, then leave as one shipment;
shipments wait in wave groups until a count, a cap or a timer releases a wave with its pick lists
(agents.fulfilment.waves).

A released pick list is kept until it is confirmed (拣货确认). A confirmation that matches it is applied: every
short stop (缺货) sends the inventory a ``ShortPick`` for the missing units (out of the reservation and the count
at once) and tells the order side (``LineShort``), which re-reserves them elsewhere or ships partial. One that
does not match (an over-pick, a stop missing, an unknown pick list) is refused and dead-lettered: nothing is
applied.

Time is record time: a ``Tick`` written into each owned partition every ``OMS_FULFILMENT_TICK_S`` moves the
windows on when no order arrives, and because ticks are records, a replay releases the same shipments and
waves at the same points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faust

from agents.fulfilment import merge, picking, waves
from engine.app import context
from engine.runtime.stage import Stage
from engine.runtime.stamp import Stamp
from engine.runtime.ticks import install_ticks
from engine.runtime.work import Input, Logic, PartitionWork
from engine.topics import Topics
from schemas import keys, wire
from schemas.deadletter import ReasonCode
from schemas.fulfilment import (
    DEFAULT_MERGE_WINDOW_S,
    FulfilmentRecord,
    Layout,
    LayoutVersion,
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
    Tick,
    WithdrawalOutcome,
)
from schemas.inventory import ShortPick, short_id

log = logging.getLogger("oms.fulfilment")

LAYOUTS, MERGES, DUE, WAREHOUSES = "fulfilment-layouts", "merges", "merge-due", "warehouses"
PICKS, PICKING, BLOCKED = "pick-tasks", "shipment-picking", "blocked-shipments"
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


def layout_key(tenant: str, partition: int) -> str:
    return f"{tenant}:layout@p{partition}"


class FulfilmentLogic(Logic):
    name = "fulfilment"
    tables = (LAYOUTS, MERGES, DUE, WAREHOUSES, PICKS, PICKING, BLOCKED)

    def __init__(self, topics: Topics, partitions: int, retention_ms: int, inbox_epoch: str = "") -> None:
        self.inputs = (topics.fulfilment_inbox,)
        self.topics = topics
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.origin_prefix = f"fulfilment.{inbox_epoch or 'x'}"  # the idempotency origin of its stock commands
        self._layouts: dict[str, tuple[bytes, Layout]] = {}  # decoded layouts by their stored bytes

    def layout(self, work: PartitionWork, tenant: str, partition: int) -> Layout | None:
        """The layout this partition has seen last, decoded once per version (a layout with every bin is big)."""
        key = layout_key(tenant, partition)
        raw = work.get(LAYOUTS, key)
        if raw is None:
            return None
        cached = self._layouts.get(key)
        if cached is None or cached[0] != raw:
            cached = self._layouts[key] = (raw, wire.decode_state(raw, Layout))
        return cached[1]

    def process(self, work: PartitionWork, record: Input) -> None:
        try:
            item = wire.decode(record.value, FulfilmentRecord)
        except wire.WireError as exc:
            work.dead_letter(record, exc.reason, exc.detail)
            return
        p = record.partition
        now = record.timestamp_ms
        if isinstance(item, LayoutVersion):
            current = self.layout(work, item.layout.tenant, p)
            key, version = layout_key(item.layout.tenant, p), current.version if current else None
            work.put_if_newer(LAYOUTS, key, item.layout, item.layout.version, version, "layout")
            return
        if isinstance(item, Tick):
            work.advance(item.ts)
            for key in self._warehouses(work, p):
                self._release(work, p, key, item.ts)
            return
        if work.misrouted(record, item.key, self.partitions, item.tenant):
            return
        if isinstance(item, PickConfirmation):
            # A picker's clock is not the log's: its ``ts`` is reported, never used as time (the record's is).
            self._confirm(work, record, item, Stamp(f"{self.origin_prefix}.p{p}", record.offset))
            return
        work.advance(item.ts)
        if isinstance(item, ParcelAccepted):
            self._accept(work, p, item, now)
        else:
            assert isinstance(item, OrderWithdrawn)
            self._withdraw(work, item)

    # -- parcels and withdrawals ----------------------------------------------------------------------------
    def _accept(self, work: PartitionWork, p: int, parcel: ParcelAccepted, now: int) -> None:
        layout = self.layout(work, parcel.tenant, p)
        state = self._warehouse(work, p, parcel.tenant, parcel.warehouse, parcel.ts)
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
        group_key = self._merge_key(parcel.tenant, parcel.warehouse, parcel.merge_key)
        group = work.get_as(MERGES, group_key, merge.MergeGroup) or merge.MergeGroup(parcel.tenant, parcel.shop_id)
        group.reply_to = group.reply_to or parcel.reply_to
        group.receiver = group.receiver or parcel.receiver
        before = {w.shipment_id for w in group.waiting}
        merge.add_order(group, parcel.order_id, plans, parcel.ts, parcel.reallocated)
        window = layout.merge_window_s if layout else DEFAULT_MERGE_WINDOW_S
        opened = [w for w in group.waiting if w.shipment_id not in before]
        if any(w.shipment_id in before for w in group.waiting if parcel.order_id in w.order_ids):
            work.note("merged")
        for waiting in opened:
            self._due(work, state, waiting.opened_ts + window * 1000, parcel.merge_key)
        work.put(MERGES, group_key, group, expires_at=self._expiry(group, parcel.ts))
        if window == 0:
            self._release(work, p, keys.warehouse(parcel.tenant, parcel.warehouse), now)

    def _withdraw(self, work: PartitionWork, item: OrderWithdrawn) -> None:
        group_key = self._merge_key(item.tenant, item.warehouse, item.merge_key)
        group = work.get_as(MERGES, group_key, merge.MergeGroup)
        outcome = "unknown" if group is None else merge.cancel_order(group, item.order_id, set(item.line_ids) or None)
        shipments = group.released.get(item.order_id, []) if group is not None else []
        if group is not None:
            work.put(MERGES, group_key, group, expires_at=self._expiry(group, item.ts))
        work.note(f"withdrawn_{outcome}")
        work.emit(
            self.topics.withdrawals,
            keys.order(item.tenant, item.order_id),
            WithdrawalOutcome(
                tenant=item.tenant,
                order_id=item.order_id,
                warehouse=item.warehouse,
                outcome="too_late" if outcome == "refused" else outcome,
                shipment_ids=list(shipments),
                ts=item.ts,
            ),
        )

    # -- time: merge windows and wave timers ----------------------------------------------------------------
    def _release(self, work: PartitionWork, p: int, warehouse_key: str, now: int) -> None:
        tenant, warehouse = warehouse_key.split(":", 1)
        state = work.get_as(WAREHOUSES, warehouse_key, WarehouseState)
        if state is None:
            return
        layout = self.layout(work, tenant, p)
        window = layout.merge_window_s if layout else DEFAULT_MERGE_WINDOW_S
        released: list[Shipment] = []
        for second in range(state.clock_s + 1, now // 1000 + 1):
            due_key = f"{warehouse_key}:due:{second}"
            for merge_key in work.get_as(DUE, due_key, list[str]) or []:
                group_key = self._merge_key(tenant, warehouse, merge_key)
                group = work.get_as(MERGES, group_key, merge.MergeGroup)
                if group is None:
                    continue
                released += merge.release_due(group, now, window)
                work.put(MERGES, group_key, group, expires_at=self._expiry(group, now))
                later = merge.next_due(group, window)
                if later is not None:  # the group opened another shipment since: it is due later
                    state.clock_s = second
                    self._due(work, state, later, merge_key)
            work.delete(DUE, due_key)
        state.clock_s = max(state.clock_s, now // 1000)
        arrivals = []
        for shipment in sorted(released, key=lambda s: s.shipment_id):
            work.emit(self.topics.shipments, shipment.key, shipment)
            arrivals.append(waves.Pending(shipment, now))
        work.note("shipments", len(released))
        self._wave(work, state, layout, now, arrivals)
        self._put_warehouse(work, state)

    def _wave(
        self, work: PartitionWork, state: WarehouseState, layout: Layout | None, now: int, arrivals: list[waves.Pending]
    ) -> None:
        if layout is None or not any(w.warehouse == state.warehouse for w in layout.warehouses):
            for pending in arrivals:  # they wait for a layout that has their warehouse
                self._block(work, state, pending, 0)
            return
        book_key = self._book_key(state)
        book = work.get_as(WAREHOUSES, book_key, waves.WaveBook)
        retry = bool(state.blocked) and state.blocked_version != layout.version
        if not arrivals and not retry and (book is None or not book.groups):
            return  # nothing waits to be waved
        if book is None:
            book = waves.WaveBook(state.tenant, state.warehouse)
        waiting = arrivals
        if retry:
            waiting = self._unblock(work, state) + arrivals  # a new layout: try every waiting shipment again
        known = {p.shipment.shipment_id: p.shipment for items in book.groups.values() for p in items}
        known.update((p.shipment.shipment_id, p.shipment) for p in waiting)
        released = []
        for pending in waiting:
            try:
                released += waves.add_shipment(book, layout, pending.shipment, pending.arrived_ts)
            except waves.LayoutError as exc:
                self._block(work, state, pending, layout.version)
                work.note("shipment_without_bin")
                log.warning("fulfilment: %s waits for a layout change: %s", pending.shipment.shipment_id, exc)
        released += waves.release_due(book, layout, now)
        work.put(WAREHOUSES, book_key, wire.encode(book))
        for wave, pick_lists in released:
            work.emit(self.topics.waves, wave.key, wave)
            lists_of: dict[str, set[str]] = {}
            for pick_list in pick_lists:
                work.emit(self.topics.pick_lists, pick_list.key, pick_list)
                task = PickTask(pick_list, expires_at=now + self.retention_ms)
                work.put(PICKS, pick_list.key, wire.encode(task), expires_at=task.expires_at)
                for stop in pick_list.stops:
                    lists_of.setdefault(stop.shipment_id, set()).add(pick_list.pick_list_id)
            for shipment_id in wave.shipment_ids:
                lists = sorted(lists_of.get(shipment_id, ()))
                picking = ShipmentPicking(known[shipment_id], lists, lists, {}, now + self.retention_ms)
                key = keys.shipment(state.tenant, shipment_id)
                work.put(PICKING, key, wire.encode(picking), expires_at=picking.expires_at)
            work.note("waves")
            work.note("pick_lists", len(pick_lists))

    # -- picking ------------------------------------------------------------------------------------------
    def _confirm(self, work: PartitionWork, record: Input, item: PickConfirmation, stamp: Stamp) -> None:
        key, now = keys.pick_list(item.tenant, item.pick_list_id), record.timestamp_ms
        task = work.get_as(PICKS, key, PickTask)
        if task is None or task.pick_list.warehouse != item.warehouse:
            detail = f"{item.pick_list_id} is not a pick list {item.warehouse} released (or it was forgotten)"
            self._refuse(work, record, item, ReasonCode.UNKNOWN_PICK_LIST, [detail])
            return
        if task.confirmed is not None:
            if task.confirmed.lines == item.lines:
                work.note("duplicate_pick")  # the same report sent again: applied once
            else:
                self._refuse(work, record, item, ReasonCode.PICK_REFUSED, [f"{item.pick_list_id} is confirmed already"])
            return
        outcome = picking.confirm(task.pick_list, item)
        if not outcome.ok:
            self._refuse(work, record, item, ReasonCode.PICK_REFUSED, outcome.errors)
            return
        task.confirmed = item
        work.put(PICKS, key, wire.encode(task), expires_at=task.expires_at)
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
        work.emit(
            self.topics.pick_outcomes,
            key,
            PickOutcome(**common, status="confirmed", stops=stops, picker=item.picker, ts=now),
        )
        work.note("picks_confirmed")
        shipments = self._shipments_picked(work, item, stops, now, record.partition)
        for i, short in enumerate(outcome.shorts):
            shipment = shipments[short.shipment_id]
            order_id = next(ln.order_id for ln in shipment.lines if ln.line_id == short.line_id)
            command = ShortPick(
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
            work.emit(self.topics.inventory_commands, command.key, command)
            reply_to = shipment.reply_to
            if reply_to:
                report = LineShort(
                    **common,
                    order_id=order_id,
                    line_id=short.line_id,
                    sku=short.sku,
                    missing=short.missing,
                    picked=short.picked,
                    reply_to=reply_to,
                    ts=now,
                )
                work.emit(self.topics.order_inbox, report.key, report)
            work.note("short_picks")

    def _carriers(self, work: PartitionWork, tenant: str, warehouse: str, partition: int) -> list[str]:
        """The warehouse's carriers as the layout names them now (default first): a fact for shipping."""
        layout = self.layout(work, tenant, partition)
        spec = next((w for w in layout.warehouses if w.warehouse == warehouse), None) if layout else None
        return list(spec.carriers) if spec is not None else []

    def _shipments_picked(
        self, work: PartitionWork, item: PickConfirmation, stops: list[PickedStop], now: int, partition: int
    ) -> dict[str, Shipment]:
        """A shipment whose last pick list this was is picked: what its carts hold goes to packing. Returns the
        shipments of the confirmed stops."""
        found: dict[str, Shipment] = {}
        by_shipment: dict[str, list[PickedStop]] = {}
        for stop in stops:
            by_shipment.setdefault(stop.shipment_id, []).append(stop)
        for shipment_id, picked in sorted(by_shipment.items()):
            key = keys.shipment(item.tenant, shipment_id)
            record = work.get_as(PICKING, key, ShipmentPicking)
            if record is None:
                continue  # forgotten after the retention (a pick list confirmed as late as that)
            found[shipment_id] = record.shipment
            record.pending = [p for p in record.pending if p != item.pick_list_id]
            record.picked.update({stop.line_id: stop.picked for stop in picked})
            if record.pending:
                work.put(PICKING, key, wire.encode(record), expires_at=record.expires_at)
                continue
            shipment = record.shipment
            done = ShipmentPicked(
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
                carriers=self._carriers(work, shipment.tenant, shipment.warehouse, partition),
                ts=now,
            )
            work.emit(self.topics.picked_shipments, done.key, done)
            work.emit(self.topics.shipping_inbox, done.key, done)  # to packing and waybills
            work.delete(PICKING, key)
            work.note("shipments_picked")
        return found

    def _refuse(
        self, work: PartitionWork, record: Input, item: PickConfirmation, reason: ReasonCode, errors: list[str]
    ) -> None:
        work.note("picks_refused")
        work.dead_letter(record, reason, "; ".join(errors)[:2000], item.tenant)
        now = record.timestamp_ms
        refused = PickOutcome(
            tenant=item.tenant,
            warehouse=item.warehouse,
            pick_list_id=item.pick_list_id,
            status="refused",
            errors=[e[:2000] for e in errors[:50]],
            picker=item.picker,
            ts=now,
        )
        work.emit(self.topics.pick_outcomes, refused.key, refused)

    # -- shipments that cannot be waved yet -----------------------------------------------------------------
    @staticmethod
    def _blocked_prefix(state: WarehouseState) -> str:
        return f"{state.tenant}:{state.warehouse}:b:"

    def _block(self, work: PartitionWork, state: WarehouseState, pending: waves.Pending, version: int) -> None:
        work.put(BLOCKED, self._blocked_prefix(state) + pending.shipment.shipment_id, wire.encode(pending))
        state.blocked += 1
        state.blocked_version = version

    def _unblock(self, work: PartitionWork, state: WarehouseState) -> list[waves.Pending]:
        """Every shipment of this warehouse waiting in ``blocked-shipments``, oldest first, taken out of it."""
        found = []
        for key, value in work.scan(BLOCKED, self._blocked_prefix(state)):
            found.append(wire.decode_state(value, waves.Pending))
            work.delete(BLOCKED, key)
        state.blocked = 0
        return sorted(found, key=lambda p: (p.arrived_ts, p.shipment.shipment_id))

    # -- state helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _merge_key(tenant: str, warehouse: str, merge_key: str) -> str:
        return f"{tenant}:{warehouse}:m:{merge_key}"

    def _expiry(self, group: merge.MergeGroup, now: int) -> int | None:
        """A group with nothing waiting is kept (to refuse late withdrawals) for the retention, then forgotten."""
        group.expires_at = None if group.waiting else now + self.retention_ms
        return group.expires_at

    def _due(self, work: PartitionWork, state: WarehouseState, due_ms: int, merge_key: str) -> None:
        """Index a merge group under the first whole second at or after ``due_ms`` that the warehouse clock has
        not passed: the tick that reaches that second has a time at or after ``due_ms``."""
        second = max(-(-due_ms // 1000), state.clock_s + 1)
        due_key = f"{state.tenant}:{state.warehouse}:due:{second}"
        due = work.get_as(DUE, due_key, list[str]) or []
        if merge_key not in due:
            work.put(DUE, due_key, wire.encode([*due, merge_key]))

    def _warehouses(self, work: PartitionWork, p: int) -> list[str]:
        return work.get_as(WAREHOUSES, f"p{p}", list[str]) or []

    def _warehouse(self, work: PartitionWork, p: int, tenant: str, warehouse: str, ts: int) -> WarehouseState:
        key = keys.warehouse(tenant, warehouse)
        state = work.get_as(WAREHOUSES, key, WarehouseState)
        if state is None:
            state = WarehouseState(tenant, warehouse, ts // 1000 - 1)
            known = self._warehouses(work, p)
            work.put(WAREHOUSES, f"p{p}", wire.encode(sorted({*known, key})))
            self._put_warehouse(work, state)
        return state

    @staticmethod
    def _book_key(state: WarehouseState) -> str:
        return f"{state.tenant}:{state.warehouse}:book"

    def _put_warehouse(self, work: PartitionWork, state: WarehouseState) -> None:
        work.put(WAREHOUSES, keys.warehouse(state.tenant, state.warehouse), wire.encode(state))

    def expires_at(self, table: str, value: bytes) -> int | None:
        if table == MERGES:
            return wire.decode_state(value, merge.MergeGroup).expires_at
        if table == PICKS:
            return wire.decode_state(value, PickTask).expires_at
        if table == PICKING:
            return wire.decode_state(value, ShipmentPicking).expires_at
        return None


def install(app: faust.App) -> Stage:
    ctx = context(app)
    settings = ctx.settings
    logic = FulfilmentLogic(
        ctx.topics,
        settings.partitions,
        settings.order_retention_s * 1000,
        ctx.topic_epochs.get(ctx.topics.fulfilment_inbox, ""),
    )
    stage = Stage(app, logic)
    # Record time for the partitions this worker writes: merge windows and wave timers move on it.
    install_ticks(app, stage, ctx.topics.fulfilment_inbox, settings.fulfilment_tick_s, settings.bootstrap)
    return stage
