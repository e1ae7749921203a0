"""The Faust app factory: one place that turns Settings into a configured ``faust.App``.

Stages get their topics and settings from ``context(app)``; this module knows no stage.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from engine.kafka import transport
from engine.settings import Settings
from engine.topics import Topics

log = logging.getLogger("oms")

#: How long a recovery may stay overtaken by a newer generation before the worker asks for a rebalance.
REJOIN_AFTER_S = 20.0


@dataclass
class Context:
    settings: Settings
    topics: Topics
    worker_index: int
    #: each input topic's incarnation (engine.kafka.admin.topic_epochs), looked up when the worker starts
    topic_epochs: dict[str, str] = field(default_factory=dict)
    #: the stages installed on this app, by name (for /oms/stats/)
    stages: dict[str, Any] = field(default_factory=dict)


def create_app(settings: Settings, worker_index: int = 0, topic_epochs: dict[str, str] | None = None) -> faust.App:
    transport.register()
    session = settings.session_timeout_s
    datadir = Path(settings.state_dir) / "workers" / settings.app_id / f"w{worker_index}"
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.app_id,
        broker=[f"{transport.SCHEME}://{host.strip()}" for host in settings.bootstrap.split(",")],
        store=settings.table_store,
        datadir=str(datadir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        # Stages commit their own transactions (engine.runtime.stage); Faust's exactly-once mode stays off.
        processing_guarantee="at_least_once",
        TableManager="engine.state.tables:TableManager",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=session,
        broker_heartbeat_interval=max(1.0, min(3.0, session / 10)),
        broker_rebalance_timeout=max(60.0, session * 2),
        broker_request_timeout=max(90.0, session + 30),
        table_standby_replicas=settings.standby_replicas,
        stream_wait_empty=False,
        web_enabled=True,
        web_bind=settings.web_bind,
        web_host="127.0.0.1",
        web_port=settings.web_port + worker_index,
        # our own body limit answers 413 with a message; aiohttp's must not cut in first
        web_application_options={"client_max_size": settings.max_payload_bytes + 1},
    )
    app.oms = Context(settings, Topics(settings.topic_prefix), worker_index, dict(topic_epochs or {}))  # type: ignore[attr-defined]

    @app.page("/oms/ready/")
    async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Readiness, unlike Faust's ``/`` (which answers during recovery): partitions assigned and table
        recovery finished."""
        actives = sorted(f"{tp.topic}/{tp.partition}" for tp in active_partitions(app))
        ok = bool(actives) and not app.in_recovery and app.tables.recovery.completed.is_set()
        return web.json({"ready": ok, "active": actives, "worker": worker_index}, status=200 if ok else 503)

    @app.page("/oms/stats/")
    async def stats(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Each stage's counters (records admitted, covered, stale, transactions, fenced, ...)."""
        stages = {name: stage.stats.as_dict() for name, stage in context(app).stages.items()}
        return web.json({"worker": worker_index, "pid": os.getpid(), "stages": stages})

    watchdog = RecoveryWatchdog(app, settings.recovery_stall_s)

    @app.timer(5.0)
    async def watch_recovery() -> None:
        try:
            watchdog.check(time.monotonic())
        except Exception:  # a watchdog must never be what crashes the worker
            log.exception("recovery watchdog failed")

    @app.page("/oms/debug/")
    async def debug(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """For an operator chasing a stall: recovery progress and where every asyncio task is waiting."""
        import asyncio

        recovery = app.tables.recovery
        tasks = []
        for task in asyncio.all_tasks():
            where, coro = [], task.get_coro()
            while coro is not None and len(where) < 20:  # follow the chain of awaits down to where it waits
                frame = (
                    getattr(coro, "cr_frame", None)
                    or getattr(coro, "gi_frame", None)
                    or getattr(coro, "ag_frame", None)
                )
                if frame is not None:
                    where.append(
                        f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
                    )
                coro = (
                    getattr(coro, "cr_await", None)
                    or getattr(coro, "gi_yieldfrom", None)
                    or getattr(coro, "ag_await", None)
                )
            tasks.append({"task": task.get_name(), "at": where})
        return web.json(
            {
                "worker": worker_index,
                "in_recovery": bool(app.in_recovery),
                "recovery_completed": app.tables.recovery.completed.is_set(),
                "active_remaining": {f"{tp.topic}/{tp.partition}": n for tp, n in recovery.active_remaining().items()},
                "active_highwaters": {f"{tp.topic}/{tp.partition}": n for tp, n in recovery.active_highwaters.items()},
                "active_offsets": {f"{tp.topic}/{tp.partition}": n for tp, n in recovery.active_offsets.items()},
                "tasks": tasks,
            }
        )

    return app


class RecoveryWatchdog:
    """Exits the worker when table recovery has stalled: partitions assigned, recovery not finished, and
    nothing moved (generation, offsets read from the changelogs) for ``stall_s``. Faust has been seen to stay
    in a recovery that never completes after back-to-back rebalances; the partitions such a worker holds make
    no progress, while a fresh worker recovers them in seconds."""

    def __init__(self, app: faust.App, stall_s: float) -> None:
        self.app = app
        self.stall_s = stall_s
        self.progress: tuple[Any, ...] | None = None
        self.since = 0.0
        self.rejoined = False

    def check(self, now: float) -> None:
        if self.stall_s <= 0:
            return
        recovery = self.app.tables.recovery
        # Faust ends a recovery whose generation was overtaken without resuming anything, counting on the next
        # assignment to start another; when that never reaches the recovery, every partition stays paused.
        overtaken = (
            recovery._generation_id != self.app.consumer_generation_id and not recovery.signal_recovery_start.is_set()
        )
        recovering = bool(active_partitions(self.app)) and (
            bool(self.app.in_recovery) or not recovery.completed.is_set() or overtaken
        )
        if not recovering:
            self.progress, self.rejoined = None, False
            return
        if overtaken and not self.rejoined and self.progress is not None and now - self.since >= REJOIN_AFTER_S:
            log.warning(
                "recovery of generation %s ended after generation %s began, and none followed: asking for a rebalance",
                recovery._generation_id,
                self.app.consumer_generation_id,
            )
            self.rejoined = True
            request_rejoin(self.app)
        # Offsets are None for a partition whose reading has not started.
        mark = (
            self.app.consumer_generation_id,
            tuple(sorted((str(tp), offset or -1) for tp, offset in recovery.active_offsets.items())),
            tuple(sorted((str(tp), offset or -1) for tp, offset in recovery.standby_offsets.items())),
        )
        if mark != self.progress:
            self.progress, self.since = mark, now
            return
        if now - self.since >= self.stall_s:
            log.critical(
                "table recovery made no progress for %.0fs (generation %s, remaining %s): exiting so that the "
                "worker is started again",
                now - self.since,
                mark[0],
                {f"{tp.topic}/{tp.partition}": n for tp, n in recovery.active_remaining().items()},
            )
            logging.shutdown()
            os._exit(75)


def request_rejoin(app: faust.App) -> None:
    """Ask the group coordinator for a rebalance (from the consumer's own thread, where aiokafka runs)."""
    thread = app.consumer._thread  # type: ignore[attr-defined]
    coordinator = getattr(getattr(thread, "_consumer", None), "_coordinator", None)
    if coordinator is not None:
        thread.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)


def context(app: faust.App) -> Context:
    return app.oms  # type: ignore[attr-defined,no-any-return]


def active_partitions(app: faust.App) -> set[TP]:
    try:
        return set(app.assignor.assigned_actives())
    except Exception:  # before the first assignment
        return set()
