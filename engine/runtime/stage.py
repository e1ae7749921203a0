"""A stage: one :class:`~engine.runtime.work.Logic` with its tables and its input position, run by the worker's
stream runtime (engine.runtime.runner) in the worker's transactions (engine.runtime.checkpoint).

The contract, per input partition the worker owns:

1. **Position.** The stage's state covers its input up to a *position* (the next offset to process), kept in
   its ``<stage>-positions`` table and written in the same transaction as the state and the outputs. The
   consumer starts every assigned partition at that position; a record below it is *covered* (already in the
   state) and skipped. Offsets may jump: transaction markers and aborted records take offsets a
   ``read_committed`` reader never receives.
2. **Process.** The records of one partition run through the logic in offset order, one savepoint per record
   (engine.runtime.work): a record whose processing raises is undone and dead-lettered, the partition moves on.
   The result is a :class:`Unit`: outputs, table writes, the new position.
3. **Commit.** Units of every stage and partition of a batch commit as one transaction (engine.runtime.checkpoint).
4. **Apply.** Only after the commit do the same bytes reach the local stores, with the changelog offsets they
   got; then the logic hears of its side effects (read models outside Kafka).

A crash anywhere leaves the whole transaction or none of it: the next owner restores the tables from their
changelogs and continues from the position they hold — the same state, the same next record, and therefore the
same outputs (I7).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from engine.runtime.work import ExpiryIndex, Input, Logic, PartitionWork, apply_locally, rebuild_expiry, run_records
from engine.state.restore import Part
from engine.state.store import PartitionStore
from engine.state.tables import Table
from schemas import wire

if TYPE_CHECKING:
    import faust

log = logging.getLogger("oms.stage")


class Position(msgspec.Struct, frozen=True):
    """How far a stage's state covers one input partition (the stage's own bookkeeping, in its state)."""

    next_offset: int
    watermark: int  # the partition's event time when the state was written
    topic_epoch: str  # the input topic's incarnation (a recreated topic starts again from its beginning)


def position_key(topic: str, partition: int) -> bytes:
    # Bookkeeping, not tenant data: the one kind of key here that does not start with a tenant.
    return f"{topic}/{partition}".encode()


@dataclass
class StageStats:
    batches: int = 0
    admitted: int = 0
    covered: int = 0
    stale: int = 0  # records of partitions this worker no longer owns
    reseeks: int = 0  # assignments where the group's committed offset was not the state's position
    gaps: int = 0
    transactions: int = 0  # transactions this stage had records in
    produced: int = 0  # output records (result topics, other stages' inputs, dead letters)
    changelog: int = 0  # changelog records of its tables, positions included
    aborted: int = 0
    fenced: int = 0
    dead_letters: int = 0
    isolated: int = 0  # records committed one by one after their batch kept failing
    purged: int = 0
    restored: int = 0  # changelog records read back into the stores
    notes: dict[str, int] = field(default_factory=dict)
    first_admitted: dict[str, int] = field(default_factory=dict)  # topic/partition -> first offset since start
    last_admitted: dict[str, int] = field(default_factory=dict)
    #: topic/partition -> first offset admitted since the partition was last assigned here (what a takeover read)
    since_assigned: dict[str, int] = field(default_factory=dict)
    admitted_by_partition: dict[str, int] = field(default_factory=dict)  # topic/partition -> records, since start
    generation: int = 0  # assignments this worker has seen (each one restored and fenced before processing)
    gauges: dict[str, int] = field(default_factory=dict)  # current values a stage's logic reports

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Unit:
    """One stage's share of one input partition in a transaction: what the logic made of the records."""

    stage: Stage
    partition: int
    records: list[Input]
    work: PartitionWork
    next_offsets: dict[str, int]
    positions: dict[bytes, bytes]
    purged: int

    def changelog(self) -> list[tuple[str, str, dict[bytes, bytes | None]]]:
        """(table, changelog topic, writes) for every table written, the positions last."""
        tables = self.stage.tables
        found: list[tuple[str, str, dict[bytes, bytes | None]]] = [
            (name, tables[name].changelog, writes) for name, writes in self.work.writes.items() if writes
        ]
        found.append((self.stage.positions_table, tables[self.stage.positions_table].changelog, self.positions))  # type: ignore[arg-type]
        return found


class Stage:
    """One :class:`Logic` with its tables, its positions and its counters, on one worker."""

    def __init__(self, app: faust.App, logic: Logic) -> None:
        from engine.app import context

        self.app = app
        self.logic = logic
        self.name = logic.name
        self.ctx = context(app)
        settings = self.ctx.settings
        self.partitions = settings.partitions
        self.inputs = tuple(logic.inputs)
        self.positions_table = f"{self.name}-positions"
        self.tables = {
            name: Table.open(settings.app_id, name, settings.table_store, self.ctx.datadir)
            for name in (*logic.tables, self.positions_table)
        }
        self.dead_letters_topic = self.ctx.topics.dead_letters
        self.stats = StageStats()
        self._owned: set[int] = set()
        self.positions: dict[tuple[str, int], int] = {}
        self.watermarks: dict[int, int] = {}
        self.expiry: dict[int, dict[str, ExpiryIndex]] = {}
        self.ctx.runtime.add(self)
        self.ctx.stages[self.name] = self

    # -- state ------------------------------------------------------------------------------------------
    def store(self, table: str) -> PartitionStore:
        return self.tables[table].store

    def owned(self) -> set[int]:
        """The input partitions this worker writes for now."""
        return set(self._owned)

    def changelog_parts(self, partitions: set[int]) -> list[Part]:
        return [Part(t.changelog, p, t.store) for t in self.tables.values() for p in sorted(partitions)]

    def assign(self, partitions: set[int], generation: int) -> None:
        """After the restore of ``partitions``: forget every cached view (it is rebuilt from the stores)."""
        self._forget(set(range(self.partitions)))
        self._owned = set(partitions)
        self.stats.since_assigned.clear()
        self.stats.generation = generation

    def revoke(self) -> None:
        self._owned = set()
        self._forget(set(range(self.partitions)))

    def _forget(self, partitions: set[int]) -> None:
        for key in [k for k in self.positions if k[1] in partitions]:
            del self.positions[key]
        for p in partitions:
            self.watermarks.pop(p, None)
            self.expiry.pop(p, None)

    def position(self, topic: str, partition: int) -> int:
        """The next offset the state of (topic, partition) covers, from the positions table (cached)."""
        key = (topic, partition)
        found = self.positions.get(key)
        if found is None:
            stored = self.stored_position(topic, partition)
            found = self.positions[key] = stored.next_offset if stored is not None else 0
            if stored is not None:
                self.watermarks[partition] = max(self.watermarks.get(partition, 0), stored.watermark)
        return found

    def stored_position(self, topic: str, partition: int) -> Position | None:
        raw = self.store(self.positions_table).get(partition, position_key(topic, partition))
        if raw is None:
            return None
        position = wire.decode_state(raw, Position)
        epoch = self.ctx.topic_epochs.get(topic)
        if epoch is not None and position.topic_epoch != epoch:
            log.error(
                "%s: %s/%d was recreated (incarnation %s, state knew %s): reading it from its beginning",
                self.name,
                topic,
                partition,
                epoch,
                position.topic_epoch,
            )
            return Position(0, position.watermark, epoch)
        return position

    def stored_next_offset(self, topic: str, partition: int) -> int:
        """The position as stored, whatever the topic's incarnation (0 when none)."""
        raw = self.store(self.positions_table).get(partition, position_key(topic, partition))
        return 0 if raw is None else wire.decode_state(raw, Position).next_offset

    def _expiry(self, partition: int) -> dict[str, ExpiryIndex]:
        found = self.expiry.get(partition)
        if found is None:
            stores = {t: self.store(t) for t in self.logic.tables}
            found = self.expiry[partition] = rebuild_expiry(self.logic, stores, partition)
        return found

    # -- one partition's share of a batch ----------------------------------------------------------------
    def admit(self, topic: str, partition: int, offset: int) -> bool:
        """Whether a delivered record is new to the state (and moves the position past it)."""
        position = self.position(topic, partition)
        if offset < position:
            self.stats.covered += 1
            return False
        if offset > position:
            self.stats.gaps += 1  # transaction markers or aborted records: never delivered read_committed
        self.positions[(topic, partition)] = offset + 1
        return True

    def rewind(self, topic: str, partition: int) -> None:
        """A transaction holding this partition's records was not committed: read them again from the state."""
        self.positions.pop((topic, partition), None)

    def run(self, partition: int, records: list[Input]) -> Unit:
        work = PartitionWork(
            self.name,
            partition,
            {t: self.store(t) for t in self.logic.tables},
            self._expiry(partition),
            self.watermarks.get(partition, 0),
            self.dead_letters_topic,
        )
        next_offsets = run_records(self.logic, work, records)
        purged = work.purge_expired()
        return self.unit_of(partition, records, work, next_offsets, purged)

    def unit_of(
        self, partition: int, records: list[Input], work: PartitionWork, next_offsets: dict[str, int], purged: int
    ) -> Unit:
        epochs = self.ctx.topic_epochs
        positions = {
            position_key(topic, partition): wire.encode(Position(offset, work.watermark, epochs.get(topic, "")))
            for topic, offset in next_offsets.items()
        }
        return Unit(self, partition, records, work, next_offsets, positions, purged)

    def apply(self, unit: Unit, changelog_offsets: dict[tuple[str, int], int]) -> None:
        """After the commit: the local stores get the bytes the changelogs now hold."""
        partition, work = unit.partition, unit.work
        offsets = {name: changelog_offsets.get((t.changelog, partition)) for name, t in self.tables.items()}
        apply_locally(work, {name: o for name, o in offsets.items() if o is not None})
        # The position last: whoever reads it (a read model's rebuild, on the event loop) then finds the tables at
        # least as new as the position says.
        self.store(self.positions_table).apply(partition, unit.positions, offsets[self.positions_table])  # type: ignore[arg-type]
        self.watermarks[partition] = work.watermark
        self._account(unit)

    def _account(self, unit: Unit) -> None:
        stats, work, records = self.stats, unit.work, unit.records
        stats.transactions += 1
        stats.admitted += len(records)
        stats.produced += len(work.outputs)
        stats.changelog += len(unit.positions) + sum(len(w) for w in work.writes.values())
        stats.dead_letters += len(work.dead_letters)
        stats.purged += unit.purged
        for what, n in work.notes.items():
            stats.notes[what] = stats.notes.get(what, 0) + n
        for record in records:
            name = f"{record.topic}/{record.partition}"
            stats.first_admitted.setdefault(name, record.offset)
            stats.since_assigned.setdefault(name, record.offset)
            stats.admitted_by_partition[name] = stats.admitted_by_partition.get(name, 0) + 1
            stats.last_admitted[name] = record.offset

    def after_commit(self, unit: Unit) -> None:
        """Hand the logic what it queued for outside Kafka (on the app's event loop)."""
        if unit.work.side_effects:
            self.logic.after_commit(unit.partition, unit.work.side_effects)
