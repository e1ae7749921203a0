"""Start-up and recovery time: how long until workers serve, on an empty and on a full state, and how long the
partitions of a worker killed with ``kill -9`` go unserved.

    python -m bench.recovery                        # 20,000 orders of state, then four kill -9s
    python -m bench.recovery --orders 2000 --no-markdown

One namespace (topic prefix and app id) for the whole run, two workers, no review rules:

1. **Empty state.** Fresh topics and app id; start the pool and time until every worker reports ready
   (``/oms/ready/``: partitions owned, tables restored) and together they own every partition of the order inbox
   and of inventory-commands. That is ``WorkerPool.wait_ready``'s condition, polled every 0.1 s rather than
   0.5 s so the figure is not rounded up; ``wait_ready`` is then called and returns at once.
2. **Full state.** Load a day's opening stock, decide ``--orders`` orders, stop the pool cleanly; start it again
   with the workers' local table stores kept (**warm**, twice: a new group may assign a partition to the worker
   whose store never held it, and each row says how many), stop it, delete this app id's stores and start again
   (**cold**: every table restored from its changelog).
3. **Failover.** An open-loop sender puts 100 orders/s on the order inbox, each stamped with the time it was
   sent; worker 1 is ``kill -9``ed and either left dead (the survivor takes its partitions once its session
   expires) or started again at once, as ``oms run``'s supervisor does. *Served again*, per order-inbox
   partition the killed worker owned: the first decision read after the kill for an order sent to that
   partition after the kill, minus the kill time; *owned again*: when ready workers own all of them again.
   Measured with 0 standby replicas (the single-machine default) and with 1 (the standby's job).

The run ends with the invariants checked from the result topics against every order and stock command sent, as
``bench.pipeline.measure_engine`` does. A broken invariant, or an order the engine rejected by its own fault,
fails the run (exit 1) whatever the timings: no figure here comes from a run that lost or oversold anything.

A kill -9 measurement that raises is a failure row (its error and the tail of the workers' logs) and the next
one still runs once the pool is ready again; the run is then not ok (exit 1). A run that cannot go on at all
(the workers never get ready, the state cannot be built) prints one JSON line with its error, the workers' log
tails and the rows measured so far (exit 2), and leaves BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import math
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

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
    median,
    setup_failed,
    short_error,
    table,
    write_section,
)
from deploy.local.servers import LocalServers
from engine.kafka.admin import CLIENT_LOG, admin, create_topics, delete_topics
from engine.kafka.clients import end_offsets, partition_for, read_topics
from engine.kafka.clients import producer as make_producer
from engine.settings import Settings
from engine.supervisor import WorkerError, WorkerPool
from engine.topics import Topics
from invariants import Inputs, check, collect
from schemas import wire
from schemas.inbox import OrderSnapshot
from schemas.order import Order
from schemas.saga import ENGINE_REASONS, OrderDecision
from workload.day import engine_inputs, wait_idle
from workload.generator import Workload, WorkloadSpec
from workload.stock import SENT_HEADER, load_stock, send_orders

TITLE = "Start-up and recovery"
DEFAULT_ORDERS = 20_000
WORKERS = 2
VICTIM = 1  # the worker that is killed (always the same one: its index sets its web port and store)
RATE = 100.0  # orders/s while workers are killed
WINDOW_S = 10.0  # the order → decision percentiles after a kill cover the orders sent this long after it
BASELINE_S = 6.0  # steady flow before each kill; the "before" percentiles cover its first 4 s
SETTLED_S = 2.0  # before a kill, every order sent longer ago than this is decided
WEB_PORT = 16100
#: what engine.runtime.stage logs when a partition stopped fetching and is read again (its 30 s watchdog)
STALL_MARK = "has not moved from"  # first web port tried: clear of the default 6066 and of the tests' ports


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(values: list[int], q: float) -> float | None:
    """Nearest rank: every figure is a latency some order really had."""
    if not values:
        return None
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))])


# -- what the threads share ---------------------------------------------------------------------------------------
@dataclass
class Tracker:
    """Orders sent (first copies) and when their decisions were read; written by the senders and the follower."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[tuple[int, int, str]] = field(default_factory=list)  # (sent ms, inbox partition, key), sending order
    decided: dict[str, int] = field(default_factory=dict)  # order key -> decision read at (ms)
    pending: dict[str, int] = field(default_factory=dict)  # order key -> sent ms, oldest first
    statuses: Counter = field(default_factory=Counter)
    engine_errors: int = 0
    unknown: int = 0
    last_progress: float = field(default_factory=time.monotonic)

    def expect(self, key: str, sent_ms: int, partition: int) -> bool:
        """Register an order before it is produced (so its decision cannot be read first); False for a copy."""
        with self.lock:
            if key in self.pending or key in self.decided:
                return False
            self.pending[key] = sent_ms
            self.log.append((sent_ms, partition, key))
            return True

    def on_decision(self, d: OrderDecision, read_ms: int) -> None:
        key = d.key
        with self.lock:
            if key in self.decided:
                return
            if self.pending.pop(key, None) is None:
                self.unknown += 1
                return
            self.decided[key] = read_ms
            self.statuses[d.status.value] += 1
            self.engine_errors += d.reason in ENGINE_REASONS
            self.last_progress = time.monotonic()

    def oldest_pending_ms(self) -> int | None:
        with self.lock:
            return next(iter(self.pending.values()), None)

    def since(self, start_ms: int) -> list[tuple[int, int, str, int | None]]:
        """(sent ms, partition, key, read ms or None) of every order first sent at or after ``start_ms``."""
        with self.lock:
            i = bisect.bisect_left(self.log, start_ms, key=lambda e: e[0])
            return [(s, p, k, self.decided.get(k)) for s, p, k in self.log[i:]]


class Follower(threading.Thread):
    """Reads order-decisions ``read_committed`` and stamps each with the wall clock at which it was read: the
    moment a consumer of the result topic could act on it."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, tracker: Tracker) -> None:
        super().__init__(name="oms-recovery-follower", daemon=True)
        self.tracker = tracker
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"oms-recovery-follow-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,  # the default 500 ms would be measured as recovery time
                "log_level": 3,
                "logger": CLIENT_LOG,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.error: BaseException | None = None
        self._halt = threading.Event()

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
                    self.tracker.on_decision(wire.decode(m.value() or b"", OrderDecision), read_ms)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class PacedSender(threading.Thread):
    """Open loop: order i leaves at t0 + i/rate whether or not earlier ones were decided, so the orders that wait
    for a dead worker show as latency (a marketplace does not stop sending because a worker died)."""

    def __init__(
        self, settings: Settings, topics: Topics, orders: Iterator[Order], tracker: Tracker, rate: float
    ) -> None:
        super().__init__(name="oms-recovery-sender", daemon=True)
        self.bootstrap, self.inbox, self.partitions = settings.bootstrap, topics.order_inbox, settings.partitions
        self.orders, self.tracker, self.rate = orders, tracker, rate
        self.sent_orders: list[Order] = []  # every record as sent, duplicates included (for the invariants)
        self.delivery_errors: list[str] = []
        self.exhausted = False
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.delivery_errors.append(str(err))

    def run(self) -> None:
        p = make_producer(self.bootstrap, **{"linger.ms": 1})
        try:
            t0 = time.monotonic()
            for i in itertools.count():
                if self._halt.wait(max(0.0, t0 + i / self.rate - time.monotonic())):
                    break
                order = next(self.orders, None)
                if order is None:
                    self.exhausted = True
                    break
                sent = now_ms()
                snapshot = OrderSnapshot(order=msgspec.structs.replace(order, ingested_at=sent))
                self.tracker.expect(order.key, sent, partition_for(snapshot.key, self.partitions))
                self.sent_orders.append(snapshot.order)
                while True:
                    try:
                        p.produce(
                            self.inbox,
                            value=wire.encode(snapshot),
                            key=snapshot.key,
                            headers={SENT_HEADER: str(sent).encode()},
                            on_delivery=self._delivered,
                        )
                        break
                    except BufferError:
                        p.poll(0.01)
                p.poll(0)
        except BaseException as exc:
            self.error = exc
        finally:
            remaining = p.flush(30)
            if remaining:
                self.delivery_errors.append(f"{remaining} records not delivered")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=40)


# -- measurements -------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One namespace: its settings, topics, the order stream and what was sent."""

    settings: Settings
    topics: Topics
    tracker: Tracker
    inputs: Inputs
    echo: Callable[[str], None]
    follower: Follower | None = None
    sender: PacedSender | None = None
    pools: list[WorkerPool] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def engine_topics(self) -> list[str]:
        return [self.topics.order_inbox, self.topics.inventory_commands]

    @property
    def store_dir(self) -> Path:
        """This app id's local table stores (engine.app: ``<state dir>/workers/<app id>/w<i>``)."""
        return Path(self.settings.state_dir) / "workers" / self.settings.app_id

    def check_threads(self) -> None:
        for thread in (self.follower, self.sender):
            if thread is not None and thread.error is not None:
                raise RuntimeError(f"{thread.name} failed: {thread.error!r}")

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {"what": "recovery", **row}
        self.rows.append(row)
        emit(row)
        return row


def start_pool(
    run: Run, settings: Settings, timeout_s: float = 600.0
) -> tuple[WorkerPool, dict[str, Any], dict[str, int]]:
    """Start a pool and time it to ready: ``wait_ready``'s condition, polled every 0.1 s. Also when each worker's
    web server first answered (process start, imports, Faust's start) and first said ready. Returns the pool, the
    row and who owns each engine partition ("topic/p" -> worker)."""
    pool = WorkerPool(settings, WORKERS)
    run.pools.append(pool)
    want = {f"{t}/{p}" for t in run.engine_topics for p in range(settings.partitions)}
    answered: list[float | None] = [None] * WORKERS
    first_ready: list[float | None] = [None] * WORKERS
    pool.start()
    t0 = pool.started_at
    while time.monotonic() - t0 < timeout_s:
        owners: dict[str, int] = {}
        ready = True
        for i in range(WORKERS):
            if not pool.alive(i):
                raise WorkerError(f"worker {i} exited while starting:\n{pool.log_tail(i)}")
            state = pool.readiness(i)
            at = round(time.monotonic() - t0, 2)
            if state is not None and answered[i] is None:
                answered[i] = at
            if state and state.get("ready"):
                first_ready[i] = first_ready[i] if first_ready[i] is not None else at
                owners.update({tp: i for tp in state.get("active", []) if tp in want})
            else:
                ready = False
        if ready and want <= owners.keys():
            ready_s = time.monotonic() - t0
            pool.wait_ready(run.engine_topics, timeout_s=timeout_s)  # the pool's own check agrees
            inbox = run.topics.order_inbox + "/"
            row = {
                "seconds": round(ready_s, 2),
                "first_answer_s": min(a for a in answered if a is not None),
                "workers_answer_s": answered,
                "workers_first_ready_s": first_ready,
                "inbox_partitions": [
                    sorted(int(tp[len(inbox) :]) for tp, w in owners.items() if w == i and tp.startswith(inbox))
                    for i in range(WORKERS)
                ],
            }
            return pool, row, owners
        time.sleep(0.1)
    raise WorkerError(f"workers not ready after {timeout_s:.0f}s")


def assignment(run: Run, pool: WorkerPool) -> dict[str, int]:
    """Who owns each engine partition now ("topic/p" -> worker)."""
    topics = set(run.engine_topics)
    return {
        tp: i
        for i in range(WORKERS)
        for tp in (pool.readiness(i) or {}).get("active", [])
        if tp.rsplit("/", 1)[0] in topics
    }


def stop_pool(pool: WorkerPool) -> float:
    """A clean stop (SIGTERM: each worker finishes its transaction and leaves the group); returns seconds."""
    t0 = time.monotonic()
    pool.stop()
    return round(time.monotonic() - t0, 2)


def changelogs(settings: Settings) -> dict[str, int]:
    """What a cold start restores: this app id's changelog topics, their committed records (what recovery
    reads) and their end offsets (records plus one transaction marker per transaction)."""
    client = admin(settings.bootstrap, quiet=True)
    names = sorted(
        n
        for n in client.list_topics(timeout=10).topics
        if n.startswith(settings.app_id + "-") and n.endswith("-changelog")
    )
    offsets = sum(sum(end_offsets(settings.bootstrap, n, settings.partitions).values()) for n in names)
    records = sum(1 for _ in read_topics(settings.bootstrap, names, timeout_s=300))
    return {"changelog_topics": len(names), "changelog_records": records, "changelog_offsets": offsets}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def wait_decided(run: Run, stall_s: float = 180.0) -> None:
    """Until every order sent so far has a decision (raises if none arrives for ``stall_s``)."""
    with run.tracker.lock:
        run.tracker.last_progress = time.monotonic()
    while run.tracker.oldest_pending_ms() is not None:
        run.check_threads()
        if time.monotonic() - run.tracker.last_progress > stall_s:
            raise RuntimeError(f"no decision for {stall_s:.0f}s; {len(run.tracker.pending)} orders undecided")
        time.sleep(0.2)


def settle(run: Run, timeout_s: float = 180.0) -> None:
    """Until the flow is steady: every order sent more than ``SETTLED_S`` ago is decided."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run.check_threads()
        oldest = run.tracker.oldest_pending_ms()
        if oldest is None or oldest > now_ms() - SETTLED_S * 1000:
            return
        time.sleep(0.2)
    with run.tracker.lock:
        late = now_ms() - SETTLED_S * 1000
        waiting = Counter(p for s, p, k in run.tracker.log if s < late and k in run.tracker.pending)
    raise RuntimeError(
        f"the engine did not settle at {RATE:g} orders/s within {timeout_s:.0f}s: undecided orders older than "
        f"{SETTLED_S:g} s per inbox partition {dict(sorted(waiting.items()))}"
    )


def stall_rereads(pool: WorkerPool) -> int:
    """Partitions the stages' watchdog found stalled and read again, so far (the workers' logs of this app id)."""
    total = 0
    for i in range(WORKERS):
        with contextlib.suppress(OSError):
            total += pool.log_path(i).read_text(errors="replace").count(STALL_MARK)
    return total


def owned_partitions(pool: WorkerPool, index: int, topic: str) -> list[int]:
    state = pool.readiness(index) or {}
    return sorted(int(tp.rsplit("/", 1)[1]) for tp in state.get("active", []) if tp.rsplit("/", 1)[0] == topic)


def failover(run: Run, pool: WorkerPool, standby: int, restart: bool) -> dict[str, Any]:
    """Kill -9 worker ``VICTIM`` with orders flowing; time until each inbox partition it owned is served again."""
    settings, inbox = run.settings, run.topics.order_inbox
    case = failover_case(standby, restart)
    run.echo(f"recovery: {case}")
    settle(run)
    time.sleep(BASELINE_S)
    victim = owned_partitions(pool, VICTIM, inbox)
    victim_inventory = owned_partitions(pool, VICTIM, run.topics.inventory_commands)
    stalls = stall_rereads(pool)
    kill_ms = now_ms()
    pool.kill(VICTIM)
    if restart:
        pool.restart(VICTIM)
    window_end = kill_ms + int(WINDOW_S * 1000)
    deadline = time.monotonic() + 2 * settings.session_timeout_s + 240
    served: dict[int, int] = {}
    taken_over: int | None = None  # when live, ready workers own all of its inbox partitions again
    timed_out = False
    while True:
        run.check_threads()
        if taken_over is None:
            owned: set[str] = set()
            for i in range(WORKERS):
                state = pool.readiness(i) if pool.alive(i) else None
                if state and state.get("ready"):
                    owned |= set(state.get("active", []))
            if all(f"{inbox}/{p}" in owned for p in victim):
                taken_over = now_ms()
        served = {}
        window_open = False
        for sent, p, _key, read in run.tracker.since(kill_ms):
            if read is not None:
                served[p] = min(served.get(p, read), read)
            elif sent < window_end:
                window_open = True
        if now_ms() >= window_end and not window_open and len(served) == settings.partitions:
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
        time.sleep(0.25)
    if not restart:
        pool.supervise()  # start it again, as oms run's supervisor would, before the next measurement
    pool.wait_ready(run.engine_topics, timeout_s=600)
    ready_again_s = (now_ms() - kill_ms) / 1000
    after = [r - s for s, _p, _k, r in run.tracker.since(kill_ms) if s < window_end and r is not None]
    # Steady state: orders sent at least SETTLED_S before the kill (the last ones before it were in flight).
    steady = [
        (s, r) for s, _p, _k, r in run.tracker.since(kill_ms - int(BASELINE_S * 1000)) if s < kill_ms - SETTLED_S * 1000
    ]
    before = [r - s for s, r in steady if r is not None]
    in_flight = [r - s for s, _p, _k, r in run.tracker.since(kill_ms - 60_000) if s < kill_ms and r and r > kill_ms]
    on_victim = [round((served[p] - kill_ms) / 1000, 2) for p in victim if p in served]
    # A rebalance (eager) pauses every partition of the group: the survivor's own orders wait too.
    last_served = max(served.values(), default=kill_ms)
    on_survivor = [
        r - s for s, p, _k, r in run.tracker.since(kill_ms) if s <= last_served and p not in victim and r is not None
    ]
    return run.record(
        {
            "case": case,
            "kind": "failover",
            "standby_replicas": standby,
            "restarted": restart,
            "session_timeout_s": settings.session_timeout_s,
            # served again: the last of its partitions (None when one never was)
            "seconds": max(on_victim) if on_victim and len(on_victim) == len(victim) else None,
            "served_median_s": round(median(on_victim), 2) if on_victim else None,
            # owned again with its tables restored (readiness, polled every 0.25 s)
            "taken_over_s": None if taken_over is None else round((taken_over - kill_ms) / 1000, 2),
            "served_s": {p: round((served[p] - kill_ms) / 1000, 2) for p in sorted(served)},
            "victim_inbox_partitions": victim,
            "victim_inventory_partitions": victim_inventory,
            "survivor_max_ms": percentile(on_survivor, 1.0),  # its orders sent until the takeover was complete
            "window_orders": len(after),
            "p50_ms": percentile(after, 0.50),
            "p99_ms": percentile(after, 0.99),
            "max_ms": percentile(after, 1.0),
            "before_p99_ms": percentile(before, 0.99),
            "before_undecided_at_kill": sum(1 for s, r in steady if r is None or r > kill_ms),
            "in_flight_at_kill": len(in_flight),
            "in_flight_max_ms": percentile(in_flight, 1.0),
            "ready_again_s": round(ready_again_s, 2),
            "stall_rereads": stall_rereads(pool) - stalls,
            "timed_out": timed_out,
        }
    )


def failover_case(standby: int, restart: bool) -> str:
    return f"kill -9, {'restarted at once' if restart else 'not restarted'}, standby {standby}"


def measure_failover(run: Run, pool: WorkerPool, standby: int, restart: bool) -> dict[str, Any]:
    """``failover``'s row — or, when it raised, a failure row with its error and the workers' log tails, after
    which the pool is made whole again for the next measurement (a pool that cannot be is the run's end)."""
    try:
        return failover(run, pool, standby, restart)
    except Exception as exc:
        context = {
            "what": "recovery",
            "case": failover_case(standby, restart),
            "kind": "failover",
            "standby_replicas": standby,
            "restarted": restart,
            "seconds": None,
            "stall_rereads": 0,
            "timed_out": False,
        }
        row = failure_row(context, exc, log_tails(pool))
        run.rows.append(row)
        emit(row)
        run.echo(f"recovery: {row['case']} failed: {row['error']}")
        pool.supervise()  # a worker that is down is started again
        pool.wait_ready(run.engine_topics, timeout_s=600)
        return row


# -- the whole run ------------------------------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_web_port(start: int = WEB_PORT) -> int:
    """A first web port with the next ``WORKERS - 1`` free too: other runs may hold theirs."""
    for port in range(start, start + 400, WORKERS):
        if all(_port_free(port + i) for i in range(WORKERS)):
            return port
    raise RuntimeError(f"no {WORKERS} consecutive free ports from {start}")


def command_line(orders: int, settings: Settings) -> str:
    env = "" if settings.session_timeout_s == 30.0 else f"OMS_SESSION_TIMEOUT_S={settings.session_timeout_s:g} "
    return f"{env}python -m bench.recovery" + ("" if orders == DEFAULT_ORDERS else f" --orders {orders}")


def run_recovery(
    settings: Settings,
    orders: int = DEFAULT_ORDERS,
    *,
    seed: int = 17,
    rate: float = RATE,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every measurement of the module docstring in one namespace; returns the rows and the verdict (``ok``).
    A failed kill -9 measurement is a failure row; RunError (with the workers' log tails and ``rows``, what was
    measured so far) when the run cannot go on."""
    say = echo or (lambda m: print(m, file=sys.stderr, flush=True))
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    empty_rules = Path(settings.state_dir) / "bench-no-rules.toml"
    empty_rules.parent.mkdir(parents=True, exist_ok=True)
    empty_rules.write_text("")
    settings = settings.with_(
        topic_prefix=f"bench.rec-{run_id}",
        app_id=f"oms-bench-rec-{run_id}",
        rules_file=str(empty_rules),
        web_port=free_web_port(),
        standby_replicas=0,  # the single-machine default; the standby case sets 1 itself
    )
    topics = Topics(settings.topic_prefix)
    # Orders for the state, then enough for four kills at ``rate`` (each: settle, baseline, two session
    # timeouts at worst, the window, the rejoin). Stock is loaded for all of them: what is measured is recovery,
    # not stock-outs.
    budget = int(rate * 4 * (2 * settings.session_timeout_s + 120))
    workload = Workload(WorkloadSpec(orders=orders + budget, seed=seed))
    stream = workload.orders()
    bulk = list(itertools.islice(stream, orders))
    run = Run(settings, topics, Tracker(), Inputs(), say)
    create_topics(settings.bootstrap, topics.all(), settings.partitions, configs=topics.configs())
    try:
        # 1. empty state
        say("recovery: start on an empty state")
        pool, empty, _ = start_pool(run, settings)
        run.record({"case": "ready, empty state", "kind": "start", **empty})
        run.follower = Follower(settings.bootstrap, topics.order_decisions, settings.partitions, run.tracker)
        run.follower.start()

        # 2. full state: decide the orders, stop, start warm, stop, start cold
        say(f"recovery: deciding {orders:,} orders")
        stock = list(workload.opening_stock("stock-loader", 0, now_ms()))
        load_stock(settings.bootstrap, topics, settings.partitions, stock, app_id=settings.app_id)
        run.inputs.add_stock(stock)
        wait_idle(settings, [topics.inventory_commands])
        t = now_ms()
        for o in bulk:
            run.tracker.expect(o.key, t, partition_for(OrderSnapshot(order=o).key, settings.partitions))
        t0 = time.monotonic()
        send_orders(settings.bootstrap, topics, bulk)
        run.inputs.add_orders(bulk)
        wait_decided(run)
        decide_s = time.monotonic() - t0
        wait_idle(settings, engine_inputs(topics))
        # Each worker's store holds the partitions it has owned (standby 0): what a warm start need not restore.
        held: dict[int, set[str]] = {i: set() for i in range(WORKERS)}
        for tp, i in assignment(run, pool).items():
            held[i].add(tp)
        stop_s = stop_pool(pool)
        size = changelogs(settings)
        stores = dir_bytes(run.store_dir)
        run.record(
            {
                "case": "state",
                "kind": "state",
                "orders": len(run.tracker.decided),
                "decide_s": round(decide_s, 2),
                "clean_stop_s": stop_s,
                "store_mib": round(stores / 2**20, 1),
                **size,
            }
        )
        # Twice: a fresh group's assignment ignores where the stores are, so the first warm start may put
        # partitions on the worker whose store never held them (restored in full); by the second, each worker's
        # store holds what the first one gave it too.
        for case in ("ready, full state, stores kept (warm)", "ready, full state, stores kept (warm), again"):
            say(f"recovery: {case}")
            pool, warm, owners = start_pool(run, settings)
            unheld = sum(1 for tp, i in owners.items() if tp not in held[i])
            run.record({"case": case, "kind": "start", **warm, "restored_in_full": unheld, **size})
            for tp, i in owners.items():
                held[i].add(tp)
            stop_pool(pool)
        say("recovery: ready, full state, stores deleted (cold)")
        if run.store_dir.parent.resolve() != (Path(settings.state_dir) / "workers").resolve():
            raise RuntimeError(f"refusing to delete {run.store_dir}: not a worker store of this state dir")
        shutil.rmtree(run.store_dir)
        pool, cold, owners = start_pool(run, settings)
        run.record(
            {
                "case": "ready, full state, stores deleted (cold)",
                "kind": "start",
                **cold,
                "restored_in_full": len(owners),
            }
            | size
        )

        # 3. failover, standby 0 then 1, orders flowing all along
        run.sender = PacedSender(settings, topics, stream, run.tracker, rate)
        run.sender.start()
        measure_failover(run, pool, 0, restart=False)
        measure_failover(run, pool, 0, restart=True)
        stop_pool(pool)
        standby = settings.with_(standby_replicas=1)
        say("recovery: start with 1 standby replica (stores kept, orders flowing)")
        pool, warm1, _ = start_pool(run, standby)
        run.record({"case": "ready, full state, stores kept, standby 1, orders flowing", "kind": "start", **warm1})
        measure_failover(run, pool, 1, restart=False)
        measure_failover(run, pool, 1, restart=True)
        run.sender.stop()
        run.check_threads()
        exhausted = run.sender.exhausted

        # 4. the invariants, from the result topics against everything sent
        wait_decided(run)
        wait_idle(settings, engine_inputs(topics))
        stop_pool(pool)
        run.follower.stop()
        run.inputs.add_orders(run.sender.sent_orders)
        say("recovery: checking the invariants from the result topics")
        verdict = check(run.inputs, collect(settings.bootstrap, topics), settings.partitions)
        tracker = run.tracker
        timed_out = [r["case"] for r in run.rows if r.get("timed_out")]
        result: dict[str, Any] = {
            "what": "recovery_summary",
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "kafka": settings.kafka_version,
            "workers": WORKERS,
            "partitions": settings.partitions,
            "session_timeout_s": settings.session_timeout_s,
            "table_store": settings.table_store,
            "orders": orders,
            "rate_per_s": rate,
            "orders_sent": len(tracker.log),
            "decided": len(tracker.decided),
            "statuses": dict(tracker.statuses),
            "engine_errors": tracker.engine_errors,
            "unknown_decisions": tracker.unknown,
            "delivery_errors": len(run.sender.delivery_errors),
            "order_budget_exhausted": exhausted,
            "timed_out": timed_out,
            "invariants": verdict.summary(),
            "oversold_units": verdict.oversold_units,
            "restarts": [{"worker": r.index, "exit_code": r.exit_code} for p in run.pools for r in p.restarts],
            "worker_logs": [str(run.pools[0].log_path(i)) for i in range(WORKERS)],
            "elapsed_s": round(time.monotonic() - started, 1),
            "command": command_line(orders, settings),
            "failed_measurements": len(failed(run.rows)),
            "rows": run.rows,
        }
        result["ok"] = (
            not failed(run.rows)
            and verdict.ok
            and tracker.engine_errors == 0
            and tracker.unknown == 0
            and not run.sender.delivery_errors
            and not timed_out
            and not exhausted
        )
        emit({k: v for k, v in result.items() if k != "rows"})
        return result
    except Exception as exc:
        raise RunError(exc, log_tails(run.pools[-1] if run.pools else None), run.rows) from exc
    finally:
        cleanup_quietly(
            *(lambda t=t: t.stop() for t in (run.sender, run.follower) if t is not None and t.is_alive()),
            *(lambda p=p: p.stop(timeout_s=20) for p in run.pools),
            lambda: delete_topics(settings.bootstrap, settings.topic_prefix + "."),
            lambda: delete_topics(settings.bootstrap, settings.app_id + "-"),
            lambda: shutil.rmtree(run.store_dir, ignore_errors=True),
        )


# -- BENCHMARKS.md ------------------------------------------------------------------------------------------------
def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f}"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} ms"


def _start_note(r: dict[str, Any], result: dict[str, Any], state: dict[str, Any]) -> str:
    first = f"a worker's `/oms/ready/` first answered after {r['first_answer_s']:.1f} s"
    total = 2 * result["partitions"]
    if r["case"].startswith("ready, empty"):
        return (
            f"{first} (process start, imports, Faust's start); the rest is the group's rebalances as both workers "
            "join, and the stages taking their partitions"
        )
    if "cold" in r["case"]:
        return (
            f"every table restored from its changelog ({state['changelog_records']:,} records in "
            f"{state['changelog_topics']} changelog topics); {first}"
        )
    if "standby 1" in r["case"]:
        return f"each worker also restores a standby copy of the other's tables; orders were being sent; {first}"
    return (
        f"{result['orders']:,} orders of state, {state['store_mib']:,} MiB of local stores; "
        f"{r['restored_in_full']} of the {total} engine partitions landed on a worker whose store never held them "
        f"(restored from the changelog in full); {first}"
    )


def _failover_note(r: dict[str, Any]) -> str:
    part = ", ".join(str(p) for p in r["victim_inbox_partitions"])
    note = (
        f"inbox partitions {part} (median {_s(r['served_median_s'])} s); owned again with tables restored after "
        f"{_s(r['taken_over_s'])} s; p99 order → decision {_ms(r['p99_ms'])} for orders sent in the {WINDOW_S:g} s "
        f"after the kill (before it: {_ms(r['before_p99_ms'])}); the survivor's own orders waited up to "
        f"{_ms(r['survivor_max_ms'])}"
    )
    if r["stall_rereads"]:
        note += f"; {r['stall_rereads']} partition(s) stopped fetching and were read again by the 30 s watchdog"
    if r["timed_out"]:
        note += "; TIMED OUT"
    return note


def write_markdown(result: dict[str, Any]) -> None:
    """Rewrite the "Start-up and recovery" section of BENCHMARKS.md from one run."""
    rows = {r["case"]: r for r in result["rows"]}
    state = rows["state"]
    session = result["session_timeout_s"]
    body: list[list[str]] = []
    for r in result["rows"]:
        if r.get("error"):
            body.append([r["case"][0].upper() + r["case"][1:], "–", f"**failed**: {short_error(r, 160)}"])
            continue
        if r["kind"] == "state":
            body.append(
                [
                    "Clean stop (SIGTERM), full state",
                    _s(r["clean_stop_s"]),
                    f"after {result['orders']:,} orders; each worker finishes its transaction and leaves the group",
                ]
            )
            continue
        note = _start_note(r, result, state) if r["kind"] == "start" else _failover_note(r)
        body.append([r["case"][0].upper() + r["case"][1:], _s(r["seconds"]), note])
    fails = {(r["standby_replicas"], r["restarted"]): r for r in result["rows"] if r["kind"] == "failover"}
    served = [r["seconds"] for r in fails.values() if r["seconds"] is not None]
    warm = [r for r in result["rows"] if r["case"].startswith("ready, full state, stores kept (warm)")]
    inv = result["invariants"]

    def fig(standby: int, restarted: bool) -> str:
        r = fails.get((standby, restarted))
        return "–" if r is None else _s(r["seconds"])

    total = 2 * result["partitions"]
    reading = (
        f"Reading it: workers serve {rows['ready, empty state']['seconds']:.0f} s after they start on an empty "
        "state. On a full one they serve after "
        + " and ".join(
            f"{r['seconds']:.0f} s ({r['restored_in_full']} of {total} partitions restored in full)" for r in warm
        )
        + f" with their stores kept, and {rows['ready, full state, stores deleted (cold)']['seconds']:.0f} s with "
        "every table restored from its changelog. "
    )
    if any(r["restored_in_full"] for r in warm):
        reading += (
            "A local store saves only the partitions the new group assigns back to the worker that held them; the "
            "range assignor over static members (`group.instance.id` = the worker's index) gives a worker index the "
            "same partitions when the same indexes are members, and the others were restored in full. "
        )
    else:
        reading += (
            "Every partition came back to the worker whose store held it: the range assignor over static members "
            "(`group.instance.id` = the worker's index) gives a worker index the same partitions when the same "
            "indexes are members. "
        )
    reading += (
        f"A killed worker's partitions are served again after {fig(0, False)} s (standby 0) and {fig(1, False)} s "
        f"(standby 1) when it stays dead, and after {fig(0, True)} s and {fig(1, True)} s when it is started again "
        "at once. "
    )
    if served and min(served) >= session:
        reading += (
            f"The session timeout ({session:g} s, `OMS_SESSION_TIMEOUT_S`) is the floor of every one of them: the "
            "group keeps the dead member's partitions until its session expires. Then come the rebalance and the "
            "restore of the moved tables (*owned again*), then the "
            "orders that queued meanwhile: an order's stock answers reach it through the same inbox, behind them. "
            "The survivor's own orders wait too, for their lines' SKUs on the dead worker's inventory partitions and "
            "through the rebalance."
        )
    else:
        reading += (
            f"A worker started again at once rejoins under its own `group.instance.id` and takes its partitions back "
            f"without waiting out the session timeout ({session:g} s, `OMS_SESSION_TIMEOUT_S`); one that stays dead "
            "hands them over when its session expires. Either way the new owner restores only what its store (or "
            "standby copy) lacks, after fencing the departed worker's transactional id."
        )
    stalls = [r for r in fails.values() if r.get("stall_rereads")]
    if stalls:
        reading += (
            f" After {len(stalls)} of the {len(fails)} kills, partitions stopped fetching after the rebalance until "
            "the stages' stall watchdog read them again 30 s later (`engine/runtime/stage.py`, `_watch_progress`): "
            "that wait is in the figure."
        )
    lines = [
        measured_on(result["kafka"]),
        "",
        f"One engine ({result['workers']} workers, {result['partitions']} partitions, table store "
        f"`{result['table_store']}`, no review rules). *Ready*: from starting the workers until every worker "
        "answers `/oms/ready/` with 200 (partitions owned, tables restored) and together they own every partition "
        "of the order inbox and of inventory-commands. *Kill -9*: orders flow at "
        f"{result['rate_per_s']:g}/s from an open-loop sender; the figure is the time from the kill until the last "
        "order-inbox partition the killed worker owned is served again (the first decision read for an order sent "
        f"to it after the kill). Session timeout {session:g} s.",
        "",
        *table(["What", "Seconds", "Notes"], body, ["l", "r", "l"]),
        "",
        reading,
        "",
        f"Invariants, checked from the result topics against every order and stock command sent "
        f"({result['orders_sent']:,} orders): {'ok' if inv == 'ok' else 'FAILED: ' + '; '.join(inv)}; oversold "
        f"units {result['oversold_units']}; engine errors {result['engine_errors']}.",
        *(["", *failure_lines(result["rows"], lambda r: r["case"])] if failed(result["rows"]) else []),
        "",
        f"Command: `{result['command']}`.",
    ]
    write_section(TITLE, lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=DEFAULT_ORDERS, help="orders decided before the full-state starts")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--no-markdown", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    servers = LocalServers(settings)
    try:
        servers.start(echo=lambda m: print(m, file=sys.stderr))
    except Exception as exc:
        return setup_failed("recovery", exc)
    try:
        try:
            result = run_recovery(settings, args.orders, seed=args.seed)
        except Exception as exc:  # reported with its error and the workers' logs, never a traceback
            row = failure_row({"what": "recovery_summary", "rows": exc.rows if isinstance(exc, RunError) else []}, exc)
            emit(row)
            print(f"recovery: the run could not complete: {row['error']}\n{row.get('log_tail', '')}", file=sys.stderr)
            return 2
        if not args.no_markdown:
            write_markdown(result)
        if not result["ok"]:
            print(
                f"recovery: the run FAILED: invariants {result['invariants']}, engine errors "
                f"{result['engine_errors']}, timed out {result['timed_out']}",
                file=sys.stderr,
            )
        return 0 if result["ok"] else 1
    finally:
        servers.stop(only_started=True)


if __name__ == "__main__":
    sys.exit(main())
