"""Faust tables as the stages use them: raw bytes in, raw bytes out, written in the stage's transactions.

Two adjustments to Faust's table manager, both for transactional changelogs:

* **Fence before restoring.** On every assignment the stages first take the transactional id of each input
  partition they now own (engine.kafka.transactions), which aborts whatever a previous owner left open. Only
  then does recovery look at the changelogs, so nothing can still commit into a changelog after it was read.
* **Recover to the last committed record.** A transactional changelog ends with a commit marker, which a
  ``read_committed`` reader never receives; Faust waits for "end offset − 1" and would wait for ever (its own
  exactly-once mode falls back to a 10-second timeout). Recovery here waits for the offset of the last
  committed record instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import RebalanceAgain
from faust.tables.recovery import Recovery as FaustRecovery
from faust.types import TP

from engine.kafka.clients import last_committed_offsets

log = logging.getLogger("oms.tables")

RebalanceHook = Callable[[set[TP], set[TP], int], Awaitable[None]]


def rocksdb_options() -> dict[str, int]:
    """RocksDB sizing per table partition (Faust's default is a 2 GiB block cache per database)."""
    return {
        "block_cache_size": 32 * 1024 * 1024,
        "write_buffer_size": 8 * 1024 * 1024,
        "max_write_buffer_number": 2,
        "max_open_files": 256,
    }


def declare_table(app: faust.App, name: str, partitions: int, help: str) -> faust.Table:
    """A table of raw bytes, one partition per input partition."""
    table = app.Table(
        name, key_type=bytes, value_type=bytes, partitions=partitions, options=rocksdb_options(), help=help
    )
    # Faust derives serializers from the key/value *types* and has no argument for them, and registering the table
    # already built its changelog topic with the default (json) ones: set raw and rebuild the changelog topic.
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    table.changelog_topic = table._new_changelog_topic()
    return table


def changelog_name(app: faust.App, table: str) -> str:
    return f"{app.conf.id}-{table}-changelog"


class Recovery(FaustRecovery):
    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        # Faust forgets the highwater of a changelog partition only when it is revoked. One that turns from
        # active into standby here (the partition moved, its standby copy stayed) kept its active highwater,
        # with no offset beside it: "remaining" never reached zero and recovery waited for ever (seen here
        # after a worker paused past its session timeout came back).
        for tps, highwaters in ((self.active_tps, self.active_highwaters), (self.standby_tps, self.standby_highwaters)):
            for tp in [tp for tp in highwaters if tp not in tps]:
                del highwaters[tp]

    async def _seek_offsets(self, consumer: Any, tps: set[TP], offsets: Any, title: str) -> None:
        """A rebalance that lands while a recovery runs resets the shared partition sets under it: a partition
        added since this recovery built its offsets has none (``None``), and Faust seeks to it and crashes
        ("Offset must be a positive integer", seen in the standby phase). Start the recovery over instead."""
        unknown = sorted(f"{tp.topic}/{tp.partition}" for tp in tps if offsets.get(tp) is None)
        if unknown:
            if self.signal_recovery_start.is_set():
                log.info("%s offsets not built yet for %s: a rebalance came in, recovering again", title, unknown)
                raise RebalanceAgain()
            log.warning("%s offsets unknown for %s: reading them from the beginning", title, unknown)
            for tp in tps:
                if offsets.get(tp) is None:
                    offsets[tp] = -1
        await super()._seek_offsets(consumer, tps, offsets, title)

    async def _build_highwaters(self, consumer: Any, tps: Iterable[TP], destination: Any, title: str) -> None:
        tps = list(tps)
        if not tps:
            return
        bootstrap = self.app.oms.settings.bootstrap  # type: ignore[attr-defined]
        found = await asyncio.to_thread(last_committed_offsets, bootstrap, [(tp.topic, tp.partition) for tp in tps])
        highwaters = {tp: found.get((tp.topic, tp.partition), -1) for tp in tps}
        self.log.info("%s highwaters (last committed record): %s", title, _short(highwaters))
        for tp, offset in highwaters.items():
            destination[tp] = offset  # assign: ``destination`` is a Counter, whose update() would add


class TableManager(FaustTableManager):
    """Faust's table manager with the fencing hook and the transactional recovery described above."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.before_recovery: list[RebalanceHook] = []

    @property
    def recovery(self) -> FaustRecovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        for hook in self.before_recovery:
            await hook(assigned, revoked, generation_id)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)


def _short(offsets: Mapping[TP, int]) -> str:
    return ", ".join(f"{tp.topic.rsplit('-', 2)[-2]}/{tp.partition}={o}" for tp, o in sorted(offsets.items()))
