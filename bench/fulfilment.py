"""The fulfilment stage in the pipeline, and what allocating by stock costs and saves.

    python -m bench fulfilment [--orders 5000] [--reps 3]

Each repetition runs the engine as ``bench.pipeline`` does (two workers, review + saga + inventory + fulfilment),
with a generated layout per tenant published first (merge window 1 s, waves every 2 s at most, optimal pick
paths), twice in alternation: allocation ``region`` (each line reserved in the first ranked warehouse with its
units: no extra round) and ``fewest-parcels`` (a multi-line order quotes every SKU's writer first, then reserves
where the fewest parcels ship it). Orders are sent at once, and a run ends when every shipment is in a wave.
Reported per mode: decisions per second, shipments per second over the whole run, when the last wave was
written after the last decision, orders split and parcels per order — and the ratio of the two modes, measured
in the same session. Every run's invariants (I1–I6, F1–F8, complete) must hold. Rewrites its BENCHMARKS.md
section. A run that cannot complete is a failure row with its error and the workers' last log lines: the other
runs go on, the medians are over the valid runs, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from agents.fulfilment.layout import generate_layout
from bench.pipeline import measure_engine, why_invalid
from bench.report import (
    attempt,
    emit,
    exit_code,
    failure_lines,
    measured_on,
    median,
    setup_failed,
    table,
    write_section,
)
from deploy.local.servers import LocalServers
from engine.settings import Settings
from schemas.fulfilment import AllocationStrategy, WavePolicy
from workload.generator import Workload, WorkloadSpec

TITLE = "Fulfilment stage in the pipeline"
MODES: tuple[AllocationStrategy, ...] = ("region", "fewest-parcels")


def run(settings: Settings, orders_n: int, reps: int, seed: int) -> list[dict]:
    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    orders = list(workload.orders())
    skus = sorted(set().union(*workload.catalog().values()))
    waves = WavePolicy(release_after_s=2)
    rows = []
    for rep in range(reps):
        for mode in MODES if rep % 2 == 0 else reversed(MODES):  # alternate, so drift hits both alike
            layouts = [
                generate_layout(t, workload.spec.warehouses, skus, merge_window_s=1, waves=waves)
                for t in workload.spec.tenants
            ]
            layouts = [
                msgspec.structs.replace(lay, allocation=msgspec.structs.replace(lay.allocation, strategy=mode))
                for lay in layouts
            ]
            context = {"bench": "fulfilment", "mode": mode, "rep": rep}
            row = attempt(
                lambda chosen=layouts: measure_engine(settings, workload, orders, 2, layouts=chosen), context, verdict
            )
            emit(row)
            rows.append(row)
    return rows


def verdict(row: dict) -> str | None:
    """None when the run counts: the engine's verdict, and fulfilment settled."""
    why = why_invalid({**row, "what": "engine"})
    if why is None and not row.get("fulfilment_settled"):
        why = "fulfilment did not settle (not every shipment in a wave)"
    return why


def write(settings: Settings, rows: list[dict], orders_n: int, reps: int) -> None:
    good = {mode: [r for r in rows if r.get("valid") and r.get("mode") == mode] for mode in MODES}

    def med(mode: str, key: str) -> float | None:
        return median([r[key] for r in good[mode] if r.get(key) is not None])

    def cell(value: float | None, digits: int) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    figures = [
        ("orders decided per second", "orders_per_s", 1),
        ("shipments released per second (first order sent → last wave)", "shipments_per_s", 1),
        ("last wave after the last decision (s)", "after_last_decision_s", 1),
        ("orders split over warehouses", "orders_split", 0),
        ("parcels per order", "parcels_per_order", 3),
        ("shipments per run", "shipments", 0),
        ("waves · pick lists per run", None, 0),
    ]
    body = []
    for label, key, digits in figures:
        if key is None:
            body.append([label, *(f"{cell(med(m, 'waves'), 0)} · {cell(med(m, 'pick_lists'), 0)}" for m in MODES), ""])
            continue
        base, quoted = med(MODES[0], key), med(MODES[1], key)
        ratio = f"{quoted / base:.2f}" if base and quoted is not None else "—"
        body.append([label, cell(base, digits), cell(quoted, digits), ratio])
    valid = " and ".join(f"{len(good[m])} of {reps} `{m}`" for m in MODES)
    lines = [
        measured_on(settings.kafka_version),
        f"{orders_n:,} orders sent at once, 2 workers, {settings.partitions} partitions, {reps} repetitions of each "
        f"allocation mode, alternating ({valid} runs valid: every invariant, F1–F7 complete, held). Command: "
        f"`python -m bench fulfilment --orders {orders_n} --reps {reps}`. Layout: generated per tenant, merge "
        "window 1 s, waves at most every 2 s, optimal pick paths; medians.",
        "",
        *table(
            ["Figure", "`region`", "`fewest-parcels` (quote round)", "fewest-parcels ÷ region"],
            body,
            ["l", "r", "r", "r"],
        ),
        *(["", *failures] if (failures := failure_lines(rows)) else []),
        "",
        "`region` reserves each line in the first warehouse of the order's ranking that has its units: no extra "
        "round, but the lines of one order can land in different warehouses. `fewest-parcels` first asks every SKU "
        "of a multi-line order what is available where (one quote per SKU, answered by its writer), then reserves "
        "where the fewest parcels ship the order: one more round trip through the inventory for those orders. The "
        "fulfilment stage has one writer per warehouse (three per tenant here), so its rate is bounded by the "
        "busiest warehouse's partition, not by the number of workers; the third row is what it adds to a day "
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
    try:
        servers.start(echo=lambda m: print(m, file=sys.stderr))
    except Exception as exc:
        return setup_failed("fulfilment", exc)
    try:
        rows = run(settings, args.orders, args.reps, args.seed)
    finally:
        servers.stop(only_started=True)
    write(settings, rows, args.orders, args.reps)
    return exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
