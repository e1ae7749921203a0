"""The engine under different settings, on the same orders in the same run: tuning (before/after) and scale.

    python -m bench.variants --orders 10000 --reps 2

* **Tuning** — each setting change that counted, measured against the settings it replaced, alternating
  runs so that a noisy minute hits both alike. Decided orders/s and the CPU each side spent per order.
* **Scale** — 1, 2 and 4 workers on 8 and 16 partitions: what a third or fourth process buys on two cores.
* **Flash sale** — every order one unit of one SKU: reserve attempts per second at one writer, and exactly
  the stock sold.

Every run ends with the invariants checked from the result topics; a run that broke one is a failure. A run
that cannot complete (a worker died, the broker went away) is a failure row with its error and the tail of the
workers' logs; the other runs go on, medians are over the valid runs only, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.pipeline import measure_engine, why_invalid
from bench.report import (
    attempt,
    emit,
    exit_code,
    failed,
    failure_lines,
    measured_on,
    median,
    save_result,
    setup_failed,
    short_error,
    table,
    write_section,
)
from deploy.local.servers import LocalServers
from engine.settings import Settings
from workload.generator import Workload, WorkloadSpec

#: The runtime's levers, today's defaults second; each entry: label, settings changes.
TUNING: list[tuple[str, dict[str, Any]]] = [
    ("small batches: ≤500 records, 20 ms linger", {"standby_replicas": 0, "batch_max": 500, "batch_within_s": 0.02}),
    (
        "today's defaults: ≤5,000 records, 5 ms linger",
        {"standby_replicas": 0, "batch_max": 5000, "batch_within_s": 0.005},
    ),
    ("…with a 50 ms linger", {"standby_replicas": 0, "batch_max": 5000, "batch_within_s": 0.05}),
    (
        "…with a standby copy (OMS_STANDBY_REPLICAS=1)",
        {"standby_replicas": 1, "batch_max": 5000, "batch_within_s": 0.005},
    ),
]

SCALE = [(workers, partitions) for partitions in (8, 16) for workers in (1, 2, 4)]


def _run(settings: Settings, workload: Workload, orders: list, workers: int, label: str, **extra: Any) -> dict:
    """One engine run as a row — or, when it raised or has no verdict, a failure row with its error."""
    row = attempt(lambda: measure_engine(settings, workload, orders, workers), {"label": label, **extra}, why_invalid)
    row.setdefault("what", "engine")
    emit(row)
    return row


def _ok(rows: list[dict]) -> bool:
    return bool(rows) and not failed(rows)


def _rate(rows: list[dict]) -> float | None:
    """The median decided orders/s over the valid runs only."""
    return median([r["orders_per_s"] for r in rows if r.get("valid") and r.get("orders_per_s") is not None])


def _runs(rows: list[dict]) -> str:
    return ", ".join(f"{r['orders_per_s']:,.0f}" if r.get("valid") else "**failed**" for r in rows)


def _verdict(rows: list[dict]) -> str:
    bad = failed(rows)
    if not bad:
        return "ok"
    return f"**FAILED** ({len(bad)} of {len(rows)}): " + "; ".join(short_error(r, 80) for r in bad)


def run_tuning(settings: Settings, orders_n: int, reps: int, seed: int = 17) -> dict:
    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    orders = list(workload.orders())
    rows = []
    for rep in range(reps):
        for label, changes in TUNING:
            rows.append(_run(settings.with_(**changes), workload, orders, 2, label, rep=rep, variant="tuning"))
    return {"orders": orders_n, "reps": reps, "rows": rows, "ok": _ok(rows)}


def run_scale(settings: Settings, orders_n: int, reps: int, seed: int = 17) -> dict:
    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    orders = list(workload.orders())
    rows = []
    for rep in range(reps):
        for workers, partitions in SCALE:
            label = f"{workers} worker(s), {partitions} partitions"
            rows.append(
                _run(
                    settings.with_(partitions=partitions),
                    workload,
                    orders,
                    workers,
                    label,
                    rep=rep,
                    variant="scale",
                    partitions=partitions,
                )
            )
    return {"orders": orders_n, "reps": reps, "rows": rows, "ok": _ok(rows)}


def run_flash(settings: Settings, orders_n: int, reps: int, stock: int = 500, seed: int = 17) -> dict:
    """A flash sale: every order is one unit of one SKU (one tenant), far more orders than stock. Each order is one
    reserve attempt at that SKU's single writer; exactly ``stock`` must be sold, never one more or fewer."""
    spec = WorkloadSpec(
        orders=orders_n,
        seed=seed,
        tenants=("acme",),
        tenant_weights=(1.0,),
        flash_sale=True,
        flash_share=1.0,
        flash_stock=stock,
    )
    workload = Workload(spec)
    orders = list(workload.orders())
    rows = []
    for rep in range(reps):
        row = _run(settings, workload, orders, 2, "flash sale", rep=rep, variant="flash", flash_stock=stock)
        row["sold_exactly_the_stock"] = row.get("accepted") == stock
        if row.get("valid") and not row["sold_exactly_the_stock"]:
            row.update(valid=False, invalid=f"sold {row.get('accepted')} units, not the {stock} in stock")
        rows.append(row)
    return {
        "orders": orders_n,
        "reps": reps,
        "stock": stock,
        "rows": rows,
        "ok": _ok(rows) and all(r["sold_exactly_the_stock"] for r in rows),
    }


def _cell(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def write_flash(settings: Settings, result: dict) -> None:
    rows = result["rows"]
    rate = _rate(rows)
    sold = ", ".join(str(r.get("accepted")) if r.get("valid") else "**failed**" for r in rows)
    verdict = "ok" if result["ok"] else _verdict(rows)
    lines = [
        measured_on(settings.kafka_version),
        f"{result['orders']:,} orders of one unit each of one SKU with {result['stock']} in stock, 2 workers, "
        f"{settings.partitions} partitions, {result['reps']} repetition(s). Command: "
        f"`python -m bench.variants flash --orders {result['orders']} --reps {result['reps']}`.",
        "",
        *table(
            ["Reserve attempts/s (orders decided/s, median)", "Runs", "Units sold per run", "Invariants"],
            [[_cell(rate), _runs(rows), sold, verdict]],
            ["r", "l", "l", "l"],
        ),
        "",
        "Every attempt goes through the order stage (review, saga) and the SKU's one writer and back; the rate is "
        "decided orders per second end to end, so it bounds the writer's own rate from below.",
    ]
    if failures := failure_lines(rows):
        lines += ["", *failures]
    write_section("Flash sale: one SKU", lines)


def _summarise(rows: list[dict], labels: list[str]) -> list[list[str]]:
    out = []
    base = None
    for label in labels:
        mine = [r for r in rows if r.get("label") == label]
        if not mine:
            continue
        good = [r for r in mine if r.get("valid")]
        rate = _rate(mine)
        base = base or rate
        cpu_w = median([(r.get("cpu_ms_per_order") or {}).get("workers", 0.0) for r in good])
        cpu_b = median([(r.get("cpu_ms_per_order") or {}).get("broker", 0.0) for r in good])
        out.append(
            [
                label,
                _cell(rate),
                f"{rate / base:.2f}" if rate is not None and base else "—",
                _cell(cpu_w, ".2f"),
                _cell(cpu_b, ".2f"),
                _runs(mine),
                _verdict(mine),
            ]
        )
    return out


HEADER = [
    "Variant",
    "Median orders/s",
    "× first row",
    "Workers CPU ms/order",
    "Broker CPU ms/order",
    "Runs",
    "Invariants",
]


def write_tuning(settings: Settings, result: dict) -> None:
    lines = [
        measured_on(settings.kafka_version),
        f"{result['orders']:,} orders (seed 17), 2 workers, {settings.partitions} partitions, {result['reps']} "
        "alternating repetitions. Command: "
        f"`python -m bench.variants tuning --orders {result['orders']} --reps {result['reps']}`.",
        "",
        *table(HEADER, _summarise(result["rows"], [label for label, _ in TUNING]), ["l", "r", "r", "r", "r", "l", "l"]),
        *(["", *failure_lines(result["rows"])] if failed(result["rows"]) else []),
        "",
        "CPU per order is what the workers (all processes) and the broker used while the orders were decided, "
        "divided by the orders: on two shared cores it says where the time goes better than the rate does. A batch "
        "is one transaction for the whole worker (every stage and partition in it), so the batch size and the linger "
        "after its first record set how many transactions a day costs; a standby follows the other worker's "
        "changelogs on the same two cores, in exchange for a takeover that restores only the last moments.",
    ]
    write_section("Tuning: the runtime's levers", lines)


def write_scale(settings: Settings, result: dict) -> None:
    labels = [f"{w} worker(s), {p} partitions" for w, p in SCALE]
    lines = [
        measured_on(settings.kafka_version),
        f"{result['orders']:,} orders (seed 17), today's defaults, {result['reps']} repetition(s). Command: "
        f"`python -m bench.variants scale --orders {result['orders']} --reps {result['reps']}`.",
        "",
        *table(HEADER, _summarise(result["rows"], labels), ["l", "r", "r", "r", "r", "l", "l"]),
        *(["", *failure_lines(result["rows"])] if failed(result["rows"]) else []),
        "",
        "Two cores run the broker and every worker: a worker beyond the second adds a process (its consumer, its "
        "transactional producer, its Faust app) that competes for the same cores, so throughput here is bounded by "
        "CPU per order, not by the number of writers; more partitions mean smaller batches per partition, not more "
        "transactions (one per worker per batch).",
    ]
    write_section("Scale: workers and partitions", lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.variants", description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=["tuning", "scale", "flash", "all"], nargs="?", default="all")
    p.add_argument("--orders", type=int, default=10000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-markdown", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    servers = LocalServers(settings)
    try:
        servers.start(echo=lambda m: print(m, file=sys.stderr))
    except Exception as exc:
        return setup_failed("variants", exc)
    ok = True
    rows: list[dict] = []
    try:
        if args.which in ("tuning", "all"):
            tuning = run_tuning(settings, args.orders, args.reps)
            rows += tuning["rows"]
            ok &= tuning["ok"]
            if not args.no_markdown:
                write_tuning(settings, tuning)
        if args.which in ("scale", "all"):
            scale = run_scale(settings, args.orders, max(1, args.reps - 1))
            rows += scale["rows"]
            ok &= scale["ok"]
            if not args.no_markdown:
                write_scale(settings, scale)
        if args.which in ("flash", "all"):
            flash = run_flash(settings, 2 * args.orders, args.reps)
            rows += flash["rows"]
            ok &= flash["ok"]
            failures = len(failed(flash["rows"]))
            save_result("flash", {"ok": flash["ok"], "orders_per_s": _rate(flash["rows"]), "failed_runs": failures})
            if not args.no_markdown:
                write_flash(settings, flash)
    finally:
        servers.stop(only_started=True)
    return exit_code(rows, ok)


if __name__ == "__main__":
    sys.exit(main())
