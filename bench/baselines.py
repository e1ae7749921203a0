"""The baselines the engine's benchmark is compared with, measured in the same run on the same machine.

    python -m bench.baselines --orders 20000

* ``ceiling`` — what Kafka itself allows for the engine's path: raw confluent-kafka relays (one process per
  hop, like the engine's worker processes; threads would serialize on the GIL) carry the day's orders through
  the same three hops as the engine — orders → one reserve per line keyed ``tenant:sku`` → one line result
  keyed by the buyer → one decision per order — with no state, no stock check, no transactions (at-least-once,
  idempotent ``acks=all`` producers). It is timed only after every relay holds its partitions, so it is the
  steady-state ceiling, not a start-up; reported per hop and end to end.
* ``redis_lua`` — the seed article's allocator: one atomic Lua check-and-decrement over all of an order's lines,
  several concurrent client processes, each sending pipelines of ``EVALSHA``.
* ``redis_lock`` — the same allocation with a ``SET NX PX`` lock per SKU (taken in sorted key order) around
  read-then-decrement; no Lua for the allocation itself.

Both Redis designs get the same de-duplicated orders and the same opening stock, one pool per ``tenant:sku``
(the seed design has no warehouses), and are checked for oversell. ``REDIS_CANNOT`` says what they do not do
that the engine does. One JSON line per measurement (``bench.report.emit``); BENCHMARKS.md is not touched.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import random
import sys
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from bench.report import attempt, emit, exit_code
from engine.kafka.admin import create_topics, delete_topics
from engine.kafka.clients import producer
from engine.settings import Settings
from schemas import wire
from schemas.inbox import OrderSnapshot
from schemas.inventory import Reserve, reserve_id
from schemas.order import Channel, Order, buyer_key, line_id
from schemas.saga import DecisionLine, DecisionStatus, LineResult, LineStatus, OrderDecision, decision_id, result_id
from workload.generator import Workload, WorkloadSpec

#: What the Redis designs do not do that the engine does; the lead prints it under the table.
REDIS_CANNOT: list[str] = [
    "No replay: only counters are kept, so the day's decisions cannot be recomputed or audited from a log.",
    "No durable decision: a restart without AOF fsync=always, or a failover to an async replica, loses "
    "acknowledged decrements.",
    "No stock events or per-line reservations: warehouses, finance and BI learn nothing atomically with a decrement.",
    "No idempotency: a redelivered or retried order decrements again unless the client dedupes; a timed-out "
    "client cannot tell if it ran.",
    "No release or partial-failure handling: cancel, refund, or a client dying after the decrement need more "
    "scripts (or leak stock).",
    "No warehouses: one pool per SKU; choosing a warehouse per line needs more keys and logic.",
    "Lua: one script at a time on one core for every SKU; on Redis Cluster an order's keys must share a hash slot.",
    "Lock: no fencing token; a client paused past the lock's TTL can still decrement while another holds the lock.",
]

LUA_ALLOCATE = """
-- KEYS: stock:{tenant}:{sku} per line; ARGV: quantity per line. All lines or none.
for i, key in ipairs(KEYS) do
  local have = tonumber(redis.call('GET', key) or '-1')
  if have < tonumber(ARGV[i]) then return 0 end
end
for i, key in ipairs(KEYS) do redis.call('DECRBY', key, ARGV[i]) end
return 1
"""

#: Release a lock only if it is still ours (the standard compare-and-delete; Redis 7 has no command for it).
LUA_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

HOPS = ("orders→lines", "lines→results", "results→decisions")
#: Carries ``lines,created_at,ingested_at`` from hop 1 to hop 3, which keeps no copy of the order (the engine's
#: order stage has it in state; a stateless relay must be told how many lines to wait for).
ORDER_HEADER = "oms-order"
BATCH = 500
POLL_S = 0.1
COMMIT_EVERY_S = 1.0


# -- the ceiling: pure transforms of each hop -------------------------------------------------------------------


class _LineView(msgspec.Struct):
    line_no: int
    sku: str
    quantity: int


class _OrderView(msgspec.Struct):
    tenant: str
    order_id: str
    lines: list[_LineView]
    created_at: int
    ingested_at: int


class _SnapshotView(msgspec.Struct):
    """Only what hop 1 needs of an OrderSnapshot: no validation of the rest (the ceiling does minimal work)."""

    order: _OrderView


class _ReserveView(msgspec.Struct):
    tenant: str
    sku: str
    order_id: str
    line_id: str
    quantity: int
    reply_to: str
    ts: int


class _ResultView(msgspec.Struct):
    tenant: str
    order_id: str
    line_id: str
    sku: str
    quantity: int
    warehouse: str | None = None


_snapshot_dec = msgspec.json.Decoder(_SnapshotView)
_reserve_dec = msgspec.json.Decoder(_ReserveView)
_result_dec = msgspec.json.Decoder(_ResultView)

Out = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers


def lines_of(value: bytes, key: bytes, origin: str, offset: int, seen: set[str]) -> list[Out]:
    """Hop 1: an order snapshot → one Reserve per line, keyed ``tenant:sku``; a redelivered order (its key in
    ``seen``) gives nothing, as the engine's order state would."""
    order = _snapshot_dec.decode(value).order
    okey = f"{order.tenant}:{order.order_id}"
    if okey in seen:
        return []
    seen.add(okey)
    reply_to = key.decode()
    header = [(ORDER_HEADER, f"{len(order.lines)},{order.created_at},{order.ingested_at}".encode())]
    out: list[Out] = []
    for i, ln in enumerate(order.lines):
        lid = line_id(order.order_id, ln.line_no)
        cmd = Reserve(
            command_id=reserve_id(order.tenant, lid),
            tenant=order.tenant,
            sku=ln.sku,
            origin=origin,
            seq=offset * 256 + i,
            ts=order.ingested_at,
            order_id=order.order_id,
            line_id=lid,
            quantity=ln.quantity,
            reply_to=reply_to,
        )
        out.append((f"{order.tenant}:{ln.sku}".encode(), wire.encode(cmd), header))
    return out


def result_of(value: bytes, headers: list[tuple[str, bytes]]) -> Out:
    """Hop 2: a Reserve → its LineResult (always reserved: no stock is kept), keyed by the buyer."""
    cmd = _reserve_dec.decode(value)
    res = LineResult(
        result_id=result_id(cmd.tenant, cmd.line_id, LineStatus.RESERVED),
        tenant=cmd.tenant,
        order_id=cmd.order_id,
        line_id=cmd.line_id,
        sku=cmd.sku,
        status=LineStatus.RESERVED,
        warehouse="WH-SH",
        quantity=cmd.quantity,
        reply_to=cmd.reply_to,
        ts=cmd.ts,
    )
    return cmd.reply_to.encode(), wire.encode(res), headers


@dataclass
class Collector:
    """Hop 3: gathers an order's line results in memory and emits its decision when the last one arrives."""

    pending: dict[str, dict[str, DecisionLine]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def add(self, value: bytes, headers: list[tuple[str, bytes]], ts: int) -> Out | None:
        res = _result_dec.decode(value)
        okey = f"{res.tenant}:{res.order_id}"
        if okey in self.done:
            return None
        lines = self.pending.setdefault(okey, {})
        lines[res.line_id] = DecisionLine(
            line_id=res.line_id, sku=res.sku, quantity=res.quantity, warehouse=res.warehouse
        )
        count, created, ingested = (int(x) for x in dict(headers)[ORDER_HEADER].split(b","))
        if len(lines) < count:
            return None
        del self.pending[okey]
        self.done.add(okey)
        decision = OrderDecision(
            decision_id=decision_id(res.tenant, res.order_id),
            tenant=res.tenant,
            order_id=res.order_id,
            channel=Channel(res.order_id.split("-", 1)[0]),  # order ids start with the channel
            status=DecisionStatus.ACCEPTED,
            lines=list(lines.values()),
            order_created_at=created,
            ingested_at=ingested,
            decided_at=ts,
        )
        return okey.encode(), wire.encode(decision), []


# -- the ceiling: relay processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelaySpec:
    hop: int  # index into HOPS
    proc: int
    bootstrap: str
    source: str
    sink: str
    group: str


def _relay(spec: RelaySpec, reports: Any, stop: Any) -> None:
    """One relay process: consume batches, transform, produce; commit positions after a flush (at-least-once).
    Reports ``assigned`` (after on_assign and the poll that follows it), then its counts when told to stop."""
    try:
        _relay_loop(spec, reports, stop)
    except Exception:  # the parent must not wait for a relay that died
        reports.put(("error", spec.hop, spec.proc, traceback.format_exc()))


def _relay_loop(spec: RelaySpec, reports: Any, stop: Any) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": spec.bootstrap,
            "group.id": spec.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
            "log_level": 3,
        }
    )
    prod = producer(spec.bootstrap)
    changed: list[list[int]] = []

    def on_assign(_c: Consumer, parts: list[TopicPartition]) -> None:
        changed.append(sorted(p.partition for p in parts))

    def on_revoke(_c: Consumer, _parts: list[TopicPartition]) -> None:
        changed.append([])

    consumer.subscribe([spec.source], on_assign=on_assign, on_revoke=on_revoke)
    seen: set[str] = set()
    collector = Collector()
    origin = f"ceiling-{spec.hop}-{spec.proc}"
    n_in = n_out = 0
    first = last = cpu0 = cpu1 = py0 = py1 = 0.0
    last_commit = time.monotonic()
    while not stop.is_set():
        batch = take(consumer)
        if changed:
            reports.put(("assigned", spec.hop, spec.proc, changed[-1]))
            changed.clear()
        now = time.monotonic()
        for msg in batch:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(str(msg.error()))
                continue
            value, key = msg.value(), msg.key()
            if not value:  # a warm-up record: pass it on to the same partition, uncounted
                _produce(prod, spec.sink, key, b"", [], msg.partition())
                continue
            if not n_in:
                first, cpu0, py0 = now, time.process_time(), time.thread_time()
            n_in += 1
            if spec.hop == 0:
                outs = lines_of(value, key, origin, msg.offset(), seen)
            elif spec.hop == 1:
                outs = [result_of(value, msg.headers() or [])]
            else:
                one = collector.add(value, msg.headers() or [], msg.timestamp()[1])
                outs = [] if one is None else [one]
            for k, v, h in outs:
                _produce(prod, spec.sink, k, v, h)
            n_out += len(outs)
        if batch:
            last, cpu1, py1 = time.monotonic(), time.process_time(), time.thread_time()
            prod.poll(0)
        if now - last_commit >= COMMIT_EVERY_S:
            prod.flush(30)
            with contextlib.suppress(Exception):  # nothing consumed yet: no offsets to commit
                consumer.commit(asynchronous=True)
            last_commit = now
    prod.flush(30)
    with contextlib.suppress(Exception):
        consumer.commit(asynchronous=False)
    consumer.close()
    reports.put(
        (
            "done",
            spec.hop,
            spec.proc,
            {"in": n_in, "out": n_out, "first": first, "last": last, "cpu_s": cpu1 - cpu0, "py_cpu_s": py1 - py0},
        )
    )


def take(consumer: Consumer) -> list[Any]:
    """What is there, up to BATCH records, waiting at most POLL_S for the first. ``consume(n, timeout)`` alone
    waits out its whole timeout unless n records arrive, which would hold every partial batch for POLL_S at
    every hop."""
    batch = consumer.consume(num_messages=BATCH, timeout=0)
    if batch:
        return batch
    first = consumer.poll(POLL_S)
    if first is None:
        return []
    return [first, *consumer.consume(num_messages=BATCH - 1, timeout=0)]


def _produce(
    prod: Any, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], partition: int = -1
) -> None:
    while True:
        try:
            prod.produce(topic, value=value, key=key, headers=headers or None, partition=partition)
            return
        except BufferError:  # local queue full: let it drain
            prod.poll(0.05)


def assignments_complete(latest: dict[tuple[int, int], list[int]], hops: int, procs: int, partitions: int) -> bool:
    """True when every relay has reported and each hop's relays hold every partition exactly once: the groups
    are stable and no rebalance is pending (a member that has not joined yet has not reported)."""
    for hop in range(hops):
        held = [latest.get((hop, p)) for p in range(procs)]
        if any(h is None for h in held):
            return False
        flat = [x for h in held for x in h or []]
        if sorted(flat) != list(range(partitions)):
            return False
    return True


def hop_rates(done: dict[tuple[int, int], dict[str, float]], hops: int = len(HOPS)) -> list[dict[str, Any]]:
    """Per hop: records in (over all its relays) per second from its first record to its last."""
    out = []
    for hop in range(hops):
        stats = [s for (h, _), s in done.items() if h == hop and s["in"]]
        records = int(sum(s["in"] for s in stats))
        span = (max(s["last"] for s in stats) - min(s["first"] for s in stats)) if stats else 0.0
        out.append(
            {
                "hop": HOPS[hop],
                "records": records,
                "records_out": int(sum(s["out"] for s in stats)),
                "elapsed_s": round(span, 3),
                "records_per_s": round(records / span, 1) if span > 0 else None,
                "cpu_s": round(sum(s["cpu_s"] for s in stats), 3),  # every thread of its relays, librdkafka's too
                "python_cpu_s": round(sum(s["py_cpu_s"] for s in stats), 3),  # the relays' Python threads alone
            }
        )
    return out


def measure_ceiling(
    settings: Settings,
    orders: list[Order],
    partitions: int | None = None,
    relay_procs: int = 1,
    ready_timeout_s: float = 60.0,
    stall_s: float = 60.0,
) -> dict[str, Any]:
    """Relay the day's orders through the engine's three hops with raw confluent-kafka; timed from the first
    order produced (after every relay holds its partitions) to the last decision read back."""
    partitions = partitions or settings.partitions
    load = round(os.getloadavg()[0], 2)
    prefix = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}.{t}" for t in ("order-inbox", "inventory-commands", "line-results", "order-decisions")]
    create_topics(settings.bootstrap, names, partitions)
    ctx = mp.get_context("spawn")
    reports = ctx.Queue()
    stop = ctx.Event()
    procs = [
        ctx.Process(
            target=_relay,
            args=(
                RelaySpec(hop, i, settings.bootstrap, names[hop], names[hop + 1], f"{prefix}.hop{hop}"),
                reports,
                stop,
            ),
            name=f"ceiling-hop{hop}-{i}",
            daemon=True,
        )
        for hop in range(len(HOPS))
        for i in range(relay_procs)
    ]
    decisions = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"{prefix}.reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            "log_level": 3,
        }
    )
    try:
        for p in procs:
            p.start()
        decisions.assign([TopicPartition(names[-1], p, OFFSET_BEGINNING) for p in range(partitions)])
        latest: dict[tuple[int, int], list[int]] = {}
        deadline = time.monotonic() + ready_timeout_s
        while not assignments_complete(latest, len(HOPS), relay_procs, partitions):
            kind, hop, proc, body = _report(reports, deadline, "relays assigned")
            if kind == "assigned":
                latest[(hop, proc)] = body
        send = producer(settings.bootstrap)
        _warm_up(send, decisions, names[0], partitions, deadline, reports)

        now_ms = int(time.time() * 1000)
        payloads = []
        for o in orders:
            snap = OrderSnapshot(order=msgspec.structs.replace(o, ingested_at=now_ms))
            payloads.append((buyer_key(o).encode(), wire.encode(snap)))
        unique = len({o.key for o in orders})
        start = time.monotonic()
        for key, value in payloads:
            _produce(send, names[0], key, value, [])
            send.poll(0)
        send.flush(60)
        produced = time.monotonic()
        decided: set[bytes] = set()
        last = time.monotonic()
        while len(decided) < unique and time.monotonic() - last < stall_s:
            for msg in take(decisions):
                if msg.error() is None and msg.value() and msg.key() not in decided:
                    decided.add(msg.key())
                    last = time.monotonic()
            _raise_relay_error(reports)
        elapsed = last - start
        stop.set()
        done: dict[tuple[int, int], dict[str, float]] = {}
        deadline = time.monotonic() + 60
        while len(done) < len(procs):
            kind, hop, proc, body = _report(reports, deadline, "relays stopped")
            if kind == "done":
                done[(hop, proc)] = body
        return {
            "what": "ceiling",
            "orders": len(decided),
            "expected": unique,
            "elapsed_s": round(elapsed, 3),
            "orders_per_s": round(len(decided) / elapsed, 1),
            "produce_s": round(produced - start, 3),
            "partitions": partitions,
            "relay_procs": relay_procs,
            "load_1m": load,  # the machine's load average when the run started: others' work shares the cores
            "hops": hop_rates(done),
        }
    finally:
        stop.set()
        decisions.close()
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
        delete_topics(settings.bootstrap, prefix + ".")


def _warm_up(send: Any, decisions: Consumer, inbox: str, partitions: int, deadline: float, reports: Any) -> None:
    """One empty record per inbox partition, passed on by every relay to the same partition of the next topic,
    until the reader has one from each: every connection, producer id, partition leader and fetch is then up,
    and what is timed afterwards is the steady state."""
    for p in range(partitions):
        _produce(send, inbox, b"warm-up", b"", [], p)
    send.flush(30)
    warm: set[int] = set()
    while len(warm) < partitions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ceiling: warm-up records reached {len(warm)} of {partitions} decision partitions")
        for msg in take(decisions):
            if msg.error() is None and not msg.value():
                warm.add(msg.partition())
        _raise_relay_error(reports)


def _report(reports: Any, deadline: float, waiting_for: str) -> tuple[str, int, int, Any]:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"ceiling: timed out waiting for {waiting_for}")
        try:
            item = reports.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if item[0] == "error":
            raise RuntimeError(f"ceiling relay {HOPS[item[1]]} #{item[2]} failed:\n{item[3]}")
        return item


def _raise_relay_error(reports: Any) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            item = reports.get_nowait()
            if item[0] == "error":
                raise RuntimeError(f"ceiling relay {HOPS[item[1]]} #{item[2]} failed:\n{item[3]}")


# -- the seed article's design: Redis ------------------------------------------------------------------------


Plan = list[tuple[list[str], list[int]]]  # per order: stock keys, quantities


def stock_pools(workload: Workload, prefix: str) -> dict[str, int]:
    """Opening stock, one pool per ``tenant:sku`` (the per-warehouse receipts summed): the seed design has no
    warehouses."""
    totals: dict[str, int] = {}
    for cmd in workload.opening_stock("bench", 0, 0):
        key = f"{prefix}:{cmd.tenant}:{cmd.sku}"
        totals[key] = totals.get(key, 0) + cmd.quantity
    return totals


def order_plan(orders: Iterable[Order], prefix: str) -> Plan:
    """Each order once (redeliveries dropped by order key, as a client must), as stock keys and quantities in
    sorted key order (the lock design takes locks in that order; lines of one SKU are summed)."""
    seen: set[str] = set()
    plan: Plan = []
    for o in orders:
        if o.key in seen:
            continue
        seen.add(o.key)
        want: dict[str, int] = {}
        for ln in o.lines:
            k = f"{prefix}:{o.tenant}:{ln.sku}"
            want[k] = want.get(k, 0) + ln.quantity
        keys = sorted(want)
        plan.append((keys, [want[k] for k in keys]))
    return plan


def oversell(totals: dict[str, int], taken: dict[str, int], final: dict[str, int]) -> dict[str, int]:
    """Units accepted beyond stock, keys left below zero, and keys whose final value is not opening minus what
    the clients say they took (a lost or doubled update)."""
    return {
        "oversold_units": sum(max(0, taken.get(k, 0) - v) for k, v in totals.items()),
        "negative_keys": sum(1 for k in totals if final[k] < 0),
        "inconsistent_keys": sum(1 for k, v in totals.items() if final[k] != v - taken.get(k, 0)),
    }


@dataclass(frozen=True)
class ClientSpec:
    design: str  # "lua" | "lock"
    index: int
    url: str
    prefix: str
    pipeline: int
    lock_ttl_ms: int = 2000


def _client(spec: ClientSpec, plan: Plan, reports: Any, start: Any) -> None:
    try:
        r = redis.Redis.from_url(spec.url)
        r.ping()
        reports.put(("ready", spec.index, None))
        start.wait()
        run = _lua_client if spec.design == "lua" else _lock_client
        accepted, taken, retries = run(r, spec, plan)
        reports.put(
            ("done", spec.index, {"accepted": accepted, "taken": taken, "retries": retries, "end": time.monotonic()})
        )
    except Exception:
        reports.put(("error", spec.index, traceback.format_exc()))


def _lua_client(r: redis.Redis, spec: ClientSpec, plan: Plan) -> tuple[int, dict[str, int], int]:
    """Pipelines of EVALSHA, ``spec.pipeline`` orders per round trip."""
    sha = r.script_load(LUA_ALLOCATE)
    accepted = 0
    taken: dict[str, int] = {}
    for at in range(0, len(plan), spec.pipeline):
        chunk = plan[at : at + spec.pipeline]
        pipe = r.pipeline(transaction=False)
        for keys, qtys in chunk:
            pipe.evalsha(sha, len(keys), *keys, *qtys)
        for (keys, qtys), ok in zip(chunk, pipe.execute(), strict=True):
            if ok:
                accepted += 1
                for k, q in zip(keys, qtys, strict=True):
                    taken[k] = taken.get(k, 0) + q
    return accepted, taken, 0


def _lock_client(r: redis.Redis, spec: ClientSpec, plan: Plan) -> tuple[int, dict[str, int], int]:
    """Per order: lock its SKUs in sorted order (one pipelined SET NX PX; keep the sorted prefix won, wait
    for the first one taken), GET all, check, DECRBY all and unlock (one pipeline). Holding only a sorted prefix
    while waiting cannot deadlock."""
    sha = r.script_load(LUA_UNLOCK)
    rng = random.Random(spec.index)
    accepted = retries = 0
    taken: dict[str, int] = {}
    for n, (keys, qtys) in enumerate(plan):
        token = f"{spec.index}-{n}"
        locks = [f"{spec.prefix}:lock:{k[len(spec.prefix) + 1 :]}" for k in keys]
        held = attempt = 0
        while held < len(locks):
            pipe = r.pipeline(transaction=False)
            for lk in locks[held:]:
                pipe.set(lk, token, nx=True, px=spec.lock_ttl_ms)
            got = pipe.execute()
            won = next((i for i, ok in enumerate(got) if not ok), len(got))
            beyond = [locks[held + i] for i in range(won + 1, len(got)) if got[i]]
            held += won
            if beyond:  # won past a lock that is taken: give those back to keep holding a sorted prefix only
                _unlock(r, sha, beyond, token)
            if held < len(locks):
                retries += 1
                attempt += 1
                time.sleep(rng.uniform(0, 0.0002 * 2 ** min(attempt, 6)))
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
        have = [int(v) if v is not None else -1 for v in pipe.execute()]
        ok = all(h >= q for h, q in zip(have, qtys, strict=True))
        pipe = r.pipeline(transaction=False)
        if ok:
            for k, q in zip(keys, qtys, strict=True):
                pipe.decrby(k, q)
        for lk in locks:
            pipe.evalsha(sha, 1, lk, token)
        pipe.execute()
        if ok:
            accepted += 1
            for k, q in zip(keys, qtys, strict=True):
                taken[k] = taken.get(k, 0) + q
    return accepted, taken, retries


def _unlock(r: redis.Redis, sha: str, locks: list[str], token: str) -> None:
    pipe = r.pipeline(transaction=False)
    for lk in locks:
        pipe.evalsha(sha, 1, lk, token)
    pipe.execute()


def _measure_redis(
    design: str, settings: Settings, workload: Workload, orders: list[Order], clients: int, pipeline: int
) -> dict[str, Any]:
    load = round(os.getloadavg()[0], 2)
    r = redis.Redis.from_url(settings.redis)
    prefix = f"bench:{design}:{uuid.uuid4().hex[:8]}"
    totals = stock_pools(workload, prefix)
    plan = order_plan(orders, prefix)
    ctx = mp.get_context("spawn")
    reports = ctx.Queue()
    start = ctx.Event()
    procs = [
        ctx.Process(
            target=_client,
            args=(ClientSpec(design, i, settings.redis, prefix, pipeline), plan[i::clients], reports, start),
            name=f"redis-{design}-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    try:
        r.mset(totals)
        for p in procs:
            p.start()
        ready = 0
        while ready < clients:
            kind, index, body = reports.get(timeout=60)
            if kind == "error":
                raise RuntimeError(f"redis {design} client #{index} failed:\n{body}")
            ready += 1
        t0 = time.monotonic()
        start.set()
        results = []
        while len(results) < clients:
            kind, index, body = reports.get(timeout=600)
            if kind == "error":
                raise RuntimeError(f"redis {design} client #{index} failed:\n{body}")
            results.append(body)
        elapsed = max(b["end"] for b in results) - t0
        taken: dict[str, int] = {}
        for b in results:
            for k, q in b["taken"].items():
                taken[k] = taken.get(k, 0) + q
        keys = list(totals)
        final = dict(zip(keys, (int(v) for v in r.mget(keys)), strict=True))
        row: dict[str, Any] = {
            "what": f"redis_{design}",
            "orders": len(plan),
            "accepted": sum(b["accepted"] for b in results),
            **oversell(totals, taken, final),
            "elapsed_s": round(elapsed, 3),
            "orders_per_s": round(len(plan) / elapsed, 1),
            "clients": clients,
            "pipeline": pipeline,
            "load_1m": load,
        }
        if design == "lock":
            row["lock_retries"] = sum(b["retries"] for b in results)
        return row
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        doomed = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for at in range(0, len(doomed), 1000):
            r.delete(*doomed[at : at + 1000])


def measure_redis_lua(
    settings: Settings, workload: Workload, orders: list[Order], clients: int = 4, pipeline: int = 32
) -> dict[str, Any]:
    """The seed article's allocator: an atomic Lua check-and-decrement of all of an order's lines, ``clients``
    processes each pipelining ``pipeline`` EVALSHAs per round trip."""
    return _measure_redis("lua", settings, workload, orders, clients, pipeline)


def measure_redis_lock(settings: Settings, workload: Workload, orders: list[Order], clients: int = 4) -> dict[str, Any]:
    """A SET NX PX lock per SKU around read-then-decrement, ``clients`` processes; pipelined only within an
    order (its locks, its GETs, its DECRBYs and unlocks), so ``pipeline`` is 1 order per round trip."""
    return _measure_redis("lock", settings, workload, orders, clients, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--partitions", type=int, default=None, help="default: OMS_PARTITIONS (the engine's)")
    p.add_argument("--relay-procs", type=int, default=1, help="relay processes per hop of the ceiling")
    p.add_argument("--clients", type=int, default=4, help="concurrent Redis client processes")
    p.add_argument("--pipeline", type=int, default=32, help="EVALSHAs per round trip (Lua design)")
    p.add_argument("--only", choices=("ceiling", "redis_lua", "redis_lock"), action="append")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    workload = Workload(WorkloadSpec(orders=args.orders, seed=args.seed))
    orders = list(workload.orders())
    runs = {
        "ceiling": lambda: measure_ceiling(settings, orders, args.partitions, args.relay_procs),
        "redis_lua": lambda: measure_redis_lua(settings, workload, orders, args.clients, args.pipeline),
        "redis_lock": lambda: measure_redis_lock(settings, workload, orders, args.clients),
    }
    rows = []
    for what in args.only or list(runs):  # one that fails is a failure row; the others still run
        row = attempt(runs[what], {"what": what})
        if not row.get("error") and row.get("oversold_units"):
            row.update(valid=False, invalid=f"oversold {row['oversold_units']} units")
        emit(row)
        rows.append(row)
    return exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
