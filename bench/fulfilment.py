"""The fulfilment stage in the pipeline: how long after the orders it has every shipment waved.

    python -m bench fulfilment [--orders 5000] [--reps 3]

Each repetition runs the engine as ``bench.pipeline`` does (two workers, review + saga + inventory), with a
generated layout per tenant published first (merge window 1 s, waves every 2 s at most, optimal pick paths):
orders are sent at once, and the run ends when every shipment is in a wave. Reported: decisions per second,
shipments per second over the whole run, when the last wave was written after the last decision (what
fulfilment adds to the day), and the invariants (I1–I6 and F1–F5, complete). Rewrites its BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import sys

from agents.fulfilment.layout import generate_layout
from bench.pipeline import measure_engine
from bench.report import emit, measured_on, median, table, write_section
from deploy.local.servers import LocalServers
from engine.settings import Settings
from schemas.fulfilment import WavePolicy
from workload.generator import Workload, WorkloadSpec

TITLE = "Fulfilment stage in the pipeline"


def run(settings: Settings, orders_n: int, reps: int, seed: int) -> list[dict]:
    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    orders = list(workload.orders())
    skus = sorted(set().union(*workload.catalog().values()))
    waves = WavePolicy(release_after_s=2)
    layouts = [
        generate_layout(t, workload.spec.warehouses, skus, merge_window_s=1, waves=waves) for t in workload.spec.tenants
    ]
    rows = []
    for rep in range(reps):
        row = {"bench": "fulfilment", "rep": rep, **measure_engine(settings, workload, orders, 2, layouts=layouts)}
        row["valid"] = row.get("invariants") == "ok" and bool(row.get("fulfilment_settled"))
        emit(row)
        rows.append(row)
    return rows


def write(settings: Settings, rows: list[dict], orders_n: int, reps: int) -> None:
    good = [r for r in rows if r["valid"]]

    def med(key: str, digits: int = 1) -> str:
        value = median([r[key] for r in good if r.get(key) is not None])
        return "—" if value is None else f"{value:,.{digits}f}"

    body = [
        ["orders decided per second", med("orders_per_s")],
        ["shipments released per second (first order sent → last wave)", med("shipments_per_s")],
        ["last wave after the last decision (s)", med("after_last_decision_s")],
        [
            "shipments · waves · pick lists per run",
            f"{med('shipments', 0)} · {med('waves', 0)} · {med('pick_lists', 0)}",
        ],
    ]
    lines = [
        measured_on(settings.kafka_version),
        f"{orders_n:,} orders sent at once, 2 workers, {settings.partitions} partitions, {reps} repetitions "
        f"({len(good)} valid: every invariant, F1–F5 complete, held). Command: "
        f"`python -m bench fulfilment --orders {orders_n} --reps {reps}`. Layout: generated per tenant, merge "
        "window 1 s, waves at most every 2 s, optimal pick paths; medians.",
        "",
        *table(["Figure", "Median"], body, ["l", "r"]),
        "",
        "The fulfilment stage has one writer per warehouse (three per tenant here), so its rate is bounded by the "
        "busiest warehouse's partition, not by the number of workers; the last row is what it adds to a day "
        "after the last order is decided (merge window and wave timer included).",
    ]
    write_section(TITLE, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fulfilment", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    servers = LocalServers(settings)
    servers.start(echo=lambda m: print(m, file=sys.stderr))
    try:
        rows = run(settings, args.orders, args.reps, args.seed)
    finally:
        servers.stop(only_started=True)
    write(settings, rows, args.orders, args.reps)
    return 0 if all(r["valid"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
