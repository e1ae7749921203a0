"""A stage on Kafka: a Faust agent that runs a :class:`~engine.runtime.work.Logic` one transaction per input
partition per batch.

Per batch:

1. **Admit** each record against the position its partition's state covers (engine.runtime.admission): stale
   and covered records are skipped, a record of an untrusted read epoch makes the partition seek back.
2. **Process** the admitted records of each partition with the logic, one savepoint per record: a record
   whose processing raises is undone and dead-lettered (``processing_error``), and the partition moves on.
3. **Commit** one transaction per partition, with that partition's producer (engine.kafka.transactions):
   the outputs, the changelog record of every table key written, and the new position. It commits whole or
   not at all, and a worker that lost the partition cannot commit it (fencing).
4. **Apply** the same changelog bytes to the local table store, then hand read-model updates to the logic.

A crash at any point leaves either the whole transaction or none of it: the next owner restores the tables
from the changelogs (``read_committed``) and continues from the position they hold — the same state, the same
next record, and therefore the same outputs (I7).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
import msgspec
from faust.types import TP, EventT, StreamT

from engine.app import context, request_rejoin
from engine.kafka.clients import holds_records
from engine.kafka.transactions import Aborted, Fenced, TxnProducer, transactional_id
from engine.runtime.admission import Cursor, Verdict, judge
from engine.runtime.faults import Fault
from engine.runtime.work import (
    ExpiryIndex,
    Input,
    Logic,
    PartitionWork,
    apply_locally,
    rebuild_expiry,
    run_records,
)
from engine.state.store import PartitionStore, store_of
from engine.state.tables import changelog_name, declare_table
from schemas import wire

log = logging.getLogger("oms.stage")

#: Attempts at one transaction that keeps aborting (a broker hiccup) before the worker gives up and exits.
MAX_ATTEMPTS = 8
#: Re-reads of a partition stuck behind its stable end before the worker exits to be started afresh.
MAX_REREADS = 2


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
    stale: int = 0
    reseeks: int = 0
    gaps: int = 0
    transactions: int = 0
    commit_ms_sum: float = 0.0  # time spent in commit_transaction (the cost of the durability barrier)
    commit_ms_max: float = 0.0
    aborted: int = 0
    fenced: int = 0
    dead_letters: int = 0
    purged: int = 0
    notes: dict[str, int] = field(default_factory=dict)
    first_admitted: dict[str, int] = field(default_factory=dict)  # topic/partition -> first offset since start
    last_admitted: dict[str, int] = field(default_factory=dict)
    #: topic/partition -> first offset admitted since the partition was last assigned here (what a takeover read)
    since_assigned: dict[str, int] = field(default_factory=dict)
    admitted_by_partition: dict[str, int] = field(default_factory=dict)  # topic/partition -> records, since start
    generation: int = 0  # the last rebalance generation whose partitions' transactional ids this worker took
    gauges: dict[str, int] = field(default_factory=dict)  # current values a stage's logic reports

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Stage:
    """Runs one :class:`Logic` as a Faust agent with the protocol above."""

    def __init__(self, app: faust.App, logic: Logic) -> None:
        self.app = app
        self.logic = logic
        self.name = logic.name
        self.ctx = context(app)
        settings = self.ctx.settings
        self.partitions = settings.partitions
        self.inputs = tuple(logic.inputs)
        self.positions_table = f"{self.name}-positions"
        self.tables = {
            name: declare_table(app, name, self.partitions, f"{self.name} state: {name}")
            for name in (*logic.tables, self.positions_table)
        }
        self._stores: dict[str, PartitionStore] = {}
        self.producers: dict[int, TxnProducer] = {}
        self.cursors: dict[TP, Cursor] = {}
        self.durable: dict[TP, int] = {}  # committed positions, for the group offset commit
        self.watermarks: dict[int, int] = {}
        self.expiry: dict[int, dict[str, ExpiryIndex]] = {}
        self.stats = StageStats()
        self.ctx.stages[self.name] = self
        self.fault = Fault.from_env(self.name)
        self.busy = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max(2, self.partitions), thread_name_prefix=f"{self.name}-txn")
        self._progress: dict[TP, tuple[int, float]] = {}
        self._rereads: dict[TP, int] = {}  # re-reads of a stuck partition since it last moved
        self._empty_tail: dict[TP, tuple[int, int]] = {}  # (position, stable end) with nothing committed between
        self._registered = False
        app.tables.before_recovery.append(self._on_assignment)  # type: ignore[attr-defined]
        app.on_partitions_revoked.connect(self._on_revoked)
        topic = app.topic(*self.inputs, key_type=bytes, value_type=bytes, partitions=self.partitions, acks=False)

        @app.agent(topic, name=self.name, concurrency=1)
        async def agent(stream: StreamT) -> None:
            await self.run(stream)

        @app.timer(5.0)
        async def watch_progress() -> None:
            await self._watch_progress()

    # -- stores ----------------------------------------------------------------------------------------
    def store(self, table: str) -> PartitionStore:
        found = self._stores.get(table)
        if found is None:
            found = self._stores[table] = store_of(self.tables[table])
        return found

    # -- rebalances ------------------------------------------------------------------------------------
    async def _on_assignment(self, assigned: set[TP], revoked: set[TP], generation: int) -> None:
        """Before table recovery: take the transactional id of every input partition now owned (fencing
        whoever held it), and forget everything cached about partitions (they restore from the changelog)."""
        if not self._registered:
            self.app.consumer.position_sources.append(self.durable_positions)  # type: ignore[attr-defined]
            self._registered = True
        mine = sorted({tp.partition for tp in assigned if tp.topic in self.inputs})
        async with self.busy:
            old, self.producers = self.producers, {}
            self._forget(set(range(self.partitions)))
            self.stats.since_assigned.clear()
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._executor, p.close) for p in old.values()))
            fresh = {
                p: TxnProducer(
                    self.ctx.settings.bootstrap,
                    transactional_id(self.ctx.settings.app_id, self.name, p),
                    timeout_s=self.ctx.settings.transaction_timeout_s,
                )
                for p in mine
            }
            started = time.monotonic()
            results = await asyncio.gather(
                *(loop.run_in_executor(self._executor, prod.init) for prod in fresh.values()), return_exceptions=True
            )
            for (p, prod), result in zip(fresh.items(), results, strict=True):
                if isinstance(result, BaseException):
                    log.critical("%s: cannot take the transactional id of partition %d: %s", self.name, p, result)
                    os._exit(70)  # the supervisor starts a fresh worker
                self.producers[p] = prod
            self.logic.on_assigned(set(mine))
            self.stats.generation = generation  # only now: every earlier holder of these partitions is fenced
            log.info(
                "%s: generation %d: own partitions %s (fenced earlier holders in %.0f ms)",
                self.name,
                generation,
                mine,
                (time.monotonic() - started) * 1000,
            )

    async def _on_revoked(self, app: Any, revoked: set[TP], **_: Any) -> None:
        lost = {tp.partition for tp in revoked if tp.topic in self.inputs}
        if not lost:
            return
        async with self.busy:  # an in-flight transaction finishes first
            for p in lost:
                producer = self.producers.pop(p, None)
                if producer is not None:
                    await asyncio.get_running_loop().run_in_executor(self._executor, producer.close)
            self._forget(lost)

    def _forget(self, partitions: set[int]) -> None:
        for tp in [tp for tp in self.cursors if tp.partition in partitions]:
            self.cursors.pop(tp)
            self.durable.pop(tp, None)
        for p in partitions:
            self.watermarks.pop(p, None)
            self.expiry.pop(p, None)

    def _lose(self, partition: int, why: Exception) -> None:
        """This worker was fenced for ``partition``: another owner took it. Write nothing more for it until a
        rebalance assigns it here again (with a fresh transactional id and restored tables)."""
        self.stats.fenced += 1
        producer = self.producers.pop(partition, None)
        self._forget({partition})
        log.warning(
            "%s: partition %d: fenced, dropping its work until the next assignment (%s)", self.name, partition, why
        )
        if producer is not None:
            asyncio.get_running_loop().run_in_executor(self._executor, producer.close)
        # Ask for a rebalance: if nobody else owns the partition, it comes back here with restored tables.
        request_rejoin(self.app)

    def durable_positions(self) -> dict[TP, int]:
        return dict(self.durable)

    def owned(self) -> set[int]:
        """The input partitions this worker writes for now."""
        return set(self.producers)

    # -- per-partition state loaded lazily ---------------------------------------------------------------
    def _cursor(self, tp: TP) -> Cursor:
        cursor = self.cursors.get(tp)
        if cursor is None:
            position = self._stored_position(tp)
            offset = position.next_offset if position is not None else 0
            cursor = self.cursors[tp] = Cursor(offset)
            self.durable[tp] = offset
            if position is not None:
                self.watermarks[tp.partition] = max(self.watermarks.get(tp.partition, 0), position.watermark)
        return cursor

    def _stored_position(self, tp: TP) -> Position | None:
        raw = self.store(self.positions_table).get(tp.partition, position_key(tp.topic, tp.partition))
        if raw is None:
            return None
        position = wire.decode_state(raw, Position)
        epoch = self.ctx.topic_epochs.get(tp.topic)
        if epoch is not None and position.topic_epoch != epoch:
            log.error(
                "%s: %s/%d was recreated (incarnation %s, state knew %s): reading it from its beginning",
                self.name,
                tp.topic,
                tp.partition,
                epoch,
                position.topic_epoch,
            )
            return Position(0, position.watermark, epoch)
        return position

    def _expiry(self, partition: int) -> dict[str, ExpiryIndex]:
        found = self.expiry.get(partition)
        if found is None:
            stores = {t: self.store(t) for t in self.logic.tables}
            found = self.expiry[partition] = rebuild_expiry(self.logic, stores, partition)
        return found

    # -- the loop ---------------------------------------------------------------------------------------
    async def run(self, stream: StreamT) -> None:
        settings = self.ctx.settings
        async for events in stream.take_events(settings.batch_max, settings.batch_within_s):
            async with self.busy:
                batch = asyncio.ensure_future(self._batch(events))
                try:
                    reseeks = await asyncio.shield(batch)
                except asyncio.CancelledError:
                    try:
                        await asyncio.wait_for(batch, timeout=30.0)
                    except BaseException:
                        log.critical("%s: could not finish a batch while stopping; exiting", self.name)
                        os._exit(70)
                    raise
                except Exception:
                    # Outside the per-record guard: a bug in the runtime. Exit; the transaction is either
                    # committed or aborted, and the next owner continues from the committed position.
                    log.critical("%s: batch failed; exiting", self.name, exc_info=True)
                    os._exit(70)
            # Seeks run in the consumer's thread, which a rebalance holds while it waits for the rebalance
            # callbacks here, and those wait for ``busy``: never seek while holding it.
            await self._seek_back(reseeks)

    async def _seek_back(self, reseeks: dict[TP, int]) -> None:
        for tp, offset in reseeks.items():
            log.info("%s: %s/%d: reading again from %d (state position)", self.name, tp.topic, tp.partition, offset)
            try:
                await self.app.consumer.seek(tp, offset)
            except Exception as exc:  # revoked meanwhile: the next assignment starts over
                log.warning("%s: seek %s/%d -> %d failed: %s", self.name, tp.topic, tp.partition, offset, exc)

    async def _batch(self, events: list[EventT]) -> dict[TP, int]:
        ledger = self.app.consumer.ledger  # type: ignore[attr-defined]
        admitted: dict[int, list[Input]] = {}
        reseeks: dict[TP, int] = {}
        for event in events:
            msg = event.message
            tp = msg.tp
            if msg.partition not in self.producers:
                self.stats.stale += 1  # not ours (any more)
                continue
            cursor = self._cursor(tp)
            epoch, start = ledger.current(tp)
            verdict = judge(cursor, msg.offset, getattr(msg, "epoch", -1), epoch, start)
            if verdict is Verdict.STALE:
                self.stats.stale += 1
            elif verdict is Verdict.RESEEK:
                if cursor.reseek_epoch != epoch:
                    cursor.reseek_epoch = epoch
                    reseeks[tp] = cursor.position
                    self.stats.reseeks += 1
            elif verdict is Verdict.COVERED:
                self.stats.covered += 1
            else:
                if msg.offset > cursor.position:
                    self.stats.gaps += 1
                cursor.position = msg.offset + 1
                admitted.setdefault(msg.partition, []).append(
                    Input(
                        msg.topic,
                        msg.partition,
                        msg.offset,
                        msg.key,
                        msg.value,
                        getattr(msg, "timestamp_ms", int((msg.timestamp or 0) * 1000)),
                        tuple(msg.headers or ()),
                    )
                )
        if admitted:
            await asyncio.gather(*(self._transaction(p, records) for p, records in admitted.items()))
        self.stats.batches += 1
        return reseeks

    async def _transaction(self, partition: int, records: list[Input]) -> None:
        producer = self.producers.get(partition)
        if producer is None:
            return
        first_watermark = self.watermarks.get(partition, 0)
        work = PartitionWork(
            self.name,
            partition,
            {t: self.store(t) for t in self.logic.tables},
            self._expiry(partition),
            first_watermark,
            self.ctx.topics.dead_letters,
        )
        next_offsets = run_records(self.logic, work, records)
        purged = work.purge_expired()
        epochs = self.ctx.topic_epochs
        positions = {
            position_key(topic, partition): wire.encode(Position(offset, work.watermark, epochs.get(topic, "")))
            for topic, offset in next_offsets.items()
        }
        delivered: dict[str, int] = {}
        changelog = [
            (table, changelog_name(self.app, table), writes) for table, writes in work.writes.items() if writes
        ]
        changelog.append((self.positions_table, changelog_name(self.app, self.positions_table), positions))
        offsets = {topic: [r.offset for r in records if r.topic == topic] for topic in next_offsets}
        loop = asyncio.get_running_loop()
        reached = self.stats.admitted + len(records)  # for fault injection: records admitted by this commit
        fault = self.fault
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                producer.begin()
                total = len(work.outputs) + sum(len(w) for _, _, w in changelog)
                for sent, out in enumerate(work.outputs, 1):
                    producer.produce(out.topic, out.key, out.value, out.partition, out.headers)
                    if fault and sent * 2 >= total and fault.armed("mid-send", reached):
                        fault.fire(partition, offsets, len(records))
                for table, topic, writes in changelog:
                    last = len(writes) - 1
                    for i, (key, value) in enumerate(writes.items()):
                        callback = _offset_recorder(delivered, table) if i == last else None
                        producer.produce(topic, key, value, partition, on_delivery=callback)
                for step in ("before-commit", "pause"):
                    if fault and fault.armed(step, reached):
                        fault.fire(partition, offsets, len(records))
                started = time.monotonic()
                await loop.run_in_executor(self._executor, producer.commit)
                spent = (time.monotonic() - started) * 1000
                self.stats.commit_ms_sum += spent
                self.stats.commit_ms_max = max(self.stats.commit_ms_max, spent)
                break
            except Aborted as exc:
                self.stats.aborted += 1
                log.warning(
                    "%s: partition %d: transaction aborted (attempt %d): %s", self.name, partition, attempt, exc
                )
                if attempt == MAX_ATTEMPTS:
                    log.critical(
                        "%s: partition %d: giving up after %d attempts; exiting", self.name, partition, attempt
                    )
                    os._exit(70)
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                delivered.clear()
            except Fenced as exc:
                self._lose(partition, exc)
                return
        if fault and fault.armed("after-commit", reached):
            fault.fire(partition, offsets, len(records))
        # Committed: the local store gets the same bytes the changelog holds.
        self.store(self.positions_table).apply(partition, positions, delivered.get(self.positions_table))
        apply_locally(work, delivered)
        self.watermarks[partition] = work.watermark
        for topic, offset in next_offsets.items():
            self.durable[TP(topic, partition)] = offset
        self._account(work, records, purged)
        if fault and fault.armed("after-apply", reached):
            fault.fire(partition, offsets, len(records))
        if work.side_effects:
            self.logic.after_commit(partition, work.side_effects)

    def _account(self, work: PartitionWork, records: list[Input], purged: int) -> None:
        stats = self.stats
        stats.transactions += 1
        stats.admitted += len(records)
        stats.dead_letters += len(work.dead_letters)
        stats.purged += purged
        for what, n in work.notes.items():
            stats.notes[what] = stats.notes.get(what, 0) + n
        now = time.monotonic()
        for record in records:
            name = f"{record.topic}/{record.partition}"
            stats.first_admitted.setdefault(name, record.offset)
            stats.since_assigned.setdefault(name, record.offset)
            stats.admitted_by_partition[name] = stats.admitted_by_partition.get(name, 0) + 1
            stats.last_admitted[name] = record.offset
            self._progress[TP(record.topic, record.partition)] = (record.offset, now)

    # -- a safety net for partitions whose fetching stalled ---------------------------------------------
    async def _watch_progress(self, stall_s: float = 30.0) -> None:
        """A partition with records beyond the position that has not moved for ``stall_s`` is read again from
        the position (aiokafka has been seen to stop fetching a partition after a rebalance). A re-read that
        was not needed costs nothing: the records the state covers are skipped. Offsets beyond the position that
        hold only markers and aborted records (a crashed writer's tail) are looked at once, and are not a stall."""
        if self.app.in_recovery or not self.app.tables.recovery.completed.is_set():
            return
        consumer = self.app.consumer
        now = time.monotonic()
        stalled = {}
        # Every input partition owned, whether or not a record of it ever arrived: a partition Faust never
        # delivers from has no cursor yet, and would otherwise never be seen as stuck.
        for tp in [TP(topic, p) for p in sorted(self.producers) for topic in self.inputs]:
            cursor = self.cursors.get(tp)
            if cursor is not None:
                position = cursor.position
            else:  # not cached: a cursor is made by the first batch, from the restored state
                stored = self._stored_position(tp)
                position = stored.next_offset if stored is not None else 0
            try:
                # The last stable offset: records of a transaction still open upstream are not late, just unread.
                stable = consumer._thread._ensure_consumer().last_stable_offset(tp)  # type: ignore[attr-defined]
            except Exception:
                continue
            # Beyond the position there are always transaction markers: a few offsets mean nothing.
            if stable is None or stable <= position + 2:
                self._progress.pop(tp, None)
                continue
            offset, since = self._progress.get(tp, (position, now))
            if offset != position or tp not in self._progress:
                self._progress[tp] = (position, now)
                self._rereads.pop(tp, None)
                continue
            if now - since >= stall_s and self._empty_tail.get(tp) == (position, stable):
                continue  # known: only markers and aborted records lie beyond the position
            if now - since >= stall_s and not await asyncio.to_thread(
                holds_records, self.ctx.settings.bootstrap, tp.topic, tp.partition, position, stable
            ):
                self._empty_tail[tp] = (position, stable)  # an aborted transaction's tail: nothing is late
                self._progress[tp] = (position, now)
                continue
            if now - since >= stall_s and self._rereads.get(tp, 0) >= MAX_REREADS:
                # Reading again did not help: the consumer keeps this partition's records from the stage (seen
                # after rebalances: fetched, then dropped as not active). A fresh worker gets a fresh consumer.
                log.critical(
                    "%s: %s/%d is stuck at %d (stable end %d) after %d re-reads; exiting so that the worker is "
                    "started again",
                    self.name,
                    tp.topic,
                    tp.partition,
                    position,
                    stable,
                    MAX_REREADS,
                )
                logging.shutdown()
                os._exit(75)
            if now - since >= stall_s:
                self._rereads[tp] = self._rereads.get(tp, 0) + 1
                log.warning(
                    "%s: %s/%d has not moved from %d for %.0fs (stable end %d; %s): reading it again",
                    self.name,
                    tp.topic,
                    tp.partition,
                    position,
                    now - since,
                    stable,
                    unblock(consumer, tp),
                )
                self._progress[tp] = (position, now)
                stalled[tp] = position
        await self._seek_back(stalled)  # not under ``busy`` (see run)


def unblock(consumer: Any, tp: TP) -> str:
    """Why Faust's consumer holds back ``tp`` (recovery done, the partition ours), and the repair. Faust keeps a
    set of "active" partitions, leaving out the paused ones and those whose stream buffer was full; a rebalance
    that lands between "buffer full" and "buffer drained" leaves the partition out for good (its records are
    fetched, then dropped). Putting it back is what Faust itself does when the buffer drains."""
    active = consumer._get_active_partitions()
    paused, buffered = consumer._paused_partitions, consumer._buffered_partitions
    found = f"active={tp in active} paused={tp in paused} buffered={tp in buffered}"
    if tp not in active or tp in paused:
        buffered.discard(tp)
        consumer.resume_partitions({tp})
        found += ": resumed"
    return found


def _offset_recorder(delivered: dict[str, int], table: str) -> Any:
    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            delivered[table] = msg.offset()

    return on_delivery
