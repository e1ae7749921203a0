"""``oms run``: the main job. Provisions what is missing, runs the engine over a generated day of orders,
shows progress, checks the invariants from the result topics, reports, and cleans up after itself.

Every run gets its own namespace (topic prefix and app id carry a run id), so runs never see each other's
records and the numbers are those of this run alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine import kafka
from engine.invariants import check, collect, latency_ms
from engine.local import LocalServerError, LocalServers
from engine.settings import Settings
from engine.stage import now_ms
from engine.topics import Topics
from engine.workers import WorkerError, WorkerPool
from engine.workload import Workload, WorkloadSpec
from schemas import wire
from schemas.saga import DecisionStatus, OrderDecision

LOADER_ORIGIN = "stock-loader"


@dataclass(frozen=True)
class RunOptions:
    orders: int = 20_000
    seed: int = 11
    workers: int | None = None
    flash_sale: bool = False
    keep: bool = False
    stall_s: float | None = None

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--orders", type=int, default=20_000, help="orders in the generated day (default 20000)")
        p.add_argument("--seed", type=int, default=11, help="workload seed: same seed, same day")
        p.add_argument("--workers", type=int, default=None, help="worker processes (default OMS_WORKERS, min 2)")
        p.add_argument("--flash-sale", action="store_true", help="one scarce SKU in front of many buyers")
        p.add_argument("--keep", action="store_true", help="keep the run's topics and worker data afterwards")
        p.add_argument("--stall", type=float, default=None, help="give up after this long without progress (s)")

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> RunOptions:
        if a.orders < 1:
            raise SystemExit("oms run: --orders must be at least 1")
        return cls(a.orders, a.seed, a.workers, a.flash_sale, a.keep, a.stall)


class RunFailed(RuntimeError):
    pass


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main_job(base: Settings, opts: RunOptions) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # run the cleanup below on SIGTERM too
    console = Console(stderr=True)
    run_id = time.strftime("r%Y%m%d%H%M%S")
    settings = base.with_(
        topic_prefix=f"{base.topic_prefix}.{run_id}",
        app_id=f"{base.app_id}-{run_id}",
    )
    workers = max(2, opts.workers or settings.workers)
    topics = Topics(settings.topic_prefix)
    servers = LocalServers(settings)
    pool = WorkerPool(settings, workers)
    t0 = time.monotonic()
    try:
        with console.status("Starting local Kafka and Redis…" if settings.uses_local_kafka else "Checking Kafka…"):
            servers.start(echo=console.print)
            kafka.wait_for_broker(settings.bootstrap)
        console.print(f"[green]✓[/] Kafka at {settings.bootstrap}, Redis at {settings.redis}")
        kafka.create_topics(settings.bootstrap, topics.all(), settings.partitions, settings.replication_factor)

        workload = Workload(WorkloadSpec(orders=opts.orders, seed=opts.seed, flash_sale=opts.flash_sale))
        with console.status("Loading opening stock…"):
            units = load_stock(settings.bootstrap, topics, workload)
        console.print(f"[green]✓[/] opening stock: {units:,} units in {len(workload.spec.warehouses)} warehouses")

        with console.status(f"Starting {workers} engine workers…"):
            pool.start()
            pool.wait_ready([topics.orders, topics.inventory_commands])
        console.print(f"[green]✓[/] {workers} workers own {settings.partitions} partitions each topic")
        startup_s = time.monotonic() - t0

        orders = list(workload.orders())
        unique = len({o.key for o in orders})
        start = time.monotonic()
        send_orders(settings.bootstrap, topics, orders)
        _, last_at = follow_decisions(
            console, settings, topics, pool, unique, opts.stall_s or settings.saga_timeout_s + 90
        )
        elapsed = last_at - start
        with console.status("Waiting for the pipeline to go idle…"):
            wait_idle(settings, topics)
        pool.stop()
        with console.status("Checking invariants from the result topics…"):
            records = collect(settings.bootstrap, topics)
            verdict = check(records)
        summary = build_summary(settings, opts, workers, verdict, records, elapsed, startup_s, run_id)
        print_report(summary, verdict.counts, console)
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        return 0 if verdict.ok and summary["oversold_units"] == 0 else 1
    except (LocalServerError, WorkerError, RunFailed, kafka.KafkaUnavailable, kafka.DeliveryFailed) as exc:
        console.print(f"[red]oms run failed:[/] {exc}")
        print(json.dumps({"error": str(exc)[:2000], "invariants": "not checked"}), flush=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        pool.stop(timeout_s=20)
        if not opts.keep:
            cleanup(settings)
        servers.stop(only_started=True)


def load_stock(bootstrap: str, topics: Topics, workload: Workload) -> int:
    sender = kafka.Sender(bootstrap)
    units = 0
    now = now_ms()
    for cmd in workload.opening_stock(LOADER_ORIGIN, base_seq=now * 1000, ts=now):
        sender.send(topics.inventory_commands, cmd.key, wire.encode(cmd))
        units += cmd.quantity
    sender.flush()
    return units


def send_orders(bootstrap: str, topics: Topics, orders: list) -> None:
    sender = kafka.Sender(bootstrap)
    for order in orders:
        sent = now_ms()
        stamped = msgspec.structs.replace(order, ingested_at=sent)
        sender.send(topics.orders, order.key, wire.encode(stamped), headers={"oms-sent-ms": str(sent).encode()})
    sender.flush()


def follow_decisions(
    console: Console, settings: Settings, topics: Topics, pool: WorkerPool, expected: int, stall_s: float
) -> tuple[int, float]:
    """Progress bar over decided orders; returns (decided, monotonic time of the last new decision)."""
    seen: dict[str, DecisionStatus] = {}
    state = {"last": time.monotonic()}
    columns = (
        TextColumn("[bold]deciding orders"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("orders", total=expected, detail="")

        def on_message(msg: kafka.Message) -> None:
            try:
                d = wire.decode(msg.value or b"", OrderDecision)
            except wire.WireError:
                return
            if d.key not in seen:
                seen[d.key] = d.status
                state["last"] = time.monotonic()

        def stop() -> bool:
            accepted = sum(1 for s in seen.values() if s is DecisionStatus.ACCEPTED)
            rate = len(seen) / max(1e-3, time.monotonic() - progress.tasks[0].start_time)
            progress.update(
                task, completed=len(seen),
                detail=f"accepted {accepted:,} · rejected {len(seen) - accepted:,} · {rate:,.0f}/s",
            )  # fmt: skip
            if len(seen) >= expected:
                return True
            dead = [i for i in range(pool.count) if not pool.alive(i)]
            if dead:
                raise RunFailed(f"worker {dead[0]} died ({len(seen)}/{expected} decided):\n{pool.log_tail(dead[0])}")
            if time.monotonic() - state["last"] > stall_s:
                raise RunFailed(f"no new decision for {stall_s:.0f}s ({len(seen)}/{expected} decided)")
            return False

        kafka.tail(settings.bootstrap, [topics.order_decisions], on_message, stop)
    return len(seen), state["last"]


def wait_idle(settings: Settings, topics: Topics, timeout_s: float = 120.0) -> None:
    """Until the engine has consumed and committed everything (late releases included)."""
    inputs = [topics.orders, topics.line_results, topics.saga_timeouts, topics.inventory_commands]
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    lag: dict[str, int] = {}
    while time.monotonic() < deadline:
        lag = kafka.group_lag(settings.bootstrap, settings.app_id, inputs)
        if not lag:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 2 * settings.commit_interval_s:
                return
        else:
            quiet_since = None
        time.sleep(0.5)
    raise RunFailed(f"engine still has unprocessed input after {timeout_s:.0f}s: {lag}")


def build_summary(settings: Settings, opts: RunOptions, workers: int, verdict: Any, records: Any,
                  elapsed: float, startup_s: float, run_id: str) -> dict[str, Any]:  # fmt: skip
    c = verdict.counts
    return {
        "orders": c.get("orders", 0),
        "accepted": c.get("accepted", 0),
        "rejected": c.get("rejected", 0),
        "lines": c.get("lines", 0),
        "oversold_units": verdict.oversold_units,
        "invariants": verdict.summary(),
        "elapsed_s": round(elapsed, 2),
        "orders_per_s": round(c.get("orders", 0) / max(elapsed, 1e-6), 1),
        "lines_per_s": round(c.get("lines", 0) / max(elapsed, 1e-6), 1),
        "latency_ms": latency_ms(records.decisions),
        "orders_sent": c.get("orders_sent", 0),
        "rejected_by_reason": c.get("rejected_by_reason", {}),
        "dead_letters": sum(c.get("dead_letters", {}).values()),
        "stock_events": c.get("stock_events", 0),
        "workers": workers,
        "partitions": settings.partitions,
        "startup_s": round(startup_s, 1),
        "seed": opts.seed,
        "flash_sale": opts.flash_sale,
        "run_id": run_id,
    }


def print_report(s: dict[str, Any], counts: dict[str, Any], console: Console) -> None:
    out = Console(file=sys.stdout, highlight=False)
    table = Table(title=f"oms run {s['run_id']}", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    lat = s["latency_ms"]
    rows = [
        ("orders", f"{s['orders']:,} ({s['orders_sent']:,} sent, duplicates included) · {s['lines']:,} lines"),
        ("accepted", f"{s['accepted']:,}"),
        ("rejected", f"{s['rejected']:,} " + json.dumps(s["rejected_by_reason"])),
        ("throughput", f"{s['orders_per_s']:,} orders/s · {s['lines_per_s']:,} lines/s over {s['elapsed_s']} s"),
        (
            "latency",
            f"p50 {lat.get('p50', 0):.0f} ms · p95 {lat.get('p95', 0):.0f} ms · p99 {lat.get('p99', 0):.0f} ms",
        ),
        ("workers", f"{s['workers']} processes · {s['partitions']} partitions · startup {s['startup_s']} s"),
        ("stock events", f"{s['stock_events']:,}"),
        ("dead letters", f"{s['dead_letters']}"),
        ("oversold units", f"{s['oversold_units']}"),
        ("invariants", "[green]ok[/]" if s["invariants"] == "ok" else "[red]VIOLATED[/]"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    if s["invariants"] != "ok":
        for line in s["invariants"]:
            out.print(f"  [red]✗[/] {line}")


def cleanup(settings: Settings) -> None:
    try:
        kafka.delete_topics(settings.bootstrap, settings.topic_prefix + ".")
        kafka.delete_topics(settings.bootstrap, settings.app_id + "-")
    except Exception:  # cleanup must not hide the run's result
        pass
    shutil.rmtree(Path(settings.state_dir) / "workers" / settings.app_id, ignore_errors=True)
