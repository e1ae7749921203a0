"""What every stage agent does around its pure core: batches, decoding, dead letters, durable outputs.

The discipline, in order, per batch:

1. decode each event; bad bytes become a dead letter (I6) and the partition moves on;
2. call the stage's core with state read through a per-partition write cache;
3. send every output and wait until the broker has acknowledged all of them;
4. only then write the new state to the tables (their changelogs).

Because outputs are durable before the state that produced them is recorded, a crash can leave a
stage's state *behind* its outputs but never ahead: a replay recomputes the same outputs (deterministic
ids; consumers dedupe) rather than skipping outputs that were never sent.

Faust picks a table write's changelog partition from the *current event*, which inside a batch is not
the event being handled. ``event_scope`` sets it explicitly, per event for reads and per partition for
writes, which is what lets a stage batch without ``use_partitioner``.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.types import EventT, StreamT

from engine.app import context
from schemas import wire
from schemas.deadletter import DeadLetter, ReasonCode, dead_letter_id

log = logging.getLogger("oms.stage")

_DELETE = object()


def now_ms() -> int:
    return int(time.time() * 1000)


def partition_for(key: str | bytes, partitions: int) -> int:
    """Kafka's default (murmur2) partition for a key: where every producer must have put it."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions


@contextmanager
def event_scope(stream: StreamT, event: EventT) -> Iterator[None]:
    """Make ``event`` the current event, so table reads and writes use its partition."""
    previous = stream.current_event
    stream._set_current_event(event)  # Faust's own setter; see module docstring
    try:
        yield
    finally:
        stream._set_current_event(previous)


@dataclass(slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes


@dataclass
class PartitionWork:
    """One partition's share of a batch: state read-through cache, pending writes, outputs."""

    partition: int
    last_event: EventT | None = None
    writes: dict[Any, dict[str, Any]] = field(default_factory=dict)  # table -> key -> value | _DELETE
    outputs: list[Output] = field(default_factory=list)
    side_effects: list[Any] = field(default_factory=list)  # read-model updates, applied after the state

    def get(self, table: faust.Table, key: str) -> Any:
        pending = self.writes.get(table)
        if pending is not None and key in pending:
            value = pending[key]
            return None if value is _DELETE else value
        return table.get(key)

    def put(self, table: faust.Table, key: str, value: Any) -> None:
        self.writes.setdefault(table, {})[key] = value

    def delete(self, table: faust.Table, key: str) -> None:
        self.writes.setdefault(table, {})[key] = _DELETE

    def emit(self, topic: str, record: Any) -> None:
        self.outputs.append(Output(topic, record.key.encode(), wire.encode(record)))

    def emit_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.outputs.append(Output(topic, key, value))


@dataclass
class StageStats:
    events: int = 0
    batches: int = 0
    dead_letters: int = 0
    notes: dict[str, int] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.notes[what] = self.notes.get(what, 0) + 1


#: Fault injection for tests only: ``<stage>:<n>`` makes this process exit (code 137, like kill -9) right
#: after the batch in which that stage passed n events has written its tables and flushed them, before
#: any offset commit — the worst moment for at-least-once: state ahead of offsets. Never set in production.
FAULT_ENV = "OMS_FAULT_EXIT_AFTER_STATE"


class Stage:
    """Runs a stage's handler over batches of a Faust stream with the discipline described above."""

    def __init__(self, app: faust.App, name: str) -> None:
        self.app = app
        self.name = name
        self.ctx = context(app)
        self.stats = StageStats()
        fault = os.environ.get(FAULT_ENV, "")
        self._exit_after = int(fault.split(":")[1]) if fault.startswith(f"{name}:") else None

    # -- helpers for handlers -----------------------------------------------------------------------
    def dead_letter(
        self, work: PartitionWork, event: EventT, reason: ReasonCode, detail: str, tenant: str | None = None
    ) -> None:
        msg = event.message
        key = msg.key if isinstance(msg.key, bytes | type(None)) else str(msg.key).encode()
        value = msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b"")
        letter = DeadLetter(
            dead_letter_id=dead_letter_id(msg.topic, msg.partition, msg.offset),
            reason=reason,
            detail=detail[:2000],
            stage=self.name,
            source_topic=msg.topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            key_b64=None if key is None else base64.b64encode(key).decode(),
            value_b64=base64.b64encode(value).decode(),
            tenant=tenant,
            ts=now_ms(),
        )
        work.outputs.append(Output(self.ctx.topics.dead_letters, key, wire.encode(letter)))
        self.stats.dead_letters += 1
        log.warning(
            "%s: dead letter %s at %s/%s/%s: %s",
            self.name,
            reason.value,
            msg.topic,
            msg.partition,
            msg.offset,
            detail[:200],
        )

    def decode(self, work: PartitionWork, event: EventT, typ: Any) -> Any | None:
        """The typed record, or None after dead-lettering it (bad JSON, schema violation, misrouted)."""
        try:
            record = wire.decode(event.message.value or b"", typ)
        except wire.WireError as exc:
            self.dead_letter(work, event, exc.reason, exc.detail)
            return None
        if not self.routed_here(work, event, record.key, getattr(record, "tenant", None)):
            return None
        return record

    def routed_here(self, work: PartitionWork, event: EventT, key: str, tenant: str | None = None) -> bool:
        """False (after dead-lettering) when ``key`` does not hash to the partition the record is on: a
        producer without murmur2, or the wrong key. Applying it would give the SKU or order a second writer."""
        expected = partition_for(key, self.ctx.settings.partitions)
        if expected == event.message.partition:
            return True
        detail = f"key {key!r} belongs to partition {expected}, arrived on {event.message.partition}"
        self.dead_letter(work, event, ReasonCode.MISROUTED, detail, tenant)
        return False

    # -- the loop -----------------------------------------------------------------------------------
    async def run(
        self,
        stream: StreamT,
        handle: Callable[[PartitionWork, EventT], None],
        after_commit: Callable[[PartitionWork], Any] | None = None,
        prefetch: Callable[[list[EventT]], Awaitable[None]] | None = None,
    ) -> None:
        """``prefetch`` may look things up for the whole batch before ``handle`` runs (Redis facts);
        ``after_commit`` (sync or async) runs per partition once outputs and state are written."""
        settings = self.ctx.settings
        async for events in stream.take_events(settings.batch_max, settings.batch_within_s):
            # Faust acks every event of the batch when this body ends, however it ends; if the worker is
            # being stopped mid-batch, finish the batch first, or exit without committing (replay later).
            batch = asyncio.ensure_future(self._batch(stream, events, handle, after_commit, prefetch))
            try:
                await asyncio.shield(batch)
            except asyncio.CancelledError:
                try:
                    await asyncio.wait_for(batch, timeout=30.0)
                except BaseException:
                    log.critical("%s: could not finish a batch while stopping; exiting without commit", self.name)
                    os._exit(70)
                raise
            except Exception:
                # Outside the per-event guard (table writes, sends): the batch is half done. Faust would ack
                # it and restart the agent on that state; exit instead and replay from the last commit.
                log.critical("%s: batch failed after its outputs; exiting without commit", self.name, exc_info=True)
                os._exit(70)
            if self._exit_after is not None and self.stats.events >= self._exit_after:
                await self.app.producer.flush()  # the changelog is on the broker; the offsets are not
                log.error("%s: fault injection: exiting after %d events", self.name, self.stats.events)
                os._exit(137)

    async def _batch(
        self,
        stream: StreamT,
        events: list[EventT],
        handle: Callable[[PartitionWork, EventT], None],
        after_commit: Callable[[PartitionWork], Any] | None,
        prefetch: Callable[[list[EventT]], Awaitable[None]] | None = None,
    ) -> None:
        if prefetch is not None:
            await prefetch(events)
        work: dict[int, PartitionWork] = {}
        for event in events:
            part = event.message.partition
            w = work.get(part)
            if w is None:
                w = work[part] = PartitionWork(part)
            w.last_event = event
            with event_scope(stream, event):
                try:
                    handle(w, event)
                except Exception as exc:  # a bug must not stall the partition (I6)
                    log.exception("%s: processing error", self.name)
                    self.dead_letter(w, event, ReasonCode.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
        await self.send_durably([o for w in work.values() for o in w.outputs])
        for w in work.values():
            if w.writes and w.last_event is not None:
                with event_scope(stream, w.last_event):
                    for table, writes in w.writes.items():
                        for key, value in writes.items():
                            if value is _DELETE:
                                if key in table:
                                    del table[key]
                            else:
                                table[key] = value
            if after_commit is not None:
                done = after_commit(w)
                if inspect.isawaitable(done):
                    await done
        self.stats.events += len(events)
        self.stats.batches += 1

    async def send_durably(self, outputs: list[Output]) -> None:
        """Send and wait for every ack; on failure retry the whole set (ids are deterministic, so a
        duplicate is harmless and a loss is not)."""
        if not outputs:
            return
        producer = self.app.producer
        delay = 0.2
        while True:
            try:
                futures: list[Awaitable[Any]] = [
                    await producer.send(o.topic, o.key, o.value, None, None, None) for o in outputs
                ]
                await asyncio.gather(*futures)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("%s: sending %d outputs failed (%s); retrying in %.1fs", self.name, len(outputs), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
