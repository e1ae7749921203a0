"""Replay determinism against a real run (I7): each stage's recorded input (orders, inventory, fulfilment,
aftersales, ledger, ingest), replayed in-process from offset 0 and from a restart point, gives byte-identical outputs to
what the engine wrote — through a kill -9 and the
takeover it caused — and the same final state as the engine's changelogs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from agents.aftersales.agent import AftersalesLogic
from agents.fulfilment.agent import FulfilmentLogic
from agents.fulfilment.layout import generate_layout
from agents.fulfilment.publish import publish_layouts
from agents.ingest.agent import IngestLogic
from agents.inventory.agent import InventoryLogic
from agents.ledger.agent import LedgerLogic
from agents.orders.agent import OrderLogic
from engine.kafka.admin import topic_epochs
from engine.kafka.clients import read_topics
from engine.runtime.replay import Replay
from engine.runtime.stage import Position
from engine.runtime.work import Input, Logic, Output
from engine.state.tables import changelog_topic
from engine.tenants import Tenants
from schemas import wire
from schemas.aftersales import AftersalesRecord, OrderOpened, PickupReady, ReturnRequested
from schemas.fulfilment import (
    FulfilmentRecord,
    LineShort,
    OrderWithdrawn,
    ParcelAccepted,
    ShipmentPicked,
    WavePolicy,
)
from schemas.inbox import InboxRecord, OperatorAction
from schemas.inventory import InventoryCommand
from schemas.ledger import LedgerRecord, ProgressMade, ReturnBooked, StockMoved
from schemas.saga import LineResult, StockQuote
from schemas.shipping import GoodsIssued, ShippingRecord
from schemas.stocksync import AtpChanged, StockSyncRecord
from tests.pipeline.harness import Pipeline
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.channels import channel_day
from workload.delivery import Credentials, deliver
from workload.generator import Workload, WorkloadSpec

pytestmark = pytest.mark.pipeline


def recorded(pipeline: Pipeline, topics: list[str]) -> list[Input]:
    return list(read_topics(pipeline.bootstrap, topics))


def changelog_state(pipeline: Pipeline, table: str) -> dict[bytes, bytes]:
    """A table as its changelog says at the end (read_committed: what a restore would build)."""
    state: dict[bytes, bytes] = {}
    for m in read_topics(pipeline.bootstrap, [changelog_name_for(pipeline, table)]):
        if m.value is None:
            state.pop(m.key or b"", None)
        else:
            state[m.key or b""] = m.value
    return state


def changelog_name_for(pipeline: Pipeline, table: str) -> str:
    return changelog_topic(pipeline.settings.app_id, table)


def signature(outputs: list[Output]) -> Counter:
    return Counter((o.topic, o.key, o.value) for o in outputs)


def replay_both_ways(logic: type[Logic] | object, make: object, log: list[Input], dlq: str) -> tuple[Counter, dict]:
    """The whole log at once, and the same log cut at every partition's middle and resumed from a snapshot."""
    whole = Replay(make(), dlq)  # type: ignore[operator]
    out = signature(whole.run(log, batch=64))
    first = Replay(make(), dlq)  # type: ignore[operator]
    halves: dict[int, int] = {}
    for r in log:
        halves[r.partition] = halves.get(r.partition, 0) + 1
    seen: dict[int, int] = {}
    head = []
    for r in log:
        seen[r.partition] = seen.get(r.partition, 0) + 1
        if seen[r.partition] <= halves[r.partition] // 2:
            head.append(r)
    part = signature(first.run(head, batch=7))
    resumed = Replay(make(), dlq, first.state.snapshot())  # type: ignore[operator]
    part += signature(resumed.run(log, batch=500))  # handed the whole log again, as after a restart
    assert part == out, "a restart point changed the outputs"
    assert resumed.state.tables() == whole.state.tables(), "a restart point changed the state"
    return out, whole.state.tables()


def test_replaying_each_stage_reproduces_what_the_engine_wrote(pipeline: Pipeline, credentials: Credentials) -> None:
    workload = Workload(WorkloadSpec(orders=900, seed=19, skus=120, hot_skus=8, hot_stock_ratio=0.4))
    pipeline.publish_catalog(workload.catalog())
    skus = sorted(set().union(*workload.catalog().values()))
    waves = WavePolicy(release_count=6, release_after_s=1)
    layouts = [
        generate_layout(x, workload.spec.warehouses, skus, merge_window_s=1, waves=waves) for x in workload.spec.tenants
    ]
    publish_layouts(pipeline.settings, layouts, "test-layouts")
    pool = pipeline.start_workers(2)
    pipeline.load(workload)
    deliveries = list(channel_day(workload.orders(), 19))
    sent = asyncio.run(deliver(pipeline.settings, pipeline.topics, deliveries, credentials, 2))
    pipeline.inputs.add_orders(d.intent for i, d in enumerate(deliveries) if i in sent.taken and d.intent is not None)
    pipeline.inputs.bad_records = {d.body for d in deliveries if d.kind == "bad" and d.via == "kafka"}
    deadline = time.monotonic() + 120
    while len(pipeline.decisions()) < len(pipeline.inputs.orders) // 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pool.kill(1)  # the run the replay must reproduce includes a crash and a takeover
    pipeline.wait_idle(timeout_s=240)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["decisions"] > 500
    pool.stop()

    t, s = pipeline.topics, pipeline.settings
    epochs = topic_epochs(pipeline.bootstrap, t.all())
    inbox = recorded(pipeline, [t.order_inbox])
    commands = recorded(pipeline, [t.inventory_commands])
    raw = recorded(pipeline, list(t.raw.values()))
    letters = [m.value for m in read_topics(pipeline.bootstrap, [t.dead_letters])]
    business = recorded(pipeline, [t.ledger_inbox])

    def ledger_inbox(*kinds: type) -> Counter:
        """What the stages wrote to the ledger inbox, of these kinds."""
        return Counter(
            (r.topic, r.key, r.value) for r in business if isinstance(wire.decode(r.value, LedgerRecord), kinds)
        )

    # -- the order stage -----------------------------------------------------------------------------------
    def orders() -> OrderLogic:
        return OrderLogic(t, s.partitions, s.order_retention_s * 1000, epochs[t.order_inbox])

    replayed, state = replay_both_ways(OrderLogic, orders, inbox, t.dead_letters)
    wrote: Counter = Counter()
    for topic in (t.review_decisions, t.order_decisions, t.order_cancellations, t.short_picks, t.allocations):
        wrote += Counter((m.topic, m.key, m.value) for m in read_topics(pipeline.bootstrap, [topic]))
    for m in read_topics(pipeline.bootstrap, [t.inventory_commands]):
        if wire.decode(m.value, InventoryCommand).origin.startswith("orders."):
            wrote[(m.topic, m.key, m.value)] += 1
    for m in read_topics(pipeline.bootstrap, [t.fulfilment_inbox]):
        if isinstance(wire.decode(m.value, FulfilmentRecord), ParcelAccepted | OrderWithdrawn):
            wrote[(m.topic, m.key, m.value)] += 1
    for m in read_topics(pipeline.bootstrap, [t.aftersales_inbox]):
        if isinstance(wire.decode(m.value, AftersalesRecord), OrderOpened | PickupReady | ReturnRequested):
            wrote[(m.topic, m.key, m.value)] += 1
    wrote += ledger_inbox(OrderOpened)
    wrote += Counter((t.dead_letters, None, v) for v in letters if b'"stage":"orders"' in (v or b""))
    replayed_dlq = Counter({(topic, None, v): n for (topic, _k, v), n in replayed.items() if topic == t.dead_letters})
    replayed = Counter({k: n for k, n in replayed.items() if k[0] != t.dead_letters}) + replayed_dlq
    assert replayed == wrote, _diff(replayed, wrote)
    for table in OrderLogic.tables:
        assert state.get(table, {}) == changelog_state(pipeline, table), f"table {table} differs"

    # -- the inventory stage -------------------------------------------------------------------------------
    def inventory() -> InventoryLogic:
        return InventoryLogic(t, s.partitions, s.line_retention_s * 1000)

    replayed, state = replay_both_ways(InventoryLogic, inventory, commands, t.dead_letters)
    wrote = Counter((m.topic, m.key, m.value) for m in read_topics(pipeline.bootstrap, [t.stock_events]))
    for m in read_topics(pipeline.bootstrap, [t.order_inbox]):
        if isinstance(wire.decode(m.value, InboxRecord), LineResult | StockQuote):
            wrote[(m.topic, m.key, m.value)] += 1
    wrote += ledger_inbox(StockMoved)
    for m in read_topics(pipeline.bootstrap, [t.stock_sync_inbox]):  # ATP changes, for stock sync
        if isinstance(wire.decode(m.value, StockSyncRecord), AtpChanged):
            wrote[(m.topic, m.key, m.value)] += 1
    assert Counter({k: n for k, n in replayed.items() if k[0] != t.dead_letters}) == wrote
    for table in InventoryLogic.tables:
        assert state.get(table, {}) == changelog_state(pipeline, table), f"table {table} differs"

    # -- the fulfilment stage, over what it had read when it stopped (ticks keep its inbox growing) -----------
    def fulfilment() -> FulfilmentLogic:
        return FulfilmentLogic(t, s.partitions, s.order_retention_s * 1000, epochs[t.fulfilment_inbox])

    read_up_to = {
        int(k.decode().rsplit("/", 1)[1]): wire.decode_state(v, Position).next_offset
        for k, v in changelog_state(pipeline, "fulfilment-positions").items()
    }
    parcels = [r for r in recorded(pipeline, [t.fulfilment_inbox]) if r.offset < read_up_to.get(r.partition, 0)]
    replayed, state = replay_both_ways(FulfilmentLogic, fulfilment, parcels, t.dead_letters)
    wrote = Counter()
    for topic in (t.shipments, t.waves, t.pick_lists, t.withdrawals, t.pick_outcomes, t.picked_shipments):
        wrote += Counter((m.topic, m.key, m.value) for m in read_topics(pipeline.bootstrap, [topic]))
    for m in read_topics(pipeline.bootstrap, [t.inventory_commands]):
        if wire.decode(m.value, InventoryCommand).origin.startswith("fulfilment."):
            wrote[(m.topic, m.key, m.value)] += 1
    for m in read_topics(pipeline.bootstrap, [t.order_inbox]):
        if isinstance(wire.decode(m.value, InboxRecord), LineShort):
            wrote[(m.topic, m.key, m.value)] += 1
    for m in read_topics(pipeline.bootstrap, [t.shipping_inbox]):  # picked shipments (answers are the gateway's)
        if isinstance(wire.decode(m.value, ShippingRecord), ShipmentPicked):
            wrote[(m.topic, m.key, m.value)] += 1
    assert any(k[0] == t.shipments for k in wrote), "no shipment was written: nothing to compare"
    assert Counter({k: n for k, n in replayed.items() if k[0] != t.dead_letters}) == wrote, _diff(replayed, wrote)
    for table in FulfilmentLogic.tables:
        assert state.get(table, {}) == changelog_state(pipeline, table), f"table {table} differs"

    # -- the aftersales stage, over what it had read (approvals, pickups, counter sales handed over; ticks) ----
    def aftersales() -> AftersalesLogic:
        return AftersalesLogic(
            t,
            s.partitions,
            s.order_retention_s * 1000,
            s.pickup_hold_s * 1000,
            s.pickup_secret,
            epochs[t.aftersales_inbox],
        )

    read_up_to = {
        int(k.decode().rsplit("/", 1)[1]): wire.decode_state(v, Position).next_offset
        for k, v in changelog_state(pipeline, "aftersales-positions").items()
    }
    followed = [r for r in recorded(pipeline, [t.aftersales_inbox]) if r.offset < read_up_to.get(r.partition, 0)]
    replayed, state = replay_both_ways(AftersalesLogic, aftersales, followed, t.dead_letters)
    wrote = Counter()
    for topic in (t.notifications, t.order_progress, t.writebacks, t.returns):
        wrote += Counter((m.topic, m.key, m.value) for m in read_topics(pipeline.bootstrap, [topic]))
    for m in read_topics(pipeline.bootstrap, [t.inventory_commands]):
        if wire.decode(m.value, InventoryCommand).origin.startswith("aftersales."):
            wrote[(m.topic, m.key, m.value)] += 1
    for m in read_topics(pipeline.bootstrap, [t.goods_issued]):
        if wire.decode(m.value, GoodsIssued).issue_id.startswith("pickup."):
            wrote[(m.topic, m.key, m.value)] += 1
    for m in read_topics(pipeline.bootstrap, [t.order_inbox]):
        record = wire.decode(m.value, InboxRecord)
        if isinstance(record, OperatorAction) and record.actor == "pickup-expiry":
            wrote[(m.topic, m.key, m.value)] += 1
    wrote += Counter(  # goods handed over in a store, deliveries and returns, for the books
        (r.topic, r.key, r.value)
        for r in business
        if isinstance(record := wire.decode(r.value, LedgerRecord), ProgressMade | ReturnBooked)
        or (isinstance(record, GoodsIssued) and record.issue_id.startswith("pickup."))
    )
    assert any(k[0] == t.inventory_commands for k in wrote), "no counter sale was handed over: nothing to compare"
    assert Counter({k: n for k, n in replayed.items() if k[0] != t.dead_letters}) == wrote, _diff(replayed, wrote)
    for table in AftersalesLogic.tables:
        assert state.get(table, {}) == changelog_state(pipeline, table), f"table {table} differs"

    # -- the ledger stage: the day's business events replayed give byte-identical vouchers ----------------------
    def ledger() -> LedgerLogic:
        return LedgerLogic(t, s.partitions, s.ledger_retention_s * 1000)

    replayed, state = replay_both_ways(LedgerLogic, ledger, business, t.dead_letters)
    wrote = Counter()
    for topic in (t.vouchers, t.reconciliations):
        wrote += Counter((m.topic, m.key, m.value) for m in read_topics(pipeline.bootstrap, [topic]))
    assert any(k[0] == t.vouchers for k in wrote), "no voucher was written: nothing to compare"
    assert Counter({k: n for k, n in replayed.items() if k[0] != t.dead_letters}) == wrote, _diff(replayed, wrote)
    for table in LedgerLogic.tables:
        assert state.get(table, {}) == changelog_state(pipeline, table), f"table {table} differs"

    # -- the ingest stage: every order it produced is in the inbox, byte for byte --------------------------
    def ingest() -> IngestLogic:
        return IngestLogic(t, s.partitions, Tenants.load(s.tenants_file), s.max_payload_bytes)

    replayed, _ = replay_both_ways(IngestLogic, ingest, raw, t.dead_letters)
    in_inbox = Counter((m.topic, m.key, m.value) for m in read_topics(pipeline.bootstrap, [t.order_inbox]))
    produced = Counter({k: n for k, n in replayed.items() if k[0] == t.order_inbox})
    assert produced and not produced - in_inbox, "ingest replayed to an order the engine never wrote"


def _diff(a: Counter, b: Counter) -> str:
    extra, missing = a - b, b - a
    return f"replay only: {list(extra.items())[:3]} … engine only: {list(missing.items())[:3]}"
