"""Warehouse layouts: the file format, its checks, and a generated layout for the main job.

A layout file (TOML, ``OMS_LAYOUT_FILE``) holds one ``[[layouts]]`` table per tenant; see
``deploy/layout.toml`` for a commented example. Bins may be listed inline (``[[layouts.warehouses.bins]]``) or
in a CSV file named by ``bins_csv`` with the header ``warehouse,bin,sku,zone,aisle,bay,level,depth_cm`` — a real
catalogue has far too many bins for TOML. A warehouse takes the CSV's rows whose ``warehouse`` is its own (one
file may hold several warehouses' bins; rows of others are not its).

Every problem is reported at once (the first ``MAX_PROBLEMS``), each with where it is — the file, the table
(``layouts[0] (acme)``) and key (``$.warehouses[1].bins[3].aisle``) or the CSV file and line — as one
:class:`LayoutFileError`; nothing else escapes :func:`load_layouts`, whatever the file holds. The rules:

* **Sizes**: the layout file is at most ``MAX_LAYOUT_BYTES`` (8 MiB) and nested at most ``MAX_DEPTH`` (16)
  tables/arrays deep (a layout needs 6); a bins CSV at most ``MAX_BINS_CSV_BYTES`` (32 MiB),
  ``MAX_BINS_CSV_LINES`` (200,000 lines) of at most ``MAX_CSV_LINE_CHARS`` (4,096) characters each.
* **Where ``bins_csv`` may point**: a path relative to the layout file's own folder that stays inside it once
  resolved — no absolute path, no ``..`` out of the folder, no symlink leading out of it — to a regular file
  (not a directory, a FIFO or a device).
* **The CSV**: UTF-8 (a BOM allowed), one bin per line (a cell never spans lines), the header exactly
  ``BIN_COLUMNS``, eight cells per row; ``aisle``, ``bay``, ``level`` and ``depth_cm`` are whole numbers in ASCII
  digits ``0``–``9`` (no sign, no full-width or other Unicode digits, which Python's ``int()`` would take), then
  checked against the schema's ranges like inline bins. Blank lines are skipped.
"""

from __future__ import annotations

import csv
import io
import random
import re
import tomllib
from collections import Counter
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
NUMBER_COLUMNS = ("aisle", "bay", "level", "depth_cm")
MAX_LAYOUT_BYTES = 8 * 2**20
MAX_DEPTH = 16
MAX_BINS_CSV_BYTES = 32 * 2**20
MAX_BINS_CSV_LINES = 200_000
MAX_CSV_LINE_CHARS = 4096
MAX_PROBLEMS = 50
_WHOLE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() takes every Unicode digit
_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


class LayoutFileError(ValueError):
    pass


def _show(value: object, limit: int = 40) -> str:
    """A value from the file for a message: a string quoted and cut (a hostile one can be megabytes), else its
    TOML-ish type."""
    if not isinstance(value, str):
        names = {dict: "a table", list: "an array", bool: "a boolean", int: "an integer", float: "a float"}
        return names.get(type(value), f"a {type(value).__name__}")
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value):,} characters)"


def _cut(message: str, limit: int = 300) -> str:
    """A message (msgspec's, tomllib's) cut to ``limit`` characters: it may quote the hostile value."""
    return message if len(message) <= limit else message[:limit] + "…"


def load_layouts(path: Path) -> list[Layout]:
    """The layouts of a layout file, checked. LayoutFileError (every problem, with its place) and nothing else."""
    data = _read_bounded(path, MAX_LAYOUT_BYTES)
    if isinstance(data, str):
        raise LayoutFileError(f"layout file {path}: {data}")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LayoutFileError(f"layout file {path}: line {line}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise LayoutFileError(f"layout file {path}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # TOMLDecodeError (with its line and column), and int()'s digit limit
        raise LayoutFileError(f"layout file {path}: {_cut(str(exc))}") from None
    return layouts_from_toml(raw, path)


def layouts_from_toml(raw: Any, path: Path) -> list[Layout]:
    """The layouts of a parsed layout file (``path``: where it was read from; ``bins_csv`` is relative to its
    folder). LayoutFileError (every problem, with its place) and nothing else, whatever ``raw`` holds."""
    problems: list[str] = []
    if (deep := _too_deep(raw)) is not None:
        raise LayoutFileError(f"layout file {path}: {deep} is nested more than {MAX_DEPTH} levels deep")
    tables = raw.get("layouts") if isinstance(raw, dict) else None
    if not isinstance(tables, list) or not tables:
        raise LayoutFileError(f"layout file {path}: no [[layouts]] tables (one per tenant)")
    csv_cache: dict[Path, _BinsFile] = {}
    layouts = []
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            problems.append(f"layouts[{i}]: a table expected, not {_show(table)}")
            continue
        tenant = table.get("tenant")
        where = f"layouts[{i}] ({tenant if isinstance(tenant, str) and _NAME.fullmatch(tenant) else '?'})"
        inline, from_csv, found = _split_csv_bins(path.parent, table, where, csv_cache)
        problems += found
        try:
            layout = msgspec.convert(inline, Layout)
        except msgspec.ValidationError as exc:
            problems.append(f"{where}: {_cut(str(exc))}")
            continue
        if from_csv:
            layout = msgspec.structs.replace(
                layout,
                warehouses=[
                    msgspec.structs.replace(w, bins=[*w.bins, *from_csv.get(j, [])])
                    for j, w in enumerate(layout.warehouses)
                ],
            )
        problems += [f"{where}: {p}" for p in check_layout(layout)]
        layouts.append(layout)
    tenants = Counter(layout.tenant for layout in layouts)
    problems += [f"tenant {t} has more than one layout" for t in sorted(t for t, n in tenants.items() if n > 1)]
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = f"\n  … and {len(problems) - MAX_PROBLEMS:,} more" if len(problems) > MAX_PROBLEMS else ""
        raise LayoutFileError(f"layout file {path}:\n  " + "\n  ".join(shown) + more)
    return layouts


def _too_deep(raw: Any) -> str | None:
    """The place of the first value nested more than MAX_DEPTH tables/arrays deep, or None (iterative: a
    hostile document cannot exhaust the stack here)."""
    stack: list[tuple[Any, str, int]] = [(raw, "$", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict):
            items: Any = ((f"{where}.{k}" if len(k) <= 40 else f"{where}.{k[:40]}…", v) for k, v in value.items())
        elif isinstance(value, list):
            items = ((f"{where}[{n}]", v) for n, v in enumerate(value))
        else:
            continue
        if depth >= MAX_DEPTH:
            return where
        stack.extend((v, w, depth + 1) for w, v in items)
    return None


class _BinsFile:
    """One bins CSV read once per load: its bins per warehouse (each with its line) and its problems."""

    def __init__(self) -> None:
        self.bins: dict[str, list[BinSpec]] = {}
        self.problems: list[str] = []
        self.reported = False


def _split_csv_bins(
    base: Path, table: dict[str, Any], where: str, cache: dict[Path, _BinsFile]
) -> tuple[dict[str, Any], dict[int, list[BinSpec]], list[str]]:
    """The table without its ``bins_csv`` keys, the CSV bins per warehouse index, and the problems found."""
    warehouses = table.get("warehouses")
    if not isinstance(warehouses, list):
        return table, {}, []  # msgspec names what is wrong with it
    table = dict(table)
    inline: list[Any] = []
    from_csv: dict[int, list[BinSpec]] = {}
    problems: list[str] = []
    for j, warehouse in enumerate(warehouses):
        if not isinstance(warehouse, dict) or "bins_csv" not in warehouse:
            inline.append(warehouse)
            continue
        warehouse = dict(warehouse)
        name = warehouse.pop("bins_csv")
        inline.append(warehouse)
        at = f"{where}: warehouses[{j}].bins_csv"
        target = _confined(base, name)
        if isinstance(target, str):
            problems.append(f"{at}: {target}")
            continue
        if target not in cache:
            cache[target] = _read_bins_csv(target, name)
        found = cache[target]
        if not found.reported:
            problems += [f"{at}: {p}" for p in found.problems]
            found.reported = True
        wid = warehouse.get("warehouse")
        from_csv[j] = found.bins.get(wid, []) if isinstance(wid, str) else []
    table["warehouses"] = inline
    return table, from_csv, problems


def _confined(base: Path, name: Any) -> Path | str:
    """The resolved path of ``bins_csv`` when it is a regular file inside the layout file's folder, else why not."""
    if not isinstance(name, str) or not name.strip():
        return f"a file name (text) expected, not {_show(name)}"
    if len(name) > 1024 or "\x00" in name:
        return f"{_show(name)} is not a usable file name"
    relative = Path(name)
    if relative.is_absolute() or relative.drive or relative.anchor:
        return f"{_show(name)} is an absolute path: name a file in the layout file's folder, relative to it"
    try:
        folder = base.resolve()
        target = (folder / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop
        return f"{_show(name)} cannot be resolved: {exc}"
    if not target.is_relative_to(folder):
        return f"{_show(name)} leads outside the layout file's folder {folder} (to {_show(str(target), 120)})"
    try:
        if not target.is_file():
            return f"{_show(name)} is not a regular file" + ("" if target.exists() else " (no such file)")
    except OSError as exc:
        return f"{_show(name)}: {exc}"
    return target


def _read_bounded(path: Path, limit: int) -> bytes | str:
    """At most ``limit`` bytes of a regular file, or why not (too big, not a file, unreadable)."""
    try:
        if not path.is_file():
            return "not a regular file" + ("" if path.exists() else " (no such file)")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        return f"cannot be read: {exc}"
    if len(data) > limit:
        return f"over {limit // 2**20} MiB: too big"
    return data


def _read_bins_csv(path: Path, name: str) -> _BinsFile:
    out = _BinsFile()
    label = _show(name)
    data = _read_bounded(path, MAX_BINS_CSV_BYTES)
    if isinstance(data, str):
        out.problems.append(f"{label}: {data}")
        return out
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        out.problems.append(f"{label} line {line}: not UTF-8 text (byte {exc.start})")
        return out
    header_seen = False
    for n, raw in enumerate(io.StringIO(text, newline=""), start=1):
        if n > MAX_BINS_CSV_LINES:
            out.problems.append(f"{label}: more than {MAX_BINS_CSV_LINES:,} lines: too big")
            break
        if len(out.problems) > MAX_PROBLEMS:
            break
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        at = f"{label} line {n}"
        if len(line) > MAX_CSV_LINE_CHARS:
            out.problems.append(f"{at}: {len(line):,} characters (at most {MAX_CSV_LINE_CHARS:,})")
            if not header_seen:
                break
            continue
        if "\x00" in line:
            out.problems.append(f"{at}: a NUL byte: not text")
            if not header_seen:
                break
            continue
        try:
            cells = next(csv.reader([line]), [])
        except csv.Error as exc:
            out.problems.append(f"{at}: not CSV: {exc}")
            continue
        if not header_seen:
            header_seen = True
            if tuple(c.strip() for c in cells) != BIN_COLUMNS:
                out.problems.append(f"{at}: the header must be {','.join(BIN_COLUMNS)}, not {_show(line, 120)}")
                break
            continue
        if len(cells) != len(BIN_COLUMNS):
            out.problems.append(f"{at}: {len(cells)} cells, the header has {len(BIN_COLUMNS)}")
            continue
        row = dict(zip(BIN_COLUMNS, (c.strip() for c in cells), strict=True))
        bad = [k for k in NUMBER_COLUMNS if not _WHOLE.fullmatch(row[k])]
        if bad:
            shown = ", ".join(f"{k} {_show(row[k])}" for k in bad)
            out.problems.append(f"{at}: {shown}: whole numbers in ASCII digits 0-9 expected")
            continue
        warehouse = row.pop("warehouse")
        fields: dict[str, Any] = {k: int(v) if k in NUMBER_COLUMNS else v for k, v in row.items()}
        try:
            spec = msgspec.convert(fields, BinSpec)
        except msgspec.ValidationError as exc:
            out.problems.append(f"{at}: {_cut(str(exc))}")
            continue
        out.bins.setdefault(warehouse, []).append(spec)
    return out


def check_layout(layout: Layout) -> list[str]:
    """What is wrong with a layout beyond field types: unknown references, bins outside their zone."""
    problems = []
    ids = [w.warehouse for w in layout.warehouses]
    if not ids:
        problems.append("no warehouses")
    for dup in sorted(w for w, n in Counter(ids).items() if n > 1):
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
