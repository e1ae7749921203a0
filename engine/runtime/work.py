"""What a stage's logic sees: one input partition's state and outputs for the records of one transaction.

A stage is a :class:`Logic` — pure rules over one ordered input — and the runtime around it (engine.runtime.stage
on Kafka, engine.runtime.replay in-process). The logic reads and writes state through :class:`PartitionWork`,
which keeps the transaction's writes in an overlay (reads see them), journals them per record so that a record
whose processing fails can be undone before it is dead-lettered, and hides entries whose time has passed.

Time is never the clock: it is the input's own time. ``work.now`` is the record's timestamp (set by whoever
produced it) and ``work.watermark`` the partition's event time, the highest time the logic reported for its
records so far through ``work.advance`` (for the order stage, the channels' modification times; for the
inventory, the commands' times).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engine.kafka.clients import Message, partition_for
from engine.state.store import PartitionStore
from schemas import wire
from schemas.deadletter import DeadLetter, ReasonCode, dead_letter

log = logging.getLogger("oms.stage")
_MISSING = object()


#: One input record, as the logic sees it: topic, partition, offset, key, value, timestamp (ms), headers.
Input = Message


@dataclass(slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None  # None: the key decides (murmur2)
    headers: list[tuple[str, bytes]] | None = None


class Logic:
    """A stage's rules. Subclasses set ``name``, ``inputs`` and ``tables`` and implement ``process``."""

    name: str = ""
    inputs: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    def process(self, work: PartitionWork, record: Input) -> None:
        raise NotImplementedError

    def expires_at(self, table: str, value: bytes) -> int | None:
        """When a stored entry may be forgotten (event time), for rebuilding the expiry index from a store."""
        return None

    def on_assigned(self, partitions: set[int]) -> None:
        """Called after a rebalance with the input partitions this worker now owns (for read models)."""

    def after_commit(self, partition: int, side_effects: list[Any]) -> None:
        """Called once a transaction is committed, with what the logic queued in ``work.side_effects`` (updates
        of read models outside Kafka, which may be rebuilt from state and so never decide anything)."""


class ExpiryIndex:
    """Entries of one table partition that carry an expiry time, soonest first."""

    def __init__(self) -> None:
        self.when: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []

    def set(self, key: bytes, expires_at: int | None) -> None:
        if expires_at is None:
            self.when.pop(key, None)
            return
        if self.when.get(key) != expires_at:
            self.when[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))

    def pop_due(self, watermark: int) -> list[bytes]:
        """Take the keys whose time has come off the heap (they stay in ``when`` until their deletion is
        committed; after an aborted transaction the runtime rebuilds the index from the store)."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= watermark:
            expires_at, key = heapq.heappop(heap)
            if self.when.get(key) == expires_at:
                due.append(key)
        return due


@dataclass
class Journal:
    outputs: int
    side_effects: int
    undo: list[tuple[str, bytes, Any, Any]] = field(default_factory=list)  # table, key, old value, old expiry


class PartitionWork:
    """One input partition's share of a transaction: reads see its own writes; outputs wait for the commit."""

    def __init__(
        self,
        stage: str,
        partition: int,
        stores: dict[str, PartitionStore],
        expiry: dict[str, ExpiryIndex],
        watermark: int,
        dead_letters_topic: str,
    ) -> None:
        self.stage = stage
        self.partition = partition
        self.stores = stores
        self.expiry = expiry
        self.watermark = watermark
        self.now = 0
        self.record: Input | None = None
        self.dead_letters_topic = dead_letters_topic
        self.writes: dict[str, dict[bytes, bytes | None]] = {}
        self.expiry_changes: dict[str, dict[bytes, int | None]] = {}
        self.outputs: list[Output] = []
        self.side_effects: list[Any] = []
        self.notes: dict[str, int] = {}
        self.dead_letters: list[DeadLetter] = []
        self._journal: Journal | None = None

    # -- state ----------------------------------------------------------------------------------------
    def get(self, table: str, key: str | bytes) -> bytes | None:
        raw = key.encode() if isinstance(key, str) else key
        pending = self.writes.get(table)
        value = pending[raw] if pending is not None and raw in pending else self.stores[table].get(self.partition, raw)
        if value is None:
            return None
        expires = self._expiry_of(table, raw)
        if expires is not None and expires <= self.watermark:
            return None  # forgotten: its time has passed (physically removed at the end of the transaction)
        return value

    def get_config(self, table: str, key: str | bytes, typ: type[Any]) -> Any:
        """Like :meth:`get_as`, for configuration a stage reads on every record but which changes rarely (review
        rules, layouts, policies): decoded once per distinct value and shared, so the caller must not change it."""
        raw = self.get(table, key)
        return None if raw is None else decode_config(raw, typ)

    def get_as(self, table: str, key: str | bytes, typ: type[Any]) -> Any:
        raw = self.get(table, key)
        return None if raw is None else wire.decode_state(raw, typ)

    def scan(self, table: str, prefix: str | bytes) -> list[tuple[bytes, bytes]]:
        """Every live entry of ``table`` whose key starts with ``prefix``, in key order, this transaction's writes
        included. It reads the whole partition of the table: for rare events (a layout change), not per record."""
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        found = {key: value for key, value in self.stores[table].items(self.partition) if key.startswith(raw)}
        for key, value in self.writes.get(table, {}).items():
            if key.startswith(raw):
                if value is None:
                    found.pop(key, None)
                else:
                    found[key] = value
        live = []
        for key in sorted(found):
            expires = self._expiry_of(table, key)
            if expires is None or expires > self.watermark:
                live.append((key, found[key]))
        return live

    def put(self, table: str, key: str | bytes, value: bytes | msgspec.Struct, expires_at: int | None = None) -> None:
        raw = key.encode() if isinstance(key, str) else key
        data = value if isinstance(value, bytes) else wire.encode(value)
        self._remember(table, raw)
        self.writes.setdefault(table, {})[raw] = data
        self.expiry_changes.setdefault(table, {})[raw] = expires_at

    def delete(self, table: str, key: str | bytes) -> None:
        raw = key.encode() if isinstance(key, str) else key
        self._remember(table, raw)
        self.writes.setdefault(table, {})[raw] = None
        self.expiry_changes.setdefault(table, {})[raw] = None

    def _expiry_of(self, table: str, key: bytes) -> int | None:
        changes = self.expiry_changes.get(table)
        if changes is not None and key in changes:
            return changes[key]
        index = self.expiry.get(table)
        return None if index is None else index.when.get(key)

    def _remember(self, table: str, key: bytes) -> None:
        if self._journal is None:
            return
        pending = self.writes.get(table, {})
        old_value = pending.get(key, _MISSING)
        old_expiry = self.expiry_changes.get(table, {}).get(key, _MISSING)
        self._journal.undo.append((table, key, old_value, old_expiry))

    # -- outputs --------------------------------------------------------------------------------------
    def emit(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | msgspec.Struct,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        raw_key = key.encode() if isinstance(key, str) else key
        data = value if isinstance(value, bytes) else wire.encode(value)
        self.outputs.append(Output(topic, raw_key, data, partition, headers))

    def dead_letter(self, record: Input, reason: ReasonCode, detail: str, tenant: str | None = None) -> None:
        letter = dead_letter(
            self.stage,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            reason,
            detail,
            record.timestamp_ms,
            tenant,
        )
        self.dead_letters.append(letter)
        self.emit(self.dead_letters_topic, record.key, letter)

    def misrouted(self, record: Input, key: str, partitions: int, tenant: str | None) -> bool:
        """A record on a partition its key does not hash to is dead-lettered (applying it would give its key a
        second writer); True when it was."""
        home = partition_for(key, partitions)
        if home == record.partition:
            return False
        detail = f"key {key!r} belongs to partition {home}, arrived on {record.partition}"
        self.dead_letter(record, ReasonCode.MISROUTED, detail, tenant)
        return True

    def advance(self, time_ms: int) -> None:
        """Move the partition's event time forward to ``time_ms`` (never back). Call it before reading state:
        entries whose time has passed read as absent."""
        if time_ms > self.watermark:
            self.watermark = time_ms

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n

    def put_if_newer(self, table: str, key: str, value: Any, version: int, current: int | None, what: str) -> None:
        """Configuration broadcast to every partition (review rules, layouts): a version higher than the one
        this partition holds replaces it; an equal or lower one (a redelivery, a stale publisher) is noted only."""
        if current is None or version > current:
            self.put(table, key, value)
            self.note(f"{what}_applied")
        else:
            self.note(f"{what}_not_newer")

    # -- per-record savepoints ------------------------------------------------------------------------
    def begin_record(self, record: Input) -> None:
        self.record = record
        self.now = record.timestamp_ms
        self._journal = Journal(len(self.outputs), len(self.side_effects))

    def end_record(self) -> None:
        self._journal = None

    def undo_record(self) -> None:
        """Forget everything the current record did (its processing failed half-way)."""
        journal = self._journal
        if journal is None:
            return
        for table, key, old_value, old_expiry in reversed(journal.undo):
            if old_value is _MISSING:
                self.writes.get(table, {}).pop(key, None)
            else:
                self.writes.setdefault(table, {})[key] = old_value
            if old_expiry is _MISSING:
                self.expiry_changes.get(table, {}).pop(key, None)
            else:
                self.expiry_changes.setdefault(table, {})[key] = old_expiry
        del self.outputs[journal.outputs :]
        del self.side_effects[journal.side_effects :]
        self._journal = None

    # -- end of the transaction -----------------------------------------------------------------------
    def purge_expired(self) -> int:
        """Delete every entry whose time has come (deterministic: a function of the watermark)."""
        purged = 0
        for table in {*self.expiry, *self.expiry_changes}:
            index = self.expiry.get(table)
            changes = self.expiry_changes.get(table, {})
            due = [key for key in (index.pop_due(self.watermark) if index else []) if key not in changes]
            due += [key for key, when in changes.items() if when is not None and when <= self.watermark]
            for key in due:
                self.delete(table, key)
                purged += 1
        return purged


#: Decoded configuration by (type, bytes): a handful of versions per tenant; cleared when it grows past a bound.
_CONFIG: dict[tuple[type, bytes], Any] = {}
_CONFIG_MAX = 512


def decode_config(raw: bytes, typ: type[Any]) -> Any:
    """``raw`` decoded as ``typ``, shared between every reader of the same bytes (read-only by contract)."""
    key = (typ, raw)
    found = _CONFIG.get(key)
    if found is None:
        if len(_CONFIG) >= _CONFIG_MAX:
            _CONFIG.clear()
        found = _CONFIG[key] = wire.decode_state(raw, typ)
    return found


def run_records(logic: Logic, work: PartitionWork, records: Iterable[Input]) -> dict[str, int]:
    """Run ``logic`` over one partition's records, one savepoint per record: a record whose processing raises
    is undone and dead-lettered (``processing_error``), and the partition moves on. Returns the next offset
    per input topic."""
    next_offsets: dict[str, int] = {}
    for record in records:
        work.begin_record(record)
        try:
            logic.process(work, record)
        except Exception as exc:  # a bug must not stall the partition (I6)
            log.exception("%s: processing error at %s/%d/%d", work.stage, record.topic, record.partition, record.offset)
            work.undo_record()
            work.begin_record(record)
            work.dead_letter(record, ReasonCode.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
        work.end_record()
        next_offsets[record.topic] = record.offset + 1
    return next_offsets


def apply_locally(work: PartitionWork, changelog_offsets: dict[str, int] | None = None) -> None:
    """After the commit: the tables' local stores and the expiry index take the transaction's writes."""
    for table, writes in work.writes.items():
        if writes:
            work.stores[table].apply(work.partition, writes, (changelog_offsets or {}).get(table))
    for table, changes in work.expiry_changes.items():
        index = work.expiry.setdefault(table, ExpiryIndex())
        for key, when in changes.items():
            index.set(key, when)


def rebuild_expiry(logic: Logic, stores: dict[str, PartitionStore], partition: int) -> dict[str, ExpiryIndex]:
    """The expiry index of one partition, from what its stores hold (after a restore or a rebalance)."""
    found = {}
    for table in logic.tables:
        index = found[table] = ExpiryIndex()
        for key, value in stores[table].items(partition):
            index.set(key, logic.expires_at(table, value))
    return found
