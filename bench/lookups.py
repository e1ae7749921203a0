"""Query API lookups under load: how long a customer-service or storefront ``GET`` takes while a day is decided.

    python -m bench lookups [--orders 5000] [--reps 3] [--threads 4]

Each repetition runs two engine workers (the full pipeline app, views projector on), loads the day's stock, sends
the day's orders at once and, while they are being decided, ``--threads`` clients (one kept-alive connection each,
alternating over the two workers) look up orders already sent (``GET /api/v1/{tenant}/orders/{id}``: 200 when the
view has it, 404 while it trails) and stock for 20 SKUs (``GET /api/v1/{tenant}/stock?skus=…``). Then, the engine
idle, the same clients make as many lookups again: the **baseline of the same run**. Reported: median p50/p99 of
each phase and the ratio of their p99s, lookups per second under load, and the day's decisions per second beside
them. Every run ends with the invariants (I1–I6 …) checked from the topics; a violation is a failure, never a
number. Rewrites its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import threading
import time
import uuid
from pathlib import Path

from bench.report import (
    RunError,
    attempt,
    cleanup_quietly,
    emit,
    exit_code,
    failure_lines,
    log_tails,
    measured_on,
    median,
    setup_failed,
    table,
    write_section,
)
from deploy.local.servers import LocalServers
from engine.kafka.admin import create_topics, delete_topics
from engine.kafka.clients import Message, tail
from engine.settings import Settings
from engine.supervisor import WorkerPool
from engine.topics import Topics
from invariants import Inputs, check, collect
from schemas import wire
from schemas.saga import OrderDecision
from workload.day import engine_inputs, wait_idle
from workload.delivery import Credentials
from workload.generator import Workload, WorkloadSpec
from workload.stock import load_stock, send_orders

TITLE = "Query API lookups under load"


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


class Client(threading.Thread):
    """One caller: lookups on one kept-alive connection until told to stop, or ``count`` of them."""

    def __init__(self, port: int, token: str, paths: list[str], seed: int, count: int | None = None) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.paths, self.count = port, token, paths, count
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.ms: list[float] = []
        self.statuses: dict[int, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self.stop.is_set() and (self.count is None or len(self.ms) < self.count):
            path = self.rng.choice(self.paths)
            started = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                res = conn.getresponse()
                res.read()
                status = res.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                status = 0
            self.ms.append((time.perf_counter() - started) * 1000)
            self.statuses[status] = self.statuses.get(status, 0) + 1
        conn.close()


def measure(base: Settings, orders_n: int, seed: int, threads: int, rep: int) -> dict:
    run = uuid.uuid4().hex[:8]
    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    creds = Credentials.create(workload.spec.tenants, Path(base.state_dir) / "bench-lookups" / run)
    empty_rules = Path(base.state_dir) / "bench-no-rules.toml"
    empty_rules.write_text("")
    settings = base.with_(
        topic_prefix=f"bench.{run}", app_id=f"oms-bench-{run}", rules_file=str(empty_rules),
        tenants_file=str(creds.path), views=1,
    )  # fmt: skip
    topics = Topics(settings.topic_prefix)
    pool = WorkerPool(settings, 2)
    try:
        create_topics(settings.bootstrap, topics.all(), settings.partitions, configs=topics.configs())
        return _measure(settings, topics, pool, workload, creds, threads, rep)
    except Exception as exc:
        raise RunError(exc, log_tails(pool)) from exc
    finally:
        cleanup_quietly(
            lambda: pool.stop(timeout_s=20),
            lambda: delete_topics(settings.bootstrap, settings.topic_prefix + "."),
            lambda: delete_topics(settings.bootstrap, settings.app_id + "-"),
        )


def _measure(
    settings: Settings, topics: Topics, pool: WorkerPool, workload: Workload, creds: Credentials, threads: int, rep: int
) -> dict:
    pool.start()
    pool.wait_ready([topics.order_inbox, topics.inventory_commands])
    inputs = Inputs()
    stock = list(workload.opening_stock("stock-loader", 0, int(time.time() * 1000)))
    load_stock(settings.bootstrap, topics, settings.partitions, stock, app_id=settings.app_id)
    inputs.add_stock(stock)
    wait_idle(settings, [topics.inventory_commands])
    orders = list(workload.orders())
    skus = sorted(set().union(*workload.catalog().values()))
    tenant = workload.spec.tenants[0]
    mine = [o for o in orders if o.tenant == tenant]
    paths = [f"/api/v1/{tenant}/orders/{o.order_id}" for o in mine]
    stock_paths = [f"/api/v1/{tenant}/stock?skus={','.join(random.Random(i).sample(skus, 20))}" for i in range(50)]
    mix = paths + stock_paths * max(1, len(paths) // (4 * len(stock_paths)))  # about one stock lookup in five
    token = creds.tokens[tenant]
    unique = len({o.key for o in orders})
    decided: set[str] = set()
    last = [time.monotonic()]

    def on_message(msg: Message) -> None:
        d = wire.decode(msg.value or b"", OrderDecision)
        if d.key not in decided:
            decided.add(d.key)
            last[0] = time.monotonic()

    clients = [Client(settings.web_port + i % 2, token, mix, 100 * rep + i) for i in range(threads)]
    start = time.monotonic()
    send_orders(settings.bootstrap, topics, orders)
    inputs.add_orders(orders)
    for c in clients:
        c.start()
    tail(
        settings.bootstrap,
        [topics.order_decisions],
        on_message,
        lambda: len(decided) >= unique or time.monotonic() - last[0] > 120,
    )
    for c in clients:
        c.stop.set()
        c.join(15)
    loaded_s = time.monotonic() - start
    under = [ms for c in clients for ms in c.ms]
    wait_idle(settings, engine_inputs(topics))
    idle_clients = [
        Client(settings.web_port + i % 2, token, mix, 900 + 100 * rep + i, count=len(under) // threads)
        for i in range(threads)
    ]
    for c in idle_clients:
        c.start()
    for c in idle_clients:
        c.join(300)
    idle = [ms for c in idle_clients for ms in c.ms]
    pool.stop()
    verdict = check(inputs, collect(settings.bootstrap, topics), settings.partitions)
    statuses: dict[str, int] = {}
    for c in clients:
        for status, n in c.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + n
    return {
        "what": "lookups",
        "rep": rep,
        "orders": unique,
        "decided": len(decided),
        "invariants": verdict.summary(),
        "orders_per_s": round(len(decided) / max(0.001, last[0] - start), 1),
        "lookups_under_load": len(under),
        "lookups_per_s": round(len(under) / max(0.001, loaded_s), 1),
        "statuses_under_load": statuses,
        "p50_ms_load": round(pct(under, 50) or 0, 2),
        "p99_ms_load": round(pct(under, 99) or 0, 2),
        "p50_ms_idle": round(pct(idle, 50) or 0, 2),
        "p99_ms_idle": round(pct(idle, 99) or 0, 2),
    }


def verdict_of(row: dict) -> str | None:
    if row.get("invariants") != "ok":
        return f"invariants: {row.get('invariants')}"
    if row.get("statuses_under_load", {}).get("0"):
        return f"{row['statuses_under_load']['0']} lookups failed to connect"
    return None


def write(settings: Settings, rows: list[dict], orders_n: int, threads: int) -> None:
    ok = [r for r in rows if r.get("valid")]

    def med(key: str) -> str:
        value = median([r[key] for r in ok if r.get(key) is not None])
        return "–" if value is None else f"{value:,.2f}"

    p99_load = median([r["p99_ms_load"] for r in ok])
    p99_idle = median([r["p99_ms_idle"] for r in ok])
    ratio = f"{p99_load / p99_idle:.2f}" if p99_load and p99_idle else "–"
    lines = [
        measured_on(settings.kafka_version),
        "",
        f"`python -m bench lookups --orders {orders_n} --reps {len(rows)} --threads {threads}`: two workers (views "
        f"projector on), the day's orders sent at once; {threads} clients on kept-alive connections look orders and "
        "stock up while the day is decided, then as many again on the idle engine (the baseline, same run). "
        f"Medians of {len(ok)} valid run(s).",
        "",
        *table(
            ["", "p50 ms", "p99 ms", "lookups/s"],
            [
                ["while the day is decided", med("p50_ms_load"), med("p99_ms_load"), med("lookups_per_s")],
                ["the engine idle (baseline)", med("p50_ms_idle"), med("p99_ms_idle"), "–"],
            ],
            ["l", "r", "r", "r"],
        ),
        "",
        f"p99 under load ÷ p99 idle: **{ratio}**; the day meanwhile decided {med('orders_per_s')} orders/s. A "
        "lookup is one or three Redis round trips on the worker's event loop, beside the stages' own work: under "
        "load it waits for the loop and the two cores.",
        *failure_lines(rows),
    ]
    write_section(TITLE, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lookups", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    servers = LocalServers(settings)
    try:
        servers.start(echo=lambda m: print(m, file=sys.stderr))
    except Exception as exc:
        return setup_failed("lookups", exc)
    rows = []
    try:
        for rep in range(args.reps):
            row = attempt(lambda r=rep: measure(settings, args.orders, args.seed, args.threads, r),
                          {"bench": "lookups", "rep": rep}, verdict_of)  # fmt: skip
            emit(row)
            rows.append(row)
    finally:
        servers.stop(only_started=True)
    write(settings, rows, args.orders, args.threads)
    return exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
