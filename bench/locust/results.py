"""Locust's CSV output read back: the rows the runner's summary and the smoke test are built from."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.locust.scenario import ALL_CHANNELS

PERCENTILES = ("50%", "95%", "99%", "100%")
AGGREGATED = "Aggregated"


class MalformedStats(ValueError):
    """Locust's CSV is missing, or a row does not have the numbers it should."""


@dataclass(frozen=True)
class Row:
    type: str  # kafka, POST, decision ('' for the Aggregated row)
    name: str
    requests: int
    failures: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    rps: float

    def latency(self) -> dict[str, float | None]:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99, "max": self.max}

    def brief(self) -> dict[str, Any]:
        return asdict(self)


def _number(row: dict[str, str], column: str, where: str) -> float | None:
    value = (row.get(column) or "").strip()
    if value == "N/A":
        return None
    try:
        return float(value)
    except ValueError:
        raise MalformedStats(f"{where}: column {column!r} is {value!r}, not a number") from None


def read_stats(prefix: str | Path) -> list[Row]:
    """``<prefix>_stats.csv``: one row per (type, name), the Aggregated row last. Every count and rate must be a
    number and every percentile a number too (or N/A for a row without requests)."""
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        raise MalformedStats(f"{path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"Type", "Name", "Request Count", "Failure Count", "Requests/s", *PERCENTILES} - set(
            reader.fieldnames or ()
        )
        if missing:
            raise MalformedStats(f"{path}: no column(s) {sorted(missing)}")
        rows = []
        for raw in reader:
            where = f"{path}: {raw.get('Type')} {raw.get('Name')}"
            requests, failures = _number(raw, "Request Count", where), _number(raw, "Failure Count", where)
            if requests is None or failures is None:
                raise MalformedStats(f"{where}: no request or failure count")
            p50, p95, p99, top = (_number(raw, c, where) for c in PERCENTILES)
            if requests and None in (p50, p95, p99, top):
                raise MalformedStats(f"{where}: {int(requests)} requests but no percentiles")
            rows.append(
                Row(
                    type=raw["Type"],
                    name=raw["Name"],
                    requests=int(requests),
                    failures=int(failures),
                    p50=p50,
                    p95=p95,
                    p99=p99,
                    max=top,
                    rps=_number(raw, "Requests/s", where) or 0.0,
                )
            )
    if not rows or rows[-1].name != AGGREGATED:
        raise MalformedStats(f"{path}: no {AGGREGATED} row")
    return rows


def read_failures(prefix: str | Path) -> list[dict[str, str]]:
    """``<prefix>_failures.csv``: one row per distinct failure (empty when there was none)."""
    with Path(f"{prefix}_failures.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def by_type(rows: list[Row]) -> dict[str, int]:
    """Requests per request type (the Aggregated row and the merged decision row left out)."""
    out: dict[str, int] = {}
    for r in rows:
        if r.name not in (AGGREGATED, ALL_CHANNELS):
            out[r.type] = out.get(r.type, 0) + r.requests
    return out
