"""The Faust app factory: one place that turns Settings into a configured ``faust.App``.

Faust is the application: the app, its web server (the API, readiness, stats), timers and tasks, the worker
process with its signals and logging. Records reach the stages through the worker's stream runtime
(engine.runtime.runner), one confluent-kafka consumer and one transactional producer, not through Faust's own
Kafka services, which are therefore not started (:class:`Boot`). Stages get their topics, settings and the
runtime from ``context(app)``; this module knows no stage.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.app.base import BootStrategy

from engine.runtime.runner import StreamRuntime
from engine.settings import Settings
from engine.topics import Topics

log = logging.getLogger("oms")


class Boot(BootStrategy):
    """Faust's services without its Kafka consumer, producer, conductor and table manager (the stream runtime
    replaces them); the web server, timers and tasks as usual."""

    enable_kafka = False


class App(faust.App):
    BootStrategy = Boot


@dataclass
class Context:
    settings: Settings
    topics: Topics
    worker_index: int
    datadir: Path
    runtime: StreamRuntime
    #: each input topic's incarnation (engine.kafka.admin.topic_epochs), looked up when the worker starts
    topic_epochs: dict[str, str] = field(default_factory=dict)
    #: the stages installed on this app, by name (for /oms/stats/)
    stages: dict[str, Any] = field(default_factory=dict)
    #: threads beside the stages with their own consumer groups (gateways, sinks, projectors), by name: each one
    #: with a ``stats()`` shows it in /oms/stats/
    sidecars: dict[str, Any] = field(default_factory=dict)


def create_app(settings: Settings, worker_index: int = 0, topic_epochs: dict[str, str] | None = None) -> faust.App:
    datadir = Path(settings.state_dir) / "workers" / settings.app_id / f"w{worker_index}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = App(
        f"{settings.app_id}-app",
        autodiscover=False,
        datadir=str(datadir / "faust"),
        web_enabled=True,
        web_bind=settings.web_bind,
        web_host="127.0.0.1",
        web_port=settings.web_port + worker_index,
        # our own body limit answers 413 with a message; aiohttp's must not cut in first
        web_application_options={"client_max_size": settings.max_payload_bytes + 1},
    )
    runtime = StreamRuntime(settings, worker_index)
    ctx = Context(settings, Topics(settings.topic_prefix), worker_index, datadir, runtime, dict(topic_epochs or {}))
    app.oms = ctx  # type: ignore[attr-defined]

    @app.task
    async def start_streams() -> None:
        """The stream runtime starts once the app is up (its web server answers readiness meanwhile)."""
        runtime.start(asyncio.get_running_loop())

    @app.on_before_shutdown.connect
    async def stop_streams(app: faust.App, **_: Any) -> None:
        """SIGTERM: the batch in hand finishes (commits or aborts), then the consumer and producer close."""
        await asyncio.get_running_loop().run_in_executor(None, runtime.stop)

    @app.page("/oms/ready/")
    async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Readiness: partitions assigned, their tables restored, and the stream runtime running them."""
        ok = runtime.ready
        return web.json({"ready": ok, "active": runtime.active(), "worker": worker_index}, status=200 if ok else 503)

    @app.page("/oms/stats/")
    async def stats(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Each stage's counters (records admitted, covered, transactions, fenced, ...) and the worker's commits."""
        ctx = context(app)
        stages = {name: stage.stats.as_dict() for name, stage in ctx.stages.items()}
        sidecars = {name: s.stats() for name, s in ctx.sidecars.items() if hasattr(s, "stats")}
        return web.json(
            {
                "worker": worker_index,
                "pid": os.getpid(),
                "stages": stages,
                "sidecars": sidecars,
                "runtime": runtime.stats.as_dict(),
            }
        )

    @app.page("/oms/debug/")
    async def debug(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """For an operator chasing a stall: the assignment and where every asyncio task is waiting."""
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
                "ready": runtime.ready,
                "generation": runtime.generation,
                "active": runtime.active(),
                "runtime": runtime.stats.as_dict(),
                "tasks": tasks,
            }
        )

    return app


def context(app: faust.App) -> Context:
    return app.oms  # type: ignore[attr-defined,no-any-return]
