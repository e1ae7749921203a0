"""A benchmark run that fails is a reported row with its error, never a crash (issue #18 item 10): no servers,
the runs are faked. `python -m bench.pipeline` once died with ``KeyError: 'invariants'`` in ``_valid`` when an
engine run failed, hiding the worker's error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import bench.fulfilment as fulfilment_bench
import bench.latency as latency_bench
import bench.pipeline as pipeline_bench
import bench.recovery as recovery_bench
import bench.variants as variants_bench
from bench import report
from bench.goals import goals, run_day
from bench.ledger import combine
from bench.report import RunError, attempt, exit_code, failure_lines, valid_median

WORKER_LOG = "worker 0: Traceback …\nKeyError: 'SKU-7' in saga.apply\nworker exiting (code 3)"


class FakePool:
    """What the failure paths read of a WorkerPool: its logs, and that it was stopped and made whole again."""

    count = 2

    def __init__(self, tail: str = WORKER_LOG) -> None:
        self.tail = tail
        self.calls: list[str] = []

    def log_path(self, i: int) -> Path:
        return Path(f"/state/logs/worker{i}.log")

    def log_tail(self, i: int, lines: int = 30) -> str:
        return self.tail if i == 0 else "(quiet)"

    def stop(self, timeout_s: float = 40.0) -> None:
        self.calls.append("stop")

    def supervise(self) -> list:
        self.calls.append("supervise")
        return []

    def wait_ready(self, topics: list[str], timeout_s: float = 180.0) -> None:
        self.calls.append("wait_ready")


def engine_row(rate: float, **kw: Any) -> dict[str, Any]:
    row = {"what": "engine", "orders": 100, "decided": 100, "invariants": "ok", "orders_per_s": rate}
    row.update(transactions=10, commit_ms_mean=5.0, cpu_ms_per_order={"workers": 1.0, "broker": 0.5})
    row.update(kw)
    return row


def boom(message: str = "worker 1 exited (code 3)", tail: str = WORKER_LOG) -> Any:
    def run() -> dict:
        try:
            raise RuntimeError(message)
        except RuntimeError as exc:
            raise RunError(exc, report.log_tails(FakePool(tail))) from exc

    return run


# -- the shared pieces ---------------------------------------------------------------------------------------------


def test_a_run_that_raises_is_a_failure_row_with_its_error_and_the_workers_log_tail() -> None:
    row = attempt(boom(), {"what": "engine", "rep": 1})
    assert row["what"] == "engine" and row["rep"] == 1
    assert row["valid"] is False and row["ok"] is False
    assert row["error"] == "RuntimeError: worker 1 exited (code 3)"  # the cause's type and message, not RunError's
    assert "KeyError: 'SKU-7'" in row["log_tail"] and "worker 0 (/state/logs/worker0.log)" in row["log_tail"]
    assert row["error_at"].startswith("test_bench_failures.py:")

    def plain() -> dict:
        raise ValueError("x" * 5000)

    row = attempt(plain, {"what": "ceiling"})
    assert row["error"].startswith("ValueError: xxx") and len(row["error"]) <= report.ERROR_CHARS
    assert "log_tail" not in row


def test_a_row_without_the_keys_its_verdict_reads_is_a_failure_not_a_crash() -> None:
    row = attempt(lambda: {"what": "engine", "orders_per_s": 900.0}, {"what": "engine"}, lambda r: r["invariants"])
    assert row["valid"] is False and "invariants" in row["invalid"] and "cannot be judged" in row["invalid"]
    ok = attempt(lambda: engine_row(900.0), {"what": "engine"}, pipeline_bench.why_invalid)
    assert ok["valid"] is True and "invalid" not in ok


def test_medians_are_over_the_valid_runs_and_say_how_many_failed() -> None:
    rows = [
        {"rate": 10.0, "valid": True},
        {"rate": 1000.0, "valid": False, "invalid": "invariants: I1"},
        {"error": "RuntimeError: x", "valid": False},
        {"rate": 30.0, "valid": True},
    ]
    assert valid_median(rows, "rate") == {"median": 20.0, "runs": 4, "failed": 2}
    assert exit_code(rows) == 1 and exit_code(rows[:1]) == 0 and exit_code(rows[:1], ok=False) == 1


def test_a_clean_up_that_fails_does_not_hide_the_run_or_stop_the_other_steps(capsys: pytest.CaptureFixture) -> None:
    done: list[str] = []

    def bad() -> None:
        raise OSError("broker gone")

    errors = report.cleanup_quietly(lambda: done.append("a"), bad, lambda: done.append("c"))
    assert done == ["a", "c"] and errors == ["OSError: broker gone"]
    assert "clean-up failed: OSError: broker gone" in capsys.readouterr().err


# -- bench.pipeline ------------------------------------------------------------------------------------------------


def fake_runs(engine: list[Any]) -> dict[str, Any]:
    """Every measurement of bench.pipeline faked; the engine's runs in turn from ``engine``."""
    queue = list(engine)

    def next_engine() -> dict:
        item = queue.pop(0)
        return item() if callable(item) else item

    def no_java() -> dict:
        raise FileNotFoundError("java not found on PATH")

    return {
        "ceiling": lambda: {"what": "ceiling", "orders_per_s": 5000.0},
        "redis_lua": lambda: {"what": "redis_lua", "orders_per_s": 3000.0, "oversold_units": 0},
        "redis_lock": lambda: {"what": "redis_lock", "orders_per_s": 1000.0, "oversold_units": 4},
        "kstreams_eos_v2": no_java,
        "kstreams_alo": lambda: {"what": "kstreams_alo", "orders": 100, "decided": 100, "orders_per_s": 700.0},
        "engine": next_engine,
    }


def test_a_failed_engine_run_is_a_failure_row_and_the_others_still_run() -> None:
    runs = fake_runs(
        [
            boom(),  # rep 0: the run raised (the worker died)
            {"what": "engine", "orders": 100, "decided": 3, "orders_per_s": 3.0},  # rep 1: no invariants
            engine_row(800.0),  # rep 2
            engine_row(1200.0, invariants=["I1: oversold SKU-1"]),  # rep 3: fast and wrong
            engine_row(1000.0),  # rep 4
        ]
    )
    result = pipeline_bench.measure_all(runs, 5, 100, 17, 2, 8)
    rows, summary = result["rows"], result["summary"]
    engine = [r for r in rows if r["what"] == "engine"]
    assert len(rows) == 5 * len(pipeline_bench.MEASUREMENTS)  # every measurement of every rep ran
    assert [r["valid"] for r in engine] == [False, False, True, False, True]
    assert (
        engine[0]["error"] == "RuntimeError: worker 1 exited (code 3)" and "KeyError: 'SKU-7'" in engine[0]["log_tail"]
    )
    assert engine[1]["invalid"] == "the engine run has no invariants verdict"
    assert engine[3]["invalid"].startswith("invariants:")
    assert summary["median_orders_per_s"]["engine"] == 900.0  # 800 and 1000: the valid runs only
    assert summary["failed_runs"] == {
        "ceiling": 0,
        "redis_lua": 0,
        "redis_lock": 5,  # it oversold
        "kstreams_eos_v2": 5,  # no Java
        "kstreams_alo": 0,
        "engine": 3,
    }
    assert summary["median_orders_per_s"]["kstreams_eos_v2"] is None and "kstreams_eos_v2" not in summary["engine_vs"]
    assert summary["engine_ok"] is False and summary["engine_transactions"] == 10
    assert any(e["error"] == "FileNotFoundError: java not found on PATH" for e in summary["errors"])
    assert exit_code(rows) == 1

    text = "\n".join(pipeline_bench.markdown_lines(result, "4.1.0"))
    assert "**failed** (RuntimeError: worker 1 exited (code 3))" in text
    assert "**failed** (FileNotFoundError: java not found on PATH)" in text
    assert "900 (2 of 5 runs)" in text  # the engine's median, and over how many runs
    assert "13 run(s) failed" in text and "KeyError: 'SKU-7' in saga.apply" in text  # listed, with the log's tail
    assert "the engine run has no invariants verdict" in text


def test_measure_engine_raises_the_cause_with_the_workers_logs_and_cleans_up_even_when_that_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pool = FakePool()
    deleted: list[str] = []

    def delete_topics(_bootstrap: str, prefix: str) -> None:
        deleted.append(prefix)
        raise RuntimeError("the broker is gone too")

    def measure(*_args: Any) -> dict:
        raise TimeoutError("workers not ready after 180s")

    monkeypatch.setattr(pipeline_bench, "WorkerPool", lambda settings, workers: pool)
    monkeypatch.setattr(pipeline_bench, "create_topics", lambda *a, **kw: None)
    monkeypatch.setattr(pipeline_bench, "delete_topics", delete_topics)
    monkeypatch.setattr(pipeline_bench, "_measure_engine", measure)
    settings = pipeline_bench.Settings.from_env({"OMS_STATE_DIR": str(tmp_path)})
    with pytest.raises(RunError) as caught:
        pipeline_bench.measure_engine(settings, None, [], 2)  # type: ignore[arg-type]
    assert isinstance(caught.value.cause, TimeoutError)  # the run's own error, not the clean-up's
    assert "KeyError: 'SKU-7'" in caught.value.log_tail
    assert pool.calls == ["stop"] and len(deleted) == 2  # every clean-up step ran


# -- the other benches ---------------------------------------------------------------------------------------------


def test_variants_report_a_failed_run_in_its_table_and_take_the_median_of_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = [boom("the broker went away"), lambda: engine_row(1000.0), lambda: engine_row(2000.0)]
    monkeypatch.setattr(variants_bench, "measure_engine", lambda *a: results.pop(0)())
    rows = [variants_bench._run(None, None, [], 2, "tuned", rep=i) for i in range(3)]  # type: ignore[arg-type]
    assert [r["valid"] for r in rows] == [False, True, True]
    assert rows[0]["error"] == "RuntimeError: the broker went away" and rows[0]["label"] == "tuned"
    (line,) = variants_bench._summarise(rows, ["tuned"])
    assert line[1] == "1,500"  # the median of the valid runs
    assert line[5] == "**failed**, 1,000, 2,000"
    assert line[6].startswith("**FAILED** (1 of 3): RuntimeError: the broker went away")
    assert variants_bench._ok(rows) is False
    everything_failed = [variants_bench._summarise(rows[:1], ["tuned"])[0]]
    assert everything_failed[0][1] == "—" and everything_failed[0][2] == "—"


def test_fulfilment_runs_on_after_a_failed_run_and_its_section_lists_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def measure(*_a: Any, **_kw: Any) -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise RunError(KeyError("invariants"), "--- worker 0:\nconsumer thread died")
        return engine_row(500.0, fulfilment_settled=len(calls) != 3, shipments_per_s=50.0, shipments=10)

    monkeypatch.setattr(fulfilment_bench, "measure_engine", measure)
    rows = fulfilment_bench.run(fulfilment_bench.Settings.from_env({}), 60, 2, 3)
    assert len(rows) == 4 and [r["valid"] for r in rows] == [False, True, False, True]
    assert rows[0]["error"] == "KeyError: 'invariants'" and "consumer thread died" in rows[0]["log_tail"]
    assert rows[2]["invalid"].startswith("fulfilment did not settle")
    written: list[list[str]] = []
    monkeypatch.setattr(fulfilment_bench, "write_section", lambda title, lines: written.append(lines))
    fulfilment_bench.write(fulfilment_bench.Settings.from_env({}), rows, 60, 2)
    text = "\n".join(written[0])
    assert "2 run(s) failed" in text and "KeyError: 'invariants'" in text and "consumer thread died" in text
    assert exit_code(rows) == 1


def test_the_ledger_stage_median_is_over_the_valid_runs_and_says_how_many_failed() -> None:
    good = {
        "bench": "ledger",
        "what": "stage",
        "valid": True,
        "invariants": "ok",
        "vouchers_per_s": 100.0,
        "send_s": 1.0,
        "events_per_s": 10.0,
        "goods_issued_per_s": 5.0,
        "lag_ms": {"p50": 1, "p95": 2, "max": 3, "matched": 9},
        "cpu_ms_per_event": {"workers": 1.0},
        "transactions": 4,
        "restarts": 0,
    }
    runs = [
        {**good, "rep": 0},
        {"bench": "ledger", "what": "stage", "rep": 1, "valid": False, "error": "WorkerError: worker 0 exited"},
        {**good, "rep": 2, "vouchers_per_s": 300.0},
    ]
    stage = combine(runs)
    assert stage["valid"] is False and stage["failed_runs"] == 1 and stage["runs"] == 3
    assert stage["vouchers_per_s"] == 200.0 and stage["runs_vouchers_per_s"] == [100.0, None, 300.0]
    assert stage["errors"] == ["rep 1: WorkerError: worker 0 exited"]
    none = combine(runs[1:2])
    assert none["valid"] is False and none["error"] == "rep 1: WorkerError: worker 0 exited" and "lag_ms" not in none


def test_a_failed_latency_step_is_a_row_of_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    step = {
        "what": "latency",
        "phase": "fixed",
        "offered_per_s": 12.0,
        "achieved_send_per_s": 12.0,
        "decided": 240,
        **latency_bench.percentiles([10, 20, 30]),
        "lag_max": 5,
        "sustained": True,
        "failed": [],
    }
    broken = report.failure_row(
        latency_bench.step_failure(120.0, "fixed", 1), RuntimeError("oms-latency-follower failed")
    )
    result = {
        "kafka": "4.1.0",
        "workers": 2,
        "partitions": 8,
        "tolerance_s": 2.0,
        "p99_limit_ms": 3000.0,
        "knee_per_s": 12.0,
        "first_failed_per_s": None,
        "downstream": "none yet",
        "downstream_note": "",
        "invariants": "ok",
        "oversold_units": 0,
        "engine_errors": 0,
        "restarts": [],
        "command": "python -m bench.latency",
        "steps": [step, broken],
    }
    written: list[list[str]] = []
    monkeypatch.setattr(latency_bench, "write_section", lambda title, lines: written.append(lines))
    latency_bench.write_markdown(result)
    text = "\n".join(written[0])
    assert "| 120 | – | 0 | – | – | – | – | – | **failed**: RuntimeError: oms-latency-follower failed |" in text
    assert "1 run(s) failed" in text and "step at 120/s" in text


def test_a_failed_kill_measurement_is_a_row_and_the_pool_is_made_whole_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failover(*_a: Any) -> dict:
        raise RuntimeError("the engine did not settle at 100 orders/s within 180s")

    monkeypatch.setattr(recovery_bench, "failover", failover)
    pool = FakePool()
    run = recovery_bench.Run(None, recovery_bench.Topics("t"), None, None, lambda m: None)  # type: ignore[arg-type]
    row = recovery_bench.measure_failover(run, pool, 1, restart=True)  # type: ignore[arg-type]
    assert row in run.rows and row["case"] == "kill -9, restarted at once, standby 1" and row["seconds"] is None
    assert row["error"].startswith("RuntimeError: the engine did not settle") and "SKU-7" in row["log_tail"]
    assert pool.calls == ["supervise", "wait_ready"]
    lines = failure_lines(run.rows, lambda r: r["case"])
    assert lines[0] == "**1 run(s) failed** (left out of every median):"
    assert lines[2].startswith("* kill -9, restarted at once, standby 1: RuntimeError: the engine did not settle")


def test_a_day_that_fails_is_recorded_with_its_error_and_output_and_the_goals_say_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = run_day(command=[str(tmp_path / "no-such-oms"), "run"])
    assert missing["ok"] is False and missing["error"].startswith(("FileNotFoundError", "PermissionError"))
    script = (
        "import sys; print('deciding…'); print('{not json'); sys.stderr.write('engine still has input\\n'); sys.exit(2)"
    )
    crashed = run_day(command=[sys.executable, "-c", script])
    assert crashed["ok"] is False and crashed["exit_code"] == 2
    assert crashed["error"] == "exit 2, no JSON summary on stdout" and "engine still has input" in crashed["log_tail"]
    script = 'print(\'{"ok": false, "invariants": ["I1"]}\'); raise SystemExit(1)'
    failed_day = run_day(command=[sys.executable, "-c", script])
    assert failed_day["invariants"] == ["I1"] and failed_day["error"] == "exit 1" and failed_day["exit_code"] == 1

    saved = {
        "day": {**crashed, "date": "2025-01-01"},
        "pipeline": {"date": "2025-01-01", "engine_vs": {}, "errors": [{"error": "RunError: boom"}]},
        "latency": {"ok": False, "error": "RuntimeError: no two consecutive free ports", "date": "2025-01-01"},
    }
    monkeypatch.setattr("bench.goals.load_result", saved.get)
    rows = goals()
    assert [r[2] for r in rows] == ["**not met**"] * 3
    assert "no figure: RunError: boom" in rows[0][1]
    assert "**failed**: exit 2, no JSON summary" in rows[1][1]
    assert "**failed**: RuntimeError: no two consecutive free ports" in rows[2][1]


def test_the_locust_table_keeps_its_shape_when_a_preset_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.locust import run as locust_run

    written: list[list[str]] = []
    monkeypatch.setattr("bench.report.write_section", lambda title, lines: written.append(lines))
    failed = report.failure_row({"rate": "100x", "invariants": "not checked"}, RuntimeError("a | b\nsecond line"))
    locust_run.write_markdown(locust_run.Settings.from_env({}), [failed], "20s")
    row = [ln for ln in written[0] if ln.startswith("| 100x")]
    assert row == [row[0]] and row[0].endswith("| **FAILED**: RuntimeError: a / b |")


def test_the_recovery_table_shows_a_failed_kill_measurement_among_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    start = {"kind": "start", "seconds": 12.0, "first_answer_s": 3.0, "restored_in_full": 0}
    kill = {
        "kind": "failover",
        "standby_replicas": 0,
        "restarted": False,
        "seconds": 31.0,
        "served_median_s": 30.0,
        "taken_over_s": 29.0,
        "victim_inbox_partitions": [1, 3],
        "p99_ms": 900.0,
        "before_p99_ms": 80.0,
        "survivor_max_ms": 700.0,
        "stall_rereads": 0,
        "timed_out": False,
    }
    broken = report.failure_row(
        {"what": "recovery", "case": recovery_bench.failover_case(1, True), "kind": "failover", "standby_replicas": 1}
        | {"restarted": True, "seconds": None, "stall_rereads": 0, "timed_out": False},
        RuntimeError("no decision for 180s; 40 orders undecided"),
        "--- worker 1:\nFATAL consumer fenced",
    )
    result = {
        "kafka": "4.1.0",
        "workers": 2,
        "partitions": 8,
        "table_store": "rocksdb",
        "session_timeout_s": 30.0,
        "rate_per_s": 100.0,
        "orders": 2000,
        "orders_sent": 9000,
        "invariants": "ok",
        "oversold_units": 0,
        "engine_errors": 0,
        "command": "python -m bench.recovery",
        "rows": [
            {"case": "ready, empty state", **start},
            {"case": "state", "kind": "state", "clean_stop_s": 2.0, "store_mib": 1.0, "changelog_records": 5}
            | {"changelog_topics": 2},
            {"case": "ready, full state, stores kept (warm)", **start},
            {"case": "ready, full state, stores deleted (cold)", **start},
            {"case": recovery_bench.failover_case(0, False), **kill},
            broken,
        ],
    }
    written: list[list[str]] = []
    monkeypatch.setattr(recovery_bench, "write_section", lambda title, lines: written.append(lines))
    recovery_bench.write_markdown(result)
    text = "\n".join(written[0])
    assert "| Kill -9, restarted at once, standby 1 | – | **failed**: RuntimeError: no decision for 180s" in text
    assert "| Kill -9, not restarted, standby 0 | 31.0 |" in text
    assert "1 run(s) failed" in text and "FATAL consumer fenced" in text


def test_the_baselines_exit_non_zero_after_every_run_when_one_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import json

    import bench.baselines as baselines

    def no_redis(*_a: Any, **_kw: Any) -> dict:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(baselines, "measure_redis_lua", no_redis)
    monkeypatch.setattr(baselines, "measure_redis_lock", lambda *a, **kw: {"what": "redis_lock", "orders_per_s": 9.0})
    assert baselines.main(["--orders", "5", "--only", "redis_lua", "--only", "redis_lock"]) == 1
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["what"], r["valid"]) for r in printed] == [("redis_lua", False), ("redis_lock", True)]
    assert printed[0]["error"] == "ConnectionError: Error 111 connecting to 127.0.0.1:6379"
