"""The order stage: review (审单) and the reservation saga for every order, one writer per buyer.

Reads the order inbox (key: the buyer key ``tenant:shop:b-<buyer>``) — channel snapshots, operator actions,
the inventory's line results, rule and layout versions, fulfilment's short picks — and writes review decisions,
order decisions, cancellations, short-pick outcomes and inventory commands. The holds list in Redis is a read
model written after each commit and rebuilt from the ``orders`` table when needed, only ever if newer: each change
carries the offset of the inbox record that made it, a rebuild the partition's stored position minus one
(engine.readmodels.holds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

import faust

from agents.orders.core import HoldEntry, OrderRules, Stamp, Step, hold_summary
from agents.orders.state import BuyerState, OrderState, Phase, RulesState
from engine.app import context
from engine.readmodels.holds import Change, Held, HoldsModel
from engine.readmodels.sync import ReadModelSync
from engine.runtime.kit import Broadcast, KeyedLogic
from engine.runtime.stage import Stage
from engine.runtime.work import Input, PartitionWork
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import OrderOpened, PickupReady, ReturnRequested
from schemas.fulfilment import (
    Layout,
    LayoutVersion,
    LineShort,
    OrderAllocation,
    OrderWithdrawn,
    ParcelAccepted,
    ShortPickOutcome,
)
from schemas.inbox import InboxRecord, OperatorAction, OrderSnapshot, RulesVersion
from schemas.inventory import Quote, Release, Reserve
from schemas.review import OrderCancellation, ReviewDecision
from schemas.saga import LineResult, OrderDecision, StockQuote

log = logging.getLogger("oms.orders")

ORDERS, BUYERS, RULES, LAYOUTS = "orders", "buyers", "rules", "order-layouts"
#: A channel's clock may run ahead of the log's (the record's time) by this much and move the partition's event
#: time; beyond it, one order stamped far in the future would make every later order look forgotten.
MAX_CHANNEL_LEAD_MS = 86_400_000


class SagaProgress(NamedTuple):
    """After a commit: whether an order's saga is (still) waiting for stock answers, for the stuck-saga report."""

    key: str
    waiting: bool


def rules_key(tenant: str, partition: int) -> str:
    """Every partition keeps its own copy: it must see each version at its own point of its own log."""
    return f"{tenant}:rules@p{partition}"


def layout_key(tenant: str, partition: int) -> str:
    return f"{tenant}:layout@p{partition}"


RULES_COPY = Broadcast(
    RulesVersion,
    RULES,
    RulesState,
    rules_key,
    "rules",
    value=lambda r: RulesState(rules=r.rules),
    tenant=lambda s: s.rules.tenant,
    version=lambda s: s.rules.version,
)
#: the warehouse layout that ranks reservations
LAYOUT_COPY = Broadcast(LayoutVersion, LAYOUTS, Layout, layout_key, "layout", value=lambda r: r.layout)


class OrderLogic(KeyedLogic[OrderState]):
    """Time is the channels' modification time, from snapshots only (capped: ``MAX_CHANNEL_LEAD_MS``)."""

    name = "orders"
    tables = (ORDERS, BUYERS, RULES, LAYOUTS)
    record_type = InboxRecord
    broadcasts = (RULES_COPY, LAYOUT_COPY)

    def __init__(self, topics: Topics, partitions: int, retention_ms: int, inbox_epoch: str) -> None:
        self.inputs = (topics.order_inbox,)
        self.topics = topics
        self.partitions = partitions
        self.rules = OrderRules(retention_ms)
        self.origin_prefix = f"orders.{inbox_epoch or 'x'}"
        self.routes = {
            ReviewDecision: (topics.review_decisions,),
            OrderDecision: (topics.order_decisions,),
            OrderCancellation: (topics.order_cancellations,),
            Reserve: (topics.inventory_commands,),
            Release: (topics.inventory_commands,),
            Quote: (topics.inventory_commands,),
            ParcelAccepted: (topics.fulfilment_inbox,),
            OrderWithdrawn: (topics.fulfilment_inbox,),
            ShortPickOutcome: (topics.short_picks,),
            OrderAllocation: (topics.allocations,),
            # approvals also go to finance: what was paid, per line
            OrderOpened: (topics.aftersales_inbox, topics.ledger_inbox),
            PickupReady: (topics.aftersales_inbox,),
            ReturnRequested: (topics.aftersales_inbox,),
        }
        self.holds: HoldsModel | None = None
        self.sync: ReadModelSync | None = None
        self.stage: Stage | None = None
        self._pending: set[asyncio.Future] = set()
        #: sagas waiting for stock answers, seen by this worker: key -> (partition, since when, monotonic)
        self.waiting: dict[str, tuple[int, float]] = {}

    def stuck(self, older_than_s: float) -> list[str]:
        """Sagas waiting longer than ``older_than_s`` (wall clock; reported, never decided)."""
        now = time.monotonic()
        owned = self.stage.owned() if self.stage is not None else set()
        for key in [k for k, (p, _) in self.waiting.items() if p not in owned]:
            self.waiting.pop(key)
        return sorted(k for k, (_, since) in self.waiting.items() if now - since >= older_than_s)

    def event_time(self, item: InboxRecord, record: Input) -> int | None:
        if not isinstance(item, OrderSnapshot):
            return None
        order = item.order
        return min(max(order.version, order.created_at), record.timestamp_ms + MAX_CHANNEL_LEAD_MS)

    def tenant_of(self, item: InboxRecord) -> str | None:
        # A refused snapshot names its order's tenant; a misrouted one (``route``) has always named none.
        return item.order.tenant if isinstance(item, OrderSnapshot) else getattr(item, "tenant", None)

    def handle(self, work: PartitionWork, record: Input, item: InboxRecord) -> Step:
        p = record.partition
        stamp = Stamp(f"{self.origin_prefix}.p{p}", record.offset)
        now = record.timestamp_ms
        if isinstance(item, OrderSnapshot):
            order = item.order
            state = work.get_as(ORDERS, order.key, OrderState)
            buyer = work.get_as(BUYERS, item.key, BuyerState)
            rules = self.config(work, RULES_COPY, order.tenant, p)
            layout = self.config(work, LAYOUT_COPY, order.tenant, p)
            step = self.rules.on_snapshot(
                state, buyer, rules.rules if rules else None, order, stamp, now, work.watermark, layout
            )
            if step.buyer is not None:
                work.put(BUYERS, item.key, step.buyer, expires_at=step.buyer.expires_at)
        elif isinstance(item, LineResult):
            state = work.get_as(ORDERS, f"{item.tenant}:{item.order_id}", OrderState)
            step = self.rules.on_result(state, item, stamp, now)
        else:
            state = work.get_as(ORDERS, f"{item.tenant}:{item.order_id}", OrderState)
            layout = self.config(work, LAYOUT_COPY, item.tenant, p)
            if isinstance(item, StockQuote):
                step = self.rules.on_quote(state, item, stamp, now, layout)
            elif isinstance(item, LineShort):
                step = self.rules.on_short(state, item, stamp, now, layout)
            else:
                assert isinstance(item, OperatorAction)
                step = self.rules.on_operator(state, item, stamp, now, layout)
        if step.order_changed and step.order is not None:
            work.put(ORDERS, step.order.key, step.order, expires_at=step.order.expires_at)
            work.side_effects.append(SagaProgress(step.order.key, step.order.phase is Phase.RESERVING))
        for hold in step.holds:
            hold.version = record.offset  # an order lives in one inbox partition: its versions only grow
        work.side_effects.extend(step.holds)
        return step

    def expires_at(self, table: str, value: bytes) -> int | None:
        if table == ORDERS:
            return wire.decode_state(value, OrderState).expires_at
        if table == BUYERS:
            return wire.decode_state(value, BuyerState).expires_at
        return None

    # -- the holds read model ---------------------------------------------------------------------------
    def on_assigned(self, partitions: set[int]) -> None:
        if self.sync is not None:
            self.sync.mark_dirty("holds", partitions)  # the previous owner may have left it behind

    def after_commit(self, partition: int, side_effects: list[Any]) -> None:
        now = time.monotonic()
        for effect in side_effects:
            if isinstance(effect, SagaProgress):
                key, waiting = effect
                if waiting:
                    self.waiting.setdefault(key, (partition, now))
                else:
                    self.waiting.pop(key, None)
        if self.holds is None:
            return
        changes: list[Change] = []
        for e in side_effects:
            if isinstance(e, HoldEntry):
                assert e.version is not None, "a hold change without the offset that made it"
                changes.append((e.tenant, e.order_id, e.summary, e.version))
        if not changes:
            return
        future = asyncio.ensure_future(self._apply_holds(partition, changes))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def _apply_holds(self, partition: int, changes: list[Change]) -> None:
        assert self.holds is not None
        if not await self.holds.apply(partition, changes) and self.sync is not None:
            self.sync.mark_dirty("holds", {partition})

    async def rebuild_holds(self, partition: int) -> bool:
        """Write the holds list of one partition again from the ``orders`` table, at the stored position."""
        if self.holds is None or self.stage is None:
            return True
        # The position first, the scan after (engine.readmodels.holds): the scan covers at least the position.
        position = self.stage.stored_next_offset(self.inputs[0], partition)
        return await self.holds.replace_partition(partition, position, lambda: self._held(partition))

    def _held(self, partition: int) -> list[Held]:
        """The held orders of one partition, from the ``orders`` table (and the sagas it shows waiting)."""
        assert self.stage is not None
        held = []
        now = time.monotonic()
        for _key, value in self.stage.store(ORDERS).items(partition):
            state = wire.decode_state(value, OrderState)
            if state.hold is not None:
                held.append((state.tenant, state.order_id, hold_summary(state)))
            if state.phase is Phase.RESERVING:
                self.waiting.setdefault(state.key, (partition, now))
        return held


def install(app: faust.App, holds: HoldsModel | None = None, sync: ReadModelSync | None = None) -> Stage:
    ctx = context(app)
    settings = ctx.settings
    logic = OrderLogic(
        ctx.topics,
        settings.partitions,
        settings.order_retention_s * 1000,
        ctx.topic_epochs.get(ctx.topics.order_inbox, ""),
    )
    stage = Stage(app, logic)
    logic.stage, logic.holds, logic.sync = stage, holds, sync
    if sync is not None:
        sync.register("holds", stage.owned, logic.rebuild_holds)

    @app.timer(10.0)
    async def report_stuck_sagas() -> None:
        stuck = logic.stuck(settings.saga_stuck_s)
        stage.stats.gauges["stuck_sagas"] = len(stuck)
        if stuck:
            log.warning(
                "%d saga(s) waiting for stock answers for over %.0fs (e.g. %s): is the inventory stage running?",
                len(stuck),
                settings.saga_stuck_s,
                stuck[:3],
            )

    return stage
