"""``oms``: the command line. ``oms --help`` lists the subcommands.

It lives in ``deploy/`` because it puts the pieces together (local servers, the stages' publishers, the main job):
``engine/`` never imports ``agents/``, ``workload/`` or ``deploy/``. A worker process is ``python -m engine.worker``
(the supervisor starts it so); ``oms worker`` runs the same in the foreground."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from engine.settings import REPO_ROOT, Settings, SettingsError, config_table


def _settings(**overrides: object) -> Settings:
    return Settings.from_env(**overrides)


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.worker import main as worker_main

    return worker_main(["--index", str(args.index)])


def cmd_servers(args: argparse.Namespace) -> int:
    from deploy.local.servers import LocalServers

    settings = _settings()
    servers = LocalServers(settings)
    if args.action == "start":
        started = servers.start(echo=lambda m: print(m, file=sys.stderr))
        for st in servers.status():
            print(st.line())
        if not started:
            print("(already running)")
    elif args.action == "stop":
        stopped = servers.stop(only_started=False)
        print("stopped: " + (", ".join(stopped) or "nothing was running under our pid files"))
    else:
        for st in servers.status():
            print(st.line())
        print(f"logs: {Path(settings.state_dir) / 'logs'}")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from engine.schema_export import export

    for path in export(Path(args.dir)):
        print(path)
    return 0


def cmd_config(_args: argparse.Namespace) -> int:
    print(config_table())
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from agents.orders.publish import RulesError, load_rules_file, publish_rules

    settings = _settings()
    path = args.file or settings.rules_file
    try:
        rulesets = load_rules_file(path)
    except RulesError as exc:
        print(f"oms rules: {exc}", file=sys.stderr)
        return 2
    if not rulesets:
        print(f"oms rules: {path} holds no rule set", file=sys.stderr)
        return 2
    published = publish_rules(settings, rulesets, "rules-publisher")
    print(f"published {published} rule set(s) to every partition of {settings.topic_prefix}.order-inbox")
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from agents.shipping.labels import print_labels
    from engine.topics import Topics

    settings = _settings()
    wanted = set(args.shipment) if args.shipment else None
    written = print_labels(settings.bootstrap, Topics(settings.topic_prefix), Path(args.out), wanted, args.limit)
    for path in written:
        print(path)
    if not written:
        print(
            "oms labels: no shipped shipment found (is the engine's Kafka running, the prefix right?)", file=sys.stderr
        )
        return 1
    return 0


def cmd_settle(args: argparse.Namespace) -> int:
    from agents.ledger.reconcile import SettleOptions, settle

    opts = SettleOptions(
        file=Path(args.file),
        tenant=args.tenant,
        channel=args.channel,
        shop=args.shop,
        batch=args.batch,
        wait_s=args.wait_s,
        out=Path(args.out) if args.out else None,
        receivable_code=args.receivable_code,
    )
    return settle(_settings(), opts)


def cmd_stock_sync(args: argparse.Namespace) -> int:
    from agents.stocksync.publish import RulesError, load_rules, publish_sync_rules

    settings = _settings()
    try:
        rules = load_rules(Path(args.file))
    except RulesError as exc:
        print(f"oms stock-sync: {exc}", file=sys.stderr)
        return 2
    published = publish_sync_rules(settings, rules, "stock-sync-publisher")
    tenants = ", ".join(f"{r.tenant} v{r.version}" for r in rules)
    print(f"published {published} stock-sync rule set(s) ({tenants}) to {settings.topic_prefix}.stock-sync-inbox")
    return 0


def cmd_views(args: argparse.Namespace) -> int:
    """Rebuild the query API's read models from the topics (``oms views rebuild``)."""
    import time

    from agents.views.projection import Views
    from engine.readmodels.projector import namespace, rebuild
    from engine.topics import Topics

    settings = _settings()
    space = namespace(settings, args.into) if args.into else namespace(settings)
    started = time.monotonic()

    def progress(records: int) -> None:
        print(f"\roms views rebuild: {records:,} records into {space}", end="", file=sys.stderr, flush=True)

    try:
        counts = rebuild(settings, Views(Topics(settings.topic_prefix)), space, fresh=not args.keep, progress=progress)
    except Exception as exc:  # Kafka or Redis not there: say so, in one line
        print(f"\noms views rebuild: failed: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(
        f"\roms views rebuild: {counts['records']:,} records, {counts['applied']:,} of {counts['writes']:,} writes "
        f"applied, {counts['cleared']:,} old keys cleared, {counts['undecodable']} undecodable, into {space} "
        f"in {took:.1f}s",
        file=sys.stderr,
    )
    return 0 if counts["undecodable"] == 0 else 1


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orders", type=int, default=20_000, help="orders in the generated day (default 20000)")
    p.add_argument("--seed", type=int, default=11, help="workload seed: same seed, same day")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default OMS_WORKERS, min 2)")
    p.add_argument("--flash-sale", action="store_true", help="one scarce SKU in front of many buyers")
    p.add_argument("--keep", action="store_true", help="keep the run's topics and worker data afterwards")
    p.add_argument("--stall", type=float, default=None, help="give up after this long without progress (s)")
    p.add_argument(
        "--chaos",
        default="",
        help="faults to inject while the day runs, e.g. 'kill@25,kill@60' (kill -9 a worker at 25%% and 60%% "
        "of the orders resolved) or 'pause@25:45' (SIGSTOP a worker for 45 s at 25%%)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from workload.day import RunOptions, main_job

    return main_job(_settings(), RunOptions.from_args(args))


def xdist_options(pytest_args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The pytest-xdist options ``oms test`` adds: ``OMS_TEST_JOBS`` test processes (default: two per core plus
    one, 3 to 8 — the pipeline tests mostly wait on worker processes and the broker, and every test process shares
    the one set of servers), each handed its next test only when it is ready for it (``--dist load
    --maxschedchunk 1``: one slow test never holds a queue of others). None when ``OMS_TEST_JOBS`` is 0 or 1
    (serial), or when the arguments choose for themselves (``-n``, ``--dist``, ``-p no:xdist``, …)."""
    env = os.environ if env is None else env
    raw = env.get("OMS_TEST_JOBS", "").strip()
    jobs = int(raw) if raw else max(3, min(8, 2 * (os.cpu_count() or 1) + 1))
    own = ("-n", "--numprocesses", "--dist", "--maxschedchunk")
    chosen = any(
        a in (*own, "no:xdist", "-pno:xdist") or a.startswith(tuple(o + "=" for o in own[1:4])) or a[:2] == "-n"
        for a in pytest_args
    )
    if jobs <= 1 or chosen:
        return []
    if importlib.util.find_spec("xdist") is None:  # an environment installed before it was a test dependency
        print("oms test: pytest-xdist is not installed: the tests run one after another", file=sys.stderr)
        return []
    return ["-n", str(jobs), "--dist", "load", "--maxschedchunk", "1"]


def cmd_test(args: argparse.Namespace) -> int:
    """The test suite, exactly as CI runs it (pipeline tests start their own servers on test ports), in parallel
    (``OMS_TEST_JOBS`` test processes; 1: serially)."""
    cmd = [sys.executable, "-m", "pytest", *xdist_options(args.pytest_args), *args.pytest_args]
    print(f"oms test: {' '.join(cmd[2:])}", file=sys.stderr)
    return subprocess.call(cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oms", description="Order-stream engine on Faust and Kafka.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the main job: servers, stock, a generated day of orders, the engine, a report")
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="run one engine worker (Faust) in the foreground")
    w.add_argument("--index", type=int, default=0, help="worker number: web port and data dir offset")
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("servers", help="local Kafka and Redis on 127.0.0.1")
    s.add_argument("action", choices=["start", "stop", "status"])
    s.set_defaults(func=cmd_servers)

    r = sub.add_parser("rules", help="review rules")
    r_sub = r.add_subparsers(dest="rules_action", required=True)
    pub = r_sub.add_parser("publish", help="publish a rules file (default OMS_RULES_FILE) into the log")
    pub.add_argument("file", nargs="?", default=None)
    pub.set_defaults(func=cmd_rules)

    sc = sub.add_parser("schemas", help="JSON Schemas of the records on result topics")
    sc_sub = sc.add_subparsers(dest="schemas_action", required=True)
    ex = sc_sub.add_parser("export", help="write one JSON Schema file per record into DIR")
    ex.add_argument("dir")
    ex.set_defaults(func=cmd_schemas)

    lb = sub.add_parser("labels", help="print shipping labels (PDF, one per parcel) of shipped shipments")
    lb.add_argument("shipment", nargs="*", help="shipment ids (default: the first --limit shipped)")
    lb.add_argument("--out", default="labels", help="directory for <shipment>/<parcel>.pdf (default ./labels)")
    lb.add_argument("--limit", type=int, default=100, help="at most this many shipments without ids (default 100)")
    lb.set_defaults(func=cmd_labels)
    st = sub.add_parser("settle", help="reconcile a platform settlement file (对账) against the books")
    st.add_argument("file", help="the settlement CSV (Alipay-style; see agents/ledger/settlement.py)")
    st.add_argument("--tenant", required=True)
    st.add_argument("--channel", required=True, help="the channel the file settles, e.g. tmall")
    st.add_argument("--shop", default=None, help="the shop of rows without a shop_id column value")
    st.add_argument("--batch", default=None, help="batch id (default: derived from the file's sha256)")
    st.add_argument("--wait-s", type=float, default=120.0, help="wait this long for the ledger's answers (120)")
    st.add_argument("--out", default=None, help="write the report as JSON to this file")
    st.add_argument("--receivable-code", default="1122", help="the receivable account's code (default 1122)")
    st.set_defaults(func=cmd_settle)
    ss = sub.add_parser("stock-sync", help="stock sync to the platforms (库存同步)")
    ss_sub = ss.add_subparsers(dest="stock_sync_action", required=True)
    sp = ss_sub.add_parser("publish", help="publish a stock-sync rules file (TOML) into the log")
    sp.add_argument("file", help="e.g. deploy/stocksync.example.toml")
    sp.set_defaults(func=cmd_stock_sync)
    vw = sub.add_parser("views", help="the query API's read models in Redis")
    vw_sub = vw.add_subparsers(dest="views_action", required=True)
    rb = vw_sub.add_parser("rebuild", help="rebuild them from the topics (the live projector may keep running)")
    rb.add_argument("--into", default=None, help="another namespace, <prefix>:<INTO> (default: the live one)")
    rb.add_argument("--keep", action="store_true", help="do not delete the namespace's keys first")
    rb.set_defaults(func=cmd_views)
    c = sub.add_parser("config", help="print the configuration table (environment variables)")
    c.set_defaults(func=cmd_config)

    t = sub.add_parser("test", help="run the test suite (what CI runs); other arguments go to pytest")
    t.set_defaults(func=cmd_test)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "test":
        args.pytest_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"oms: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
