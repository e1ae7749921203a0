"""Read models in Redis written only if newer, by source position (engine.readmodels.versioned), on a real Redis
(the rule is a Lua script, so it needs a server): the rule itself, the holds list and the trial balance on top
of it, and, on the real pipeline, the holds list after a worker paused past its session timeout and the other
took its partitions over — it must equal the held orders on the topics."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from agents.ledger.agent import BALANCES, LedgerLogic, trial_balance
from agents.orders.agent import ORDERS, OrderLogic
from agents.orders.core import OrderRules
from engine.kafka.clients import partition_for
from engine.readmodels import redis as redisx
from engine.readmodels.holds import HoldsModel
from engine.readmodels.versioned import VersionedHash, versions_key
from engine.runtime.faults import FAULT_ENV, REPORT_ENV
from engine.runtime.stamp import Stamp
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.inbox import OrderSnapshot
from schemas.ledger import AccountBalance, TrialBalance
from schemas.order import Address, Buyer, Channel, LineState, Order, OrderLine, OrderStatus
from schemas.review import Action, AmountOver, OrderCancellation, Outcome, ReviewDecision, RuleSet
from tests.pipeline.harness import Pipeline, fault_report, http, wait_for
from tests.pipeline.test_channels_pipeline import BIG, auth, put_rules
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.delivery import Credentials
from workload.generator import Workload, WorkloadSpec

pytestmark = pytest.mark.pipeline


# -- the rule, on Redis --------------------------------------------------------------------------------------
@pytest.fixture
def prefix(servers: Settings) -> Iterator[str]:
    """A key namespace of its own on the session's Redis, removed afterwards."""
    name = f"rm{uuid.uuid4().hex[:8]}"
    yield name
    r = sync_redis.Redis.from_url(servers.redis)
    try:
        for key in r.scan_iter(match=f"{name}:*", count=500):
            r.delete(key)
    finally:
        r.close()


def run(servers: Settings, body: Any) -> Any:
    """``body(redis)`` on a fresh asyncio client of the session's Redis."""

    async def go() -> Any:
        client = redisx.client(servers)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_an_older_put_after_a_newer_put_is_ignored(servers: Settings, prefix: str) -> None:
    key = f"{prefix}:hash"

    async def body(r: Any) -> tuple[Any, ...]:
        h = VersionedHash(r)
        newer = await h.apply(key, [("f", 10, b"new")])
        older = await h.apply(key, [("f", 9, b"old")])
        same = await h.apply(key, [("f", 10, b"same version, another value")])
        return newer, older, same, await r.hget(key, "f"), await r.hget(versions_key(key), "f")

    assert run(servers, body) == (1, 0, 0, b"new", b"10")


def test_an_older_put_after_a_newer_delete_does_not_resurrect(servers: Settings, prefix: str) -> None:
    key = f"{prefix}:hash"

    async def body(r: Any) -> tuple[Any, ...]:
        h = VersionedHash(r)
        await h.apply(key, [("f", 3, b"held")])
        deleted = await h.apply(key, [("f", 7, None)])
        late = await h.apply(key, [("f", 5, b"held again, said a late writer")])
        return deleted, late, await r.hgetall(key), await r.hget(versions_key(key), "f")

    assert run(servers, body) == (1, 0, {}, b"7")


def test_versions_are_compared_as_numbers_and_kept_to_the_digit(servers: Settings, prefix: str) -> None:
    """Offsets are compared as numbers (9 < 10, unlike strings), large ones too, and kept exactly."""
    key = f"{prefix}:hash"
    big = 10**15 + 1

    async def body(r: Any) -> tuple[Any, ...]:
        h = VersionedHash(r)
        await h.apply(key, [("a", 9, b"x"), ("b", big, b"y")])
        a = await h.apply(key, [("a", 10, b"x10")])
        b = await h.apply(key, [("b", big - 1, b"older")])
        return a, b, await r.hgetall(key), await r.hget(versions_key(key), "b")

    assert run(servers, body) == (1, 0, {b"a": b"x10", b"b": b"y"}, str(big).encode())


def summary(order_id: str, held_at: int = 1) -> dict[str, Any]:
    return {"order_id": order_id, "inbox_key": f"acme:s1:b-{order_id}", "kind": "review", "held_at": held_at}


def test_a_rebuild_at_position_p_keeps_what_newer_transactions_wrote(servers: Settings, prefix: str) -> None:
    """The rebuild of partition 1 reads its stored position P = 100 first, then scans the state (here: holds
    ``o-kept`` and ``o-scanned``); meanwhile the transactions at offsets 100 and 104 put ``o-new`` and deleted
    ``o-scanned``. The rebuild writes at version 99: the newer writes stand, older entries are corrected."""
    keys = redisx.Keys(prefix)

    async def body(r: Any) -> tuple[Any, ...]:
        holds = HoldsModel(r, keys)
        await holds.apply(
            1,
            [
                ("acme", "o-stale", summary("o-stale"), 40),  # released at 60, that delete never reached Redis
                ("acme", "o-kept", summary("o-kept"), 50),
                ("acme", "o-scanned", summary("o-scanned"), 70),
            ],
        )
        await holds.apply(2, [("acme", "o-other", summary("o-other"), 500)])  # another partition: not touched
        await holds.apply(9, [("versions", "o-odd", summary("o-odd"), 1)])  # a tenant named like the side hashes

        def scan() -> list[tuple[str, str, dict[str, Any]]]:
            return [("acme", "o-kept", summary("o-kept")), ("acme", "o-scanned", summary("o-scanned"))]

        async def newer_transactions() -> None:
            await holds.apply(1, [("acme", "o-new", summary("o-new"), 100), ("acme", "o-scanned", None, 104)])

        await newer_transactions()  # landed between the scan and the rebuild's writes
        done = await holds.replace_partition(1, 100, scan)
        listed = {h["order_id"]: h["partition"] for h in await holds.list("acme")}
        # a worker that lost partition 1 long ago flushes what it had: older, so nothing changes
        await holds.apply(1, [("acme", "o-stale", summary("o-stale"), 45), ("acme", "o-new", None, 90)])
        after_zombie = {h["order_id"] for h in await holds.list("acme")}
        odd = [h["order_id"] for h in await holds.list("versions")]
        return done, listed, after_zombie, odd

    done, listed, after_zombie, odd = run(servers, body)
    assert done
    assert listed == {"o-kept": 1, "o-new": 1, "o-other": 2}, "o-stale deleted, o-scanned's newer delete stands"
    assert after_zombie == {"o-kept", "o-new", "o-other"}
    assert odd == ["o-odd"]


def test_the_order_stage_reads_the_position_before_it_scans_the_state(servers: Settings, prefix: str) -> None:
    """The stage's rebuild takes the position first: the state it scans may already be newer (a transaction
    applied meanwhile); those changes then carry higher versions of their own and win whatever the order."""
    keys = redisx.Keys(prefix)
    topics = Topics(prefix)
    logic = OrderLogic(topics, 4, 86_400_000, "e1")
    calls: list[str] = []
    order = _order("o-1", 30_000)
    held = OrderRules(86_400_000).on_snapshot(None, None, _rules(), order, Stamp("orders.e1.p1", 7), 1_000, 1_000, None)
    assert held.order is not None and held.order.hold is not None
    p = partition_for(OrderSnapshot(order=order).key, 4)

    class Store:
        def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
            calls.append(f"scan p{partition}")
            yield order.key.encode(), wire.encode(held.order)

    class FakeStage:
        def stored_next_offset(self, topic: str, partition: int) -> int:
            calls.append(f"position {topic}/{partition}")
            return 8

        def store(self, table: str) -> Store:
            assert table == ORDERS
            return Store()

    async def body(r: Any) -> tuple[Any, ...]:
        logic.holds, logic.stage = HoldsModel(r, keys), FakeStage()  # type: ignore[assignment]
        done = await logic.rebuild_holds(p)
        return done, await logic.holds.list("acme"), await r.hget(versions_key(keys.holds("acme")), "o-1")

    done, listed, version = run(servers, body)
    assert calls == [f"position {topics.order_inbox}/{p}", f"scan p{p}"]
    assert done and [(h["order_id"], h["partition"], h["amount_fen"]) for h in listed] == [("o-1", p, 30_000)]
    assert version == b"7", "written at the stored position minus one"


def _order(order_id: str, price_fen: int) -> Order:
    return Order(
        tenant="acme",
        order_id=order_id,
        channel=Channel.WEB,
        shop_id="s1",
        platform_order_id=order_id,
        status=OrderStatus.PAID,
        buyer=Buyer(id=f"b-{order_id}"),
        receiver=Address(name="x"),
        lines=[OrderLine(line_no=1, sku="SKU-00001", quantity=1, unit_price_fen=price_fen, status=LineState.ACTIVE)],
        created_at=1_000,
        ingested_at=1_000,
        version=1,
    )


def _rules() -> RuleSet:
    big = AmountOver(id="big", action=Action.HOLD, reason="amount_over_limit", threshold_fen=10_000)
    return RuleSet(tenant="acme", version=1, rules=[big])


def test_the_trial_balance_is_written_only_if_newer_and_read_without_its_versions(
    servers: Settings, prefix: str
) -> None:
    keys = redisx.Keys(prefix)
    logic = LedgerLogic(Topics(prefix), 4)

    def share(debit: int, vouchers: int) -> bytes:
        return wire.encode(
            TrialBalance(
                tenant="acme",
                accounts={"1122": AccountBalance(debit, 0), "6001": AccountBalance(0, debit)},
                names={"1122": "应收账款", "6001": "主营业务收入"},
                vouchers=vouchers,
            )
        )

    class Store:
        def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
            yield b"acme#p0", share(300, 3)  # the table, as the rebuild reads it: position 21 covers it

    class FakeStage:
        def stored_next_offset(self, topic: str, partition: int) -> int:
            return 21

        def store(self, table: str) -> Store:
            assert table == BALANCES
            return Store()

    async def body(r: Any) -> tuple[Any, ...]:
        logic.redis, logic.keys, logic.stage = r, keys, FakeStage()  # type: ignore[assignment]
        await logic._write(0, {"acme": (30, share(500, 5))})  # a newer transaction (offset 30) wrote first
        await logic._write(1, {"acme": (4, share(100, 1))})
        await logic.rebuild(0)  # at version 20: older than what is there
        await logic._write(1, {"acme": (3, share(90, 9))})  # a late, older write of partition 1
        return await trial_balance(r, keys, "acme"), await r.hgetall(versions_key(keys.trial_balance("acme")))

    books, versions = run(servers, body)
    assert (books["partitions"], books["vouchers"], books["debit_fen"], books["balanced"]) == (2, 6, 600, True)
    assert versions == {b"p0": b"30", b"p1": b"4"}


# -- the holds list after a pause, on the real pipeline ---------------------------------------------------------
def held_on_the_topics(p: Pipeline) -> set[str]:
    """Orders held for an operator, read from the result topics alone: the last review decision of the order is
    ``held`` and no order decision and no cancellation names it (an order's review decisions are on one
    partition, in the order they were made)."""
    last: dict[str, ReviewDecision] = {}
    for review in p.read(p.topics.review_decisions, ReviewDecision):
        last[review.key] = review
    decided = set(p.decisions())
    cancelled = {c.key for c in p.read(p.topics.order_cancellations, OrderCancellation)}
    return {key for key, review in last.items() if review.outcome is Outcome.HELD} - decided - cancelled


def listed_holds(p: Pipeline, credentials: Credentials) -> list[dict[str, Any]]:
    status, answer = http("GET", p.api("/api/v1/acme/holds"), None, auth(credentials))
    assert status == 200, answer
    assert answer["count"] == len(answer["holds"])
    return answer["holds"]


@pytest.fixture
def remembered(pipeline: Pipeline) -> Iterator[int]:
    """Redis as production has it: besides the read models, the API's memory of the deliveries it produced (a
    key per order and version, kept ``OMS_IDEMPOTENCY_TTL_S``, a week by default) — 100,000 of them, so a scan
    of the keyspace (a rebuild looks for the holds lists) takes as long as it does there. Removed afterwards
    (and they expire in 15 minutes anyway)."""
    keys, count = redisx.Keys(pipeline.settings.topic_prefix), 100_000
    r = sync_redis.Redis.from_url(pipeline.settings.redis)
    try:
        for start in range(0, count, 5_000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, start + 5_000):
                pipe.set(keys.idempotency("acme", f"web-s9-{i}:1"), b"1", ex=900)
            pipe.execute()
        yield count
    finally:
        for start in range(0, count, 5_000):
            r.delete(*(keys.idempotency("acme", f"web-s9-{i}:1") for i in range(start, start + 5_000)))
        r.close()


def test_the_holds_list_equals_the_held_orders_on_the_topics_after_a_pause(
    pipeline: Pipeline, credentials: Credentials, tmp_path: Path, remembered: int
) -> None:
    """Worker 1 stops itself (SIGSTOP) with an order-stage transaction open while orders keep arriving; after its
    session timeout worker 0 takes its partitions over (and rebuilds their holds from the restored state while it
    works through the backlog); then worker 1 resumes — its late Redis writes are older than worker 0's — and
    rejoins, and the partitions move again (rebuilt again, while orders still arrive). Once the pipeline is
    idle, the holds list must be exactly the orders the topics say are held: none lost, none left behind."""
    spec = WorkloadSpec(orders=2400, seed=31, skus=120, hot_skus=0, tenants=("acme",), tenant_weights=(1.0,))
    workload = Workload(spec)
    orders = list(workload.orders())
    unique = len({o.key for o in orders})
    # hold about half of the orders: everything above the median amount
    threshold = int(statistics.median(o.goods_fen + o.shipping_fen for o in orders))
    report_path = tmp_path / "fault.json"
    pool = pipeline.start_workers(2, env={1: {FAULT_ENV: "orders:pause:40", REPORT_ENV: str(report_path)}})
    pipeline.load(workload)
    put_rules(pipeline, credentials, [BIG | {"threshold_fen": threshold}])
    started_in = pipeline.stats(pool, 1, "orders")["generation"]
    inbox = {f"{pipeline.topics.order_inbox}/{p}" for p in range(pipeline.settings.partitions)}
    remaining = list(orders)

    def trickle(until: Any, what: str, timeout_s: float, per_step: int = 10, keep: int = 0) -> None:
        """Send orders, ``per_step`` every quarter of a second (keeping the last ``keep`` for later), until
        ``until()`` holds: the stream goes on through every step, so the rebuilds of the holds that each
        assignment starts run while transactions commit (and write holds) on the same partitions."""
        deadline = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > deadline:
                pipeline.dump_logs()
                raise AssertionError(f"timed out waiting for {what}")
            n = min(per_step, len(remaining) - keep)
            if n > 0:
                pipeline.send_orders([remaining.pop(0) for _ in range(n)])
            time.sleep(0.25)

    trickle(report_path.exists, "worker 1 to pause", 120, keep=len(orders) - 300)
    report = fault_report(report_path)
    assert report["step"] == "pause"
    paused_in = pipeline.stats(pool, 0, "orders")["generation"]

    def taken_over() -> bool:
        state = pool.readiness(0) or {}
        return bool(
            state.get("ready")
            and inbox <= set(state.get("active", []))
            and pipeline.stats(pool, 0, "orders")["generation"] > paused_in
        )

    def fenced() -> bool:
        return (pipeline.stats(pool, 1, "orders") or {}).get("fenced", 0) >= 1

    def rejoined() -> bool:
        state = pool.readiness(1) or {}
        return bool(
            state.get("ready")
            and inbox & set(state.get("active", []))
            and pipeline.stats(pool, 1, "orders")["generation"] > started_in
        )

    # Up to a thousand orders arrive while worker 1 is paused: worker 0 takes over a backlog, as in a flash sale,
    # and rebuilds the moved partitions' holds while it works through it. Then worker 1 wakes (its late Redis
    # writes are older than worker 0's), is fenced and rejoins, and up to 600 more make a backlog for the
    # partitions' next owners, who rebuild them again; the last 500 at least follow at a steady pace.
    takeover_s = pipeline.settings.session_timeout_s + 60
    trickle(taken_over, "worker 0 to take over", takeover_s, per_step=60, keep=len(orders) - 1300)
    pool.resume(1)
    trickle(fenced, "worker 1 to be fenced", 60, per_step=60, keep=500)
    trickle(rejoined, "worker 1 to own order-inbox partitions again", takeover_s, per_step=60, keep=500)
    trickle(lambda: not remaining, "every order sent", 300)
    pipeline.wait_idle()

    held = held_on_the_topics(pipeline)
    assert len(held) >= unique // 4, f"the rule held only {len(held)} of {unique} orders"
    moved = {
        o.key
        for o in orders
        if partition_for(OrderSnapshot(order=o).key, pipeline.settings.partitions) == report["partition"]
    }
    assert held & moved, "held orders on the partition that changed hands"

    def listed_equals_held() -> bool:
        return {f"acme:{h['order_id']}" for h in listed_holds(pipeline, credentials)} == held

    try:
        wait_for(listed_equals_held, timeout_s=60, what="the holds list to equal the held orders on the topics")
    except AssertionError:
        listed = {f"acme:{h['order_id']}" for h in listed_holds(pipeline, credentials)}
        missing, extra = sorted(held - listed), sorted(listed - held)
        raise AssertionError(
            f"{len(held)} held on the topics, {len(listed)} listed: missing {len(missing)} {missing[:10]}, "
            f"extra {len(extra)} {extra[:10]}"
        ) from None
    for hold in listed_holds(pipeline, credentials):
        assert hold["partition"] == partition_for(hold["inbox_key"], pipeline.settings.partitions), hold
        assert hold["kind"] == "review" and hold["reasons"] == ["amount_over_limit"], hold
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == unique
    assert verdict.counts["open"].get("held", 0) == len(held)
