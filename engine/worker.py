"""Run one Faust worker of the app named by ``OMS_APP`` (the engine never imports a stage directly)."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable

import faust
import uvloop
from faust.worker import Worker

from engine import kafka
from engine.settings import Settings, SettingsError


def load_app_factory(path: str) -> Callable[..., faust.App]:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"OMS_APP={path!r}: cannot load it ({exc})") from None
    return factory


class _Worker(Worker):
    def _setup_logging(self) -> None:
        super()._setup_logging()
        # mode filters in the handler, so every debug() call below the level still builds a record; that
        # was ~10% of a worker's CPU. Disable the levels below ours at the logger, where the check is cheap.
        level = logging.getLevelName(str(self.loglevel).upper())
        if isinstance(level, int) and level > logging.DEBUG:
            logging.disable(level - 1)


def ensure_changelogs(app: faust.App, settings: Settings) -> None:
    """Create every table's changelog topic (compacted, same partitions) before Faust starts. If Faust
    declares it itself, a worker's first table write can race the metadata and die of PartitionsMismatch
    ("the changelog topic has 0 partitions") — seen on a fresh broker."""
    names = [table.changelog_topic.get_topic_name() for table in app.tables.values()]
    if names:
        kafka.create_topics(
            settings.bootstrap,
            names,
            settings.partitions,
            settings.replication_factor,
            {name: {"cleanup.policy": "compact"} for name in names},
        )


def run_worker(settings: Settings, index: int = 0) -> int:
    """Blocks until the worker is stopped (SIGTERM/SIGINT shut it down cleanly: offsets are committed)."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    app = load_app_factory(settings.app_module)(settings, index)
    ensure_changelogs(app, settings)
    worker = _Worker(app, loglevel=settings.log_level, quiet=True, loop=loop, redirect_stdouts=False)
    worker.execute_from_commandline()  # exits the process when done
    return 0
