"""The reservation pipeline on a real broker with real worker processes. Every test ends with I1–I4
checked from the result topics (tests.pipeline.harness.Pipeline.verdict)."""

from __future__ import annotations

import base64
import time

import pytest

from engine import kafka
from engine.invariants import Verdict
from engine.stage import FAULT_ENV, partition_for
from engine.workload import FLASH_SKU, Workload, WorkloadSpec
from schemas import wire
from schemas.deadletter import ReasonCode
from schemas.inventory import CommandKind, Receive, Release, Reserve, receive_id, release_id, reserve_id
from schemas.saga import DecisionStatus, LineResult, LineStatus, RejectReason
from tests.pipeline.harness import Pipeline

pytestmark = pytest.mark.pipeline


def assert_invariants(p: Pipeline) -> Verdict:
    verdict = p.verdict()
    assert verdict.ok, verdict.summary()
    assert verdict.oversold_units == 0
    return verdict


def test_two_workers_with_scarce_hot_skus(pipeline: Pipeline) -> None:
    spec = WorkloadSpec(
        orders=2500,
        seed=5,
        skus=300,
        hot_skus=10,
        hot_stock_ratio=0.4,
        flash_sale=True,
        flash_share=0.2,
        flash_stock=60,
    )
    workload = Workload(spec)
    pipeline.load(workload)
    pool = pipeline.start_workers(2)
    owned = [set(pool.readiness(i)["active"]) for i in range(2)]
    assert owned[0] and owned[1] and not owned[0] & owned[1], "partitions must really be split"

    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    assert unique >= 2000
    pipeline.send_orders(orders)
    pipeline.wait_decisions(unique)

    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == unique and verdict.counts["decisions"] == unique
    assert verdict.counts["accepted"] > 0
    assert verdict.counts["rejected_by_reason"].get("insufficient_stock", 0) > 0, "stock was meant to run out"
    # The flash SKU is sold to exactly its stock in every tenant: nothing oversold, nothing leaked.
    for tenant in spec.tenants:
        levels = verdict.counts["final_levels"][f"{tenant}:{FLASH_SKU}"]
        assert sum(on_hand for on_hand, _ in levels.values()) == spec.flash_stock
        assert sum(reserved for _, reserved in levels.values()) == spec.flash_stock


def _cmd(kind: type, sku: str, origin: str, seq: int, **fields: object) -> object:
    tenant = "acme"
    if kind is Receive:
        cid = receive_id(tenant, sku, str(fields["warehouse"]), str(fields["document_id"]))
    elif kind is Reserve:
        cid = reserve_id(tenant, str(fields["line_id"]))
    else:
        cid = release_id(tenant, str(fields["line_id"]))
    return kind(command_id=cid, tenant=tenant, sku=sku, origin=origin, seq=seq, ts=int(time.time() * 1000), **fields)


def test_a_reserve_delivered_twice_has_one_effect(pipeline: Pipeline) -> None:
    pipeline.start_workers(2)
    t = pipeline.topics
    line = "web-s1-9001#1"
    receive = _cmd(Receive, "SKU-DUP", "test-loader", 1, warehouse="WH-A", quantity=5, document_id="d1")
    reserve = _cmd(Reserve, "SKU-DUP", "test-coord", 10, order_id="web-s1-9001", line_id=line, quantity=3)
    pipeline.send(t.inventory_commands, [receive, reserve, reserve])  # the same command, twice
    pipeline.wait_idle()
    release = _cmd(Release, "SKU-DUP", "test-coord-r", 1, order_id="web-s1-9001", line_id=line)
    pipeline.send(t.inventory_commands, [release, reserve])  # and once more after its release (a replay)

    verdict = assert_invariants(pipeline)
    records = pipeline.records()
    effects = [e for e in records.stock_events if e.line_id == line]
    assert sorted({(e.kind, e.event_id) for e in effects}) == sorted(
        {(CommandKind.RESERVE, reserve.command_id), (CommandKind.RELEASE, release.command_id)}
    ), "exactly one reservation and one release, however often the reserve came"
    assert verdict.counts["final_levels"]["acme:SKU-DUP"] == {"WH-A": [5, 0]}
    answers = [wire.decode(m.value, LineResult) for m in kafka.read_topics(pipeline.bootstrap, [t.line_results])]
    assert [a.status for a in answers] == [LineStatus.RESERVED, LineStatus.RESERVED, LineStatus.REJECTED]
    assert answers[0] == answers[1], "a redelivered reserve is answered again, identically"
    assert answers[2].reason is RejectReason.NOT_RESERVABLE


def test_kill_minus_9_of_one_worker_mid_stream(pipeline: Pipeline) -> None:
    workload = Workload(WorkloadSpec(orders=3000, seed=9, skus=400, hot_skus=15, hot_stock_ratio=0.5))
    pipeline.load(workload)
    pool = pipeline.start_workers(2)
    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    half = len(orders) // 2
    pipeline.send_orders(orders[:half])
    deadline = time.monotonic() + 120
    while len(pipeline.decisions()) < unique // 5:
        assert time.monotonic() < deadline, "no progress before the kill"
        time.sleep(0.3)
    pool.kill(1)  # SIGKILL: no shutdown, no commit, state possibly ahead of offsets
    pipeline.send_orders(orders[half:])

    pipeline.wait_decisions(unique, timeout_s=300)
    survivor = set(pool.readiness(0)["active"])
    for topic in (pipeline.topics.orders, pipeline.topics.inventory_commands):
        assert {f"{topic}/{p}" for p in range(pipeline.settings.partitions)} <= survivor, "the survivor took over"
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == unique


def test_rolling_restarts_mid_stream_lose_nothing(pipeline: Pipeline) -> None:
    """A worker is stopped and started again three times while stock and orders flow: six rebalances. Around
    them Faust resumed partitions with records missing (a receive never applied, orders never decided) until
    the stages admitted records in offset order against their own offsets table."""
    workload = Workload(WorkloadSpec(orders=3000, seed=33, skus=300, hot_skus=10, hot_stock_ratio=0.5))
    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    pool = pipeline.start_workers(2)
    pipeline.load(workload)
    pipeline.send_orders(orders[: len(orders) // 2])
    for _ in range(3):
        time.sleep(2.5)
        pool.restart(1)
    pipeline.send_orders(orders[len(orders) // 2 :])
    pipeline.wait_decisions(unique, timeout_s=300, pool=pool)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == unique


@pytest.mark.parametrize("stage", ["inventory", "coordinator"])
def test_crash_with_state_ahead_of_offsets_replays_without_loss_or_double_effects(
    pipeline: Pipeline, stage: str
) -> None:
    """Worker 1 dies right after a batch's table writes reach the broker and before its offsets are committed;
    worker 0 replays that batch against the newer state. Nothing may be lost or applied twice."""
    workload = Workload(WorkloadSpec(orders=1500, seed=21, skus=150, hot_skus=10, hot_stock_ratio=0.5))
    receipts = sum(1 for _ in workload.opening_stock("x", 0, 0))
    pipeline.load(workload)
    # Worker 1 owns about half of every topic's partitions: it passes this mark in mid-stream.
    after = (receipts // 2 if stage == "inventory" else 0) + 400
    pool = pipeline.start_workers(2, env={1: {FAULT_ENV: f"{stage}:{after}"}})
    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    pipeline.send_orders(orders)
    deadline = time.monotonic() + 120
    while pool.alive(1):
        assert time.monotonic() < deadline, "the fault was never triggered"
        time.sleep(0.2)
    assert pool.procs[1].returncode == 137
    pipeline.wait_decisions(unique, timeout_s=300)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == unique


def test_bad_input_is_dead_lettered_and_the_partition_moves_on(pipeline: Pipeline) -> None:
    pipeline.start_workers(2)
    t = pipeline.topics
    key = "acme:SKU-BAD"
    receive = _cmd(Receive, "SKU-BAD", "test-loader", 1, warehouse="WH-A", quantity=4, document_id="d1")
    garbage = b"\x00\xffnot json{"
    wrong_type = wire.encode(
        _cmd(Receive, "SKU-BAD", "test-loader", 2, warehouse="WH-A", quantity=1, document_id="d2")
    ).replace(b'"quantity":1', b'"quantity":"lots"')
    other = next(f"SKU-{i}" for i in range(100) if partition_for(f"acme:SKU-{i}", 4) != partition_for(key, 4))
    misrouted = _cmd(Receive, other, "test-loader", 3, warehouse="WH-A", quantity=1, document_id="d3")
    reserve = _cmd(Reserve, "SKU-BAD", "test-coord", 1, order_id="web-s1-1", line_id="web-s1-1#1", quantity=2)
    pipeline.send(t.inventory_commands, [receive])
    pipeline.send(t.inventory_commands, [garbage, wrong_type, wire.encode(misrouted)], key=key)
    pipeline.send(t.inventory_commands, [reserve])
    pipeline.send(t.orders, [b'{"tenant": "acme", "order_id": 42}'], key="acme:web-s1-2")

    verdict = assert_invariants(pipeline)
    records = pipeline.records()
    by_reason = {d.reason: d for d in records.dead_letters}
    assert set(by_reason) == {ReasonCode.MALFORMED_JSON, ReasonCode.SCHEMA_VIOLATION, ReasonCode.MISROUTED}
    assert base64.b64decode(by_reason[ReasonCode.MALFORMED_JSON].value_b64) == garbage
    assert {d.stage for d in records.dead_letters} == {"inventory", "review"}  # review is the first to read orders
    assert "quantity" in " ".join(d.detail for d in records.dead_letters)
    for letter in records.dead_letters:
        assert letter.source_topic in (t.inventory_commands, t.orders) and letter.source_offset >= 0
    assert verdict.counts["dead_letters"] == {"malformed_json": 1, "schema_violation": 2, "misrouted": 1}
    # What came after the poison was processed: the reserve behind it was applied — and then released by
    # the coordinator, because no order owns that line (an orphan reservation is given back).
    effects = [e.kind for e in records.stock_events if e.line_id == "web-s1-1#1"]
    assert effects == [CommandKind.RESERVE, CommandKind.RELEASE]
    assert verdict.counts["final_levels"]["acme:SKU-BAD"] == {"WH-A": [4, 0]}


def test_timeout_rejects_and_late_reservations_are_released(pipeline: Pipeline) -> None:
    workload = Workload(WorkloadSpec(orders=30, seed=3, skus=50, hot_skus=0, duplicate_rate=0.0))
    pipeline.load(workload)
    t = pipeline.topics
    # First only the coordinator runs: every reserve goes unanswered and each saga hits its deadline.
    first = pipeline.start_workers(
        1, topics=[t.orders], app_module="tests.pipeline.apps:no_inventory", saga_timeout_s=2.0
    )
    orders = list(workload.orders())
    pipeline.send_orders(orders)
    pipeline.wait_decisions(len(orders))
    decisions = pipeline.decisions()
    assert {d.status for d in decisions.values()} == {DecisionStatus.REJECTED}
    assert {d.reason for d in decisions.values()} == {RejectReason.TIMEOUT}
    first.stop()
    # Then the whole pipeline: the inventory reserves late, the coordinator releases every late reservation.
    pipeline.start_workers(2)
    verdict = assert_invariants(pipeline)
    kinds = [e.kind for e in pipeline.records().stock_events if e.line_id]
    assert kinds.count(CommandKind.RESERVE) > 0
    assert kinds.count(CommandKind.RESERVE) == kinds.count(CommandKind.RELEASE)
    assert verdict.counts["rejected_by_reason"] == {"timeout": len(orders)}
