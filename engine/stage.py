"""What every stage agent does around its pure core: batches, decoding, dead letters, durable outputs.

The discipline, in order, per batch:

1. decode each event; bad bytes become a dead letter (I6) and the partition moves on;
2. call the stage's core with state read through a per-partition write cache;
3. send every output and wait until the broker has acknowledged all of them;
4. only then write the new state to the tables (their changelogs).

Because outputs are durable before the state that produced them is recorded, a crash can leave a
stage's state *behind* its outputs but never ahead: a replay recomputes the same outputs (deterministic
ids; consumers dedupe) rather than skipping outputs that were never sent.

The stage also keeps, in its own ``<stage>-offsets`` table, the next input offset its state covers, per
input partition; it is written after the state is on the broker. Events are admitted strictly in offset
order against it, so the stage never depends on Faust's offset bookkeeping for correctness. That matters:
around rebalances Faust can deliver a partition with a record missing (seen here: offset 248 never
delivered, 249 next, and the commit moved past 248), and a per-origin high-water mark downstream turns
such a reorder into a silently dropped command. A jump ahead is held back (not acked) and the partition is
re-read from the expected offset; a record the state already covers is passed over.

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
from faust.types import TP, EventT, StreamT

from engine.app import active_partitions, context, state_table
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


ADMIT, COVERED, AHEAD = "admit", "covered", "ahead"


def admission(expected: int, offset: int) -> str:
    """Where a record stands against the next offset the stage's state covers: the one to process
    (``admit``), one the state already includes (``covered``), or one after a hole (``ahead``)."""
    if offset == expected:
        return ADMIT
    return COVERED if offset < expected else AHEAD


def offset_key(topic: str, partition: int) -> str:
    # Bookkeeping, not tenant data: the one kind of key here that does not start with a tenant.
    return f"{topic}/{partition}"


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
    next_offsets: dict[str, int] = field(default_factory=dict)  # input topic -> next offset, once durable

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
    covered: int = 0  # records passed over: the state already includes them (a replay after a rebalance)
    held: int = 0  # records held back behind a hole in the partition, re-read in order afterwards
    notes: dict[str, int] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.notes[what] = self.notes.get(what, 0) + 1


#: Fault injection for tests only: ``<stage>:<n>`` makes this process exit (code 137, like kill -9) right
#: after the batch in which that stage passed n events has written its tables and flushed them, before
#: any offset commit — the worst moment for at-least-once: state ahead of offsets. Never set in production.
FAULT_ENV = "OMS_FAULT_EXIT_AFTER_STATE"

#: Seconds before a re-read of a partition with a hole is asked for again.
REREAD_RETRY_S = 2.0


class Stage:
    """Runs a stage's handler over batches of a Faust stream with the discipline described above."""

    def __init__(self, app: faust.App, name: str) -> None:
        self.app = app
        self.name = name
        self.ctx = context(app)
        self.stats = StageStats()
        fault = os.environ.get(FAULT_ENV, "")
        self._exit_after = int(fault.split(":")[1]) if fault.startswith(f"{name}:") else None
        self.offsets = state_table(app, f"{name}-offsets", "input topic/partition -> next offset the state covers")
        self._rereads: dict[TP, tuple[int, float]] = {}  # partition -> (offset to re-read from, when asked)

        @app.timer(REREAD_RETRY_S)
        async def reread_holes() -> None:
            """A seek can be overtaken by records Faust fetched before it; ask again until the hole is read."""
            now = time.monotonic()
            for tp, (offset, asked) in list(self._rereads.items()):
                if now - asked >= REREAD_RETRY_S:
                    await self._reread(tp, offset, again=True)

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
        expected = await self._expected_offsets(stream, events)
        work: dict[int, PartitionWork] = {}
        holes: dict[TP, int] = {}
        for event in events:
            msg = event.message
            tp = TP(msg.topic, msg.partition)
            w = work.get(msg.partition)
            if w is None:
                w = work[msg.partition] = PartitionWork(msg.partition)
            verdict = AHEAD if tp in holes else admission(expected[tp], msg.offset)
            if verdict == COVERED:
                self.stats.covered += 1
                continue
            if verdict == AHEAD:
                # Not acked: Faust must not commit past the hole. The re-read delivers it again in order.
                msg.acked = True
                if tp not in holes:
                    holes[tp] = expected[tp]
                    if self._rereads.get(tp, (None,))[0] != expected[tp]:  # once per hole; the retry says the rest
                        log.warning(
                            "%s: %s/%s: offset %s arrived while %s is next (Faust committed %s); re-reading from %s",
                            self.name,
                            msg.topic,
                            msg.partition,
                            msg.offset,
                            expected[tp],
                            self.app.consumer._committed_offset.get(tp),
                            expected[tp],
                        )
                self.stats.held += 1
                continue
            w.last_event = event
            with event_scope(stream, event):
                try:
                    handle(w, event)
                except Exception as exc:  # a bug must not stall the partition (I6)
                    log.exception("%s: processing error", self.name)
                    self.dead_letter(w, event, ReasonCode.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
            expected[tp] = msg.offset + 1
            w.next_offsets[msg.topic] = msg.offset + 1
            self._rereads.pop(tp, None)
        await self.send_durably([o for w in work.values() for o in w.outputs])
        wrote_state = False
        for w in work.values():
            if w.writes and w.last_event is not None:
                wrote_state = True
                with event_scope(stream, w.last_event):
                    for table, writes in w.writes.items():
                        for key, value in writes.items():
                            if value is _DELETE:
                                if key in table:
                                    del table[key]
                            else:
                                table[key] = value
        if wrote_state:
            await self.app.producer.flush()  # the state is on the broker before the offsets that cover it
        for w in work.values():
            if w.next_offsets and w.last_event is not None:
                with event_scope(stream, w.last_event):
                    for topic, offset in w.next_offsets.items():
                        self.offsets[offset_key(topic, w.partition)] = offset
            if after_commit is not None:
                done = after_commit(w)
                if inspect.isawaitable(done):
                    await done
        for tp, offset in holes.items():
            asked = self._rereads.get(tp)
            if asked is None or asked[0] != offset:  # the same re-read is asked again by the timer only
                await self._reread(tp, offset)
        self.stats.events += len(events)
        self.stats.batches += 1

    async def _expected_offsets(self, stream: StreamT, events: list[EventT]) -> dict[TP, int]:
        """The next offset the state covers, per partition in the batch. A partition the state has never
        seen starts at its log start; so does one whose expected records were deleted by retention (said
        loudly: they were never processed)."""
        expected: dict[TP, int] = {}
        first: dict[TP, int] = {}
        for event in events:
            msg = event.message
            tp = TP(msg.topic, msg.partition)
            if tp in first:
                continue
            first[tp] = msg.offset
            with event_scope(stream, event):
                stored = self.offsets.get(offset_key(msg.topic, msg.partition))
            if stored is not None:
                expected[tp] = int(stored)
        unsure = [tp for tp, offset in first.items() if tp not in expected or offset > expected[tp]]
        if unsure:
            starts = await self.app.consumer.earliest_offsets(*unsure)
            for tp in unsure:
                start = int(starts.get(tp, 0) or 0)
                if tp in expected and start > expected[tp]:
                    log.error(
                        "%s: %s/%s: records %s..%s were deleted (retention) before this stage read them",
                        self.name,
                        tp.topic,
                        tp.partition,
                        expected[tp],
                        start - 1,
                    )
                expected[tp] = max(expected.get(tp, 0), start)
        return expected

    async def _reread(self, tp: TP, offset: int, again: bool = False) -> None:
        """Seek ``tp`` back to ``offset`` (the first record the state does not cover)."""
        if tp not in active_partitions(self.app):
            self._rereads.pop(tp, None)  # revoked: the next owner starts from its own state
            return
        if again:
            log.warning("%s: %s/%s: offset %s still not read; seeking to it again", self.name, *tp, offset)
        self._rereads[tp] = (offset, time.monotonic())
        try:
            await self.app.consumer.seek(tp, offset)
        except Exception as exc:  # revoked under our feet: the timer retries or forgets it
            log.warning("%s: seek %s/%s -> %s failed: %s", self.name, tp.topic, tp.partition, offset, exc)

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
