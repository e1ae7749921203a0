"""Run one Faust worker of the app named by ``OMS_APP`` (the engine never imports a stage directly)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable

import faust
import uvloop
from faust.worker import Worker

from engine import tripwire
from engine.kafka.admin import create_topics, topic_epochs
from engine.settings import Settings, SettingsError
from engine.topics import Topics


def load_app_factory(path: str) -> Callable[..., faust.App]:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"OMS_APP={path!r}: cannot load it ({exc})") from None
    return factory  # type: ignore[no-any-return]


class _Worker(Worker):
    def _setup_logging(self) -> None:
        super()._setup_logging()
        # mode filters in the handler, so every debug() call below the level still builds a record; that
        # was ~10% of a worker's CPU. Disable the levels below ours at the logger, where the check is cheap.
        level = logging.getLevelName(str(self.loglevel).upper())
        if isinstance(level, int) and level > logging.DEBUG:
            logging.disable(level - 1)

    def _on_sigusr2(self) -> None:
        """A stop for a restart (``oms`` restarts a worker this way): stay a member of the consumer group, so
        that the worker started again with the same index takes its partitions back without a rebalance.
        SIGTERM/SIGINT leave the group: the partitions move to the other workers at once."""
        from engine.app import context

        context(self.app).runtime.keep_membership = True
        self._schedule_shutdown(signal.SIGTERM)


def ensure_topics(app: faust.App, settings: Settings) -> None:
    """Create the pipeline's topics and every table's changelog (compacted, same partitions) before the stream
    runtime starts: a worker's first assignment restores from them."""
    from engine.app import context

    topics = Topics(settings.topic_prefix)
    create_topics(settings.bootstrap, topics.all(), settings.partitions, settings.replication_factor, topics.configs())
    names = context(app).runtime.changelogs()
    if names:
        create_topics(
            settings.bootstrap,
            names,
            settings.partitions,
            settings.replication_factor,
            {name: {"cleanup.policy": "compact"} for name in names},
        )


def run_worker(settings: Settings, index: int = 0) -> int:
    """Blocks until the worker is stopped (SIGTERM/SIGINT shut it down cleanly)."""
    tripwire.check()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = Topics(settings.topic_prefix)
    create_topics(settings.bootstrap, topics.all(), settings.partitions, settings.replication_factor, topics.configs())
    epochs = topic_epochs(settings.bootstrap, topics.all())
    app = load_app_factory(settings.app_module)(settings, index, epochs)
    ensure_topics(app, settings)
    worker = _Worker(app, loglevel=settings.log_level, quiet=True, loop=loop, redirect_stdouts=False)
    worker.execute_from_commandline()  # exits the process when done
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.worker --index i``: one worker, configured from the environment (how the supervisor
    starts each worker; ``oms worker`` is the same)."""
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description="one engine worker (Faust)")
    parser.add_argument("--index", type=int, default=0, help="worker number: web port and data dir offset")
    args = parser.parse_args(argv)
    try:
        return run_worker(Settings.from_env(), args.index)
    except tripwire.TripwireError as exc:
        print(f"oms worker: {exc}", file=sys.stderr)
        return 3
    except SettingsError as exc:
        print(f"oms worker: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
