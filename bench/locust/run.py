"""``python -m bench.locust``: the Locust scenario against a fresh engine, with the invariants checked after.

    python -m bench.locust --rate 10x --duration 60s

Sets the engine up the way the main job (``oms run``) does — local Kafka and Redis if none is configured, a
namespace of its own (topic prefix and app id carry a run id), a tenants file with fresh tokens, the review rules
published, engine workers started and supervised, the catalog and opening stock loaded — then runs Locust
headless for the fixed duration with CSV output, waits for the engine to go idle, checks the invariants from the
result topics against what the Locust users logged as sent, and prints one JSON line. Exit 0 when the invariants
hold, no order failed by the engine's fault and Locust saw no failure; 1 otherwise; 2 when the run could not
complete — then its JSON line says why (exception type and message) with the tail of the workers' logs, and the
next preset still runs. Its topics are deleted at the end unless ``--keep``; the CSVs stay in ``.oms/locust/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.orders.publish import load_rules_file, publish_rules
from bench.locust.results import AGGREGATED, Row, by_type, read_failures, read_stats
from bench.locust.scenario import (
    ALL_CHANNELS,
    DECISION,
    HTTP_SHARE,
    Plan,
    format_tokens,
    parse_duration,
    parse_rate,
    read_sent,
)
from bench.report import RunError, cleanup_quietly, failure_row, log_tails
from deploy.local.servers import LocalServers
from engine.kafka.admin import create_topics, wait_for_broker
from engine.readmodels.catalog import publish as publish_catalog
from engine.readmodels.redis import Keys
from engine.settings import REPO_ROOT, Settings
from engine.supervisor import WorkerPool
from engine.topics import Topics
from invariants import Inputs, check, collect
from workload.day import RunFailed, cleanup, engine_inputs, stuck_sagas, wait_idle
from workload.delivery import Credentials
from workload.generator import Workload, WorkloadSpec
from workload.stock import load_stock

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass(frozen=True)
class Options:
    rate: str = "10x"
    duration_s: float = 60.0
    workers: int = 2
    seed: int = 7
    http_share: float = HTTP_SHARE
    http_batch: int = 0
    drain_s: float = 15.0
    csv: str | None = None  # prefix of Locust's CSV files; default .oms/locust/<rate>-<run id>
    keep: bool = False

    @property
    def orders_per_s(self) -> float:
        return parse_rate(self.rate)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.locust", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rate", default="10x", help="100k (≈1.16 orders/s), 10x, 100x, or orders per second; a comma list runs each"
    )
    p.add_argument("--duration", default="60s", help="how long Locust offers the load: 60s, 5m, 1h")
    p.add_argument("--workers", type=int, default=None, help="engine workers (default OMS_WORKERS)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--http-share", type=float, default=HTTP_SHARE, help="share of orders sent through the API")
    p.add_argument("--http-batch", type=int, default=0, help="orders per API request (0: by rate)")
    p.add_argument("--drain", default="15s", help="how long Locust waits for the last decisions")
    p.add_argument("--csv", default=None, help="prefix of the CSV files (default .oms/locust/<rate>-<run id>)")
    p.add_argument("--keep", action="store_true", help="keep the run's topics and worker state")
    p.add_argument("--markdown", action="store_true", help="write the runs to the Locust section of BENCHMARKS.md")
    a = p.parse_args(argv)
    rates = [r.strip() for r in a.rate.split(",") if r.strip()]
    try:
        for rate in rates:
            parse_rate(rate)
        duration, drain = parse_duration(a.duration), parse_duration(a.drain)
    except ValueError as exc:
        p.error(str(exc))
    base = Settings.from_env()
    signal.signal(signal.SIGTERM, _interrupt)
    summaries = []
    code = 0
    for rate in rates:
        opts = Options(
            rate, duration, max(2, a.workers or base.workers), a.seed, a.http_share, a.http_batch, drain, a.csv, a.keep
        )
        summary, rc = run_one(base, opts)
        summaries.append(summary)
        code = max(code, rc)
        if rc == 130:
            break
    if a.markdown:
        write_markdown(base, summaries, a.duration)
    return code


def run_one(base: Settings, opts: Options) -> tuple[dict[str, Any], int]:
    """One preset on a fresh namespace: its summary (printed as one JSON line) and an exit code."""
    run_id = time.strftime("l%Y%m%d%H%M%S")
    run_dir = Path(base.state_dir) / "runs" / run_id
    creds = Credentials.create(WorkloadSpec().tenants, run_dir)
    settings = base.with_(
        topic_prefix=f"{base.topic_prefix}.{run_id}", app_id=f"{base.app_id}-{run_id}", tenants_file=str(creds.path)
    )
    servers = LocalServers(settings)
    try:
        servers.start(echo=_say)
        wait_for_broker(settings.bootstrap)
        summary = run(settings, creds, opts, run_dir, run_id)
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        return summary, 0 if summary["ok"] else 1
    except KeyboardInterrupt:
        _say("interrupted")
        return {"ok": False, "rate": opts.rate, "error": "interrupted", "invariants": "not checked"}, 130
    except Exception as exc:  # any failure is this preset's row, with its error and the workers' logs
        failed = failure_row({"rate": opts.rate, "invariants": "not checked"}, exc)
        _say(f"bench.locust failed: {failed['error']}" + (f"\n{failed['log_tail']}" if failed.get("log_tail") else ""))
        print(json.dumps(failed, default=str), flush=True)
        return failed, 2
    finally:
        steps = [] if opts.keep else [lambda: cleanup(settings), lambda: shutil.rmtree(run_dir, ignore_errors=True)]
        cleanup_quietly(*steps, lambda: servers.stop(only_started=True))


def write_markdown(settings: Settings, summaries: list[dict[str, Any]], duration: str) -> None:
    """The Locust section of BENCHMARKS.md: one row per preset, decision latency as Locust measured it."""
    from bench.report import measured_on, table, write_section

    rows = []
    for s in summaries:
        lat = (s.get("latency_ms") or {}).get("decision") or {}
        reason = str(s.get("error") or s.get("invariants")).splitlines()[0][:200].replace("|", "/")
        verdict = "ok" if s.get("ok") else f"**FAILED**: {reason}"
        rows.append(
            [
                str(s.get("rate")),
                f"{s.get('offered_orders_per_s', 0):,.2f}",
                f"{s.get('orders_sent', 0):,}",
                f"{(s.get('requests') or {}).get('decision', 0):,}",
                str(s.get("failures", "—")),
                *(f"{lat.get(k, 0):,.0f}" if lat.get(k) is not None else "—" for k in ("p50", "p95", "p99", "max")),
                verdict,
            ]
        )
    rates = ",".join(str(s.get("rate")) for s in summaries)
    lines = [
        measured_on(settings.kafka_version),
        f"Locust headless, {duration} per preset, 2 engine workers, a Kafka user (raw channel topics) and an HTTP "
        "user (the API) at a fixed order rate; latency from the order's produce (or request) to its decision as "
        f"read by the scenario's consumer. Command: `python -m bench.locust --rate {rates} --duration {duration} "
        "--markdown` (CSVs under `.oms/locust/`).",
        "",
        *table(
            [
                "Preset",
                "Offered orders/s",
                "Orders sent",
                "Decisions timed",
                "Failures",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
                "Invariants",
            ],
            rows,
            ["l", "r", "r", "r", "r", "r", "r", "r", "r", "l"],
        ),
    ]
    write_section("Locust", lines)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(settings: Settings, creds: Credentials, opts: Options, work_dir: Path, run_id: str = "") -> dict[str, Any]:
    """Provision the engine in ``settings``' namespace, offer the load, check; returns the summary. The caller owns
    the namespace (it deletes the topics); the workers started here are stopped here."""
    topics = Topics(settings.topic_prefix)
    rate = opts.orders_per_s
    plan = Plan.make(rate, opts.http_share, opts.http_batch)
    create_topics(settings.bootstrap, topics.all(), settings.partitions, settings.replication_factor, topics.configs())
    rules = load_rules_file(settings.rules_file)
    publish_rules(settings, rules, "rules-publisher")
    pool = WorkerPool(settings, opts.workers)
    t0 = time.monotonic()
    try:
        return _run(settings, creds, opts, work_dir, run_id, topics, rate, plan, rules, pool, t0)
    except Exception as exc:
        raise RunError(exc, log_tails(pool)) from exc
    finally:
        cleanup_quietly(lambda: pool.stop(timeout_s=20))


def _run(
    settings: Settings,
    creds: Credentials,
    opts: Options,
    work_dir: Path,
    run_id: str,
    topics: Topics,
    rate: float,
    plan: Plan,
    rules: Any,
    pool: WorkerPool,
    t0: float,
) -> dict[str, Any]:
    _say(f"starting {opts.workers} engine workers…")
    pool.start()
    pool.wait_ready([topics.order_inbox, topics.inventory_commands])
    # the opening stock of a generated day as long as the run: the hottest SKUs sell out, as in oms run
    workload = Workload(WorkloadSpec(orders=max(100, round(rate * opts.duration_s)), seed=opts.seed))
    inputs = Inputs(rules=bool(rules))
    publish_catalog(settings.redis, Keys(settings.topic_prefix), workload.catalog())
    stock = list(workload.opening_stock("stock-loader", 0, int(time.time() * 1000)))
    load_stock_and_wait(settings, topics, pool, stock)
    inputs.add_stock(stock)
    prefix = opts.csv or str(Path(settings.state_dir) / "locust" / f"{opts.rate}-{run_id or 'run'}")
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    sent_dir = work_dir / "sent"
    shutil.rmtree(sent_dir, ignore_errors=True)
    _say(f"locust: {rate:.2f} orders/s for {opts.duration_s:.0f}s ({plan}); CSV {prefix}_stats.csv")
    t1 = time.monotonic()
    exit_code, locust_s = run_locust(settings, creds, opts, prefix, sent_dir, pool)
    _say("waiting for the engine to go idle…")
    t2 = time.monotonic()
    wait_idle(settings, engine_inputs(topics), pool)
    t3 = time.monotonic()
    stuck = stuck_sagas(pool)
    pool.stop()
    sent = read_sent(sent_dir)
    inputs.add_orders(sent.orders)
    inputs.bad_records = sent.bad_records
    _say("checking the invariants from the result topics against what was sent…")
    outputs = collect(settings.bootstrap, topics)
    verdict = check(inputs, outputs, settings.partitions)
    rows = read_stats(prefix)
    failures = read_failures(prefix)
    timings = {
        "setup_s": round(t1 - t0, 1),
        "locust_s": round(locust_s, 1),
        "idle_s": round(t3 - t2, 1),
        "check_s": round(time.monotonic() - t3, 1),
    }
    c = verdict.counts
    total = next((r for r in rows if r.name == AGGREGATED), None)
    if total is None:
        raise RunFailed(f"Locust wrote no {AGGREGATED!r} row in {prefix}_stats.csv (locust exit {exit_code})")
    decisions = next((r for r in rows if r.type == DECISION and r.name == ALL_CHANNELS), None)
    requests = by_type(rows)
    ok = (
        verdict.ok
        and verdict.oversold_units == 0
        and c.get("engine_failures", 0) == 0
        and total.failures == 0
        and exit_code == 0
        and bool(requests.get(DECISION))
    )
    return {
        "ok": ok,
        "rate": opts.rate,
        "orders_per_s": round(rate, 2),
        "duration_s": opts.duration_s,
        "plan": {"kafka_users": plan.kafka_users, "http_users": plan.http_users, "http_batch": plan.http_batch},
        "orders_sent": len(inputs.orders),
        "offered_orders_per_s": round(len(inputs.orders) / max(opts.duration_s, 1e-6), 2),
        "snapshots_sent": len(sent.orders),
        "bad_records_sent": len(sent.bad_records),
        "requests": requests,
        "failures": total.failures,
        "failure_kinds": [f"{f.get('Method')} {f.get('Name')}: {f.get('Error')}"[:200] for f in failures[:5]],
        "latency_ms": {"decision": decisions.latency() if decisions else {}},
        "rows": [_row(r) for r in rows if r.name != AGGREGATED],
        "accepted": c.get("accepted", 0),
        "rejected": c.get("rejected", 0),
        "cancelled": c.get("cancelled", 0),
        "open": c.get("open", {}),
        "engine_failures": c.get("engine_failures", 0),
        # decided by the engine but not timed by Locust (decided after the drain ended)
        "untimed_decisions": c.get("decisions", 0) - requests.get(DECISION, 0),
        "dead_letters": sum(c.get("dead_letters", {}).values()),
        "oversold_units": verdict.oversold_units,
        "invariants": verdict.summary(),
        "stuck_sagas": stuck,
        "restarts": [{"worker": r.index, "exit_code": r.exit_code, "after_s": r.after_s} for r in pool.restarts],
        "locust_exit": exit_code,
        "timings": timings,
        "workers": opts.workers,
        "partitions": settings.partitions,
        "csv": f"{prefix}_stats.csv",
        "run_id": run_id,
    }


def _row(r: Row) -> dict[str, Any]:
    return {"type": r.type, "name": r.name, "requests": r.requests, "failures": r.failures, **r.latency()}


def load_stock_and_wait(settings: Settings, topics: Topics, pool: WorkerPool, stock: list) -> None:
    """The catalog's stock is in before the first order arrives, as in the main job."""
    load_stock(settings.bootstrap, topics, settings.partitions, stock, app_id=settings.app_id)
    wait_idle(settings, [topics.inventory_commands], pool)


def locust_command(settings: Settings, opts: Options, prefix: str, sent_dir: Path) -> list[str]:
    """The headless Locust command the runner uses (the README shows the same by hand)."""
    urls = ",".join(f"http://127.0.0.1:{settings.web_port + i}" for i in range(opts.workers))
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--run-time",
        f"{math.ceil(opts.duration_s)}s",
        "--stop-timeout",
        "30",
        "--csv",
        prefix,
        "--orders-per-s",
        f"{opts.orders_per_s:.6g}",
        "--bootstrap",
        settings.bootstrap,
        "--topic-prefix",
        settings.topic_prefix,
        "--api-url",
        urls,
        "--sent-dir",
        str(sent_dir),
        "--seed",
        str(opts.seed),
        "--http-share",
        f"{opts.http_share:.6g}",
        "--http-batch",
        str(opts.http_batch),
        "--drain-s",
        f"{opts.drain_s:g}",
    ]


def run_locust(
    settings: Settings, creds: Credentials, opts: Options, prefix: str, sent_dir: Path, pool: WorkerPool
) -> tuple[int, float]:
    """Locust in its own process (it monkey-patches everything for gevent; the worker pool must not be), while
    this one restarts workers that die. Returns Locust's exit code and how long it ran."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMS_LOCUST_TOKENS": format_tokens(creds.tokens.items()),  # not on the command line, where ps shows it
    }
    started = time.monotonic()
    limit = opts.duration_s + opts.drain_s + 120
    command = locust_command(settings, opts, prefix, sent_dir)
    _say("$ OMS_LOCUST_TOKENS=… " + " ".join(["locust", *command[3:]]))
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        stderr=sys.stderr,
    )
    try:
        while proc.poll() is None:
            for restart in pool.supervise():
                _say(f"worker {restart.index} exited (code {restart.exit_code}); started again")
            if time.monotonic() - started > limit:
                raise RunFailed(f"locust still running after {limit:.0f}s")
            time.sleep(0.5)
        return proc.returncode, time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
