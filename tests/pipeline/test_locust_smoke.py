"""The Locust scenario (bench/locust) for a few seconds against real workers: it runs, its CSV is well formed
(rows for the Kafka route, the HTTP route and the decisions, numeric percentiles, no failure), and the invariants
hold from the result topics against what the Locust users logged as sent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.locust.results import AGGREGATED, read_failures, read_stats
from bench.locust.run import Options, run
from bench.locust.scenario import ALL_CHANNELS, DECISION
from tests.pipeline.harness import Pipeline
from workload.delivery import Credentials

pytestmark = pytest.mark.pipeline


def test_a_short_locust_run_is_well_formed_and_keeps_the_invariants(
    pipeline: Pipeline, credentials: Credentials, tmp_path: Path
) -> None:
    # 20 orders/s for 8 s, a third of them through the API in batches of 3, so every route has rows
    prefix = tmp_path / "csv" / "smoke"
    opts = Options(rate="20", duration_s=8, workers=2, seed=3, http_share=0.3, http_batch=3, drain_s=8, csv=str(prefix))
    started = time.monotonic()
    summary = run(pipeline.settings, credentials, opts, tmp_path, "smoke")
    print(f"locust smoke: {time.monotonic() - started:.1f}s, {summary}")

    rows = read_stats(prefix)  # raises unless every count and percentile is a number
    assert rows[-1].name == AGGREGATED
    kinds = {r.type for r in rows}
    assert {"kafka", "POST", DECISION} <= kinds, kinds
    assert any(r.type == "kafka" and r.name.startswith("raw.") and r.requests for r in rows)
    assert any(r.type == "POST" and "/api/v1/" in r.name and r.requests for r in rows)
    merged = next(r for r in rows if r.type == DECISION and r.name == ALL_CHANNELS)
    per_channel = [r for r in rows if r.type == DECISION and r.name != ALL_CHANNELS]
    assert merged.requests == sum(r.requests for r in per_channel) > 0
    assert {r.name for r in per_channel} & {"web", "pos"}, "HTTP orders were timed to their decisions too"
    for r in rows:
        if r.requests:
            assert r.p50 is not None and r.p95 is not None and r.p99 is not None and r.max is not None
            assert 0 <= r.p50 <= r.p95 <= r.p99 <= r.max, r
        assert r.failures == 0, r
    assert read_failures(prefix) == []

    assert summary["invariants"] == "ok", summary["invariants"]
    assert summary["oversold_units"] == 0 and summary["engine_failures"] == 0
    assert summary["locust_exit"] == 0 and summary["failures"] == 0
    assert summary["ok"], summary
    # the shape offered the rate it was asked for (within what 8 s on a shared machine allow)
    assert 0.7 * 20 * 8 <= summary["orders_sent"] <= 1.2 * 20 * 8, summary["orders_sent"]
    assert summary["latency_ms"]["decision"]["p50"] is not None
