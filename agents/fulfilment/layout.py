"""Warehouse layouts: the file format, its checks, and a generated layout for the main job.

A layout file (TOML, ``OMS_LAYOUT_FILE``) holds one ``[[layouts]]`` table per tenant; see
``deploy/layout.toml`` for a commented example. Bins may be listed inline (``[[layouts.warehouses.bins]]``) or
in a CSV file named by ``bins_csv`` (relative to the layout file) with the header
``warehouse,bin,sku,zone,aisle,bay,level,depth_cm`` — a real catalogue has far too many bins for TOML.

Every problem is reported at once, with where it is, instead of the first one only.
"""

from __future__ import annotations

import csv
import random
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from schemas.fulfilment import (
    AllocationPolicy,
    BinSpec,
    CarrierSpec,
    Layout,
    WarehouseSpec,
    WavePolicy,
    ZoneSpec,
)

BIN_COLUMNS = ("warehouse", "bin", "sku", "zone", "aisle", "bay", "level", "depth_cm")


class LayoutFileError(ValueError):
    pass


def load_layouts(path: Path) -> list[Layout]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LayoutFileError(f"layout file {path}: {exc}") from None
    layouts, problems = [], []
    for i, table in enumerate(raw.get("layouts", [])):
        where = f"layouts[{i}] ({table.get('tenant', '?')})"
        try:
            table = _with_csv_bins(path.parent, table)
            layout = msgspec.convert(table, Layout)
        except (OSError, ValueError, msgspec.ValidationError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += [f"{where}: {p}" for p in check_layout(layout)]
        layouts.append(layout)
    tenants = [layout.tenant for layout in layouts]
    problems += [f"tenant {t} has more than one layout" for t in sorted({t for t in tenants if tenants.count(t) > 1})]
    if problems:
        raise LayoutFileError(f"layout file {path}:\n  " + "\n  ".join(problems))
    return layouts


def _with_csv_bins(base: Path, table: dict[str, Any]) -> dict[str, Any]:
    table = dict(table)
    warehouses = [dict(w) for w in table.get("warehouses", [])]
    for warehouse in warehouses:
        name = warehouse.pop("bins_csv", None)
        if name is None:
            continue
        with open(base / name, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and tuple(rows[0]) != BIN_COLUMNS:
            raise ValueError(f"{name}: the header must be {','.join(BIN_COLUMNS)}")
        bins = list(warehouse.get("bins", []))
        for n, row in enumerate(rows, 2):
            if row["warehouse"] != warehouse.get("warehouse"):
                continue
            try:
                bins.append(
                    {
                        k: int(v) if k in ("aisle", "bay", "level", "depth_cm") else v
                        for k, v in row.items()
                        if k != "warehouse"
                    }
                )
            except ValueError:
                raise ValueError(f"{name} line {n}: aisle, bay, level and depth_cm must be whole numbers") from None
        warehouse["bins"] = bins
    table["warehouses"] = warehouses
    return table


def check_layout(layout: Layout) -> list[str]:
    """What is wrong with a layout beyond field types: unknown references, bins outside their zone."""
    problems = []
    ids = [w.warehouse for w in layout.warehouses]
    if not ids:
        problems.append("no warehouses")
    for dup in sorted({w for w in ids if ids.count(w) > 1}):
        problems.append(f"warehouse {dup} is defined twice")
    carriers = {c.carrier for c in layout.carriers}
    for w in layout.warehouses:
        zones = {z.zone: z for z in w.zones}
        for carrier in w.carriers:
            if carriers and carrier not in carriers:
                problems.append(f"{w.warehouse}: carrier {carrier} is not among the layout's carriers")
        if not w.carriers:
            problems.append(f"{w.warehouse}: no carrier")
        seen_bins: set[str] = set()
        for b in w.bins:
            zone = zones.get(b.zone)
            if b.bin in seen_bins:
                problems.append(f"{w.warehouse}: bin {b.bin} is defined twice")
            seen_bins.add(b.bin)
            if zone is None:
                problems.append(f"{w.warehouse}: bin {b.bin} is in unknown zone {b.zone}")
            elif b.aisle > zone.aisles or b.depth_cm > zone.length_cm:
                problems.append(
                    f"{w.warehouse}: bin {b.bin} (aisle {b.aisle}, {b.depth_cm} cm) is outside zone {b.zone}"
                )
    policy = layout.allocation
    for w in policy.warehouse_order:
        if w not in ids:
            problems.append(f"allocation.warehouse_order names unknown warehouse {w}")
    for shop, listed in sorted(policy.shop_warehouses.items()):
        for w in listed:
            if w not in ids:
                problems.append(f"allocation.shop_warehouses.{shop} names unknown warehouse {w}")
    return problems


# -- a generated layout for the main job and the tests -------------------------------------------------------
#: Provinces each generated warehouse serves (华东, 华南, 华北), by the warehouse ids the workload uses.
REGIONS = {
    "WH-SH": ["上海市", "浙江省", "江苏省", "安徽省"],
    "WH-GZ": ["广东省", "福建省", "广西壮族自治区", "海南省"],
    "WH-BJ": ["北京市", "天津市", "河北省", "山东省"],
}
CARRIERS = (CarrierSpec(carrier="sf", cutoff_minute=1020), CarrierSpec(carrier="zto", cutoff_minute=1140))


def generate_layout(
    tenant: str,
    warehouses: Sequence[str],
    skus: Sequence[str],
    seed: int = 1,
    version: int = 1,
    bays: int = 30,
    merge_window_s: int = 600,
    waves: WavePolicy | None = None,
) -> Layout:
    """Every SKU gets one bin in every warehouse. ABC slotting: the SKUs listed first (the popular ones) go to
    the bays nearest the depot, as a real warehouse slots its fast movers. Two zones: A (the first 80 % of the
    range, at least 12 aisles) and B (the slow tail), each sized to hold its share."""
    rng = random.Random(f"{seed}:{tenant}")
    specs = []
    per_aisle = bays * 2  # two faces per bay
    aisles = max(12, -(-len(skus) * 4 // 5 // per_aisle))
    tail_aisles = max(2, -(-(len(skus) - aisles * per_aisle) // per_aisle) + 1)
    for wh in warehouses:
        zone_a = ZoneSpec(zone="A", aisles=aisles, pitch_cm=300, length_cm=bays * 100, depot_cm=0)
        zone_b = ZoneSpec(zone="B", aisles=tail_aisles, pitch_cm=300, length_cm=bays * 100, depot_cm=0)
        capacity_a = zone_a.aisles * per_aisle
        # Fast movers closest to the front: walk bays outwards, aisles left to right, both faces.
        slots_a = [
            (bay, aisle, face) for bay in range(1, bays + 1) for aisle in range(1, aisles + 1) for face in (1, 2)
        ]
        slots_b = [
            (bay, aisle, face) for bay in range(1, bays + 1) for aisle in range(1, zone_b.aisles + 1) for face in (1, 2)
        ]
        order = list(skus)
        head, tail = order[:capacity_a], order[capacity_a:]
        if len(tail) > len(slots_b):
            raise ValueError(f"{len(skus)} SKUs do not fit the generated {wh} ({capacity_a + len(slots_b)} bins)")
        rng.shuffle(slots_b)  # the slow tail is slotted wherever there is room
        bins = []
        for zone, sku_slice, slots in (("A", head, slots_a), ("B", tail, slots_b)):
            for sku, (bay, aisle, face) in zip(sku_slice, slots, strict=False):
                bins.append(
                    BinSpec(
                        bin=f"{wh}-{zone}{aisle:02d}-{bay:02d}-{face}",
                        sku=sku,
                        zone=zone,
                        aisle=aisle,
                        bay=bay,
                        level=1 + (bay + aisle) % 4,
                        depth_cm=bay * 100 - 50,
                    )
                )
        specs.append(
            WarehouseSpec(
                warehouse=wh,
                regions=REGIONS.get(wh, []),
                carriers=[c.carrier for c in CARRIERS],
                zones=[zone_a, zone_b],
                bins=bins,
                cart_units=40,
            )
        )
    return Layout(
        tenant=tenant,
        version=version,
        warehouses=specs,
        carriers=list(CARRIERS),
        allocation=AllocationPolicy(strategy="fewest-parcels", warehouse_order=list(warehouses)),
        waves=waves or WavePolicy(),
        merge_window_s=merge_window_s,
    )
