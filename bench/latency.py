"""Latency at offered rates: an open-loop load generator against one engine, from the real day's pace to the knee.

    python -m bench.latency            # 1.2/s for 30 s, then 12, 120, 500, 1,200/s for 20 s each, then the knee
    python -m bench.latency --quick    # a smoke run of a couple of minutes

Closed-loop benchmarks (send, wait for the answer, send the next) hide queueing: the sender slows down exactly
when the engine does. Here order *i* of a step is sent at ``t0 + i / rate`` whether or not earlier ones were
decided, so a backlog shows up as latency, as it would for a marketplace that does not wait for us. Each order
carries the wall-clock time it was handed to the producer (header ``oms-produced-at``); a ``read_committed``
follower measures produced → decision read, and decision read → the records that follow a decision. Every
second it samples each stage's input lag (end offsets − the stage's committed position, from ``/oms/stats/``;
the group offsets are sampled too, but they are committed only every ``OMS_COMMIT_INTERVAL_S``). A rate is
*sustained* when every order of the step was decided, the backlog at the end of the step was under
``tolerance_s`` of work and not growing, the p99 stayed under ``p99_limit_ms`` and the sender kept its schedule.
The knee search doubles from the highest sustained rate and then bisects. The run ends with the invariants
checked from the result topics against everything sent, as ``bench.pipeline.measure_engine`` does.

The load generator shares the machine with the broker and the two workers: on a small machine its CPU is part of
what is measured (its own share is small: one encode and one produce per order).

A step that fails (a worker died, a client thread failed) is a failure row with its error and the tail of the
workers' logs; the steps after it and the knee search are skipped (the engine is not in a state to measure), the
invariants are still checked, and the run is not ok (exit 1). A run that cannot complete at all prints one JSON
line with its error and the logs' tails (exit 2) and leaves BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition

from bench.report import (
    RunError,
    cleanup_quietly,
    emit,
    failed,
    failure_lines,
    failure_row,
    log_tails,
    machine,
    measured_on,
    save_result,
    setup_failed,
    short_error,
    table,
    write_section,
)
from deploy.local.servers import LocalServers
from engine.kafka.admin import CLIENT_LOG, admin, create_topics, delete_topics
from engine.kafka.clients import producer as make_producer
from engine.kafka.clients import watermarks
from engine.settings import Settings
from engine.supervisor import WorkerPool
from engine.topics import Topics
from invariants import Inputs, check, collect
from schemas import wire
from schemas.common import join_key
from schemas.inbox import OrderSnapshot
from schemas.inventory import StockEvent
from schemas.order import Order
from schemas.saga import ENGINE_REASONS, OrderDecision
from workload.day import engine_inputs, wait_idle
from workload.generator import Workload, WorkloadSpec
from workload.stock import SENT_HEADER, load_stock

PRODUCED_HEADER = "oms-produced-at"
#: 100,000 orders a day is 1.16/s; then 10×, 100×, 1,000× that, and 500/s where the p99 goal is stated.
DEFAULT_RATES = [1.2, 12.0, 120.0, 500.0, 1200.0]
TITLE = "Latency at offered rates"
#: A send this much after its due time counts as late (the load generator, not the engine, was the limit).
LATE_MS = 10.0
#: Stock events that follow a decision: the releases of a rejected order's reserved lines.
RELEASE_MARK = b'"kind":"release"'


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def percentiles(values: list[int]) -> dict[str, float | None]:
    """Nearest-rank p50/p95/p99/max (no interpolation: every figure is a latency some order really had)."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(values)
    n = len(s)

    def at(q: float) -> float:
        return float(s[min(n - 1, max(0, math.ceil(q * n) - 1))])

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": float(s[-1])}


# -- what the threads share ---------------------------------------------------------------------------------------
@dataclass
class Tracker:
    """Produced-at per order and what became of it; written by the sender and the follower thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    produced: dict[str, tuple[int, int]] = field(default_factory=dict)  # order key -> (produced-at ms, step)
    decided: dict[str, int] = field(default_factory=dict)  # order key -> decision read at (ms)
    latency: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # step -> produced → decision
    downstream: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # step -> decision → release
    early_downstream: dict[str, list[int]] = field(default_factory=dict)  # read before its decision was read
    statuses: Counter = field(default_factory=Counter)
    engine_errors: int = 0
    unknown_decisions: int = 0
    last_progress: float = field(default_factory=time.monotonic)

    def sent(self, key: str, at_ms: int, step: int) -> bool:
        """Whether this is the order's first copy (a resent duplicate keeps the first copy's time and step)."""
        with self.lock:
            if key in self.produced:
                return False
            self.produced[key] = (at_ms, step)
            return True

    def on_decision(self, d: OrderDecision, read_ms: int) -> None:
        key = d.key
        with self.lock:
            if key in self.decided:
                return  # only the first decision of an order
            first = self.produced.get(key)
            if first is None:
                self.unknown_decisions += 1
                return
            self.decided[key] = read_ms
            self.last_progress = time.monotonic()
            self.latency[first[1]].append(read_ms - first[0])
            self.statuses[d.status.value] += 1
            if d.reason in ENGINE_REASONS:
                self.engine_errors += 1
            for at in self.early_downstream.pop(key, []):
                self.downstream[first[1]].append(max(0, at - read_ms))

    def on_release(self, e: StockEvent, read_ms: int) -> None:
        if e.order_id is None:
            return
        key = join_key(e.tenant, e.order_id)
        with self.lock:
            decided_at = self.decided.get(key)
            if decided_at is None:
                self.early_downstream.setdefault(key, []).append(read_ms)
                return
            self.downstream[self.produced[key][1]].append(read_ms - decided_at)

    def counts(self) -> tuple[int, int]:
        """(orders sent, orders decided), unique."""
        with self.lock:
            return len(self.produced), len(self.decided)


def _reader(bootstrap: str, purpose: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"oms-latency-{purpose}-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,  # the default 500 ms would be measured as latency
            "log_level": 3,
            "logger": CLIENT_LOG,
        }
    )


class Follower(threading.Thread):
    """Reads order-decisions and stock-events (``read_committed``) and stamps each record with the wall clock
    at which it was read: the moment a consumer of the result topics could act on it."""

    def __init__(self, bootstrap: str, topics: Topics, partitions: int, tracker: Tracker) -> None:
        super().__init__(name="oms-latency-follower", daemon=True)
        self.tracker = tracker
        self.decisions, self.events = topics.order_decisions, topics.stock_events
        self.consumer = _reader(bootstrap, "follow")
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in (self.decisions, self.events) for p in range(partitions)]
        )
        self.error: BaseException | None = None
        self._halt = threading.Event()  # not _stop: Thread has a _stop method

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                batch = self.consumer.consume(num_messages=2000, timeout=0.05)
                read_ms = now_ms()
                for m in batch:
                    if m.error():
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            raise RuntimeError(str(m.error()))
                        continue
                    value = m.value() or b""
                    if m.topic() == self.decisions:
                        self.tracker.on_decision(wire.decode(value, OrderDecision), read_ms)
                    elif RELEASE_MARK in value:  # skip the decode of receipts and reserves
                        self.tracker.on_release(wire.decode(value, StockEvent), read_ms)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class LagSampler(threading.Thread):
    """Every ``interval_s``: orders sent/decided and each stage's input lag, as a time series. Also restarts a
    worker that died (and records it), so a crash is a reported event, not a stalled run."""

    def __init__(self, settings: Settings, topics: Topics, pool: WorkerPool, tracker: Tracker, interval_s: float = 1.0):
        super().__init__(name="oms-latency-lag", daemon=True)
        self.settings, self.pool, self.tracker, self.interval_s = settings, pool, tracker, interval_s
        self.inputs = {"orders": topics.order_inbox, "inventory": topics.inventory_commands}
        self.consumer = _reader(settings.bootstrap, "lag")
        self.admin = admin(settings.bootstrap, quiet=True)
        self.samples: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.step: float | None = None  # the offered rate being sent, None between steps
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()  # not _stop: Thread has a _stop method

    def run(self) -> None:
        try:
            while not self._halt.wait(self.interval_s):
                self.pool.supervise()
                self.sample()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=15)
        self.consumer.close()

    def sample(self) -> dict[str, Any]:
        """One point of the series (also taken by the main thread at the end of each step's sending)."""
        with self._lock:
            parts = self.settings.partitions
            tps = [(t, p) for t in self.inputs.values() for p in range(parts)]
            ends = {tp: watermarks(self.consumer, *tp)[1] for tp in tps}
            position: dict[str, int] = {}  # "topic/p" -> next offset the stage's committed state covers
            for i in range(self.pool.count):
                for stage in ((self.pool.stats(i) or {}).get("stages") or {}).values():
                    for name, offset in (stage.get("last_admitted") or {}).items():
                        position[name] = max(position.get(name, 0), offset + 1)
            group = self._group_offsets(tps)
            sent, decided = self.tracker.counts()
            point: dict[str, Any] = {
                "t_s": round(time.monotonic() - self.started, 2),
                "step": self.step,
                "sent": sent,
                "decided": decided,
                "backlog": sent - decided,
            }
            for stage, topic in self.inputs.items():
                point[f"lag_{stage}"] = sum(
                    max(0, ends[(topic, p)] - position.get(f"{topic}/{p}", group.get((topic, p), 0)))
                    for p in range(parts)
                )
                point[f"group_lag_{stage}"] = sum(
                    max(0, ends[(topic, p)] - group.get((topic, p), 0)) for p in range(parts)
                )
            point["lag"] = sum(point[f"lag_{s}"] for s in self.inputs)
            self.samples.append(point)
            return point

    def _group_offsets(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        group = self.settings.app_id
        req = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in tps])]
        try:
            res = self.admin.list_consumer_group_offsets(req)[group].result(timeout=5)
        except Exception:  # the group is rebalancing: the stats still say where the stages are
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}


# -- one step -----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a step needs: the engine's settings and topics, the clients and the order source."""

    settings: Settings
    topics: Topics
    tracker: Tracker
    sampler: LagSampler
    follower: Follower
    orders: Iterator[Order]
    sent_orders: list[Order]
    p99_limit_ms: float
    tolerance_s: float
    stall_s: float
    echo: Callable[[str], None]
    rows: list[dict[str, Any]] = field(default_factory=list)
    exhausted: bool = False
    current: tuple[float, str] = (0.0, "fixed")  # the step being run: rate, phase


def _send(run: Run, index: int, rate: float, orders: list[Order]) -> dict[str, Any]:
    """Open loop: order i leaves at t0 + i/rate, late or not, never waiting for an answer."""
    p = make_producer(run.settings.bootstrap, **{"linger.ms": 1})
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    inbox = run.topics.order_inbox
    late = 0
    new = 0
    worst = 0.0
    t0 = time.monotonic() + 0.05
    first = last = t0
    for i, order in enumerate(orders):
        due = t0 + i / rate
        ahead = due - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        at = time.monotonic()
        behind_ms = (at - due) * 1000
        worst = max(worst, behind_ms)
        late += behind_ms > LATE_MS
        sent = now_ms()
        snapshot = OrderSnapshot(order=msgspec.structs.replace(order, ingested_at=sent))
        stamp = str(sent).encode()
        new += run.tracker.sent(order.key, sent, index)
        while True:
            try:
                p.produce(
                    inbox,
                    value=wire.encode(snapshot),
                    key=snapshot.key,
                    headers={PRODUCED_HEADER: stamp, SENT_HEADER: stamp},
                    on_delivery=delivered,
                )
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
        if i == 0:
            first = at
        last = at
    remaining = p.flush(30)
    span = last - first
    achieved = (len(orders) - 1) / span if len(orders) > 1 and span > 0 else rate
    return {
        "achieved_send_per_s": round(achieved, 2),
        "orders": new,
        "send_behind_max_ms": round(worst, 1),
        "late_sends": late,
        "delivery_errors": len(errors) + remaining,
    }


def _drain(run: Run) -> bool:
    """Until every order sent so far is decided (False if nothing moved for ``stall_s``)."""
    with run.tracker.lock:  # the stall clock starts when the sending stops, not at the last decision before it
        run.tracker.last_progress = max(run.tracker.last_progress, time.monotonic())
    while True:
        for thread in (run.follower, run.sampler):
            if thread.error is not None:
                raise RuntimeError(f"{thread.name} failed: {thread.error!r}")
        sent, decided = run.tracker.counts()
        if decided >= sent:
            return True
        if time.monotonic() - run.tracker.last_progress > run.stall_s:
            return False
        time.sleep(0.2)


def run_step(run: Run, rate: float, duration_s: float, phase: str = "fixed") -> dict[str, Any]:
    """Send ``rate`` orders/s for ``duration_s``, let the engine catch up, and judge whether it kept up."""
    index = len(run.rows)
    run.current = (rate, phase)
    n = max(1, round(rate * duration_s))
    orders = []
    for order in run.orders:
        orders.append(order)
        if len(orders) >= n:
            break
    if len(orders) < n:
        run.exhausted = True
    run.sent_orders.extend(orders)
    run.echo(f"latency: step {index}: {rate:g}/s for {duration_s:g}s ({len(orders)} orders)")
    run.sampler.step = rate
    started = run.sampler.sample()
    send = _send(run, index, rate, orders)
    end = run.sampler.sample()  # the state of the engine the moment the offered load stops
    run.sampler.step = None
    drained = _drain(run)
    if drained:
        wait_idle(run.settings, engine_inputs(run.topics))  # releases and late answers too
    window = [s for s in run.sampler.samples if started["t_s"] <= s["t_s"] <= end["t_s"]]
    mid_t = (started["t_s"] + end["t_s"]) / 2
    mid = min(window, key=lambda s: abs(s["t_s"] - mid_t))
    with run.tracker.lock:
        lat = list(run.tracker.latency.get(index, []))
        down = list(run.tracker.downstream.get(index, []))
    pct = percentiles(lat)
    tolerance = max(20.0, run.tolerance_s * rate)
    growth = end["backlog"] - mid["backlog"]
    growing = growth > max(20.0, 0.05 * rate * max(0.0, end["t_s"] - mid["t_s"]))
    sender_behind = send["achieved_send_per_s"] < 0.95 * rate
    checks = {
        "all_decided": drained and len(lat) >= send["orders"],
        "backlog_bounded": end["backlog"] <= tolerance and not growing,
        "p99_ok": pct["p99_ms"] is not None and pct["p99_ms"] <= run.p99_limit_ms,
        "sender_on_schedule": not sender_behind,
    }
    dpct = percentiles(down)
    row = {
        "what": "latency",
        "phase": phase,  # "fixed" (the listed rates) or "knee" (the search)
        "offered_per_s": rate,
        "duration_s": duration_s,
        "sent": len(orders),  # records, the workload's resent duplicates included
        "orders": send["orders"],  # orders whose first copy was sent in this step
        "achieved_send_per_s": send["achieved_send_per_s"],
        "decided": len(lat),
        **pct,
        "lag_max": max((s["lag"] for s in window), default=0),
        "lag_end": end["lag"],
        "backlog_max": max((s["backlog"] for s in window), default=0),
        "backlog_end": end["backlog"],
        "sustained": all(checks.values()),
        "failed": [k for k, ok in checks.items() if not ok],
        "send_behind_max_ms": send["send_behind_max_ms"],
        "late_sends": send["late_sends"],
        "delivery_errors": send["delivery_errors"],
        "downstream_n": len(down),
        **{f"downstream_{k}": v for k, v in dpct.items()},
        "series": [
            [s["t_s"], s["sent"], s["decided"], s["backlog"], s["lag_orders"], s["lag_inventory"]] for s in window
        ],
    }
    run.rows.append(row)
    emit(row)
    return row


# -- the knee -----------------------------------------------------------------------------------------------------
def _round_rate(rate: float) -> float:
    """Two significant digits: rates a reader can compare, and no 'knee at 517.3/s' false precision."""
    if rate <= 0:
        return rate
    return float(round(rate, 1 - math.floor(math.log10(rate))))


def find_knee(run: Run, step_s: float, max_trials: int, max_rate: float) -> dict[str, Any]:
    """Double from the highest sustained rate while below the lowest failed one, then bisect between them."""
    done = {r["offered_per_s"]: r["sustained"] for r in run.rows}
    trials = 0
    while trials < max_trials and not run.exhausted:
        lo = max((r for r, ok in done.items() if ok), default=None)
        if lo is None:
            break  # not even the first rate held: nothing to search from
        hi = min((r for r, ok in done.items() if not ok and r > lo), default=None)
        if hi is None:
            rate = _round_rate(2 * lo)
            if rate > max_rate:
                break
        elif 2 * lo < hi:
            rate = _round_rate(2 * lo)
        else:
            rate = _round_rate((lo + hi) / 2)
        if rate in done or rate <= lo or (hi is not None and rate >= hi):
            break  # the interval is as narrow as two significant digits go
        done[rate] = run_step(run, rate, step_s, "knee")["sustained"]
        trials += 1
    lo = max((r for r, ok in done.items() if ok), default=None)
    hi = min((r for r, ok in done.items() if not ok and (lo is None or r > lo)), default=None)
    return {"knee_per_s": lo, "first_failed_per_s": hi, "knee_trials": trials}


# -- the whole run ------------------------------------------------------------------------------------------------
def _free_port_pair() -> int:
    """A web port p with p+1 free too: another engine (tests, a peer benchmark) may hold the default ones."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def command_line(
    steps: list[float], step_s: float, base_s: float, knee: bool, workers: int, knee_trials: int, stock_ratio: float
) -> str:
    rates = ",".join(f"{r:g}" for r in steps)
    cmd = f"python -m bench.latency --rates {rates} --base-s {base_s:g} --step-s {step_s:g}"
    cmd += f" --knee-trials {knee_trials}" if knee else " --no-knee"
    cmd += "" if workers == 2 else f" --workers {workers}"
    return cmd + ("" if stock_ratio == 3.0 else f" --stock-ratio {stock_ratio:g}")


def run_latency(
    settings: Settings,
    steps: list[float],
    step_s: float,
    base_s: float,
    knee: bool,
    *,
    workers: int = 2,
    seed: int = 17,
    knee_trials: int = 6,
    knee_max_rate: float | None = None,
    p99_limit_ms: float = 3000.0,
    tolerance_s: float = 2.0,
    stall_s: float = 60.0,
    stock_ratio: float = 3.0,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The first rate of ``steps`` runs for ``base_s`` (the real day's pace), the others for ``step_s`` each; then,
    with ``knee``, the knee search. Returns every step and the summary (``ok``: the invariants held and no step
    failed). A step that raises is a failure row (the rest are skipped); RunError (with the workers' log tails)
    when the run cannot complete at all."""
    say = echo or (lambda m: print(m, file=sys.stderr, flush=True))
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    empty_rules = Path(settings.state_dir) / "bench-no-rules.toml"
    empty_rules.parent.mkdir(parents=True, exist_ok=True)
    empty_rules.write_text("")
    settings = settings.with_(
        topic_prefix=f"bench.{run_id}",
        app_id=f"oms-bench-{run_id}",
        rules_file=str(empty_rules),
        web_port=_free_port_pair(),
    )
    topics = Topics(settings.topic_prefix)
    durations = [base_s] + [step_s] * (len(steps) - 1)
    knee_max = knee_max_rate or 4 * max(steps)
    planned = sum(round(r * d) for r, d in zip(steps, durations, strict=True))
    # The knee's doublings send less than 2 × knee_max × step_s in all, and each bisection less than one step of it.
    allowance = round((2 + knee_trials) * knee_max * step_s) if knee else 0
    # One workload for the whole run (order ids must not repeat across steps), with stock for all of it: what is
    # measured is the reservation path, not stock-outs (the hot SKUs get the same ratio as the rest). A small
    # ``stock_ratio`` measures a sell-out instead (and the releases that follow rejected orders).
    workload = Workload(
        WorkloadSpec(orders=planned + allowance + 1000, seed=seed, stock_ratio=stock_ratio, hot_stock_ratio=stock_ratio)
    )
    create_topics(settings.bootstrap, topics.all(), settings.partitions, configs=topics.configs())
    pool = WorkerPool(settings, workers)
    inputs = Inputs()
    tracker = Tracker()
    sampler: LagSampler | None = None
    follower: Follower | None = None
    try:
        pool.start()
        pool.wait_ready([topics.order_inbox, topics.inventory_commands])
        stock = list(workload.opening_stock("stock-loader", 0, now_ms()))
        load_stock(settings.bootstrap, topics, settings.partitions, stock, app_id=settings.app_id)
        inputs.add_stock(stock)
        wait_idle(settings, [topics.inventory_commands])
        follower = Follower(settings.bootstrap, topics, settings.partitions, tracker)
        sampler = LagSampler(settings, topics, pool, tracker)
        follower.start()
        sampler.start()
        run = Run(
            settings,
            topics,
            tracker,
            sampler,
            follower,
            workload.orders(),
            [],
            p99_limit_ms,
            tolerance_s,
            stall_s,
            say,
        )
        search: dict[str, Any] = {"knee_per_s": None}
        try:
            for rate, duration in zip(steps, durations, strict=True):
                run_step(run, rate, duration)
            search = (
                find_knee(run, step_s, knee_trials, knee_max)
                if knee
                else {"knee_per_s": max((r["offered_per_s"] for r in run.rows if r["sustained"]), default=None)}
            )
        except Exception as exc:  # the step is a failure row; the invariants are still checked below
            rate, phase = run.current
            say(f"latency: the step at {rate:g}/s failed: {exc}")
            row = failure_row(step_failure(rate, phase, len(run.rows)), exc, log_tails(pool))
            run.rows.append(row)
            emit(row)
            # best effort: let what was sent be decided before the check (the run has failed either way)
            cleanup_quietly(lambda: wait_idle(settings, engine_inputs(topics), pool, timeout_s=120))
        sampler.stop()
        follower.stop()
        stats = [pool.stats(i) or {} for i in range(workers)]
        pool.stop()
        # what was handed to the producer (a failed step may not have sent all it took)
        inputs.add_orders([o for o in run.sent_orders if o.key in tracker.produced])
        say("latency: checking the invariants from the result topics")
        verdict = check(inputs, collect(settings.bootstrap, topics), settings.partitions)
        stages = [st for w in stats for st in w.get("stages", {}).values()]
        down_n = sum(r["downstream_n"] for r in run.rows)
        result = {
            "what": "latency_summary",
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "kafka": settings.kafka_version,
            "workers": workers,
            "partitions": settings.partitions,
            "seed": seed,
            "p99_limit_ms": p99_limit_ms,
            "tolerance_s": tolerance_s,
            "stock_ratio": stock_ratio,
            **search,
            "knee_searched": knee,
            "order_budget_exhausted": run.exhausted,
            "orders_sent": len(tracker.produced),
            "decided": len(tracker.decided),
            "statuses": dict(tracker.statuses),
            "engine_errors": tracker.engine_errors,
            "downstream": "none yet" if down_n == 0 else f"{down_n} stock-events 'release' (rejected orders)",
            "downstream_note": (
                "Nothing follows an accepted order's decision yet (its reserve stock events come before it). A "
                "rejected order's reserved lines are released after it: decision read → stock-events 'release' "
                "read is measured per step as downstream_*."
            ),
            "invariants": verdict.summary(),
            "oversold_units": verdict.oversold_units,
            "fenced": sum(st.get("fenced", 0) for st in stages),
            "transactions": sum(st.get("transactions", 0) for st in stages),
            "commit_ms_mean": round(
                sum(st.get("commit_ms_sum", 0.0) for st in stages)
                / max(1, sum(st.get("transactions", 0) for st in stages)),
                2,
            ),
            "worker_logs": [str(pool.log_path(i)) for i in range(workers)],
            "restarts": [{"worker": r.index, "exit_code": r.exit_code, "after_s": r.after_s} for r in pool.restarts],
            "elapsed_s": round(time.monotonic() - started, 1),
            "command": command_line(steps, step_s, base_s, knee, workers, knee_trials, stock_ratio),
            "steps": run.rows,
            "failed_steps": len(failed(run.rows)),
        }
        result["ok"] = verdict.ok and tracker.engine_errors == 0 and not failed(run.rows)
        emit({k: v for k, v in result.items() if k != "steps"})
        return result
    except Exception as exc:
        raise RunError(exc, log_tails(pool)) from exc
    finally:
        cleanup_quietly(
            lambda: sampler.stop() if sampler is not None and sampler.is_alive() else None,
            lambda: follower.stop() if follower is not None and follower.is_alive() else None,
            lambda: pool.stop(timeout_s=20),
            lambda: delete_topics(settings.bootstrap, settings.topic_prefix + "."),
            lambda: delete_topics(settings.bootstrap, settings.app_id + "-"),
        )


def step_failure(rate: float, phase: str, index: int) -> dict[str, Any]:
    """The row of a step that could not complete: its rate, no figures, not sustained."""
    return {
        "what": "latency",
        "phase": phase,
        "step": index,
        "offered_per_s": rate,
        "achieved_send_per_s": None,
        "decided": 0,
        **percentiles([]),
        "lag_max": None,
        "sustained": False,
        "failed": ["error"],
        "downstream_n": 0,
    }


# -- BENCHMARKS.md ------------------------------------------------------------------------------------------------
def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def write_markdown(result: dict[str, Any]) -> None:
    """Rewrite the "Latency at offered rates" section of BENCHMARKS.md from one run."""
    rows = [
        [
            f"{r['offered_per_s']:,g}" + (" (knee search)" if r.get("phase") == "knee" else ""),
            "–" if r.get("achieved_send_per_s") is None else f"{r['achieved_send_per_s']:,.1f}",
            f"{r.get('decided', 0):,}",
            _ms(r.get("p50_ms")),
            _ms(r.get("p95_ms")),
            _ms(r.get("p99_ms")),
            _ms(r.get("max_ms")),
            "–" if r.get("lag_max") is None else f"{r['lag_max']:,}",
            f"**failed**: {short_error(r, 80)}"
            if r.get("error")
            else ("yes" if r["sustained"] else "no (" + ", ".join(r["failed"]) + ")"),
        ]
        for r in sorted(result["steps"], key=lambda r: r["offered_per_s"])
    ]
    knee = result.get("knee_per_s")
    first_failed = result.get("first_failed_per_s")
    if knee is None:
        knee_line = "**Knee:** not even the first rate was sustained."
    else:
        knee_line = f"**Knee (highest sustained rate): {knee:,g} orders/s**" + (
            f"; {first_failed:,g}/s was not sustained." if first_failed is not None else "; no rate tried failed."
        )
        knee_line += f" That is {knee * 86_400:,.0f} orders a day at a constant rate."
    inv = result["invariants"]
    lines = [
        measured_on(result["kafka"]),
        "",
        f"One engine ({result['workers']} workers, {result['partitions']} partitions, no review rules), stock for "
        "the whole run loaded once "
        + (
            "(no hot SKU sells out: the reservation path is measured, not stock-outs). "
            if result.get("stock_ratio", 3.0) >= 1
            else f"(stock ratio {result['stock_ratio']:g}: SKUs sell out, many orders are rejected). "
        )
        + "An "
        "open-loop sender puts order *i* of a step on the order inbox at `t0 + i/rate` whether or not earlier ones "
        "were decided, stamped with header `oms-produced-at`; latency is produced → the decision read by a "
        "`read_committed` consumer of `order-decisions`. The first rate is the real pace of 100,000 orders a day. "
        "Between steps the engine is left to become idle. Max lag: the most input records (offsets, transaction "
        "markers included) any second of the step found beyond the stages' committed positions, summed over the "
        "order and inventory stages. Sustained: every order decided, the backlog at the end of the step under "
        f"{result['tolerance_s']:g} s of offered load and not growing, p99 ≤ {result['p99_limit_ms']:,.0f} ms, and "
        "the sender on schedule.",
        "",
        *table(
            ["Offered/s", "Achieved/s", "Decided", "p50 ms", "p95 ms", "p99 ms", "max ms", "Max lag", "Sustained"],
            rows,
            ["r", "r", "r", "r", "r", "r", "r", "r", "l"],
        ),
        "",
        knee_line,
        "",
        f"After a decision: {result['downstream']}. {result['downstream_note']}",
        "",
        f"Invariants, checked from the result topics against every order and stock command sent: "
        f"{'ok' if inv == 'ok' else 'FAILED: ' + '; '.join(inv)}; oversold units {result['oversold_units']}; "
        f"engine errors {result['engine_errors']}; worker restarts {len(result['restarts'])}.",
        *(
            ["", *failure_lines(result["steps"], lambda r: f"step at {r['offered_per_s']:g}/s")]
            if failed(result["steps"])
            else []
        ),
        "",
        "The floor of the latency is two transactional hops (order stage → inventory → order stage), each a "
        "batch window plus one Kafka transaction commit. The load generator, the broker and both workers share "
        "the same cores.",
        "",
        f"Command: `{result['command']}`.",
    ]
    write_section(TITLE, lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 s steps, two knee trials")
    p.add_argument("--no-markdown", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--rates", help="offered rates, orders/s, comma-separated (default 1.2,12,120,500,1200)")
    p.add_argument("--base-s", type=float, help="seconds at the first rate (default 30; --quick 3)")
    p.add_argument("--step-s", type=float, help="seconds at every other rate (default 20; --quick 3)")
    p.add_argument("--no-knee", action="store_true", help="only the listed rates")
    p.add_argument("--knee-trials", type=int, help="most knee steps (default 6; --quick 2)")
    p.add_argument("--p99-limit-ms", type=float, default=3000.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument(
        "--stock-ratio", type=float, default=3.0, help="opening stock / demand of every order budgeted (default 3)"
    )
    args = p.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",")] if args.rates else list(DEFAULT_RATES)
    base_s = args.base_s if args.base_s is not None else (3.0 if args.quick else 30.0)
    step_s = args.step_s if args.step_s is not None else (3.0 if args.quick else 20.0)
    trials = args.knee_trials if args.knee_trials is not None else (2 if args.quick else 6)
    settings = Settings.from_env()
    servers = LocalServers(settings)
    try:
        servers.start(echo=lambda m: print(m, file=sys.stderr))
    except Exception as exc:
        return setup_failed("latency", exc)
    try:
        try:
            result = run_latency(
                settings,
                rates,
                step_s,
                base_s,
                not args.no_knee,
                workers=args.workers,
                seed=args.seed,
                knee_trials=trials,
                p99_limit_ms=args.p99_limit_ms,
                stock_ratio=args.stock_ratio,
            )
        except Exception as exc:  # reported with its error and the workers' logs, never a traceback
            row = failure_row({"what": "latency_summary"}, exc)
            emit(row)
            save_result("latency", {"ok": False, "error": row["error"]})
            print(f"latency: the run could not complete: {row['error']}\n{row.get('log_tail', '')}", file=sys.stderr)
            return 2
        if not args.no_markdown:
            write_markdown(result)
        knee = {k: result.get(k) for k in ("knee_per_s", "first_failed_per_s")}
        save_result("latency", {"ok": result["ok"], "steps": result["steps"], "knee": knee})
        if not result["ok"]:
            print(
                f"latency: the run FAILED: invariants {result['invariants']}, engine errors {result['engine_errors']}, "
                f"failed steps {result['failed_steps']}",
                file=sys.stderr,
            )
        return 0 if result["ok"] else 1
    finally:
        servers.stop(only_started=True)


if __name__ == "__main__":
    sys.exit(main())
