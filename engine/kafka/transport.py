"""Faust's aiokafka transport, adapted to stages that own their offsets and write in transactions.

What changes, and why:

* **read_committed.** Every stage writes its outputs and changelogs in transactions; a fenced writer's records
  are aborted and must never be read — not by a stage, not by a table restore, not by a standby.
* **Read epochs.** Around rebalances Faust can hand a stream records that were fetched before a seek (seen
  here: a partition resumed three records past its state) and it silently drops records when its flow stops
  or its generation changes. Every seek therefore starts a new *read epoch* for its partition, recorded with
  the offset it sought to, and every record is stamped, in the consumer's own thread, with the epoch it was
  fetched in. A record of an older epoch is stale; a record whose epoch began at an unknown or too-late
  offset is not trusted. Within an epoch aiokafka delivers in offset order from the seek target, so a stage
  may accept gaps there: they are transaction markers and aborted records (engine.runtime.admission). Faust
  also empties its stream queues when flow resumes, after its own seek: that too ends the read epochs.
* **Offsets are the stages'.** A stage's input position is part of its state, written in the same
  transaction as its outputs. Faust's own acking is off for stage inputs; the periodic commit here commits the
  positions the stages report (for lag tooling and for where a partition starts reading after a rebalance).
* **Seeks run in the consumer's thread** (Faust's ran aiokafka's seek from the caller's thread and crashed the
  fetcher with a KeyError in ``fetched_records``), and a partition with no commit is sent to its beginning
  (aiokafka's ``seek_to_committed`` skips it and leaves whatever position table recovery reached).

Selected by the broker URL scheme ``oms+kafka://`` (engine.app). engine.tripwire checks at start-up that the
Faust and aiokafka internals touched here are the ones this was written against.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as base
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage

SCHEME = "oms+kafka"
log = logging.getLogger("oms.transport")


class SeekLedger:
    """Per partition: the current read epoch and the offset its seek started at (None: not known).

    Written from the consumer thread (seeks, rebalances) and the main thread (dropped records); read from
    both. A lock keeps the pair consistent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[TP, tuple[int, int | None]] = {}
        self._counter = 0

    def begin(self, tp: TP, start: int | None) -> int:
        with self._lock:
            self._counter += 1
            self._epochs[_tp(tp)] = (self._counter, start)
            return self._counter

    def current(self, tp: TP) -> tuple[int, int | None]:
        with self._lock:
            return self._epochs.get(_tp(tp), (0, None))

    def epoch(self, tp: TP) -> int:
        with self._lock:
            return self._epochs.get(_tp(tp), (0, None))[0]


def _tp(tp: Any) -> TP:
    return tp if type(tp) is TP else TP(tp.topic, tp.partition)


class StageMessage(ConsumerMessage):
    """A consumed record with the read epoch it was fetched in and its timestamp in integer milliseconds."""

    __slots__ = ("epoch", "timestamp_ms")

    epoch: int
    timestamp_ms: int


class ConsumerThread(base.AIOKafkaConsumerThread):
    @property
    def ledger(self) -> SeekLedger:
        return self.consumer.ledger  # type: ignore[attr-defined,no-any-return]

    def _create_worker_consumer(self, transport: Any) -> Any:
        # Faust's only switch to read_committed is its exactly-once mode, which brings its transaction manager
        # along; flip the flag for the consumer's construction alone.
        saved = self.consumer.in_transaction
        self.consumer.in_transaction = True
        try:
            return super()._create_worker_consumer(transport)
        finally:
            self.consumer.in_transaction = saved

    def highwater(self, tp: TP) -> int:
        return self._ensure_consumer().last_stable_offset(tp)  # type: ignore[no-any-return]

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_or_reset)

    async def _seek_to_committed_or_reset(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        unpositioned = [tp for tp, offset in committed.items() if not offset]  # None (no commit) or 0
        starts = {tp: offset for tp, offset in committed.items() if offset}
        if unpositioned:
            # Look the offsets up and seek() to them: seek_to_beginning() would leave the position unset until
            # its lookup returns, and Faust's livelock check asserts a position in that window.
            if self.app.conf.consumer_auto_offset_reset == "latest":
                targets = await consumer.end_offsets(unpositioned)
            else:
                targets = await consumer.beginning_offsets(unpositioned)
            for tp, offset in targets.items():
                consumer.seek(tp, offset)
                starts[tp] = offset
        for tp, offset in starts.items():
            self.ledger.begin(tp, offset)
        return committed

    def seek(self, partition: TP, offset: int) -> None:
        self._ensure_consumer().seek(partition, offset)
        self.ledger.begin(partition, offset)

    async def _seek_wait(self, consumer: Any, partitions: Mapping[TP, int]) -> None:
        await super()._seek_wait(consumer, partitions)
        for tp, offset in partitions.items():
            self.ledger.begin(tp, offset)

    async def seek_to_beginning(self, *partitions: Any) -> None:
        await super().seek_to_beginning(*partitions)
        for tp in partitions:
            self.ledger.begin(tp, None)

    async def _fetch_records(self, consumer: Any, active_partitions: Any, **kwargs: Any) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, **kwargs)
        # Stamp in this thread, before a later seek here can start a new epoch for these partitions.
        ledger = self.ledger
        for tp, batch in records.items():
            epoch = ledger.epoch(tp)
            for record in batch:
                record.oms_epoch = epoch
        return records

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.ledger.begin(tp, None)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        for tp in assigned:
            self.ledger.begin(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)

    def verify_event_path(self, now: float, tp: TP) -> None:
        # Faust's livelock warnings are built on its acks, which stages do not use; the stages watch their
        # own progress (engine.runtime.stage).
        return None


class _NoReadFilter(dict):
    """Faust's per-partition "read offset" answers "unknown", for every partition.

    Faust drops every delivered record below it as already read, and books a jump past it as a gap that the
    commit may skip; both lost records here. Stages admit records by read epoch and offset instead."""

    def __getitem__(self, tp: TP) -> None:
        return None


PositionSource = Callable[[], Mapping[TP, int]]


class Consumer(base.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ledger = SeekLedger()
        self.position_sources: list[PositionSource] = []
        super().__init__(*args, **kwargs)
        self._read_offset = _NoReadFilter()
        flow = self.app.flow_control
        clear = flow.clear

        def clear_and_forget() -> None:
            clear()
            self._forget_queued()

        flow.clear = clear_and_forget  # type: ignore[method-assign]

    def _forget_queued(self) -> None:
        """Faust empties every stream's queue whenever its flow resumes (in recovery, *after* seeking the
        partitions) and on revocation: records already handed over vanish, and the next ones would look like a
        gap of transaction markers. End the read epoch of every assigned partition instead, so that the next
        record read is not trusted and its stage seeks back to its position: nothing is skipped."""
        try:
            assignment = self.assignment()
        except Exception:  # not started, or stopping
            return
        for tp in assignment:
            self.ledger.begin(tp, None)

    def _new_consumer_thread(self) -> base.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _seek(self, partition: TP, offset: int) -> None:
        await self._thread.call_thread(self._thread.seek, partition, offset)

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        timestamp = record.timestamp
        message = StageMessage(
            record.topic,
            record.partition,
            record.offset,
            None if timestamp is None else timestamp / 1000.0,
            record.timestamp_type,
            record.headers,
            record.key,
            record.value,
            record.checksum,
            record.serialized_key_size,
            record.serialized_value_size,
            tp,
            generation_id=self.app.consumer_generation_id,
        )
        message.epoch = getattr(record, "oms_epoch", -1)
        message.timestamp_ms = int(timestamp or 0)
        return message

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's round-robin delivery, except that a record Faust drops (its flow stopped, its generation
        changed, its partition is not active) ends its partition's read epoch instead of vanishing."""
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        dropped: set[TP] = set()
        records_it = self.scheduler.iterate(records)
        to_message = self._to_message
        try:
            if not self.flow_active:
                dropped.update(records)
                try:
                    await self.perform_seek()
                except Exception as exc:
                    self.log.warning(f"exception performing seek when flow not active {exc}")
                return
            for tp, record in records_it:
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    dropped.add(tp)
                    dropped.update(t for t, _ in records_it)
                    break
                if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    yield tp, to_message(tp, record)
                else:
                    dropped.add(tp)
        finally:
            dropped.update(t for t, _ in records_it)  # left undelivered (the caller stopped iterating)
            for tp in dropped:
                self.ledger.begin(tp, None)

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Commit the input positions the stages report (never past what a stage has durably processed)."""
        try:
            assignment = self.assignment()
        except Exception:  # not started, or stopping: nothing to commit
            return False
        offsets: dict[TP, int] = {}
        for source in self.position_sources:
            for tp, offset in source().items():
                if tp in assignment and offset != self._committed_offset.get(tp):
                    offsets[tp] = offset
        if not offsets:
            return False
        try:
            did = await self._commit(offsets)
        except Exception as exc:  # a rebalance under way: the next owner commits its own positions
            self.log.info("commit of stage positions skipped: %r", exc)
            return False
        if did:
            self._committed_offset.update(offsets)
        return bool(did)


class Transport(base.Transport):
    Consumer = Consumer


def register() -> None:
    TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
