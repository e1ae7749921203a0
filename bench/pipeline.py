"""Reservation throughput: the engine against its ceiling, the seed article's design and a JVM peer, in one run.

    python -m bench.pipeline --orders 20000 --reps 3

Each repetition measures, on the same broker, machine and orders (engine figures are ratios to each):

* ``ceiling`` — raw confluent-kafka relaying the day through the engine's three hops, at steady state
  (bench.baselines);
* ``redis_lua`` / ``redis_lock`` — the seed article's Redis allocators with concurrent pipelining clients
  (bench.baselines);
* ``kstreams_eos_v2`` / ``kstreams_alo`` — the same saga as a Kafka Streams 4.1 application
  (bench/peers/kstreams), exactly_once_v2 and at_least_once;
* ``engine`` — orders into the order inbox, review (no rules) + saga → per-SKU inventory writer in two
  worker processes, every stage committing one Kafka transaction per input partition per batch, until every
  order is decided; then the invariants from the result topics against the orders and stock sent.

With ``--profile`` one more engine run is sampled with py-spy, and its top entries are written too.
It prints one JSON line per measurement and a summary line, and rewrites its sections of BENCHMARKS.md.

A measurement that fails — raises (no Java for the peer, a worker that died), or an engine run without its
invariants' verdict — is a failure row with its error and the tail of the workers' logs (bench.report.attempt);
the other measurements still run, medians are over the valid runs only and say how many failed, the table lists
each failure, and the exit code is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from agents.fulfilment.publish import publish_layouts
from bench.profile import CpuMeter, Profiler, broker_pids, top
from bench.report import (
    RunError,
    attempt,
    cleanup_quietly,
    emit,
    exit_code,
    failed,
    failure_lines,
    failure_row,
    log_tails,
    measured_on,
    median,
    save_result,
    setup_failed,
    short_error,
    table,
    write_section,
)
from deploy.local.servers import LocalServers
from engine.kafka.admin import create_topics, delete_topics
from engine.kafka.clients import Message, read_topics, tail
from engine.settings import Settings
from engine.supervisor import WorkerPool
from engine.topics import Topics
from invariants import Inputs, check, collect
from schemas import wire
from schemas.fulfilment import Layout
from schemas.saga import OrderDecision
from workload.day import engine_inputs, fulfilment_summary, wait_fulfilment, wait_idle
from workload.generator import Workload, WorkloadSpec
from workload.stock import load_stock, send_orders


def measure_engine(
    base: Settings,
    workload: Workload,
    orders: list,
    workers: int,
    profiler: Profiler | None = None,
    layouts: list[Layout] | None = None,
) -> dict:
    """With ``layouts`` published first, fulfilment runs to its end too, and the row says how long it took.
    Raises RunError (the cause, and the tail of the workers' logs) when the run cannot complete; its clean-up
    (workers, topics) runs either way and never hides the run's own error."""
    run = uuid.uuid4().hex[:8]
    empty_rules = Path(base.state_dir) / "bench-no-rules.toml"
    empty_rules.write_text("")
    settings = base.with_(topic_prefix=f"bench.{run}", app_id=f"oms-bench-{run}", rules_file=str(empty_rules))
    topics = Topics(settings.topic_prefix)
    pool = WorkerPool(settings, workers)
    inputs = Inputs()
    try:
        create_topics(settings.bootstrap, topics.all(), settings.partitions, configs=topics.configs())
        return _measure_engine(settings, topics, pool, inputs, workload, orders, workers, profiler, layouts)
    except Exception as exc:
        raise RunError(exc, log_tails(pool)) from exc
    finally:
        cleanup_quietly(
            lambda: pool.stop(timeout_s=20),
            lambda: delete_topics(settings.bootstrap, settings.topic_prefix + "."),
            lambda: delete_topics(settings.bootstrap, settings.app_id + "-"),
        )


def _measure_engine(
    settings: Settings,
    topics: Topics,
    pool: WorkerPool,
    inputs: Inputs,
    workload: Workload,
    orders: list,
    workers: int,
    profiler: Profiler | None,
    layouts: list[Layout] | None,
) -> dict:
    pool.start()
    pool.wait_ready([topics.order_inbox, topics.inventory_commands])
    stock = list(workload.opening_stock("stock-loader", 0, int(time.time() * 1000)))
    load_stock(settings.bootstrap, topics, settings.partitions, stock, app_id=settings.app_id)
    inputs.add_stock(stock)
    wait_idle(settings, [topics.inventory_commands])
    if layouts:
        publish_layouts(settings, layouts, "bench-layouts")
    unique = len({o.key for o in orders})
    decided: set[str] = set()
    last = [time.monotonic()]

    def on_message(msg: Message) -> None:
        d = wire.decode(msg.value or b"", OrderDecision)
        if d.key not in decided:
            decided.add(d.key)
            last[0] = time.monotonic()

    if profiler is not None:
        for i in range(workers):
            profiler.attach(pool.pid(i) or 0, f"worker-{i}")
    cpu = CpuMeter({"workers": [pool.pid(i) or 0 for i in range(workers)], "broker": broker_pids(settings)})
    cpu.start()
    start, start_wall = time.monotonic(), time.time()
    send_orders(settings.bootstrap, topics, orders)
    inputs.add_orders(orders)
    tail(
        settings.bootstrap,
        [topics.order_decisions],
        on_message,
        lambda: len(decided) >= unique or time.monotonic() - last[0] > 120,
    )
    elapsed = last[0] - start
    used = cpu.stop()
    if profiler is not None:
        profiler.stop()
    wait_idle(settings, engine_inputs(topics))
    if layouts:
        inputs.fulfilment_complete = wait_fulfilment(settings, topics, layouts, pool)
    stats = [pool.stats(i) or {} for i in range(workers)]
    pool.stop()
    outputs = collect(settings.bootstrap, topics)
    verdict = check(inputs, outputs, settings.partitions)
    fulfilment = {}
    if layouts:
        # Record times: produced-at of the last shipment and wave, from the orders' first send.
        ends = [m.timestamp_ms for m in read_topics(settings.bootstrap, [topics.shipments, topics.waves])]
        done_s = (max(ends) / 1000 - start_wall) if ends else None
        fulfilment = {
            "fulfilment_settled": inputs.fulfilment_complete,
            "shipments": len(outputs.shipments),
            "waves": len(outputs.waves),
            "pick_lists": len(outputs.pick_lists),
            "fulfilment_done_s": round(done_s, 2) if done_s is not None else None,
            "after_last_decision_s": round(done_s - elapsed, 2) if done_s is not None else None,
            "shipments_per_s": round(len(outputs.shipments) / done_s, 1) if done_s else None,
        }
        summary = fulfilment_summary(outputs, inputs.fulfilment_complete)
        fulfilment.update({k: summary[k] for k in ("orders_split", "orders_shipped", "parcels_per_order")})
    runtimes = [w.get("runtime", {}) for w in stats]
    transactions = sum(r.get("transactions", 0) for r in runtimes)  # one per batch per worker
    commit_ms = sum(r.get("commit_ms_sum", 0.0) for r in runtimes)
    return {
        "what": "engine",
        "orders": unique,
        "decided": len(decided),
        "accepted": verdict.counts.get("accepted"),
        "invariants": verdict.summary(),
        "oversold_units": verdict.oversold_units,
        "elapsed_s": round(elapsed, 3),
        "orders_per_s": round(len(decided) / elapsed, 1) if decided and elapsed > 0 else None,
        "workers": workers,
        "transactions": transactions,
        "commit_ms_mean": round(commit_ms / max(1, transactions), 2),
        "fenced": sum(st.get("fenced", 0) for w in stats for st in w.get("stages", {}).values()),
        # what each stage read, sent and wrote to its changelogs per decided order (summed over the workers)
        "records_per_order": records_per_order(stats, len(decided)),
        # CPU per decided order, in ms: what the two cores spend, and on which side
        "cpu_ms_per_order": {k: round(1000 * v / max(1, len(decided)), 2) for k, v in used.items()},
        **fulfilment,
    }


def records_per_order(stats: list[dict], orders: int) -> dict[str, dict[str, float]]:
    """Per stage: records consumed, produced (outputs) and written to changelogs, per order, from /oms/stats/."""
    totals: dict[str, dict[str, int]] = {}
    for worker in stats:
        for name, st in worker.get("stages", {}).items():
            into = totals.setdefault(name, {"consumed": 0, "produced": 0, "changelog": 0})
            into["consumed"] += st.get("admitted", 0)
            into["produced"] += st.get("produced", 0)
            into["changelog"] += st.get("changelog", 0)
    out = {
        name: {k: round(v / max(1, orders), 2) for k, v in t.items()} for name, t in totals.items() if any(t.values())
    }
    out["all"] = {
        k: round(sum(t[k] for t in totals.values()) / max(1, orders), 2) for k in ("consumed", "produced", "changelog")
    }
    return out


MEASUREMENTS = [
    ("ceiling", "Ceiling: raw confluent-kafka relaying the three hops, steady state"),
    ("redis_lua", "Redis: atomic Lua check-and-decrement (seed article), 4 clients, pipelined"),
    ("redis_lock", "Redis: SET NX lock per SKU around read-then-decrement, 4 clients"),
    ("kstreams_eos_v2", "Kafka Streams 4.1 peer, exactly_once_v2"),
    ("kstreams_alo", "Kafka Streams 4.1 peer, at_least_once"),
    ("engine", "Engine: review + saga → per-SKU writer, transactional, 2 workers"),
]


def why_invalid(row: dict) -> str | None:
    """None when the run's figure may be reported, else why not: a fast run that broke an invariant is a failure,
    not a number, and so is a row without the verdict that would say so."""
    what = str(row.get("what", ""))
    if row.get("error"):
        return str(row["error"])
    if what == "engine":
        if "invariants" not in row:
            return "the engine run has no invariants verdict"
        if row["invariants"] != "ok":
            return f"invariants: {row['invariants']}"
        if row.get("decided") != row.get("orders"):
            return f"decided {row.get('decided')} of {row.get('orders')} orders"
        return None
    if what.startswith("kstreams"):
        if row.get("violations"):
            return f"violations: {row['violations']}"
        if row.get("decided") != row.get("orders"):
            return f"decided {row.get('decided')} of {row.get('orders')} orders"
        return None
    if row.get("oversold_units"):
        return f"oversold {row['oversold_units']} units"
    if row.get("orders_per_s") is None:
        return "no rate measured"
    return None


def _valid(row: dict) -> bool:
    return why_invalid(row) is None


def run_pipeline(
    settings: Settings, orders_n: int, reps: int, seed: int, workers: int, only: set[str] | None = None
) -> dict:
    from bench import baselines
    from bench.peers import kstreams

    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    orders = list(workload.orders())
    peer_orders, peer_stock = kstreams.peer_inputs(workload)
    runs = {
        "ceiling": lambda: baselines.measure_ceiling(settings, orders),
        "redis_lua": lambda: baselines.measure_redis_lua(settings, workload, orders),
        "redis_lock": lambda: baselines.measure_redis_lock(settings, workload, orders),
        "kstreams_eos_v2": lambda: kstreams.measure(
            settings.bootstrap, peer_orders, peer_stock, "exactly_once_v2", settings.partitions
        ),
        "kstreams_alo": lambda: kstreams.measure(
            settings.bootstrap, peer_orders, peer_stock, "at_least_once", settings.partitions
        ),
        "engine": lambda: measure_engine(settings, workload, orders, workers),
    }
    if only:
        runs = {name: run for name, run in runs.items() if name in only}
    return measure_all(runs, reps, orders_n, seed, workers, settings.partitions)


def measure_all(
    runs: dict[str, Callable[[], dict]], reps: int, orders_n: int, seed: int, workers: int, partitions: int
) -> dict:
    """Every measurement ``reps`` times, each through bench.report.attempt: one that fails (no Java for the peer,
    a worker that died, a row without its verdict) is a failure row and the others still run. Then the summary,
    over the valid runs only."""
    rows: list[dict] = []
    for rep in range(reps):
        for what, _label in MEASUREMENTS:
            if what not in runs:  # --only
                continue
            row = attempt(runs[what], {"rep": rep, "what": what}, why_invalid)
            row.setdefault("orders_per_s", None)
            rows.append(row)
            emit(row)
    return {"summary": summarize(rows, orders_n, seed, reps, workers, partitions), "rows": rows}


def summarize(rows: list[dict], orders_n: int, seed: int, reps: int, workers: int, partitions: int) -> dict:
    """Medians over the valid runs only; how many runs of each measurement failed, and why."""
    medians = {
        what: median([r["orders_per_s"] for r in rows if r["what"] == what and r["valid"]]) for what, _ in MEASUREMENTS
    }
    engine_rows = [r for r in rows if r["what"] == "engine"]
    good_engine = [r for r in engine_rows if r["valid"]]
    summary = {
        "orders": orders_n,
        "seed": seed,
        "reps": reps,
        "workers": workers,
        "partitions": partitions,
        "median_orders_per_s": medians,
        "failed_runs": {what: len(failed(r for r in rows if r["what"] == what)) for what, _ in MEASUREMENTS},
        "errors": [{"what": r["what"], "rep": r.get("rep"), "error": short_error(r, 400)} for r in failed(rows)],
        "engine_vs": {
            w: medians["engine"] / medians[w]
            for w, _ in MEASUREMENTS
            if w != "engine" and medians[w] and medians["engine"] is not None
        },
        "engine_ok": bool(engine_rows) and all(r["valid"] for r in engine_rows),
        "engine_invariants": sorted({str(r.get("invariants", "not checked")) for r in engine_rows}),
        "engine_transactions": median([r["transactions"] for r in good_engine if "transactions" in r]),
        "engine_commit_ms": median([r["commit_ms_mean"] for r in good_engine if "commit_ms_mean" in r]),
        "engine_cpu_ms_per_order": {
            side: median(
                [r["cpu_ms_per_order"][side] for r in good_engine if side in (r.get("cpu_ms_per_order") or {})]
            )
            for side in ("workers", "broker")
        },
        # the records per order of the median engine run (by orders/s): consumed, produced, changelog, per stage
        "engine_records_per_order": (
            sorted(good_engine, key=lambda r: r["orders_per_s"] or 0)[len(good_engine) // 2].get("records_per_order")
            if good_engine
            else None
        ),
        "kstreams_cpu_ms_per_order": median(
            [
                1000 * r["peer_cpu_s"] / r["orders"]
                for r in rows
                if r["what"] == "kstreams_eos_v2" and r["valid"] and r.get("peer_cpu_s") and r.get("orders")
            ]
        ),
    }
    emit({"summary": summary})
    return summary


def _fmt(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:,.0f}"


def markdown_lines(result: dict, kafka_version: str) -> list[str]:
    """The section's lines: a failed run is a **failed** cell with its error, and is listed under the table."""
    from bench.baselines import REDIS_CANNOT

    summary, rows = result["summary"], result["rows"]
    med = summary["median_orders_per_s"]
    body = []
    for what, label in MEASUREMENTS:
        mine = [r for r in rows if r["what"] == what]
        runs = ", ".join(_fmt(r["orders_per_s"]) if r["valid"] else f"**failed** ({short_error(r, 60)})" for r in mine)
        ratio = (
            "1" if what == "engine" else (f"{summary['engine_vs'][what]:.3f}" if what in summary["engine_vs"] else "—")
        )
        bad = summary["failed_runs"].get(what, 0)
        median_cell = _fmt(med[what]) + (f" ({len(mine) - bad} of {len(mine)} runs)" if bad else "")
        body.append([label, median_cell, runs, ratio])
    cpu = summary["engine_cpu_ms_per_order"]
    lines = [
        measured_on(kafka_version),
        f"{summary['orders']:,} orders (seed {summary['seed']}), {summary['partitions']} partitions, "
        f"{summary['workers']} engine workers, {summary['reps']} repetitions. Command: "
        f"`python -m bench.pipeline --orders {summary['orders']} --reps {summary['reps']}`.",
        "",
        *table(["Measurement", "Median orders/s", "Runs (orders/s)", "Engine ÷ this"], body, ["l", "r", "l", "r"]),
        "",
        "Engine runs: "
        + (
            "every one decided every order with the invariants ok from the result topics"
            if summary["engine_ok"]
            else f"**FAILED** ({', '.join(summary['engine_invariants'])})"
        )
        + f"; {summary['engine_transactions'] or 0:,.0f} transactions per run (median), commit "
        f"{summary['engine_commit_ms'] or 0:.0f} ms on average; CPU per order {cpu['workers'] or 0:.2f} ms in the "
        f"workers and {cpu['broker'] or 0:.2f} ms in the broker"
        + (
            f" (the Kafka Streams peer: {summary['kstreams_cpu_ms_per_order']:.2f} ms in its JVM)."
            if summary["kstreams_cpu_ms_per_order"] is not None
            else "."
        ),
        "",
        "What the Redis allocators cannot do that the engine does: " + " ".join(REDIS_CANNOT),
    ]
    per_order = summary.get("engine_records_per_order")
    if per_order:
        stages = [name for name in per_order if name != "all"] + ["all"]
        lines += [
            "",
            "Records per decided order in the median engine run, per stage (from the workers' `/oms/stats/`): read "
            "from its inputs, sent to topics, and written to its tables' changelogs. The order stage's and the "
            "inventory's are the reservation itself; the rest is the day's downstream (fulfilment, shipping, "
            "tracking, after-sales, the ledger) on the orders the run sends.",
            "",
            *table(
                ["Stage", "Consumed", "Produced", "Changelog"],
                [
                    [
                        f"**{name}**" if name == "all" else name,
                        *(f"{per_order[name].get(k, 0):.2f}" for k in ("consumed", "produced", "changelog")),
                    ]
                    for name in stages
                ],
                ["l", "r", "r", "r"],
            ),
        ]
    failures = failure_lines(rows)
    return [*lines, "", *failures] if failures else lines


def write_markdown(settings: Settings, result: dict) -> None:
    write_section("Reservation pipeline", markdown_lines(result, settings.kafka_version))


def write_profile(settings: Settings, row: dict, found: dict) -> None:
    lines = [
        measured_on(settings.kafka_version),
        f"py-spy (`--gil`: samples holding the GIL, i.e. the workers' Python CPU) on both workers during one "
        f"engine run of {row['orders']:,} orders ({row['orders_per_s']:,.0f} orders/s while sampled). Command: "
        "`python -m bench.pipeline --profile`. Self time in `Worker.execute_from_commandline` is the event loop "
        "itself (uvloop runs in C below that frame); the stream runtime's thread (`StreamRuntime`) reads, runs the "
        "stages' logic and commits.",
        "",
        *table(
            ["Self (where the samples were)", "%"],
            [[f"`{name}`", f"{share}"] for name, share in found["self"]],
            ["l", "r"],
        ),
        "",
        *table(
            ["Inclusive (under which call)", "%"],
            [[f"`{name}`", f"{share}"] for name, share in found["inclusive"] if not name.startswith(_PLUMBING)][:15],
            ["l", "r"],
        ),
    ]
    write_section("Profile of the engine", lines)


#: Frames every sample passes through (the interpreter's entry, the worker's main): no information.
_PLUMBING = ("<module>", "_run_module_as_main", "_run_code", "main (", "cmd_worker", "run_worker", "Worker.execute")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=20000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="one more engine run sampled with py-spy")
    p.add_argument("--no-markdown", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated measurements to run (e.g. engine,kstreams_eos_v2); implies --no-markdown",
    )
    args = p.parse_args(argv)
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = only - {name for name, _ in MEASUREMENTS}
    if unknown:
        p.error(f"unknown measurement(s) {sorted(unknown)}; choose from {[name for name, _ in MEASUREMENTS]}")
    args.no_markdown = args.no_markdown or bool(only)
    settings = Settings.from_env()
    servers = LocalServers(settings)
    try:
        servers.start(echo=lambda m: print(m, file=sys.stderr))
    except Exception as exc:
        return setup_failed("pipeline", exc)
    try:
        rows: list[dict] = []
        ok = True
        if args.reps > 0:
            result = run_pipeline(settings, args.orders, args.reps, args.seed, args.workers, only)
            rows += result["rows"]
            ok = result["summary"]["engine_ok"]
            save_result("pipeline", result["summary"])
            if not args.no_markdown:
                write_markdown(settings, result)
        if args.profile:
            ok &= profile_engine(settings, args.orders, args.seed, args.workers, not args.no_markdown)
        return exit_code(rows, ok)  # 1 when any run failed, the peers' included
    finally:
        servers.stop(only_started=True)


def profile_engine(settings: Settings, orders_n: int, seed: int, workers: int, markdown: bool) -> bool:
    if not Profiler.available():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return True
    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    out = Path(settings.state_dir) / "profiles" / time.strftime("%Y%m%d-%H%M%S")
    profiler = Profiler(out)
    try:
        row = measure_engine(settings, workload, list(workload.orders()), workers, profiler)
    except Exception as exc:  # reported, never a crash: the profile is one more run
        emit(failure_row({"what": "profile"}, exc))
        return False
    finally:
        profiler.stop()
    if why_invalid(row) is not None:
        emit({"what": "profile", "ok": False, "invalid": why_invalid(row)})
        return False
    found = top(sorted(out.glob("*.txt")))
    emit({"what": "profile", "dir": str(out), **found})
    save_result("profile", {"self": found["self"][:6], "orders_per_s": row["orders_per_s"]})
    if markdown:
        write_profile(settings, row, found)
    return row["invariants"] == "ok"


if __name__ == "__main__":
    sys.exit(main())
