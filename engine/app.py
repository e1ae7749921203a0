"""The Faust app factory: one place that turns Settings into a configured ``faust.App``.

Stages get their topics and settings from ``context(app)``; this module knows no stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faust
from faust.types import TP

from engine import codec, transport
from engine.settings import Settings
from engine.topics import Topics

log = logging.getLogger("oms")


@dataclass(frozen=True)
class Context:
    settings: Settings
    topics: Topics
    worker_index: int


def create_app(settings: Settings, worker_index: int = 0) -> faust.App:
    codec.register()
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
        # at-least-once with idempotent state (DESIGN.md §5): never Faust's exactly_once
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_commit_every=max(100, settings.batch_max * 2),
        broker_session_timeout=session,
        broker_heartbeat_interval=max(1.0, min(3.0, session / 10)),
        broker_rebalance_timeout=max(60.0, session * 2),
        broker_request_timeout=max(90.0, session + 30),
        table_standby_replicas=settings.standby_replicas,
        stream_wait_empty=True,
        producer_acks=-1,
        producer_linger_ms=2,
        web_enabled=True,
        web_bind=settings.web_bind,
        web_host="127.0.0.1",
        web_port=settings.web_port + worker_index,
        # our own body limit answers 413 with a message; aiohttp's must not cut in first
        web_application_options={"client_max_size": settings.max_payload_bytes + 1},
    )
    app.oms = Context(settings, Topics(settings.topic_prefix), worker_index)  # type: ignore[attr-defined]
    from engine import watchdog  # imports this module: after the app exists

    watchdog.install(app, stall_s=max(15.0, 10 * settings.commit_interval_s))

    @app.page("/oms/ready/")
    async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Readiness, unlike Faust's ``/`` (which answers during recovery): partitions assigned and
        table recovery finished."""
        actives = sorted(f"{tp.topic}/{tp.partition}" for tp in active_partitions(app))
        ok = bool(actives) and not app.in_recovery and app.tables.recovery.completed.is_set()
        return web.json({"ready": ok, "active": actives, "worker": worker_index}, status=200 if ok else 503)

    return app


def context(app: faust.App) -> Context:
    return app.oms  # type: ignore[attr-defined,no-any-return]


def active_partitions(app: faust.App) -> set[TP]:
    try:
        return set(app.assignor.assigned_actives())
    except Exception:  # before the first assignment
        return set()


def table_options() -> dict[str, int]:
    """RocksDB sizing per table partition (Faust's default is a 2 GiB block cache per DB, DESIGN.md §5)."""
    return {
        "block_cache_size": 32 * 1024 * 1024,
        "write_buffer_size": 8 * 1024 * 1024,
        "max_write_buffer_number": 2,
        "max_open_files": 256,
    }


def state_table(app: faust.App, name: str, help: str) -> faust.Table:
    """A stage's state table: str keys (``tenant:…``), orjson values, one partition per input partition."""
    table = app.Table(
        name, key_type=str, partitions=context(app).settings.partitions, options=table_options(), help=help
    )
    # Faust derives serializers from the key/value *types* and has no argument for them, and registering
    # the table already built its changelog topic with the default (json) ones. Set ours and rebuild the
    # changelog topic, or every standby/recovery read fails to decode the raw ``tenant:…`` keys.
    table.key_serializer = "raw"
    table.value_serializer = codec.CODEC_NAME
    table.changelog_topic = table._new_changelog_topic()
    return table
