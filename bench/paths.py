"""Pick-path quality: every strategy against the optimum on generated layouts and pick lists.

    python -m bench paths [--lists 300] [--seed 1]

Layouts are the main job's generated warehouses (fast movers slotted near the depot, zone A of 12 aisles of
30 m) plus a wide one (30 aisles, depot in the middle). Pick lists draw SKUs by the workload's popularity
skew. For lists of up to ``EXACT_LIMIT`` distinct bins the optimum is exact (Held–Karp), so the ratio is the
true gap; longer lists are compared with the best tour found (the ``optimal`` strategy's 2-opt), so their
ratios are a lower bound on the gap. Also the time per routed list: routing runs inside the wave stage.

No servers needed; prints one JSON line per (layout, size, strategy) and rewrites its BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import random
import time

from agents.fulfilment import paths
from agents.fulfilment.layout import generate_layout
from agents.fulfilment.waves import bins_by_sku
from bench.report import emit, machine, median, table, write_section

SIZES = (3, 5, 8, 10, 15, 25, 40)
STRATEGIES = ("s-shape", "largest-gap", "combined", "optimal")
TITLE = "Pick paths: heuristics against the optimum"


def _layouts() -> list[tuple[str, paths.Zone, list[paths.Stop], list[float]]]:
    skus = [f"SKU-{i:05d}" for i in range(600)]
    weights = [1 / (i + 1) ** 0.9 for i in range(len(skus))]  # popular SKUs first, as in the workload
    out = []
    layout = generate_layout("bench", ["WH-SH"], skus)
    spec = layout.warehouses[0]
    zone_a = next(z for z in spec.zones if z.zone == "A")
    bins = bins_by_sku(spec)
    stops = [paths.Stop(bins[s].aisle, bins[s].depth_cm, s) if bins[s].zone == "A" else None for s in skus]
    keep = [(st, w) for st, w in zip(stops, weights, strict=True) if st is not None]
    out.append(
        (
            "generated, 12 aisles × 30 m, ABC slotting",
            paths.Zone(zone_a.aisles, zone_a.pitch_cm, zone_a.length_cm),
            [s for s, _ in keep],
            [w for _, w in keep],
        )
    )
    wide = paths.Zone(aisles=30, pitch_cm=300, length_cm=2000, depot_cm=45 * 100)
    rng = random.Random(5)
    uniform = [paths.Stop(rng.randint(1, 30), rng.randint(0, 2000), f"w{i}") for i in range(800)]
    out.append(("wide, 30 aisles × 20 m, depot mid-front, random slotting", wide, uniform, [1.0] * len(uniform)))
    return out


def run(lists: int, seed: int) -> list[dict]:
    rows = []
    for name, zone, stops, weights in _layouts():
        rng = random.Random(f"{seed}:{name}")
        for size in SIZES:
            samples: list[list[paths.Stop]] = []
            while len(samples) < lists:
                picked = {s.ref: s for s in rng.choices(stops, weights, k=size * 2)}
                if len(picked) >= size:
                    samples.append(list(picked.values())[:size])
            lengths: dict[str, list[int]] = {s: [] for s in STRATEGIES}
            spent: dict[str, float] = {s: 0.0 for s in STRATEGIES}
            exact = True
            for sample in samples:
                for strategy in STRATEGIES:
                    started = time.perf_counter()
                    found = paths.route(strategy, zone, sample)
                    spent[strategy] += time.perf_counter() - started
                    lengths[strategy].append(found.length_cm)
                    if strategy == "optimal":
                        exact = exact and found.exact
            best = lengths["optimal"]
            for strategy in STRATEGIES:
                ratios = [a / b for a, b in zip(lengths[strategy], best, strict=True) if b]
                row = {
                    "bench": "paths",
                    "layout": name,
                    "picks": size,
                    "strategy": strategy,
                    "lists": lists,
                    "vs": "optimum" if exact else "best found",
                    "median_ratio": round(median(ratios) or 0, 3),
                    "mean_ratio": round(sum(ratios) / len(ratios), 3),
                    "worst_ratio": round(max(ratios), 3),
                    "median_m": round((median([x / 100 for x in lengths[strategy]]) or 0), 1),
                    "ms_per_list": round(spent[strategy] / lists * 1000, 3),
                }
                emit(row)
                rows.append(row)
    return rows


def write(rows: list[dict], lists: int) -> None:
    m = machine()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {m['cpus']} × {m['cpu']}, Python {m['python']} "
        f"(`python -m bench paths --lists {lists}`; pure functions, no servers).",
        "",
        "Walking length of each strategy divided by the shortest tour of the same stops, over "
        f"{lists} pick lists per row (1.00 = optimal). Up to {paths.EXACT_LIMIT} bins the optimum is exact "
        "(Held–Karp); above, it is the best tour found (2-opt from the best heuristic), so those ratios "
        "understate the gap. `optimal` is what the wave stage uses by default.",
        "",
    ]
    for layout in dict.fromkeys(r["layout"] for r in rows):
        lines.append(f"**{layout}**")
        lines.append("")
        body = []
        for size in SIZES:
            cells = [str(size), next(r["vs"] for r in rows if r["layout"] == layout and r["picks"] == size)]
            for strategy in STRATEGIES:
                r = next(x for x in rows if x["layout"] == layout and x["picks"] == size and x["strategy"] == strategy)
                cells.append(f"{r['median_ratio']:.2f} / {r['mean_ratio']:.2f} / {r['worst_ratio']:.2f}")
            ms = next(x for x in rows if x["layout"] == layout and x["picks"] == size and x["strategy"] == "optimal")
            cells.append(f"{ms['ms_per_list']:.2f}")
            body.append(cells)
        header = ["bins", "against", *[f"{s} (median / mean / worst)" for s in STRATEGIES], "optimal ms/list"]
        lines += table(header, body, ["r", "l", "r", "r", "r", "r", "r"])
        lines.append("")
    write_section(TITLE, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench paths", description=__doc__.split("\n")[0])
    parser.add_argument("--lists", type=int, default=300, help="pick lists per (layout, size) (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rows = run(args.lists, args.seed)
    write(rows, args.lists)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
