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

The decisions are agents.fulfilment.core (pure, over merge.py, waves.py and picking.py); this module reads the
state they need, writes what they return — including the index of merge groups by the second they are due, and
shipments that wait for a layout — and routes their outputs, on the stage kit (engine.runtime.kit).

Time is record time: a ``Tick`` written into each owned partition every ``OMS_FULFILMENT_TICK_S`` moves the
windows on when no order arrives, and because ticks are records, a replay releases the same shipments and
waves at the same points.
"""

from __future__ import annotations

import faust

from agents.fulfilment import core, merge, waves
from agents.fulfilment.core import PickTask, ShipmentPicking, WarehouseState
from engine.app import context
from engine.runtime.kit import Broadcast, KeyedLogic, Step
from engine.runtime.stage import Stage
from engine.runtime.stamp import Stamp
from engine.runtime.ticks import install_ticks
from engine.runtime.work import Input, PartitionWork
from engine.topics import Topics
from schemas import keys, wire
from schemas.fulfilment import (
    FulfilmentRecord,
    Layout,
    LayoutVersion,
    LineShort,
    OrderWithdrawn,
    ParcelAccepted,
    PickConfirmation,
    PickList,
    PickOutcome,
    Shipment,
    ShipmentPicked,
    Tick,
    Wave,
    WithdrawalOutcome,
)
from schemas.inventory import ShortPick

LAYOUTS, MERGES, DUE, WAREHOUSES = "fulfilment-layouts", "merges", "merge-due", "warehouses"
PICKS, PICKING, BLOCKED = "pick-tasks", "shipment-picking", "blocked-shipments"
__all__ = ["FulfilmentLogic", "PickTask", "ShipmentPicking", "WarehouseState", "install"]


def layout_key(tenant: str, partition: int) -> str:
    return f"{tenant}:layout@p{partition}"


#: The layout this partition has seen last (read through the kit: decoded once per version, a layout with every bin
#: is big).
LAYOUT = Broadcast(LayoutVersion, LAYOUTS, Layout, layout_key, "layout", value=lambda r: r.layout)


class FulfilmentLogic(KeyedLogic[merge.MergeGroup]):
    """Time is the parcels' and withdrawals' own ``ts`` and the ticks'; a pick confirmation does not move it.

    State, per warehouse (key ``tenant:warehouse``, the partition's list of them at ``p<n>``): its clock and wave
    book (``warehouses``), its merge groups (``merges``, ``<tenant>:<warehouse>:m:<merge key>``) indexed by the
    second they are due (``merge-due``), its released pick lists (``pick-tasks``) and shipments being picked
    (``shipment-picking``), and shipments that wait for a layout change (``blocked-shipments``)."""

    name = "fulfilment"
    tables = (LAYOUTS, MERGES, DUE, WAREHOUSES, PICKS, PICKING, BLOCKED)
    record_type = FulfilmentRecord
    broadcasts = (LAYOUT,)

    def __init__(self, topics: Topics, partitions: int, retention_ms: int, inbox_epoch: str = "") -> None:
        self.inputs = (topics.fulfilment_inbox,)
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.origin_prefix = f"fulfilment.{inbox_epoch or 'x'}"  # the idempotency origin of its stock commands
        self.routes = {
            Shipment: (topics.shipments,),
            Wave: (topics.waves,),
            PickList: (topics.pick_lists,),
            WithdrawalOutcome: (topics.withdrawals,),
            PickOutcome: (topics.pick_outcomes,),
            ShipmentPicked: (topics.picked_shipments, topics.shipping_inbox),  # to packing and waybills
            ShortPick: (topics.inventory_commands,),
            LineShort: (topics.order_inbox,),
        }

    def event_time(self, item: FulfilmentRecord, record: Input) -> int | None:
        # A picker's clock is not the log's: its ``ts`` is reported, never used as time (the record's is).
        return None if isinstance(item, PickConfirmation) else item.ts

    def on_tick(self, work: PartitionWork, record: Input, tick: Tick) -> None:
        for key in self._warehouses(work, record.partition):
            self._release(work, record.partition, key, tick.ts)

    def handle(self, work: PartitionWork, record: Input, item: FulfilmentRecord) -> Step | None:
        if isinstance(item, PickConfirmation):
            return self._confirm(work, record, item)
        if isinstance(item, ParcelAccepted):
            return self._accept(work, record.partition, item, work.now)
        assert isinstance(item, OrderWithdrawn)
        group_key = self._merge_key(item.tenant, item.warehouse, item.merge_key)
        step = core.withdraw(work.get_as(MERGES, group_key, merge.MergeGroup), item, self.retention_ms)
        if step.changed and step.state is not None:
            work.put(MERGES, group_key, step.state, expires_at=step.state.expires_at)
        return step

    def layout(self, work: PartitionWork, tenant: str, partition: int) -> Layout | None:
        return self.config(work, LAYOUT, tenant, partition)

    # -- parcels ---------------------------------------------------------------------------------------------
    def _accept(self, work: PartitionWork, p: int, parcel: ParcelAccepted, now: int) -> Step:
        layout = self.layout(work, parcel.tenant, p)
        state = self._warehouse(work, p, parcel.tenant, parcel.warehouse, parcel.ts)
        group_key = self._merge_key(parcel.tenant, parcel.warehouse, parcel.merge_key)
        step = core.accept(layout, work.get_as(MERGES, group_key, merge.MergeGroup), parcel, self.retention_ms)
        for due_ms in step.due:
            self._due(work, state, due_ms, parcel.merge_key)
        assert step.state is not None
        work.put(MERGES, group_key, step.state, expires_at=step.state.expires_at)
        if step.release_now:
            self._release(work, p, keys.warehouse(parcel.tenant, parcel.warehouse), now)
        return step

    # -- time: merge windows and wave timers ----------------------------------------------------------------
    def _release(self, work: PartitionWork, p: int, warehouse_key: str, now: int) -> None:
        """Every merge group due by ``now`` (by the ``merge-due`` index, second by second since the warehouse's
        clock) releases what waited; the shipments go to the waves."""
        tenant, warehouse = warehouse_key.split(":", 1)
        state = work.get_as(WAREHOUSES, warehouse_key, WarehouseState)
        if state is None:
            return
        layout = self.layout(work, tenant, p)
        window = core.merge_window_s(layout)
        released: list[Shipment] = []
        for second in range(state.clock_s + 1, now // 1000 + 1):
            due_key = f"{warehouse_key}:due:{second}"
            for merge_key in work.get_as(DUE, due_key, list[str]) or []:
                group_key = self._merge_key(tenant, warehouse, merge_key)
                group = work.get_as(MERGES, group_key, merge.MergeGroup)
                if group is None:
                    continue
                step = core.release(group, now, window, self.retention_ms)
                released += step.shipments
                work.put(MERGES, group_key, group, expires_at=group.expires_at)
                if step.later is not None:  # the group opened another shipment since: it is due later
                    state.clock_s = second
                    self._due(work, state, step.later, merge_key)
            work.delete(DUE, due_key)
        state.clock_s = max(state.clock_s, now // 1000)
        arrivals = []
        for shipment in sorted(released, key=lambda s: s.shipment_id):
            self.emit(work, shipment)
            arrivals.append(waves.Pending(shipment, now))
        work.note("shipments", len(released))
        self._wave(work, state, layout, now, arrivals)
        self._put_warehouse(work, state)

    def _wave(
        self, work: PartitionWork, state: WarehouseState, layout: Layout | None, now: int, arrivals: list[waves.Pending]
    ) -> None:
        if layout is None or not core.wavable(layout, state.warehouse):
            for pending in arrivals:  # they wait for a layout that has their warehouse
                self._block(work, state, pending, 0)
            return
        book_key = self._book_key(state)
        book = work.get_as(WAREHOUSES, book_key, waves.WaveBook)
        retry = core.retry_blocked(state, layout)
        if not arrivals and not retry and (book is None or not book.groups):
            return  # nothing waits to be waved
        waiting = [*self._unblock(work, state), *arrivals] if retry else arrivals  # a new layout: try them again
        step = core.wave(book or waves.WaveBook(state.tenant, state.warehouse), layout, waiting, now, self.retention_ms)
        for pending in step.blocked:
            self._block(work, state, pending, layout.version)
        work.put(WAREHOUSES, book_key, wire.encode(step.state))
        for task in step.tasks:
            work.put(PICKS, task.pick_list.key, wire.encode(task), expires_at=task.expires_at)
        for picking in step.picking:
            key = keys.shipment(state.tenant, picking.shipment.shipment_id)
            work.put(PICKING, key, wire.encode(picking), expires_at=picking.expires_at)
        self.send(work, step)

    # -- picking ------------------------------------------------------------------------------------------
    def _confirm(self, work: PartitionWork, record: Input, item: PickConfirmation) -> Step:
        key, p = keys.pick_list(item.tenant, item.pick_list_id), record.partition
        task = work.get_as(PICKS, key, PickTask)
        shipments = {}
        if task is not None:  # the picking records of the shipments on its stops
            for shipment_id in sorted({s.shipment_id for s in task.pick_list.stops}):
                shipment_key = keys.shipment(item.tenant, shipment_id)
                shipments[shipment_id] = work.get_as(PICKING, shipment_key, ShipmentPicking)
        layout = self.layout(work, item.tenant, p)
        stamp = Stamp(f"{self.origin_prefix}.p{p}", record.offset)
        step = core.confirm(task, item, shipments, layout, stamp, work.now)
        if step.changed and step.state is not None:
            work.put(PICKS, key, wire.encode(step.state), expires_at=step.state.expires_at)
        for shipment_id, picking in step.picking.items():
            shipment_key = keys.shipment(item.tenant, shipment_id)
            if picking is None:
                work.delete(PICKING, shipment_key)
            else:
                work.put(PICKING, shipment_key, wire.encode(picking), expires_at=picking.expires_at)
        return step

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
