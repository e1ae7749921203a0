"""The reservation pipeline on a real broker with real worker processes: contention, redelivery, crashes, pauses,
faults at each step of a transaction, transactional upstreams. Every test ends with the invariants checked from
the result topics against the inputs as they were sent (tests.pipeline.harness.Pipeline.verdict)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from engine.kafka.admin import admin
from engine.kafka.clients import end_offsets, partition_for, read_topics, unprocessed
from engine.kafka.transactions import TxnProducer
from engine.runtime.faults import FAULT_ENV, REPORT_ENV
from engine.supervisor import WorkerPool
from invariants import Verdict
from schemas import wire
from schemas.deadletter import ReasonCode
from schemas.inbox import InboxRecord
from schemas.inventory import (
    CommandKind,
    Receive,
    Release,
    Reserve,
    StockEvent,
    receive_id,
    release_id,
    reserve_id,
)
from schemas.saga import DecisionStatus, LineResult, LineStatus, OrderDecision, RejectReason
from tests.pipeline.harness import Pipeline, fault_report
from workload.generator import FLASH_SKU, Workload, WorkloadSpec

pytestmark = pytest.mark.pipeline


def assert_invariants(p: Pipeline, restart: bool = True) -> Verdict:
    verdict = p.verdict(restart)
    assert verdict.ok, p.explain(verdict)
    assert verdict.oversold_units == 0
    assert verdict.counts["engine_failures"] == 0
    return verdict


def test_two_workers_with_scarce_hot_skus(pipeline: Pipeline) -> None:
    spec = WorkloadSpec(
        orders=2500, seed=5, skus=300, hot_skus=10, hot_stock_ratio=0.4, flash_sale=True, flash_share=0.2,
        flash_stock=60,
    )  # fmt: skip
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
    for tenant in spec.tenants:  # the flash SKU sells exactly its stock in every tenant
        levels = verdict.counts["final_levels"][f"{tenant}:{FLASH_SKU}"]
        assert sum(on_hand for on_hand, _ in levels.values()) == spec.flash_stock
        assert sum(reserved for _, reserved in levels.values()) == spec.flash_stock


def _cmd(kind: type, sku: str, origin: str, seq: int, **fields: object) -> object:
    tenant = "acme"
    if kind is Receive:
        cid = receive_id(tenant, sku, str(fields["warehouse"]), str(fields["document_id"]))
    elif kind is Reserve:
        cid = reserve_id(tenant, str(fields["line_id"]))
        fields.setdefault("reply_to", "acme:s1:b-test")
    else:
        cid = release_id(tenant, str(fields["line_id"]))
    return kind(command_id=cid, tenant=tenant, sku=sku, origin=origin, seq=seq, ts=int(time.time() * 1000), **fields)


def test_a_reserve_delivered_twice_has_one_effect(pipeline: Pipeline) -> None:
    pipeline.start_workers(2)
    line = "web-s1-9001#1"
    receive = _cmd(Receive, "SKU-DUP", "test-loader", 1, warehouse="WH-A", quantity=5, document_id="d1")
    reserve = _cmd(Reserve, "SKU-DUP", "test-coord", 10, order_id="web-s1-9001", line_id=line, quantity=3)
    pipeline.send_commands([receive, reserve, reserve])  # the same command, twice
    pipeline.wait_idle()
    release = _cmd(Release, "SKU-DUP", "test-coord-r", 1, order_id="web-s1-9001", line_id=line)
    pipeline.send_commands([release, reserve])  # and once more after its release (a replay)
    pipeline.wait_idle()
    out = pipeline.outputs()
    effects = [e for e in out.stock_events if e.line_id == line]
    assert sorted({(e.kind, e.event_id) for e in effects}) == sorted(
        {(CommandKind.RESERVE, reserve.command_id), (CommandKind.RELEASE, release.command_id)}
    ), "exactly one reservation and one release, however often the reserve came"
    answers = [r for r in pipeline.read(pipeline.topics.order_inbox, InboxRecord) if isinstance(r, LineResult)]
    assert [a.status for a in answers] == [LineStatus.RESERVED, LineStatus.RESERVED, LineStatus.REJECTED]
    assert answers[0] == answers[1], "a redelivered reserve is answered again, identically"
    assert answers[2].reason is RejectReason.NOT_RESERVABLE
    assert not out.dead_letters, "a redelivery is not a stale command"
    verdict = check_stock_only(pipeline)
    assert verdict.counts["final_levels"]["acme:SKU-DUP"] == {"WH-A": [5, 0]}


def check_stock_only(p: Pipeline) -> Verdict:
    """The invariants for a test that sends stock commands by hand (the orders they name were never sent, so
    the reservations are judged per line and per SKU, and the orphan answers are not decisions)."""
    from invariants import check

    p.wait_idle()
    verdict = check(p.inputs, p.outputs(), p.settings.partitions)
    problems = [v for v in verdict.violations if not v.startswith("I4")]
    assert not problems, problems
    return verdict


def test_a_killed_worker_is_restarted_and_costs_latency_not_orders(pipeline: Pipeline) -> None:
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
        time.sleep(0.2)
    victims = {a for a in pool.readiness(1)["active"] if pipeline.topics.order_inbox in a}
    before = pipeline.stats(pool, 0, "orders")["admitted_by_partition"]
    pool.kill(1)  # SIGKILL: no shutdown; a transaction may be open
    pipeline.send_orders(orders[half:])  # orders for the dead worker's partitions keep coming
    pipeline.wait_decisions(unique, timeout_s=300, pool=pool)  # restarts the dead worker
    assert [r.index for r in pool.restarts] == [1] and pool.restarts[0].exit_code == -9
    # Whoever owns them now — the survivor after the session timeout, or the restarted worker — processed the
    # dead worker's partitions after the kill.
    after = [pipeline.stats(pool, i, "orders")["admitted_by_partition"] for i in range(2)]
    processed_after_kill = sum(after[0].get(tp, 0) - before.get(tp, 0) + after[1].get(tp, 0) for tp in victims)
    assert processed_after_kill > 0
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == unique


def test_rolling_restarts_overlap_processing_and_lose_nothing(pipeline: Pipeline) -> None:
    """A worker is stopped and started again three times while orders flow: six rebalances, each proven to
    happen while sent orders were still undecided, and the restarted worker proven to process afterwards."""
    workload = Workload(WorkloadSpec(orders=3000, seed=33, skus=300, hot_skus=10, hot_stock_ratio=0.5))
    orders = list(workload.orders())
    chunks = [orders[i::4] for i in range(4)]
    pool = pipeline.start_workers(2)
    pipeline.load(workload)
    overlaps = []
    sent_keys: set[str] = set()
    for chunk in chunks[:3]:
        pipeline.send_orders(chunk)
        sent_keys |= {o.key for o in chunk}
        decided = len(pipeline.decisions())  # the engine is busy with the chunk just sent: restart now
        pool.restart(1)
        overlaps.append((decided, len(sent_keys)))
        pool.wait_ready([pipeline.topics.order_inbox, pipeline.topics.inventory_commands])
    pipeline.send_orders(chunks[3])
    unique = len({o.key for o in orders})
    pipeline.wait_decisions(unique, timeout_s=300, pool=pool)
    assert all(decided < sent for decided, sent in overlaps), f"every restart overlapped undecided orders: {overlaps}"
    admitted = sum(pipeline.stats(pool, 1, stage).get("admitted", 0) for stage in ("orders", "inventory"))
    assert admitted > 0, "the restarted worker processed orders afterwards"
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == unique


@pytest.mark.parametrize(
    ("stage", "step"),
    [("inventory", "mid-send"), ("orders", "before-commit"), ("inventory", "after-commit"), ("orders", "after-apply")],
)
def test_a_crash_at_each_step_of_a_transaction_loses_and_doubles_nothing(
    pipeline: Pipeline, tmp_path: Path, stage: str, step: str
) -> None:
    """Worker 1 dies at ``step`` of one of its transactions; worker 0 takes its partitions over. Before the commit
    the transaction is aborted and the takeover processes its records again; after the commit they are part of
    the restored state and the takeover never processes them again."""
    workload = Workload(WorkloadSpec(orders=1500, seed=21, skus=150, hot_skus=10, hot_stock_ratio=0.5))
    report_path = tmp_path / "fault.json"
    pool = pipeline.start_workers(2, env={1: {FAULT_ENV: f"{stage}:{step}:300", REPORT_ENV: str(report_path)}})
    pipeline.load(workload)
    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    pipeline.send_orders(orders)
    report = fault_report(report_path)
    assert (report["stage"], report["step"]) == (stage, step)
    deadline = time.monotonic() + 30
    while pool.alive(1):
        assert time.monotonic() < deadline, "the fault was reported but did not kill the worker"
        time.sleep(0.1)
    assert pool.procs[1].returncode == 137
    ((topic, offsets),) = report["offsets"].items()
    tp = f"{topic}/{report['partition']}"
    pipeline.wait_decisions(unique, timeout_s=300, restart=False)  # worker 1 stays down: worker 0 does the rest
    took_over = pipeline.stats(pool, 0, stage)["since_assigned"]
    assert tp in took_over, f"worker 0 never processed {tp}"
    if step in ("mid-send", "before-commit"):
        assert took_over[tp] <= min(offsets), "the aborted transaction's records were processed again"
    else:
        assert took_over[tp] > max(offsets), "records of a committed transaction were processed twice"
    verdict = assert_invariants(pipeline, restart=False)
    assert verdict.counts["orders"] == unique


def _fencing_log(pool: WorkerPool) -> str:
    """What both workers logged about groups, transactions and fencing: a failure seen once explains itself."""
    words = ("fenc", "abort", "txn", "transaction", "generation", "sesstmout", "fault", "refused", "error")
    out = []
    for i in range(2):
        lines = pool.log_path(i).read_text(errors="replace").splitlines() if pool.log_path(i).exists() else []
        out.append(f"-- worker {i}:")
        out.extend(line[:400] for line in lines if any(w in line.lower() for w in words))
    return "\n".join(out[-120:])


@pytest.mark.parametrize("stage", ["inventory", "orders"])
def test_a_paused_worker_is_fenced_and_writes_nothing_after_losing_its_partitions(
    pipeline: Pipeline, tmp_path: Path, stage: str
) -> None:
    """Worker 1 stops itself (SIGSTOP) with a transaction open; after its session timeout worker 0 takes its
    partitions (and fences its transactional ids); then worker 1 resumes exactly at its commit. The commit
    must fail, and nothing it wrote may be seen: no stock version with two writers, no double decision."""
    workload = Workload(WorkloadSpec(orders=1500, seed=23, skus=150, hot_skus=10, hot_stock_ratio=0.5))
    report_path = tmp_path / "fault.json"
    pool = pipeline.start_workers(2, env={1: {FAULT_ENV: f"{stage}:pause:200", REPORT_ENV: str(report_path)}})
    pipeline.load(workload)
    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    pipeline.send_orders(orders)
    report = fault_report(report_path)
    assert report["step"] == "pause"
    paused_in = pipeline.stats(pool, 0, stage)["generation"]
    # Worker 0 takes everything over in a later generation, while worker 1 is frozen (its session timed out),
    # and is ready: its fencing ran before it restored the tables.
    deadline = time.monotonic() + pipeline.settings.session_timeout_s + 60
    inputs = [pipeline.topics.order_inbox, pipeline.topics.inventory_commands]
    want = {f"{t}/{p}" for t in inputs for p in range(pipeline.settings.partitions)}
    while not (
        (state := pool.readiness(0) or {}).get("ready")
        and want <= set(state.get("active", []))
        and pipeline.stats(pool, 0, stage)["generation"] > paused_in
    ):
        assert time.monotonic() < deadline, "worker 0 never took the paused worker's partitions"
        time.sleep(0.5)
    pool.resume(1)
    deadline = time.monotonic() + 60
    while (pipeline.stats(pool, 1, stage) or {}).get("fenced", 0) < 1:
        assert time.monotonic() < deadline, "the resumed worker was never fenced\n" + _fencing_log(pool)
        time.sleep(0.5)
    pipeline.wait_decisions(unique, timeout_s=300)
    verdict = assert_invariants(pipeline)  # includes: no stock version written by two events
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
    misrouted = wire.encode(_cmd(Receive, other, "test-loader", 3, warehouse="WH-A", quantity=1, document_id="d3"))
    pipeline.send_commands([receive])
    for raw in (garbage, wrong_type, misrouted):
        pipeline.send_bad(t.inventory_commands, key, raw)
    pipeline.send_bad(t.order_inbox, "acme:s1:b-x", b'{"kind": "order", "order": 42}')
    after = _cmd(Receive, "SKU-BAD", "test-loader", 4, warehouse="WH-A", quantity=2, document_id="d4")
    pipeline.send_commands([after])
    verdict = check_stock_only(pipeline)
    letters = pipeline.outputs().dead_letters
    by_reason = {d.reason for d in letters}
    assert by_reason == {ReasonCode.MALFORMED_JSON, ReasonCode.SCHEMA_VIOLATION, ReasonCode.MISROUTED}
    assert {d.stage for d in letters} == {"inventory", "orders"}
    assert "quantity" in " ".join(d.detail for d in letters)
    assert verdict.counts["final_levels"]["acme:SKU-BAD"] == {"WH-A": [6, 0]}, "what came after the poison applied"


def test_without_an_inventory_sagas_wait_and_nothing_is_rejected_for_being_late(pipeline: Pipeline) -> None:
    """A saga has no timeout: with the stock side down for a while, orders wait; when it comes up, they are all
    decided on their merits."""
    workload = Workload(WorkloadSpec(orders=40, seed=3, skus=50, hot_skus=0, duplicate_rate=0.0))
    pipeline.load(workload)
    t = pipeline.topics
    first = pipeline.start_workers(1, topics=[t.order_inbox], app_module="tests.pipeline.apps:no_inventory")
    orders = list(workload.orders())
    pipeline.send_orders(orders)
    deadline = time.monotonic() + 60
    while pipeline.stats(first, 0, "orders").get("admitted", 0) < len(orders):
        assert time.monotonic() < deadline, "the order stage never took the orders in"
        time.sleep(0.5)
    time.sleep(3)  # well past any reasonable deadline: nothing may decide them but the stock answers
    assert not pipeline.decisions(), "an order was decided without its stock answers"
    first.stop()
    pipeline.start_workers(2)
    pipeline.wait_decisions(len(orders))
    verdict = assert_invariants(pipeline)
    assert verdict.counts["decisions"] == len(orders) and verdict.counts["accepted"] > len(orders) // 2
    assert set(verdict.counts["rejected_by_reason"]) <= {"insufficient_stock", "unknown_sku"}, "decided on merits"


def test_a_transactional_upstream_leaves_offset_gaps_that_are_tolerated(pipeline: Pipeline) -> None:
    """A WMS writing receipts with exactly-once (a transactional producer) leaves commit markers and aborted
    records between its offsets; the inventory must apply every committed receipt and none of the aborted ones."""
    pipeline.start_workers(2)
    t = pipeline.topics
    producer = TxnProducer(pipeline.bootstrap, f"{pipeline.settings.app_id}.test-wms", timeout_s=30)
    producer.init()
    sent = []
    for doc in range(6):
        producer.begin()
        cmds = [
            _cmd(Receive, f"SKU-W{i}", "test-wms", doc * 10 + i, warehouse="WH-A", quantity=1, document_id=f"w{doc}")
            for i in range(3)
        ]
        for cmd in cmds:
            producer.produce(t.inventory_commands, cmd.key.encode(), wire.encode(cmd))
        if doc == 3:
            producer.abort()  # never happened: not an input
        else:
            producer.commit()
            sent += cmds
    producer.close()
    pipeline.inputs.add_stock(sent)
    verdict = check_stock_only(pipeline)
    assert {k: v for k, v in verdict.counts["final_levels"].items() if "SKU-W" in k} == {
        f"acme:SKU-W{i}": {"WH-A": [5, 0]} for i in range(3)
    }
    gaps = sum(pipeline.stats(p, i, "inventory").get("gaps", 0) for p in pipeline.pools for i in range(p.count))
    assert gaps > 0, "the markers did leave gaps in the offsets"


def test_a_group_offset_reset_past_the_state_skips_nothing(pipeline: Pipeline) -> None:
    """While the engine is down someone resets its consumer group to the latest offsets (``kafka-consumer-groups
    --reset-offsets --to-latest``; or the committed offsets expired and a reset policy chose the end). The
    state's own position, not the group's offset, says what was processed: the receipts sent in between still
    take effect, once."""
    t = pipeline.topics

    def receipts(document: str, quantity: int, base_seq: int) -> list:
        return [
            _cmd(Receive, f"SKU-G{i}", "test-loader", base_seq + i, warehouse="WH-A", quantity=quantity,
                 document_id=document)
            for i in range(24)
        ]  # fmt: skip

    pool = pipeline.start_workers(1)
    pipeline.send_commands(receipts("g1", 1, 0))
    pipeline.wait_idle()
    pool.stop(timeout_s=20)
    skipped = receipts("g2", 2, 100)  # sent while the engine is down...
    pipeline.send_commands(skipped)
    ends = end_offsets(pipeline.bootstrap, t.inventory_commands, pipeline.settings.partitions)
    group = pipeline.settings.app_id
    reset = ConsumerGroupTopicPartitions(group, [TopicPartition(t.inventory_commands, p, o) for p, o in ends.items()])
    client = admin(pipeline.bootstrap)  # referenced until the answer is in: a collected client never answers
    client.alter_consumer_group_offsets([reset])[group].result(timeout=30)
    assert not unprocessed(pipeline.bootstrap, group, [t.inventory_commands]), "the group now claims all is done"

    pool = pipeline.start_workers(1)
    after = receipts("g3", 4, 200)  # ...and records after the reset point make the stage look at its position
    pipeline.send_commands(after)
    wanted = {c.command_id for c in skipped + after}
    deadline = time.monotonic() + 120
    while wanted - {e.event_id for e in pipeline.read(t.stock_events, StockEvent)}:
        assert time.monotonic() < deadline, "the receipts sent before the reset never took effect"
        time.sleep(1.0)
    assert pipeline.stats(pool, 0, "inventory")["reseeks"] > 0, "the stage saw reads start past its position"
    verdict = check_stock_only(pipeline)
    assert {k: v for k, v in verdict.counts["final_levels"].items() if "SKU-G" in k} == {
        f"acme:SKU-G{i}": {"WH-A": [7, 0]} for i in range(24)
    }


def test_every_decision_is_made_once_in_a_flash_sale_with_a_crash(pipeline: Pipeline) -> None:
    spec = WorkloadSpec(orders=2000, seed=41, skus=100, flash_sale=True, flash_share=0.6, flash_stock=80)
    workload = Workload(spec)
    pipeline.load(workload)
    pool = pipeline.start_workers(2)
    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    pipeline.send_orders(orders)
    deadline = time.monotonic() + 120
    while len(pipeline.decisions()) < unique // 4:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pool.kill(0)
    pipeline.wait_decisions(unique, timeout_s=300, pool=pool)
    verdict = assert_invariants(pipeline)
    for tenant in spec.tenants:
        levels = verdict.counts["final_levels"][f"{tenant}:{FLASH_SKU}"]
        assert sum(reserved for _, reserved in levels.values()) == spec.flash_stock
    assert sum(1 for d in pipeline.decisions().values() if d.status is DecisionStatus.ACCEPTED) <= unique


def test_a_killed_worker_started_again_decides_its_partitions_again_within_seconds(pipeline: Pipeline) -> None:
    """kill -9 of a worker while orders flow, started again at once (as ``oms run`` does): it takes its partitions
    back without a rebalance (static membership), fences its predecessor's open transaction as it starts and
    restores from its own stores. Measured: the time from the kill to the first decision, made after the kill, of
    an order on a partition the killed worker owned (BENCHMARKS.md measures it properly; asserted loosely here)."""
    import threading

    from schemas.order import buyer_key

    workload = Workload(WorkloadSpec(orders=6000, seed=52, skus=300, hot_skus=0, duplicate_rate=0.0))
    pipeline.load(workload)
    pool = pipeline.start_workers(2)
    owned = {
        int(tp.rsplit("/", 1)[1])
        for tp in pool.readiness(1)["active"]
        if tp.startswith(pipeline.topics.order_inbox + "/")
    }
    assert owned, "worker 1 owns order partitions"
    orders = list(workload.orders())
    partition_of = {o.key: partition_for(buyer_key(o), pipeline.settings.partitions) for o in orders}
    stop = threading.Event()

    def trickle() -> None:  # a steady stream, so that there is always something to decide on every partition
        for start in range(0, len(orders), 100):
            if stop.is_set():
                return
            pipeline.send_orders(orders[start : start + 100])
            time.sleep(0.25)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    deadline = time.monotonic() + 120
    while len(pipeline.decisions()) < 1000:
        assert time.monotonic() < deadline, "orders are not being decided"
        time.sleep(0.5)
    killed_at_ms = int(time.time() * 1000)
    pool.kill(1)
    assert not pool.alive(1)
    assert [r.index for r in pool.supervise()] == [1], "the killed worker is started again at once"
    first_after: int | None = None
    deadline = time.monotonic() + 120
    while first_after is None:
        assert time.monotonic() < deadline, "no decision on the killed worker's partitions after the kill"
        times = [
            m.timestamp_ms
            for m in read_topics(pipeline.bootstrap, [pipeline.topics.order_decisions])
            if m.timestamp_ms > killed_at_ms and partition_of.get(wire.decode(m.value, OrderDecision).key) in owned
        ]
        first_after = min(times) if times else None
        time.sleep(0.5)
    failover_s = (first_after - killed_at_ms) / 1000
    print(f"failover: first decision on the killed worker's partitions {failover_s:.1f} s after kill -9")
    stop.set()
    sender.join()
    # Loosely: well under the session timeout plus a full restore would be (the benchmark gives the figure).
    assert failover_s <= 20, f"failover took {failover_s:.1f} s"
    restarted = pipeline.stats(pool, 1, "orders")
    assert restarted.get("admitted", 0) > 0 and restarted["generation"] >= 1, "the restarted worker took over"
    pipeline.wait_decisions(len(pipeline.inputs.orders), timeout_s=300, pool=pool)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == len(pipeline.inputs.orders)
