"""``oms run``: the main job. Provisions what is missing, runs the engine over a generated day of orders,
shows progress, checks the invariants from the result topics, reports, and cleans up after itself.

Every run gets its own namespace (topic prefix and app id carry a run id), so runs never see each other's
records and the numbers are those of this run alone.
"""

from __future__ import annotations

import argparse
import asyncio
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

from engine import catalog, kafka
from engine.channels import channel_day
from engine.delivery import Credentials, DeliveryStats, deliver, resolve_holds
from engine.invariants import check, collect, latency_ms
from engine.local import LocalServerError, LocalServers
from engine.redisx import Keys
from engine.settings import Settings
from engine.stage import now_ms
from engine.topics import Topics
from engine.workers import WorkerError, WorkerPool
from engine.workload import Workload, WorkloadSpec
from schemas import wire
from schemas.review import Action, Outcome, ReviewDecision
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
    run_dir = Path(base.state_dir) / "runs" / run_id
    workload = Workload(WorkloadSpec(orders=opts.orders, seed=opts.seed, flash_sale=opts.flash_sale))
    creds = Credentials.create(workload.spec.tenants, run_dir)
    settings = base.with_(
        topic_prefix=f"{base.topic_prefix}.{run_id}",
        app_id=f"{base.app_id}-{run_id}",
        tenants_file=str(creds.path),
    )
    workers = max(2, opts.workers or settings.workers)
    topics = Topics(settings.topic_prefix)
    servers = LocalServers(settings)
    pool = WorkerPool(settings, workers)
    sent: DeliveryStats | None = None
    t0 = time.monotonic()
    try:
        with console.status("Starting local Kafka and Redis…" if settings.uses_local_kafka else "Checking Kafka…"):
            servers.start(echo=console.print)
            kafka.wait_for_broker(settings.bootstrap)
        console.print(f"[green]✓[/] Kafka at {settings.bootstrap}, Redis at {settings.redis}")
        kafka.create_topics(
            settings.bootstrap, topics.all(), settings.partitions, settings.replication_factor, topics.configs()
        )
        with console.status(f"Starting {workers} engine workers…"):
            pool.start()
            pool.wait_ready([topics.orders, topics.inventory_commands])
        console.print(f"[green]✓[/] {workers} workers own {settings.partitions} partitions of every topic")
        with console.status("Loading the product catalog and opening stock…"):
            catalog.publish(settings.redis, Keys(settings.topic_prefix), workload.catalog())
            units = load_stock(settings.bootstrap, topics, workload)
            wait_idle(settings, [topics.inventory_commands])  # the catalog is complete before orders arrive
        console.print(f"[green]✓[/] opening stock: {units:,} units in {len(workload.spec.warehouses)} warehouses")
        startup_s = time.monotonic() - t0

        deliveries = list(channel_day(workload.orders(), opts.seed))
        expected = len({(d.tenant, d.channel, d.shop, d.platform_id) for d in deliveries if d.kind != "bad"})
        start = time.monotonic()
        with console.status(f"Sending {len(deliveries):,} channel deliveries (raw topics, API, webhooks)…"):
            sent = asyncio.run(deliver(settings, topics, deliveries, creds, workers))
        stall = opts.stall_s or settings.saga_timeout_s + 90
        follow_decisions(console, settings, topics, pool, expected, stall, "deciding orders", count_held=True)
        with console.status("Resolving held orders through the API (release half, reject half)…"):
            resolved = asyncio.run(resolve_holds(settings, creds, workers))
        _, last_at = follow_decisions(
            console, settings, topics, pool, expected, stall, "after review", count_held=False
        )
        elapsed = last_at - start
        with console.status("Waiting for the pipeline to go idle…"):
            wait_idle(settings, engine_inputs(topics))
        pool.stop()
        with console.status("Checking invariants from the result topics…"):
            records = collect(settings.bootstrap, topics)
            verdict = check(records)
        summary = build_summary(settings, opts, workers, verdict, records, elapsed, startup_s, run_id, sent, resolved)
        print_report(summary, verdict.counts, console)
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        return 0 if verdict.ok and summary["oversold_units"] == 0 else 1
    except (LocalServerError, WorkerError, RunFailed, kafka.KafkaUnavailable, kafka.DeliveryFailed) as exc:
        console.print(f"[red]oms run failed:[/] {exc}")
        detail = {"error": str(exc)[:2000], "invariants": "not checked"}
        if sent is not None:
            detail["deliveries"] = {
                "routes": dict(sent.by_route),
                "http_status": {str(k): v for k, v in sent.http_status.items()},
                "refused_at_api": dict(sent.http_refused),
            }
        print(json.dumps(detail), flush=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        pool.stop(timeout_s=20)
        if not opts.keep:
            cleanup(settings)
            shutil.rmtree(run_dir, ignore_errors=True)
        servers.stop(only_started=True)


def engine_inputs(topics: Topics) -> list[str]:
    """Every topic an engine agent consumes (for the idle check)."""
    return [
        *topics.raw.values(),
        topics.orders,
        topics.review_commands,
        topics.saga_requests,
        topics.line_results,
        topics.saga_timeouts,
        topics.inventory_commands,
    ]


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
    console: Console,
    settings: Settings,
    topics: Topics,
    pool: WorkerPool,
    expected: int,
    stall_s: float,
    label: str,
    count_held: bool,
) -> tuple[int, float]:
    """Progress bar until ``expected`` orders are decided (or, with ``count_held``, decided or held);
    returns (resolved, monotonic time of the last new decision)."""
    decided: dict[str, DecisionStatus] = {}
    held: set[str] = set()
    state = {"last": time.monotonic()}
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("orders", total=expected, detail="")

        def on_message(msg: kafka.Message) -> None:
            try:
                if msg.topic == topics.order_decisions:
                    d = wire.decode(msg.value or b"", OrderDecision)
                    if d.key not in decided:
                        decided[d.key] = d.status
                        state["last"] = time.monotonic()
                    held.discard(d.key)
                else:
                    r = wire.decode(msg.value or b"", ReviewDecision)
                    if r.outcome is Outcome.HELD and r.key not in decided:
                        held.add(r.key)
                        state["last"] = time.monotonic()
                    elif r.outcome is Outcome.RELEASED:
                        held.discard(r.key)
            except wire.WireError:
                return

        def stop() -> bool:
            accepted = sum(1 for s in decided.values() if s is DecisionStatus.ACCEPTED)
            done = len(decided) + (len(held) if count_held else 0)
            rate = len(decided) / max(1e-3, time.monotonic() - progress.tasks[0].start_time)
            progress.update(
                task,
                completed=done,
                detail=f"accepted {accepted:,} · other {len(decided) - accepted:,} · held {len(held):,} "
                f"· {rate:,.0f}/s",
            )
            if done >= expected:
                return True
            dead = [i for i in range(pool.count) if not pool.alive(i)]
            if dead:
                raise RunFailed(f"worker {dead[0]} died ({done}/{expected} resolved):\n{pool.log_tail(dead[0])}")
            if time.monotonic() - state["last"] > stall_s:
                raise RunFailed(f"no progress for {stall_s:.0f}s ({done}/{expected} resolved)")
            return False

        kafka.tail(settings.bootstrap, [topics.order_decisions, topics.review_decisions], on_message, stop)
    return len(decided), state["last"]


def wait_idle(settings: Settings, inputs: list[str], timeout_s: float = 180.0) -> None:
    """Until the engine has consumed and committed everything in ``inputs`` (late releases included)."""
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


def build_summary(
    settings: Settings,
    opts: RunOptions,
    workers: int,
    verdict: Any,
    records: Any,
    elapsed: float,
    startup_s: float,
    run_id: str,
    sent: DeliveryStats,
    resolved: Any,
) -> dict[str, Any]:
    c = verdict.counts
    channels: dict[str, int] = {}
    for order in {o.key: o for o in records.orders}.values():
        channels[order.channel.value] = channels.get(order.channel.value, 0) + 1
    rejected_by_rule: dict[str, int] = {}
    for r in records.reviews:
        if r.outcome is Outcome.REJECTED:
            for f in r.fired:
                if f.action is Action.REJECT:  # the rules that rejected it, not every rule that fired
                    rejected_by_rule[f.rule_id] = rejected_by_rule.get(f.rule_id, 0) + 1
    held_orders: dict[str, set[str]] = {}  # order -> every reason it was held for
    for r in records.reviews:
        if r.outcome is Outcome.HELD:
            held_orders.setdefault(r.key, set()).update(r.reasons)
    held_reasons: dict[str, int] = {}
    for reasons in held_orders.values():
        for reason in reasons:
            held_reasons[reason] = held_reasons.get(reason, 0) + 1
    return {
        "orders": c.get("orders", 0),
        "accepted": c.get("accepted", 0),
        "rejected": c.get("rejected", 0),
        "cancelled": c.get("cancelled", 0),
        "lines": c.get("lines", 0),
        "oversold_units": verdict.oversold_units,
        "invariants": verdict.summary(),
        "elapsed_s": round(elapsed, 2),
        "orders_per_s": round(c.get("orders", 0) / max(elapsed, 1e-6), 1),
        "lines_per_s": round(c.get("lines", 0) / max(elapsed, 1e-6), 1),
        "latency_ms": latency_ms(records.decisions),
        "orders_per_channel": dict(sorted(channels.items())),
        "deliveries": dict(sent.by_route),
        "held": len(held_orders),
        "held_by_reason": held_reasons,
        "holds_resolved": dict(resolved),
        "rejected_by_reason": c.get("rejected_by_reason", {}),
        "rejected_by_rule": rejected_by_rule,
        "dead_letters": sum(c.get("dead_letters", {}).values()),
        "dead_letters_by_reason": c.get("dead_letters", {}),
        "refused_at_api": dict(sent.http_refused),
        "duplicates_at_api": sent.duplicates_at_edge,
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
        ("orders", f"{s['orders']:,} · {s['lines']:,} lines · " + _kv(s["orders_per_channel"])),
        ("deliveries", _kv(s["deliveries"]) + f" · duplicates answered at the API {s['duplicates_at_api']}"),
        ("accepted", f"{s['accepted']:,}"),
        ("rejected", f"{s['rejected']:,} · " + _kv(s["rejected_by_reason"])),
        ("cancelled", f"{s['cancelled']:,} (by the channel before a decision)"),
        ("held", f"{s['held']:,} · " + _kv(s["held_by_reason"]) + " · resolved " + _kv(s["holds_resolved"])),
        ("rejected by rule", _kv(s["rejected_by_rule"]) or "none"),
        ("dead letters", f"{s['dead_letters']} · " + _kv(s["dead_letters_by_reason"])),
        ("refused at the API", _kv(s["refused_at_api"]) or "none"),
        ("throughput", f"{s['orders_per_s']:,} orders/s · {s['lines_per_s']:,} lines/s over {s['elapsed_s']} s"),
        (
            "latency",
            f"p50 {lat.get('p50', 0):.0f} ms · p95 {lat.get('p95', 0):.0f} ms · p99 {lat.get('p99', 0):.0f} ms "
            "(order in → decision; the whole day is sent at once, so this is mostly queueing)",
        ),
        ("workers", f"{s['workers']} processes · {s['partitions']} partitions · startup {s['startup_s']} s"),
        ("stock events", f"{s['stock_events']:,}"),
        ("oversold units", f"{s['oversold_units']}"),
        ("invariants", "[green]ok[/]" if s["invariants"] == "ok" else "[red]VIOLATED[/]"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    if s["invariants"] != "ok":
        for line in s["invariants"]:
            out.print(f"  [red]✗[/] {line}")


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in d.items())


def cleanup(settings: Settings) -> None:
    try:
        kafka.delete_topics(settings.bootstrap, settings.topic_prefix + ".")
        kafka.delete_topics(settings.bootstrap, settings.app_id + "-")
    except Exception:  # cleanup must not hide the run's result
        pass
    shutil.rmtree(Path(settings.state_dir) / "workers" / settings.app_id, ignore_errors=True)
