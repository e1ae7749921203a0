"""The stock-sync stage (库存同步): one writer per SKU, on ``stock-sync-inbox`` (key ``tenant:sku``).

Its inbox holds, in one order per SKU: the inventory's ``AtpChanged`` (a stock event that moved ATP), the platforms'
answers (``StockSyncResult``, from the gateway), the tenants' rules (``SyncRulesVersion``, one copy per partition)
and ticks. The rules are in :mod:`agents.stocksync.core`; this stage keeps the SKU's state (``sync-skus``), sends
the updates to the outbox (``stock-sync-requests``, which the gateway sends to the platforms) and remembers which
SKUs wait for a round (``sync-due``: per partition, the SKUs due by the second, and the partition's clock).

Ticks are written only into partitions where a round waits (and into every partition right after it is
assigned, until a tick finds none), so an idle day leaves the inbox idle. A new rules version resyncs every SKU
of its tenant in the partition: each shop gets the quantity its new rule gives.
"""

from __future__ import annotations

from typing import Any

import faust

from agents.stocksync import core
from engine.app import context
from engine.runtime.kit import Broadcast, KeyedLogic
from engine.runtime.stage import Stage
from engine.runtime.ticks import install_ticks
from engine.runtime.work import Input, PartitionWork
from engine.topics import Topics
from schemas import wire
from schemas.fulfilment import Tick
from schemas.stocksync import AtpChanged, StockSyncRecord, StockUpdate, SyncRules, SyncRulesVersion

RULES, SKUS, DUE = "sync-rules", "sync-skus", "sync-due"


def rules_key(tenant: str, partition: int) -> str:
    return f"{tenant}:sync-rules@p{partition}"


RULES_COPY = Broadcast(SyncRulesVersion, RULES, SyncRules, rules_key, "sync_rules", value=lambda r: r.rules)


class StockSyncLogic(KeyedLogic[core.SkuSync]):
    name = "stocksync"
    tables = (RULES, SKUS, DUE)
    record_type = StockSyncRecord
    broadcasts = (RULES_COPY,)
    state_table = SKUS
    state_type = core.SkuSync

    def __init__(self, topics: Topics, partitions: int) -> None:
        self.inputs = (topics.stock_sync_inbox,)
        self.partitions = partitions
        self.routes = {StockUpdate: (topics.stock_sync_requests,)}
        #: partitions whose ticks are wanted (a round waits, or not known yet): read by the tick timer
        self.wants_ticks: dict[int, bool] = {}

    def handle(self, work: PartitionWork, record: Input, item: Any) -> core.Synced:
        rules = self.config(work, RULES_COPY, item.tenant, record.partition)
        state = work.get_as(SKUS, item.key, core.SkuSync) or core.new_state(item.tenant, item.sku)
        if isinstance(item, AtpChanged):
            step = core.stock_changed(state, item, rules, work.now)
        else:
            step = core.answered(state, item, rules, work.now)
        if step.due is not None:
            self._index(work, record.partition, step.due, state.key)
        return step

    def state_key(self, item: Any, state: core.SkuSync) -> str:
        return state.key

    # -- configuration: a new version resyncs the tenant's SKUs ---------------------------------------------
    def apply_config(self, work: PartitionWork, partition: int, config: Broadcast, item: Any) -> None:
        tenant = item.rules.tenant
        before = self.config(work, RULES_COPY, tenant, partition)
        super().apply_config(work, partition, config, item)
        rules = self.config(work, RULES_COPY, tenant, partition)
        if rules is None or (before is not None and before.version == rules.version):
            return
        for _key, raw in work.scan(SKUS, f"{tenant}:"):
            self._round(work, partition, wire.decode_state(raw, core.SkuSync), rules)

    # -- time: rounds that waited --------------------------------------------------------------------------
    def on_tick(self, work: PartitionWork, record: Input, tick: Tick) -> None:
        p = record.partition
        seconds = work.get_as(DUE, f"seconds@p{p}", list[int]) or []
        now_s = tick.ts // 1000
        for second in [s for s in seconds if s <= now_s]:
            for key in work.get_as(DUE, f"due:{second}@p{p}", list[str]) or []:
                state = work.get_as(SKUS, key, core.SkuSync)
                if state is not None and state.due is not None and state.due <= tick.ts:
                    self._round(work, p, state, self.config(work, RULES_COPY, state.tenant, p))
            work.delete(DUE, f"due:{second}@p{p}")
        left = sorted(s for s in (work.get_as(DUE, f"seconds@p{p}", list[int]) or []) if s > now_s)
        work.put(DUE, f"seconds@p{p}", wire.encode(left))
        work.put(DUE, f"clock@p{p}", wire.encode(now_s))
        work.side_effects.append(("ticks", bool(left)))

    def _round(self, work: PartitionWork, p: int, state: core.SkuSync, rules: SyncRules | None) -> None:
        step = core.sync(state, rules, work.now)
        self.save(work, state, step, work.now)
        self.send(work, step)
        if step.due is not None:
            self._index(work, p, step.due, state.key)

    def _index(self, work: PartitionWork, p: int, due_ms: int, key: str) -> None:
        """The SKU is due at ``due_ms``: under the first second at or after it the partition's clock has not
        passed (the tick that reaches that second has a time at or after ``due_ms``)."""
        clock = work.get_as(DUE, f"clock@p{p}", int)
        second = -(-due_ms // 1000) if clock is None else max(-(-due_ms // 1000), clock + 1)
        due = work.get_as(DUE, f"due:{second}@p{p}", list[str]) or []
        if key not in due:
            work.put(DUE, f"due:{second}@p{p}", wire.encode([*due, key]))
        seconds = work.get_as(DUE, f"seconds@p{p}", list[int]) or []
        if second not in seconds:
            work.put(DUE, f"seconds@p{p}", wire.encode(sorted([*seconds, second])))
        work.side_effects.append(("ticks", True))

    # -- which partitions get ticks ------------------------------------------------------------------------
    def on_assigned(self, partitions: set[int]) -> None:
        self.wants_ticks = dict.fromkeys(partitions, True)  # until a tick there finds nothing waiting

    def after_commit(self, partition: int, side_effects: list[Any]) -> None:
        wanted = [on for what, on in side_effects if what == "ticks"]
        if wanted:
            self.wants_ticks[partition] = wanted[-1]


def install(app: faust.App) -> Stage:
    ctx = context(app)
    logic = StockSyncLogic(ctx.topics, ctx.settings.partitions)
    stage = Stage(app, logic)
    install_ticks(
        app,
        stage,
        ctx.topics.stock_sync_inbox,
        ctx.settings.stock_sync_tick_s,
        ctx.settings.bootstrap,
        wanted=lambda p: logic.wants_ticks.get(p, True),
    )

    @app.timer(1.0)
    async def report_rounds_waiting() -> None:
        """Partitions where a round of updates waits (or may: not ticked since assigned): 0 once sync settled."""
        stage.stats.gauges["rounds_waiting"] = sum(1 for p in stage.owned() if logic.wants_ticks.get(p, True))

    return stage
