"""``oms run``: the main job. Provisions what is missing, runs the engine over a generated day of orders,
supervises its workers (a worker that dies is started again), shows progress, checks the invariants from the
result topics against what was sent, reports, and cleans up after itself.

Every run gets its own namespace (topic prefix and app id carry a run id), so runs never see each other's
records and the numbers are those of this run alone. The run fails (exit 1) when an invariant breaks, when the
engine rejected an order by its own fault, or when an order ends neither decided nor in a listed open state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.fulfilment.layout import generate_layout, load_layouts
from agents.fulfilment.publish import publish_layouts
from agents.ledger.agent import post
from agents.ledger.publish import publish_policies as publish_ledger_policies
from agents.orders.publish import load_rules_file, publish_rules
from agents.shipping.publish import demo_policy, publish_policies
from agents.stocksync.publish import publish_sync_rules
from deploy.local.servers import LocalServerError, LocalServers
from engine.kafka.admin import KafkaUnavailable, create_topics, delete_topics, wait_for_broker
from engine.kafka.clients import DeliveryFailed, Message, read_topics, tail, unprocessed
from engine.readmodels.catalog import publish as publish_catalog
from engine.readmodels.redis import Keys
from engine.settings import Settings
from engine.supervisor import WorkerError, WorkerPool
from engine.tenants import PullShop
from engine.topics import Topics
from invariants import Inputs, check, collect
from schemas import wire
from schemas.fulfilment import Layout, WavePolicy
from schemas.ledger import LedgerPolicy, LedgerPolicyVersion, TrialBalance
from schemas.order import Channel
from schemas.pulling import PullCheckpoint
from schemas.review import Action, OperatorActionKind, Outcome, ReviewDecision
from schemas.saga import DecisionStatus, OrderDecision
from schemas.shipping import ShippingPolicyVersion
from schemas.stocksync import ShopRule, SkuRule, SyncRules, SyncShop
from workload.aftersales import (
    CarrierDay,
    PickupDesk,
    ReturnsDay,
    carriers_scan,
    send_returns,
    shipped_parcels,
    wait_quiet,
)
from workload.channels import Delivery, channel_day
from workload.delivery import Credentials, DeliveryStats, deliver, resolve_holds
from workload.generator import Workload, WorkloadSpec
from workload.picking import PickingDay, PickingStalled, confirm_all
from workload.platforms import PlatformsProcess
from workload.stock import load_stock

PICK_SHORT_RATE = 0.01  # share of pick-list stops the main job's pickers find short (缺货)
CHAOS = re.compile(r"^(kill|pause)@(\d{1,3})(?::(\d+))?$")


@dataclass(frozen=True)
class Chaos:
    """A fault the main job injects once ``at`` percent of the day's orders are decided or held."""

    action: str  # "kill" (SIGKILL) or "pause" (SIGSTOP for ``seconds``, then SIGCONT)
    at: int
    seconds: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> list[Chaos]:
        out = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            m = CHAOS.match(part)
            if not m or not 0 < int(m.group(2)) < 100:
                raise SystemExit(f"oms run: --chaos {part!r}: use kill@PERCENT or pause@PERCENT:SECONDS")
            seconds = float(m.group(3) or (45 if m.group(1) == "pause" else 0))
            out.append(cls(m.group(1), int(m.group(2)), seconds))
        return sorted(out, key=lambda c: c.at)


@dataclass(frozen=True)
class RunOptions:
    orders: int = 20_000
    seed: int = 11
    workers: int | None = None
    flash_sale: bool = False
    keep: bool = False
    stall_s: float | None = None
    chaos: tuple[Chaos, ...] = ()

    @classmethod
    def from_args(cls, a: Any) -> RunOptions:
        if a.orders < 1:
            raise SystemExit("oms run: --orders must be at least 1")
        return cls(a.orders, a.seed, a.workers, a.flash_sale, a.keep, a.stall, tuple(Chaos.parse(a.chaos)))


class RunFailed(RuntimeError):
    pass


@dataclass
class ChaosLog:
    events: list[dict[str, Any]] = field(default_factory=list)
    pending: list[Chaos] = field(default_factory=list)
    paused: dict[int, float] = field(default_factory=dict)  # worker -> when to resume (monotonic)
    victim: int = 0


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_layouts(settings: Settings, workload: Workload) -> list[Layout]:
    """The layout file's (``OMS_LAYOUT_FILE``), else one generated per tenant: the workload's warehouses, every
    SKU of its catalogue slotted by popularity."""
    if settings.layout_file:
        return load_layouts(Path(settings.layout_file))
    catalog = workload.catalog()
    ranked = [workload.spec.sku(i + 1) for i in range(workload.spec.skus)]
    # The day is sent within minutes, so its windows are minutes too: 合单 within 5 s, waves every 5 s at most.
    return [
        generate_layout(
            tenant,
            workload.spec.warehouses,
            ranked + sorted(catalog[tenant] - set(ranked)),
            merge_window_s=5,
            waves=WavePolicy(release_after_s=5),
        )
        for tenant in workload.spec.tenants
    ]


PULL_ONLY_SHARE = 0.03  # of the Tmall orders with a single delivery: their push is lost, only a pull finds them


def split_pull_only(
    deliveries: list[Delivery], seed: int, platforms: PlatformsProcess | None
) -> tuple[list[Delivery], list[Delivery]]:
    """The day's deliveries without those of a few Tmall orders (``PULL_ONLY_SHARE`` of those with one delivery,
    sent to the raw topic), which are placed on the simulated platform instead: only the order pullers can bring
    them in. Nothing is held back when the platforms are real (``OMS_PLATFORM_URL``)."""
    if platforms is None:
        return deliveries, []
    per_order = Counter(d.raw_key for d in deliveries)
    rng = random.Random(seed * 7_919)
    chosen = {
        d.raw_key
        for d in deliveries
        if d.channel is Channel.TMALL and d.kind == "order" and d.via == "kafka" and per_order[d.raw_key] == 1
        and d.intent is not None and d.shop in ("s1", "s2") and rng.random() < PULL_ONLY_SHARE
    }  # fmt: skip
    pull_only = [d for d in deliveries if d.raw_key in chosen]
    for d in pull_only:
        platforms.place(d.tenant, d.shop, orjson.loads(d.body))
    return [d for d in deliveries if d.raw_key not in chosen], pull_only


def day_sync_rules(workload: Workload) -> list[SyncRules]:
    """The day's stock-sync rules: every platform shop of every tenant (the generator's shops ``s1`` and ``s2`` on
    Tmall, JD, Douyin and Shopify), shares, a fixed quantity, a shop switched off, the flash SKU kept off Douyin."""
    platforms = {"tmall": "taobao", "jd": "jd", "douyin": "douyin", "shopify": "shopify"}
    shops = [SyncShop(shop_id=f"{ch}-{s}", platform=p) for ch, p in platforms.items() for s in ("s1", "s2")]  # type: ignore[arg-type]
    rules = [
        ShopRule(shop_id="tmall-s1", share_pct=25), ShopRule(shop_id="tmall-s2", share_pct=15),
        ShopRule(shop_id="jd-s1", share_pct=15), ShopRule(shop_id="jd-s2", share_pct=10),
        ShopRule(shop_id="douyin-s1", mode="fixed", fixed=20), ShopRule(shop_id="douyin-s2", share_pct=10),
        ShopRule(shop_id="shopify-s1", share_pct=10), ShopRule(shop_id="shopify-s2", mode="off"),
    ]  # fmt: skip
    off = [SkuRule(shop_id="douyin-s1", sku="FLASH-*", mode="off")]
    return [
        SyncRules(tenant=t, version=1, shops=shops, safety_stock=2, rules=rules, sku_rules=off)
        for t in workload.spec.tenants
    ]


def main_job(base: Settings, opts: RunOptions) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # run the cleanup below on SIGTERM too
    console = Console(stderr=True)
    run_id = time.strftime("r%Y%m%d%H%M%S")
    run_dir = Path(base.state_dir) / "runs" / run_id
    workload = Workload(WorkloadSpec(orders=opts.orders, seed=opts.seed, flash_sale=opts.flash_sale))
    pulled_shops = [(t, PullShop(channel="tmall", shop_id=shop, every_s=2.0)) for t in workload.spec.tenants
                    for shop in ("s1", "s2")]  # fmt: skip
    creds = Credentials.create(workload.spec.tenants, run_dir, pull=pulled_shops)
    settings = base.with_(
        topic_prefix=f"{base.topic_prefix}.{run_id}",
        app_id=f"{base.app_id}-{run_id}",
        tenants_file=str(creds.path),
        # a day's carrier refuses a call now and then (retries show in the report; OMS_CARRIER_FAIL_EVERY: how often)
        carrier_fail_every=base.carrier_fail_every or CARRIER_FAIL_EVERY,
        # … the platforms refuse a write-back now and then (sent again: the report shows the attempts) …
        writeback_fail_every=base.writeback_fail_every or WRITEBACK_FAIL_EVERY,
        # … and a pickup nobody comes for expires within the run (OMS_PICKUP_HOLD_S to choose)
        pickup_hold_s=base.pickup_hold_s if "OMS_PICKUP_HOLD_S" in os.environ else PICKUP_HOLD_S,
        # … and the workers issue pickup codes under a secret of the run's own (OMS_PICKUP_SECRET has no default)
        pickup_secret=base.pickup_secret or secrets.token_hex(16),
    )
    # Stock updates go to simulated platforms (a real HTTP server here) unless OMS_PLATFORM_URL names real ones.
    platforms = None
    if not base.platform_url:
        sim_log = Path(base.state_dir) / "logs" / f"{base.app_id}-{run_id}-platforms.log"
        sim_log.parent.mkdir(parents=True, exist_ok=True)
        platforms = PlatformsProcess(STOCK_SYNC_FAIL_EVERY, sim_log)
    if platforms is not None:
        settings = settings.with_(platform_url=platforms.url)
    workers = max(2, opts.workers or settings.workers)
    log_file = _log_to_file(Path(settings.state_dir) / "logs" / f"{settings.app_id}-main.log")
    topics = Topics(settings.topic_prefix)
    servers = LocalServers(settings)
    pool = WorkerPool(settings, workers)
    chaos = ChaosLog(pending=list(opts.chaos))
    monitor = DayMonitor(console, settings, topics, pool, chaos)
    desk = PickupDesk(settings, topics, creds.tokens, max(2, opts.workers or settings.workers), opts.seed)
    sent: DeliveryStats | None = None
    t0 = time.monotonic()
    try:
        with console.status("Starting local Kafka and Redis…" if settings.uses_local_kafka else "Checking Kafka…"):
            servers.start(echo=console.print)
            wait_for_broker(settings.bootstrap)
        console.print(f"[green]✓[/] Kafka at {settings.bootstrap}, Redis at {settings.redis}")
        create_topics(
            settings.bootstrap, topics.all(), settings.partitions, settings.replication_factor, topics.configs()
        )
        prepare_books(settings, console)  # this run's namespace in PostgreSQL: a clean ledger
        rules = load_rules_file(settings.rules_file)
        publish_rules(settings, rules, "rules-publisher")
        layouts = run_layouts(settings, workload)
        publish_layouts(settings, layouts, "layout-publisher")
        policies = {
            tenant: ShippingPolicyVersion(tenant=tenant, version=1, policy=demo_policy(sorted(skus)))
            for tenant, skus in workload.catalog().items()
        }
        publish_policies(settings, policies, "shipping-policy-publisher")
        books = {tenant: LedgerPolicyVersion(tenant=tenant, version=1, policy=LedgerPolicy()) for tenant in policies}
        publish_ledger_policies(settings, books, "ledger-policy-publisher")  # the standard chart, 13 %, at shipment
        sync_rules = day_sync_rules(workload)
        publish_sync_rules(settings, sync_rules, "stock-sync-publisher")  # every platform shop, from the first unit
        with console.status(f"Starting {workers} engine workers…"):
            pool.start()
            pool.wait_ready([topics.order_inbox, topics.inventory_commands])
        console.print(f"[green]✓[/] {workers} workers own {settings.partitions} partitions of every topic")
        inputs = Inputs(rules=bool(rules), order_retention_ms=settings.order_retention_s * 1000)
        inputs.sync_rules = sync_rules
        with console.status("Loading the product catalog and opening stock…"):
            publish_catalog(settings.redis, Keys(settings.topic_prefix), workload.catalog())
            stock = list(workload.opening_stock("stock-loader", 0, int(time.time() * 1000)))
            load_stock(settings.bootstrap, topics, settings.partitions, stock, app_id=settings.app_id)
            inputs.add_stock(stock)
            wait_idle(settings, [topics.inventory_commands], pool)  # the catalog is complete before orders arrive
        units = sum(c.quantity for c in stock)
        places = f"{len(workload.spec.warehouses)} warehouses and {len(workload.spec.stores)} stores"
        console.print(f"[green]✓[/] opening stock: {units:,} units in {places}")
        startup_s = time.monotonic() - t0

        deliveries = list(channel_day(workload.orders(), opts.seed))
        # Some Tmall orders' pushes never come: they are only on the platform, for the pullers to find.
        deliveries, pull_only = split_pull_only(deliveries, opts.seed, platforms)
        monitor.expected = len({d.intent.key for d in deliveries + pull_only if d.intent is not None})
        monitor.start()
        desk.start()  # buyers come to the stores for their pickups as the codes arrive
        start = time.monotonic()
        with console.status(f"Sending {len(deliveries):,} channel deliveries (raw topics, API, webhooks)…"):
            sent = asyncio.run(deliver(settings, topics, deliveries, creds, workers))
        phases = {"send": time.monotonic() - start}
        inputs.add_orders(d.intent for i, d in enumerate(deliveries) if i in sent.taken and d.intent is not None)
        inputs.add_orders(d.intent for d in pull_only if d.intent is not None)
        inputs.bad_records = {d.body for d in deliveries if d.kind == "bad" and d.via == "kafka"}
        expected = monitor.expected = len(inputs.orders)
        stall = opts.stall_s or max(180.0, 3 * settings.session_timeout_s + 60)
        held = follow(console, monitor, expected, stall, "deciding orders", count_held=True)
        phases["decide"] = monitor.last_change - start
        drain = DrainClock(settings, topics, since=monitor.last_change)
        drain.start()  # how long each stage takes to catch up after the last decision
        operator_start = time.monotonic()
        with console.status("Resolving held orders through the API (release half, reject half)…"):
            resolved, actions = asyncio.run(resolve_holds(settings, creds, workers, expected=held))
        for key, action in actions:
            inputs.add_operator(key, OperatorActionKind(action))
        follow(console, monitor, expected, stall, "after review", count_held=False)
        elapsed = monitor.last_change - start
        phases["operator"] = monitor.last_change - operator_start
        with console.status("Waiting for the pipeline to go idle…"):
            monitor.stop()
            wait_idle(settings, engine_inputs(topics), pool)
        with console.status("Waiting for the last merge windows and waves…"):
            inputs.fulfilment_complete = wait_fulfilment(settings, topics, layouts, pool)
        picking = None
        if inputs.fulfilment_complete:
            with console.status(f"Pickers confirming every pick list ({PICK_SHORT_RATE:.0%} of stops short)…"):
                settled = [True]

                def settle() -> None:
                    wait_idle(settings, engine_inputs(topics), pool)
                    settled[0] = wait_fulfilment(settings, topics, layouts, pool)

                picking = confirm_all(settings, topics, opts.seed, PICK_SHORT_RATE, settle, pool.supervise)
                inputs.picks.extend(picking.sent)
                inputs.fulfilment_complete = settled[0]
                wait_idle(settings, engine_inputs(topics), pool)  # the last short-pick commands applied
        drained = drain.stop()
        after = aftersales_day(console, settings, topics, creds, workers, opts.seed, pool, desk, inputs)
        phases["aftersales"] = after.seconds
        with console.status("Waiting for the last stock updates to reach the platforms…"):
            wait_stock_sync(settings, topics, pool)
            inputs.stock_sync_complete = True
        with console.status("Customer service looks orders and stock up through the query API…"):
            lookups = look_up(settings, topics, creds, workers, inputs, opts.seed, pool)
        stuck = stuck_sagas(pool)
        pool.stop()
        with console.status("Checking invariants from the result topics against what was sent…"):
            outputs = collect(settings.bootstrap, topics)
            verdict = check(inputs, outputs, settings.partitions)
        summary = build_summary(
            settings, opts, workers, verdict, outputs, inputs, elapsed, startup_s, run_id, sent, resolved, pool, chaos
        )
        summary["stuck_sagas"] = stuck
        summary["picking"] = picking_summary(picking, verdict.counts)
        summary["shipping"] = shipping_summary(outputs, verdict.counts)
        summary["aftersales"] = aftersales_summary(after, verdict.counts, outputs)
        summary["books"] = books_summary(outputs, verdict.counts)
        summary["books"]["postgres"] = postgres_books(settings, outputs)
        summary["stock_sync"] = stock_sync_summary(outputs, platforms)
        summary["pulling"] = pulling_summary(settings, topics, pull_only, outputs)
        summary["lookups"] = lookups
        summary["ok"] = summary["ok"] and lookups["wrong"] == 0 and lookups["not_found"] == 0
        summary["ok"] = summary["ok"] and summary["books"]["postgres"].get("agrees", False)
        # where the day's time went: sending it, deciding every order not held, the operator pass on the holds
        summary["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
        # seconds from the last decision until each stage and gateway first had nothing left to read (None: not
        # within the day's fulfilment and picking)
        summary["drained_after_s"] = drained
        print_report(summary, console)
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        return 0 if summary["ok"] else 1
    except (LocalServerError, WorkerError, RunFailed, KafkaUnavailable, DeliveryFailed, PickingStalled) as exc:
        console.print(f"[red]oms run failed:[/] {exc}")
        console.print(f"logs: {log_file.parent}/{settings.app_id}-*.log")
        detail: dict[str, Any] = {"error": str(exc)[:2000], "invariants": "not checked"}
        if sent is not None:
            detail["deliveries"] = {
                "routes": dict(sent.by_route),
                "http_status": {str(k): v for k, v in sent.http_status.items()},
                "refused_at_api": dict(sent.http_refused),
            }
        detail["restarts"] = [r.index for r in pool.restarts]
        print(json.dumps(detail), flush=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        if monitor.is_alive():
            monitor.stop()
        if desk.is_alive():
            desk.stop()
        pool.stop(timeout_s=20)
        if not opts.keep:
            cleanup(settings)
            shutil.rmtree(run_dir, ignore_errors=True)
        servers.stop(only_started=True)
        if platforms is not None:
            platforms.stop()


def _log_to_file(path: Path) -> Path:
    """The job's own log lines (Kafka client warnings included) go to a file next to the workers' logs, not
    onto the terminal under the progress bar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] %(name)s: %(message)s"))
    root = logging.getLogger("oms")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    return path


def wait_fulfilment(settings: Settings, topics: Topics, layouts: list[Layout], pool: WorkerPool) -> bool:
    """Until no shipment or wave has been written for longer than the longest merge window plus wave timer
    (record time runs on the fulfilment ticks). False if that did not happen within a few windows: the
    invariants then check only that nothing was shipped twice, not that everything was shipped."""
    quiet_s = max((layout.merge_window_s + layout.waves.release_after_s for layout in layouts), default=0)
    quiet_s += 3 * settings.fulfilment_tick_s + QUIET_S
    return wait_quiet(settings, [topics.shipments, topics.waves], quiet_s, 4 * quiet_s + 120, pool.supervise)


#: How long the engine must have nothing left to read before it counts as idle (s).
QUIET_S = 1.0
#: The main job's simulated carrier refuses every n-th call unless OMS_CARRIER_FAIL_EVERY says otherwise.
CARRIER_FAIL_EVERY = 97
#: The main job's simulated platforms refuse every n-th write-back unless OMS_WRITEBACK_FAIL_EVERY says otherwise.
WRITEBACK_FAIL_EVERY = 31
#: The main job's pickups expire this soon (seconds) unless OMS_PICKUP_HOLD_S says otherwise.
PICKUP_HOLD_S = 60
#: the simulated platforms refuse every n-th stock update (the stage asks again: the report shows the refusals)
STOCK_SYNC_FAIL_EVERY = 53


def engine_inputs(topics: Topics) -> list[str]:
    """Every topic an engine stage consumes (for the idle check; the fulfilment inbox has ticks every second,
    never idle; the aftersales inbox's are seconds apart, so it has quiet moments)."""
    return [
        *topics.raw.values(),
        topics.order_inbox,
        topics.inventory_commands,
        topics.shipping_inbox,
        topics.tracking_inbox,
        topics.aftersales_inbox,
        topics.ledger_inbox,
        topics.stock_sync_inbox,  # ticked only while an update waits
    ]


class DayMonitor(threading.Thread):
    """Follows the decisions from the start of the day (a background consumer), restarts workers that die and
    injects the chaos that is due, whatever the main thread is doing (sending, or showing progress)."""

    OPEN = (Outcome.HELD, Outcome.AWAITING_PAYMENT, Outcome.SHIPPED)

    def __init__(self, console: Console, settings: Settings, topics: Topics, pool: WorkerPool, chaos: ChaosLog) -> None:
        super().__init__(name="oms-day-monitor", daemon=True)
        self.console, self.settings, self.topics, self.pool, self.chaos = console, settings, topics, pool, chaos
        self.decided: dict[str, DecisionStatus] = {}
        self.waiting: dict[str, Outcome] = {}
        self.expected = 0  # set once the day is sent; until then chaos waits
        self.last_change = time.monotonic()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def counts(self) -> tuple[int, int, int, int]:
        """(decided, accepted, held, other open)"""
        with self._lock:
            accepted = sum(1 for s in self.decided.values() if s is DecisionStatus.ACCEPTED)
            held = sum(1 for o in self.waiting.values() if o is Outcome.HELD)
            return len(self.decided), accepted, held, len(self.waiting) - held

    def run(self) -> None:
        try:
            tail(
                self.settings.bootstrap,
                [self.topics.order_decisions, self.topics.review_decisions],
                self._on,
                self._tick,
            )
        except BaseException as exc:  # reported to the main thread
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def _on(self, msg: Message) -> None:
        try:
            if msg.topic == self.topics.order_decisions:
                d = wire.decode(msg.value, OrderDecision)
                with self._lock:
                    if d.key not in self.decided:
                        self.decided[d.key] = d.status
                        self.last_change = time.monotonic()
                    self.waiting.pop(d.key, None)
                return
            r = wire.decode(msg.value, ReviewDecision)
        except wire.WireError:
            return
        with self._lock:
            if r.key in self.decided:
                return
            if r.outcome in self.OPEN:
                if self.waiting.get(r.key) != r.outcome:
                    self.last_change = time.monotonic()
                self.waiting[r.key] = r.outcome
            else:
                self.waiting.pop(r.key, None)

    def _tick(self) -> bool:
        for restart in self.pool.supervise():
            self.console.print(f"[yellow]worker {restart.index} exited (code {restart.exit_code}); started again[/]")
        if self.expected:
            decided, _, held, other = self.counts()
            _inject(self.console, self.pool, self.chaos, 100 * (decided + held + other) / self.expected)
        return self._stop_event.is_set()


def follow(console: Console, monitor: DayMonitor, expected: int, stall_s: float, label: str, count_held: bool) -> int:
    """Progress bar until ``expected`` orders are decided or in an open state (awaiting payment; with
    ``count_held`` also held for an operator). Returns how many are held."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("orders", total=expected, detail="")
        while True:
            if monitor.error is not None:
                raise RunFailed(f"following the decisions failed: {monitor.error}")
            decided, accepted, held, other = monitor.counts()
            done = decided + other + (held if count_held else 0)
            restarts = len(monitor.pool.restarts)
            progress.update(
                task,
                completed=done,
                detail=f"accepted {accepted:,} · other {decided - accepted:,} · held {held:,}"
                + (f" · restarts {restarts}" if restarts else ""),
            )
            if done >= expected:
                return held
            quiet = time.monotonic() - max(monitor.last_change, started)
            if quiet > stall_s:
                raise RunFailed(f"no progress for {stall_s:.0f}s ({done}/{expected} resolved)")
            time.sleep(0.2)


def _inject(console: Console, pool: WorkerPool, chaos: ChaosLog, percent: float) -> None:
    now = time.monotonic()
    for index, until in list(chaos.paused.items()):
        if now >= until:
            pool.resume(index)
            chaos.paused.pop(index)
            chaos.events.append({"action": "resume", "worker": index, "after_s": round(now - pool.started_at, 1)})
            console.print(f"[yellow]chaos: worker {index} resumed (SIGCONT)[/]")
    while chaos.pending and percent >= chaos.pending[0].at:
        fault = chaos.pending.pop(0)
        index = chaos.victim % pool.count
        chaos.victim += 1
        pid = pool.pid(index)
        if fault.action == "kill":
            pool.kill(index)
            console.print(f"[yellow]chaos: kill -9 of worker {index} (pid {pid}) at {percent:.0f}%[/]")
        else:
            pool.pause(index)
            chaos.paused[index] = now + fault.seconds
            console.print(f"[yellow]chaos: worker {index} (pid {pid}) paused (SIGSTOP) for {fault.seconds:.0f}s[/]")
        chaos.events.append(
            {
                "action": fault.action,
                "worker": index,
                "pid": pid,
                "at_percent": round(percent, 1),
                "seconds": fault.seconds,
            }
        )


def wait_idle(settings: Settings, inputs: list[str], pool: WorkerPool | None = None, timeout_s: float = 300.0) -> None:
    """Until the engine has processed every committed record of ``inputs`` (late releases included)."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    left: dict[str, int] = {}
    books_checked = 0.0
    while time.monotonic() < deadline:
        if pool is not None:
            pool.supervise()
        left = unprocessed(settings.bootstrap, settings.app_id, inputs)
        for inbox, gateway, requests in gateways(Topics(settings.topic_prefix)):
            if inbox in inputs:  # then what its stage asked of the gateway is answered too
                left |= unprocessed(settings.bootstrap, f"{settings.app_id}-{gateway}", [requests])
        vouchers = Topics(settings.topic_prefix).vouchers + "/"
        if any(k.startswith(vouchers) for k in left) and time.monotonic() - books_checked >= 5.0:
            books_checked = time.monotonic()
            check_voucher_sink(settings)  # a sink stopped at a conflict never drains: fail now, saying why
        if not left:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= QUIET_S:
                return
        else:
            quiet_since = None
        time.sleep(0.5)
    raise RunFailed(f"engine still has unprocessed input after {timeout_s:.0f}s: {left}")


class DrainClock(threading.Thread):
    """After the last decision: how long each stage (and each gateway) took to have nothing left to read.

    Every second it compares each consumer group's committed offsets (stages commit theirs in every transaction)
    with the last stable offsets of its input topics; a part counts as drained the first time what lies between
    is no more than the commit markers a transactional writer leaves (a couple per partition)."""

    def __init__(self, settings: Settings, topics: Topics, since: float) -> None:
        super().__init__(name="oms-drain-clock", daemon=True)
        self.settings, self.since = settings, since
        app = settings.app_id
        self.parts: dict[str, tuple[str, list[str]]] = {
            "ingest": (app, list(topics.raw.values())),
            "orders": (app, [topics.order_inbox]),
            "inventory": (app, [topics.inventory_commands]),
            "fulfilment": (app, [topics.fulfilment_inbox]),
            "shipping": (app, [topics.shipping_inbox]),
            "tracking": (app, [topics.tracking_inbox]),
            "aftersales": (app, [topics.aftersales_inbox]),
            "ledger": (app, [topics.ledger_inbox]),
            "stocksync": (app, [topics.stock_sync_inbox]),
            **{name: (f"{app}-{name}", [requests]) for _, name, requests in gateways(topics)},
        }
        self.drained_s: dict[str, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        from engine.kafka.admin import admin

        client = admin(self.settings.bootstrap, quiet=True)
        slack = 2 * self.settings.partitions
        while len(self.drained_s) < len(self.parts) and not self._stop_event.is_set():
            for name, (group, topics) in self.parts.items():
                if name in self.drained_s:
                    continue
                tps = [TopicPartition(t, p) for t in topics for p in range(self.settings.partitions)]
                try:
                    fut = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group]
                    committed = {(tp.topic, tp.partition): max(0, tp.offset) for tp in fut.result().topic_partitions}
                    ends = client.list_offsets(
                        {tp: OffsetSpec.latest() for tp in tps}, isolation_level=IsolationLevel.READ_COMMITTED
                    )
                    lag = sum(
                        max(0, f.result().offset - committed.get((tp.topic, tp.partition), 0)) for tp, f in ends.items()
                    )
                except Exception:  # a broker hiccup: look again next second
                    continue
                if lag <= slack:
                    self.drained_s[name] = round(max(0.0, time.monotonic() - self.since), 1)
            self._stop_event.wait(1.0)

    def stop(self) -> dict[str, float | None]:
        self._stop_event.set()
        self.join(timeout=10)
        return {name: self.drained_s.get(name) for name in self.parts}


def gateways(topics: Topics) -> list[tuple[str, str, str]]:
    """(the inbox its answers go to, the gateway's name, the topic of its requests) of each gateway."""
    return [
        (topics.shipping_inbox, "carrier-gateway", topics.waybill_requests),
        (topics.aftersales_inbox, "channel-gateway", topics.writebacks),
        (topics.ledger_inbox, "voucher-sink", topics.vouchers),  # the books are in PostgreSQL too
        (topics.stock_sync_inbox, "stock-sync-gateway", topics.stock_sync_requests),
    ]


def wait_stock_sync(settings: Settings, topics: Topics, pool: WorkerPool, timeout_s: float = 180.0) -> None:
    """Until stock sync has settled: the engine idle (the stock-sync inbox and its gateway included) and no worker
    with a round of updates waiting for its time (a coalesced round, or one backing off after a refusal)."""
    deadline = time.monotonic() + timeout_s
    while True:
        wait_idle(settings, engine_inputs(topics), pool, max(1.0, deadline - time.monotonic()))
        time.sleep(1.5)  # the gauge is sampled every second
        waiting = sum(
            int((pool.stats(i) or {}).get("stages", {}).get("stocksync", {}).get("gauges", {}).get("rounds_waiting", 1))
            for i in range(pool.count)
        )
        if waiting == 0:
            wait_idle(settings, engine_inputs(topics), pool, max(1.0, deadline - time.monotonic()))
            return
        if time.monotonic() > deadline:
            raise RunFailed(f"stock sync still has rounds waiting after {timeout_s:.0f}s ({waiting} partition(s))")
        time.sleep(1.0)


def stuck_sagas(pool: WorkerPool) -> int:
    total = 0
    for i in range(pool.count):
        stats = pool.stats(i) or {}
        total += int(stats.get("stages", {}).get("orders", {}).get("gauges", {}).get("stuck_sagas", 0))
    return total


def latency_ms(decisions: list[OrderDecision]) -> dict[str, float]:
    """Order in (``ingested_at``: when the edge or the raw topic took it) → decision, over first copies."""
    first: dict[str, int] = {}
    for d in decisions:
        first.setdefault(d.key, d.decided_at - d.ingested_at)
    values = sorted(first.values())
    if not values:
        return {}

    def pct(p: float) -> float:
        return float(values[min(len(values) - 1, int(p * len(values)))])

    return {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": float(values[-1])}


def build_summary(
    settings: Settings,
    opts: RunOptions,
    workers: int,
    verdict: Any,
    outputs: Any,
    inputs: Inputs,
    elapsed: float,
    startup_s: float,
    run_id: str,
    sent: DeliveryStats,
    resolved: Any,
    pool: WorkerPool,
    chaos: ChaosLog,
) -> dict[str, Any]:
    c = verdict.counts
    channels = Counter(s.latest().channel.value for s in inputs.orders.values())
    rejected_by_rule: Counter = Counter()
    held_reasons: Counter = Counter()
    held_orders: dict[str, set[str]] = {}
    for r in outputs.reviews:
        if r.outcome is Outcome.REJECTED:
            for f in r.fired:
                if f.action is Action.REJECT:  # the rules that rejected it, not every rule that fired
                    rejected_by_rule[f.rule_id] += 1
        elif r.outcome is Outcome.HELD:
            held_orders.setdefault(r.key, set()).update(r.reasons)
    for reasons in held_orders.values():
        held_reasons.update(reasons)
    ok = verdict.ok and verdict.oversold_units == 0
    return {
        "ok": ok,
        "orders": c.get("orders", 0),
        "accepted": c.get("accepted", 0),
        "rejected": c.get("rejected", 0),
        "cancelled": c.get("cancelled", 0),
        "open": c.get("open", {}),
        "engine_failures": c.get("engine_failures", 0),
        "lines": c.get("lines", 0),
        "oversold_units": verdict.oversold_units,
        "invariants": verdict.summary(),
        "elapsed_s": round(elapsed, 2),
        "orders_per_s": round(c.get("orders", 0) / max(elapsed, 1e-6), 1),
        "lines_per_s": round(c.get("lines", 0) / max(elapsed, 1e-6), 1),
        "latency_ms": latency_ms(outputs.decisions),
        "orders_per_channel": dict(sorted(channels.items())),
        "deliveries": dict(sent.by_route),
        "held": len(held_orders),
        "held_by_reason": dict(held_reasons),
        "holds_resolved": dict(resolved),
        "rejected_by_reason": c.get("rejected_by_reason", {}),
        "rejected_by_rule": dict(rejected_by_rule),
        "dead_letters": sum(c.get("dead_letters", {}).values()),
        "dead_letters_by_reason": c.get("dead_letters", {}),
        "refused_at_api": dict(sent.http_refused),
        "duplicates_at_api": sent.duplicates_at_edge,
        "stock_events": c.get("stock_events", 0),
        "fulfilment": fulfilment_summary(outputs, inputs.fulfilment_complete),
        "restarts": [{"worker": r.index, "exit_code": r.exit_code, "after_s": r.after_s} for r in pool.restarts],
        "chaos": chaos.events,
        "workers": workers,
        "partitions": settings.partitions,
        "startup_s": round(startup_s, 1),
        "seed": opts.seed,
        "flash_sale": opts.flash_sale,
        "run_id": run_id,
    }


def stock_sync_summary(outputs: Any, platforms: PlatformsProcess | None) -> dict[str, Any]:
    """What the shops were told: updates sent (by the stage), answers (accepted, refused), the SKUs and shops
    reached, and what the platforms counted (calls, repeats of an idempotency key)."""
    answers = Counter(r.status for r in outputs.stock_sync_results)
    summary: dict[str, Any] = {
        "updates": len(outputs.stock_updates),
        "retries": sum(1 for u in outputs.stock_updates if u.attempt > 1),
        "accepted": answers.get("accepted", 0),
        "refused": answers.get("refused", 0),
        "superseded": len(outputs.stock_updates) - len(outputs.stock_sync_results),  # a newer one in the batch
        "shops": len({(u.tenant, u.shop_id) for u in outputs.stock_updates}),
        "skus": len({(u.tenant, u.sku) for u in outputs.stock_updates}),
    }
    if platforms is not None:
        state = platforms.state()
        summary["platform_calls"] = state["calls"]
        summary["platform_repeats"] = state["repeated"]
    return summary


LOOKUPS = 300  # orders customer service looks up at the end of the day (and stock for 50 SKUs per tenant)


def look_up(
    settings: Settings, topics: Topics, creds: Credentials, workers: int, inputs: Inputs, seed: int, pool: WorkerPool
) -> dict[str, Any]:
    """Orders and stock looked up through the query API once the views caught up, each answer held against the
    topics: an order's view has the lines that were sent and a status that agrees with its decision; a SKU's ATP
    is on hand − reserved as its last stock event says. Returns counts and latencies (wrong and not found: 0)."""
    from agents.views.projection import Views
    from engine.readmodels.projector import projector_group
    from schemas.inventory import StockEvent

    deadline = time.monotonic() + 120
    while unprocessed(settings.bootstrap, projector_group(settings), Views(topics).topics()):
        pool.supervise()
        if time.monotonic() > deadline:
            raise RunFailed("the views projector did not catch up within 120 s")
        time.sleep(0.5)
    decisions = (wire.decode(m.value, OrderDecision) for m in read_topics(settings.bootstrap, [topics.order_decisions]))
    decided = {d.order_id: d.status.value for d in decisions}
    last: dict[tuple[str, str], dict[str, StockEvent]] = {}
    for m in read_topics(settings.bootstrap, [topics.stock_events]):
        e = wire.decode(m.value, StockEvent)
        last.setdefault((e.tenant, e.sku), {})[e.warehouse] = e
    rng = random.Random(seed)
    sent = sorted(inputs.orders.values(), key=lambda o: o.key)
    ms: list[float] = []
    wrong: list[str] = []
    not_found = 0
    for i, order in enumerate(rng.sample(sent, min(LOOKUPS, len(sent)))):
        o = order.latest()
        started = time.perf_counter()
        status, view = _get(
            settings.web_port + i % workers, f"/api/v1/{o.tenant}/orders/{o.order_id}", creds.tokens[o.tenant]
        )
        ms.append((time.perf_counter() - started) * 1000)
        if status == 404:
            not_found += 1
            continue
        lines = [(ln["sku"], ln["quantity"]) for ln in view.get("lines", [])]
        want = decided.get(o.order_id)
        agrees = (
            want is None or view.get("status") == want or (want == "accepted" and view.get("status") in ACCEPTED_AFTER)
        )
        if status != 200 or lines != [(ln.sku, ln.quantity) for ln in o.lines] or not agrees:
            wrong.append(f"{o.order_id}: {status} {view.get('status')} (decision {want})")
    skus = sorted(last)
    for i, (tenant, sku) in enumerate(rng.sample(skus, min(100, len(skus)))):
        started = time.perf_counter()
        status, view = _get(settings.web_port + i % workers, f"/api/v1/{tenant}/stock/{sku}", creds.tokens[tenant])
        ms.append((time.perf_counter() - started) * 1000)
        atp = sum(max(0, e.on_hand - e.reserved) for e in last[(tenant, sku)].values())
        if status != 200 or view.get("atp") != atp:
            wrong.append(f"{tenant}:{sku}: {status} atp {view.get('atp')} (stock events: {atp})")
    ms.sort()
    return {
        "served": len(ms),
        "p50_ms": round(ms[len(ms) // 2], 2) if ms else None,
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2) if ms else None,
        "not_found": not_found,
        "wrong": len(wrong),
        "examples": wrong[:5],
    }


ACCEPTED_AFTER = ("accepted", "waved", "picked", "shipped", "delivered", "returned", "cancelled")


def _get(port: int, path: str, token: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, orjson.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _lookups_row(x: dict[str, Any]) -> str:
    return (
        f"{x['served']:,} answered (orders and stock) · p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms · "
        f"{x['wrong']} disagree with the topics, {x['not_found']} not found"
    )


def pulling_summary(settings: Settings, topics: Topics, pull_only: list[Delivery], outputs: Any) -> dict[str, Any]:
    """Orders pulled from the platforms' order lists (their checkpoints), and the pull-only orders decided."""
    latest: dict[str, PullCheckpoint] = {}
    for m in read_topics(settings.bootstrap, [topics.pull_checkpoints]):
        cp = wire.decode(m.value, PullCheckpoint)
        latest[cp.key] = cp
    keys = {d.intent.key for d in pull_only if d.intent is not None}
    return {
        "shops": len(latest),
        "windows": sum(c.windows for c in latest.values()),
        "pulled": sum(c.pulled for c in latest.values()),
        "pull_only": len(keys),
        "pull_only_decided": len({d.key for d in outputs.decisions if d.key in keys}),
    }


def _pulling_row(p: dict[str, Any]) -> str:
    return (
        f"{p['pulled']:,} orders pulled from {p['shops']} shops' order lists in {p['windows']:,} windows · "
        f"{p['pull_only_decided']:,} of {p['pull_only']:,} orders whose push never came decided"
    )


def _stock_sync_row(s: dict[str, Any]) -> str:
    return (
        f"{s['updates']:,} updates to {s['shops']} shops for {s['skus']:,} SKUs: {s['accepted']:,} accepted, "
        f"{s['refused']:,} refused and sent again ({s['retries']:,} retries); "
        f"{s['superseded']:,} superseded before they were sent"
    )


def picking_summary(picking: PickingDay | None, counts: dict[str, Any]) -> dict[str, Any]:
    """What the pickers reported and how the engine resolved each short line (from the verdict's counts)."""
    if picking is None:
        return {"pick_lists_confirmed": 0}
    return {
        "pick_lists_confirmed": len(picking.sent),
        "rounds": picking.rounds,
        "short_lines": picking.short_lines,
        "short_outcomes": counts.get("short_outcomes", {}),
        "shipments_picked": counts.get("shipments_picked", 0),
    }


def shipping_summary(outputs: Any, counts: dict[str, Any]) -> dict[str, Any]:
    """Shipments shipped and failed, parcels, waybills per carrier and what the carrier answers cost (from the
    result topics and the verdict's counts)."""
    errors = Counter((a.error or "").split(":")[0] for a in outputs.waybill_answers if not a.waybill)
    return {
        "shipped": counts.get("shipments_shipped", 0),
        "failed": counts.get("shipments_failed", 0),
        "parcels": counts.get("parcels", 0),
        "waybills_by_carrier": counts.get("waybills_by_carrier", {}),
        "waybill_answers": len(outputs.waybill_answers),
        "carrier_errors": dict(errors),
        "goods_issued": len(outputs.goods_issued),
    }


def fulfilment_summary(outputs: Any, complete: bool) -> dict[str, Any]:
    """Shipments, merges, splits, waves and the pick paths' walking, from the result topics."""
    parcels: Counter = Counter()
    for shipment in outputs.shipments:
        for order_id in shipment.order_ids:
            parcels[(shipment.tenant, order_id)] += 1
    lists = outputs.pick_lists
    walked = sum(p.length_cm for p in lists)
    s_shape = sum(p.s_shape_cm for p in lists)
    return {
        "settled": complete,
        "shipments": len(outputs.shipments),
        "orders_shipped": len(parcels),
        "orders_split": sum(1 for n in parcels.values() if n > 1),
        "orders_merged": sum(len(s.order_ids) for s in outputs.shipments if len(s.order_ids) > 1),
        "parcels_per_order": round(sum(parcels.values()) / max(len(parcels), 1), 3),
        "waves": len(outputs.waves),
        "pick_lists": len(lists),
        "pick_lines": sum(len(p.stops) for p in lists),
        "path_m_total": round(walked / 100, 1),
        "path_m_per_list": round(walked / 100 / max(len(lists), 1), 1),
        "path_vs_s_shape": round(walked / s_shape, 3) if s_shape else None,
        "withdrawals": dict(Counter(w.outcome for w in outputs.withdrawals)),
    }


def print_report(s: dict[str, Any], console: Console) -> None:
    out = Console(file=sys.stdout, highlight=False)
    table = Table(title=f"oms run {s['run_id']}", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    lat = s["latency_ms"]
    restarts = ", ".join(f"worker {r['worker']} (exit {r['exit_code']}) at {r['after_s']} s" for r in s["restarts"])
    chaos = ", ".join(f"{e['action']} worker {e['worker']}" for e in s["chaos"])
    rows = [
        ("orders", f"{s['orders']:,} · {s['lines']:,} lines · " + _kv(s["orders_per_channel"])),
        ("deliveries", _kv(s["deliveries"]) + f" · duplicates answered at the API {s['duplicates_at_api']}"),
        ("accepted", f"{s['accepted']:,}"),
        ("rejected", f"{s['rejected']:,} · " + (_kv(s["rejected_by_reason"]) or "none")),
        ("cancelled", f"{s['cancelled']:,} (by the channel before a decision)"),
        ("open at the end", _kv(s["open"]) or "none"),
        ("held", f"{s['held']:,} · " + _kv(s["held_by_reason"]) + " · resolved " + _kv(s["holds_resolved"])),
        ("rejected by rule", _kv(s["rejected_by_rule"]) or "none"),
        ("engine failures", f"{s['engine_failures']} (orders the engine refused by its own fault)"),
        ("dead letters", f"{s['dead_letters']} · " + _kv(s["dead_letters_by_reason"])),
        ("refused at the API", _kv(s["refused_at_api"]) or "none"),
        ("throughput", f"{s['orders_per_s']:,} orders/s · {s['lines_per_s']:,} lines/s over {s['elapsed_s']} s"),
        (
            "latency",
            f"p50 {lat.get('p50', 0):.0f} ms · p95 {lat.get('p95', 0):.0f} ms · p99 {lat.get('p99', 0):.0f} ms "
            "(order in → decision; the whole day is sent at once, so this is mostly queueing)",
        ),
        ("workers", f"{s['workers']} processes · {s['partitions']} partitions · startup {s['startup_s']} s"),
        (
            "drained after",
            " · ".join(f"{k} {'–' if v is None else f'{v:.0f} s'}" for k, v in s.get("drained_after_s", {}).items())
            + " (after the last decision)",
        ),
        ("restarts", restarts or "none"),
        ("chaos", chaos or "none"),
        ("stuck sagas", f"{s.get('stuck_sagas', 0)}"),
        ("stock events", f"{s['stock_events']:,}"),
        ("fulfilment", _fulfilment_row(s["fulfilment"])),
        ("picking", _picking_row(s.get("picking", {}))),
        ("shipping", _shipping_row(s.get("shipping", {}))),
        ("delivery", _delivery_row(s.get("aftersales", {}))),
        ("write-back", _writeback_row(s.get("aftersales", {}))),
        ("returns", _returns_row(s.get("aftersales", {}))),
        ("stores", _stores_row(s.get("aftersales", {}))),
        ("books", _books_row(s.get("books", {}))),
        ("trial balance", _trial_balance_row(s.get("books", {}))),
        ("stock sync", _stock_sync_row(s["stock_sync"]) if s.get("stock_sync") else "not run"),
        ("pulling", _pulling_row(s["pulling"]) if s.get("pulling") else "not run"),
        ("lookups", _lookups_row(s["lookups"]) if s.get("lookups") else "not run"),
        ("oversold units", f"{s['oversold_units']}"),
        ("invariants", "[green]ok[/]" if s["invariants"] == "ok" else "[red]VIOLATED[/]"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    if s["invariants"] != "ok":
        for line in s["invariants"]:
            out.print(f"  [red]✗[/] {line}")


def _fulfilment_row(f: dict[str, Any]) -> str:
    return (
        f"{f['shipments']:,} shipments · {f['orders_split']:,} orders split · {f['orders_merged']:,} orders merged · "
        f"{f['parcels_per_order']} parcels/order · {f['waves']:,} waves · {f['pick_lists']:,} pick lists of "
        f"{f['pick_lines']:,} lines · walked {f['path_m_total']:,} m ({f['path_m_per_list']} m per list, "
        f"{f['path_vs_s_shape']} of S-shape)" + ("" if f["settled"] else " · [yellow]not settled[/]")
    )


def _picking_row(p: dict[str, Any]) -> str:
    if not p.get("pick_lists_confirmed"):
        return "not run (fulfilment did not settle)"
    outcomes = p.get("short_outcomes", {})
    return (
        f"{p['pick_lists_confirmed']:,} pick lists confirmed in {p['rounds']} round(s) · "
        f"{p.get('shipments_picked', 0):,} shipments picked · {p['short_lines']:,} lines "
        f"short: {outcomes.get('reallocated', 0):,} re-allocated to another warehouse, {outcomes.get('partial', 0):,} "
        "shipped partial"
    )


def _shipping_row(p: dict[str, Any]) -> str:
    if not p.get("shipped") and not p.get("failed"):
        return "nothing shipped"
    return (
        f"{p['shipped']:,} shipments shipped in {p['parcels']:,} parcels ("
        + _kv(p.get("waybills_by_carrier", {}))
        + f") · {p['failed']:,} failed · {p['waybill_answers']:,} carrier answers, errors: "
        + (_kv(p.get("carrier_errors", {})) or "none")
        + f" · {p['goods_issued']:,} goods-issued records"
    )


@dataclass
class AftersalesDay:
    seconds: float = 0.0
    carriers: CarrierDay | None = None
    returns: ReturnsDay | None = None
    claimed: int = 0
    announced: int = 0
    settled: bool = False


def aftersales_day(
    console: Console,
    settings: Settings,
    topics: Topics,
    creds: Credentials,
    workers: int,
    seed: int,
    pool: WorkerPool,
    desk: PickupDesk,
    inputs: Inputs,
) -> AftersalesDay:
    """Carriers scan every parcel, some buyers send goods back, unclaimed pickups run out; until it is quiet."""
    day = AftersalesDay()
    start = time.monotonic()
    with console.status("Carriers scanning every parcel (topic and webhook, shuffled, some twice)…"):
        parcels = shipped_parcels(settings, topics)
        day.carriers = carriers_scan(settings, topics, parcels, creds.tokens, workers, seed)
        inputs.carrier_events.extend(day.carriers.events)
    with console.status("Buyers sending goods back (API: request, then the warehouse's receipt)…"):
        day.returns = send_returns(settings, parcels, creds.tokens, workers, seed)
        inputs.return_receipts.extend(day.returns.received)
    with console.status("Waiting for deliveries, write-backs, returns and pickup deadlines to settle…"):
        wait_idle(settings, engine_inputs(topics), pool)
        # every pickup announced so far is claimed or past its deadline (record time moves with the ticks)
        deadline = desk.last_announced + settings.pickup_hold_s + 3 * settings.aftersales_tick_s
        time.sleep(max(0.0, deadline - time.monotonic()))
        desk.stop()
        quiet = 3 * settings.aftersales_tick_s + QUIET_S + 5
        day.settled = wait_quiet(settings, [topics.order_progress], quiet, 300, pool.supervise)
        wait_idle(settings, engine_inputs(topics), pool)
    inputs.pickup_claims |= desk.claimed
    inputs.pickups_due = day.settled
    inputs.aftersales_settled = day.settled
    day.claimed, day.announced = len(desk.claimed), len(desk.announced)
    day.seconds = time.monotonic() - start
    return day


def aftersales_summary(day: AftersalesDay, counts: dict[str, Any], outputs: Any) -> dict[str, Any]:
    carriers = day.carriers or CarrierDay()
    returns = day.returns or ReturnsDay()
    return {
        "settled": day.settled,
        "waybills_tracked": counts.get("waybills_tracked", 0),
        "carrier_events": len(carriers.events),
        "events_by_webhook": carriers.by_webhook,
        "orders_delivered": counts.get("orders_delivered", 0),
        "exceptions": counts.get("tracking_exceptions", 0),
        "returned_to_sender": sum(1 for p in outputs.order_progress if p.event.value == "returned_to_sender"),
        "writebacks": counts.get("writebacks", 0),
        "writebacks_acknowledged": counts.get("writebacks_acknowledged", 0),
        "writebacks_failed": counts.get("writebacks_failed", 0),
        "writeback_attempts": counts.get("writeback_attempts", 0),
        "notifications": dict(Counter(n.template for n in outputs.notifications)),
        "returns_requested": returns.requested,
        "returns_settled": counts.get("returns_settled", 0),
        "units_returned": counts.get("units_returned", 0),
        "units_quarantined": counts.get("units_quarantined", 0),
        "refund_fen": sum(r.refund_fen for r in outputs.returns_settled),
        "pickups": counts.get("pickups", 0),
        "pickups_announced": day.announced,
        "pickups_claimed": counts.get("pickups_claimed", 0),
        "pickups_expired": counts.get("pickups_expired", 0),
        "counter_sales": counts.get("counter_sales", 0),
        "seconds": round(day.seconds, 1),
    }


def _delivery_row(a: dict[str, Any]) -> str:
    if not a:
        return "not run"
    return (
        f"{a['waybills_tracked']:,} waybills tracked from {a['carrier_events']:,} carrier events "
        f"({a['events_by_webhook']:,} by webhook) · {a['orders_delivered']:,} orders delivered · "
        f"{a['exceptions']:,} exceptions · {a['returned_to_sender']:,} returned to sender"
        + ("" if a["settled"] else " · [yellow]not settled[/]")
    )


def _writeback_row(a: dict[str, Any]) -> str:
    if not a:
        return "not run"
    return (
        f"{a['writebacks']:,} to the platforms: {a['writebacks_acknowledged']:,} acknowledged, "
        f"{a['writebacks_failed']:,} failed, in {a['writeback_attempts']:,} attempts · notifications "
        + (_kv(a["notifications"]) or "none")
    )


def _returns_row(a: dict[str, Any]) -> str:
    if not a:
        return "not run"
    return (
        f"{a['returns_requested']:,} asked back, {a['returns_settled']:,} received: {a['units_returned']:,} units, "
        f"{a['units_quarantined']:,} of them damaged (quarantine) · refunds ¥{a['refund_fen'] / 100:,.2f}"
    )


def _stores_row(a: dict[str, Any]) -> str:
    if not a:
        return "not run"
    return (
        f"{a['pickups']:,} pickup orders: {a['pickups_claimed']:,} claimed with their code, "
        f"{a['pickups_expired']:,} expired (stock released) · {a['counter_sales']:,} counter sales (POS)"
    )


def books_summary(outputs: Any, counts: dict[str, Any]) -> dict[str, Any]:
    """Revenue, cost and margin of the day from the vouchers on the topic (standard chart), and the trial balance."""
    vouchers = {v.voucher_id: v for v in outputs.vouchers}
    books = TrialBalance(tenant="all")
    for voucher in vouchers.values():
        post(books, voucher)

    def net(code: str, credit: bool = False) -> int:
        amounts = books.accounts.get(code)
        debit_fen, credit_fen = (amounts.debit_fen, amounts.credit_fen) if amounts else (0, 0)
        return credit_fen - debit_fen if credit else debit_fen - credit_fen

    revenue, cost = net("6001", credit=True), net("6401")
    debit = sum(a.debit_fen for a in books.accounts.values())
    credit = sum(a.credit_fen for a in books.accounts.values())
    kinds: dict[str, int] = {}
    for voucher in vouchers.values():
        kinds[voucher.kind.value] = kinds.get(voucher.kind.value, 0) + 1
    return {
        "vouchers": len(vouchers),
        "by_kind": dict(sorted(kinds.items())),
        "revenue_fen": revenue,
        "cost_fen": cost,
        "gross_margin_fen": revenue - cost,
        "gross_margin_pct": round(100 * (revenue - cost) / revenue, 1) if revenue else 0.0,
        "freight_fen": net("6601.02"),
        "stock_losses_fen": net("6602"),
        "output_vat_fen": net("2221.02", credit=True),
        "receivable_fen": net("1122"),
        "inventory_books_fen": net("1405"),
        "inventory_warehouse_fen": counts.get("inventory_value_fen", 0),
        "debit_fen": debit,
        "credit_fen": credit,
        "balanced": debit == credit,
    }


def prepare_books(settings: Settings, console: Console) -> None:
    """The run books into a clean ledger: its namespace in PostgreSQL (the run's topic prefix; another run, the
    same seed's voucher ids, has its own) emptied, the tables made or brought up to date before the sinks start."""
    from agents.ledger.sink import clear_books

    try:
        clear_books(settings.postgres_url, settings.topic_prefix)
    except Exception as exc:  # the sinks retry until PostgreSQL answers; the books check at the end says if never
        console.print(f"[yellow]PostgreSQL not reached for the books yet[/] ({type(exc).__name__}: {exc})"[:300])


def check_voucher_sink(settings: Settings) -> None:
    """RunFailed if a voucher sink of this run stopped at a conflict (a voucher id that arrived with other contents
    than booked): the books would miss every voucher after it. PostgreSQL not answering is not a conflict."""
    from agents.ledger.sink import conflicts

    try:
        found = conflicts(settings.postgres_url, settings.topic_prefix, connect_timeout=2)
    except Exception:  # the sinks retry; the books check at the end reports PostgreSQL not read
        return
    if found:
        c = found[0]
        raise RunFailed(
            f"the voucher sink stopped on a conflict: voucher {c['voucher_id']} arrived at {c['topic']}/"
            f"{c['partition']}@{c['offset']} with other contents than booked from {c['booked_from']} ("
            + "; ".join(c["differences"].splitlines()[:5])
            + f"); {len(found)} conflict(s) in ledger_conflicts, namespace {settings.topic_prefix!r}"
        )


def postgres_books(settings: Settings, outputs: Any) -> dict[str, Any]:
    """What the sink wrote to PostgreSQL for this run (its namespace: the run's topic prefix), against the vouchers
    topic: every voucher once with the topic's contents (digests), nothing else, balanced, and no conflict."""
    from agents.ledger.sink import book_digests, conflicts, read_books, voucher_digest

    topic = {v.voucher_id: v for v in outputs.vouchers}
    tenants = sorted({v.tenant for v in topic.values()})
    try:
        books = [read_books(settings.postgres_url, tenant, settings.topic_prefix) for tenant in tenants]
        digests = book_digests(settings.postgres_url, settings.topic_prefix)
        stopped_at = conflicts(settings.postgres_url, settings.topic_prefix)
    except Exception as exc:  # the report says why; the exit code says the books were not checked
        return {"error": f"{type(exc).__name__}: {exc}"[:300], "agrees": False}
    rows, vouchers = sum(b["rows"] for b in books), sum(b["vouchers"] for b in books)
    unbalanced = sum(len(b["unbalanced"]) for b in books)
    debit = sum(b["debit_fen"] for b in books)
    missing = sum(1 for i in topic if i not in digests)
    differ = sum(1 for i, v in topic.items() if i in digests and digests[i] != voucher_digest(v))
    extra = len(digests.keys() - topic.keys())
    agrees = (
        rows == vouchers == len(topic)
        and not (unbalanced or missing or differ or extra or stopped_at)
        and debit == sum(v.debit_fen for v in topic.values())
    )
    return {
        "namespace": settings.topic_prefix,
        "rows": rows,
        "vouchers": vouchers,
        "unbalanced": unbalanced,
        "missing": missing,
        "differ": differ,
        "extra": extra,
        "conflicts": [f"{c['voucher_id']} at {c['topic']}/{c['partition']}@{c['offset']}" for c in stopped_at[:5]],
        "debit_fen": debit,
        "agrees": agrees,
    }


def _yuan(fen: int) -> str:
    return f"¥{fen / 100:,.2f}"


def _books_row(b: dict[str, Any]) -> str:
    if not b:
        return "not collected"
    return (
        f"revenue {_yuan(b['revenue_fen'])} · cost {_yuan(b['cost_fen'])} · gross margin "
        f"{_yuan(b['gross_margin_fen'])} ({b['gross_margin_pct']} %) · freight {_yuan(b['freight_fen'])} · "
        f"stock losses {_yuan(b['stock_losses_fen'])} · output VAT {_yuan(b['output_vat_fen'])} · "
        f"{b['vouchers']:,} vouchers (" + _kv(b["by_kind"]) + ")"
    )


def _trial_balance_row(b: dict[str, Any]) -> str:
    if not b:
        return "not collected"
    mark = "[green]balanced[/]" if b["balanced"] else "[red]NOT BALANCED[/]"
    agree = "=" if b["inventory_books_fen"] == b["inventory_warehouse_fen"] else "[red]≠[/]"
    return (
        f"{mark}: Σ debit {_yuan(b['debit_fen'])} = Σ credit {_yuan(b['credit_fen'])} · inventory in the books "
        f"{_yuan(b['inventory_books_fen'])} {agree} in the warehouse {_yuan(b['inventory_warehouse_fen'])} · "
        f"receivable open {_yuan(b['receivable_fen'])}" + _postgres_part(b.get("postgres", {}))
    )


def _postgres_part(pg: dict[str, Any]) -> str:
    if "error" in pg:
        return f" · [red]PostgreSQL not read[/]: {pg['error']}"
    mark = "" if pg.get("agrees") else "[red]≠ the topic[/] "
    wrong = ", ".join(f"{pg[k]:,} {k}" for k in ("missing", "differ", "extra") if pg.get(k))
    stopped = f", [red]sink stopped on a conflict[/]: {', '.join(pg['conflicts'])}" if pg.get("conflicts") else ""
    return (
        f" · PostgreSQL {mark}{pg.get('rows', 0):,} rows, {pg.get('unbalanced', 0)} unbalanced"
        + (f", {wrong}" if wrong else "")
        + stopped
    )


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in d.items())


def cleanup(settings: Settings) -> None:
    try:
        delete_topics(settings.bootstrap, settings.topic_prefix + ".")
        delete_topics(settings.bootstrap, settings.app_id + "-")
    except Exception:  # cleanup must not hide the run's result
        pass
    try:  # the run's books are a copy of its vouchers topic: they go with it (--keep keeps both)
        from agents.ledger.sink import clear_books

        clear_books(settings.postgres_url, settings.topic_prefix)
    except Exception:
        pass
    shutil.rmtree(Path(settings.state_dir) / "workers" / settings.app_id, ignore_errors=True)
