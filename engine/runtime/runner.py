"""The stream runtime of a worker: one consumer, one transactional producer, one thread, every stage.

Records reach a stage's logic in batches straight from librdkafka (confluent-kafka): no event, future or task
per record. Faust stays the application around it — the app and its web server (API, readiness, stats), timers,
the worker process and its signals — but its own stream delivery is not used: its per-message plumbing cost more
than the rules themselves, and around rebalances it dropped and re-delivered records, which the stages had to
defend against. The consumer here delivers each partition in offset order from where the runtime put it.

**Membership.** One consumer group (``OMS_APP_ID``) over every stage's input topics, the ``range`` assignor (all
topics have the same partition count, so a worker owns partition *p* of every input: co-keyed topics stay
together), and **static membership**: ``group.instance.id = <app id>-w<index>``. A worker killed and started
again takes its partitions back without a rebalance and without waiting out the session; its RocksDB stores are
still on disk, so its restore only reads what changed. A worker that is gone for good loses its partitions after
``OMS_SESSION_TIMEOUT_S``.

**Assignment** (in the rebalance callback, before any record of the new assignment is processed):

1. *Fence.* The transactional ids of worker slots that left the group are taken over for a moment
   (``init_transactions``): whatever a departed or paused worker left open is aborted now, not when its
   transaction times out, and nothing it does later can commit (KIP-447 refuses its offsets anyway).
2. *Wait for stable offsets.* The group's committed offsets are read with ``require_stable`` (librdkafka does so
   for a ``read_committed`` consumer): they are returned only once no transaction that sent offsets for these
   partitions is still pending.
3. *Restore.* Every table partition of the assigned partitions is read from its changelog
   (engine.state.restore) up to its end and until each stage's stored position is at least the group's
   committed offset, when that offset is one this engine committed (an operator's reset carries no tag and is
   ignored: the state's position decides, as always).
4. *Seek* every input partition to its stage's position, and hand the partitions over.

**Batches.** A batch is whatever the consumer has ready (up to ``OMS_BATCH_MAX``), waiting at most
``OMS_BATCH_WITHIN_S`` after its first record: under load batches grow while the previous one commits, idle they
go at once. Each batch is processed stage by stage, partition by partition (engine.runtime.stage) and committed as
one transaction (engine.runtime.checkpoint). A transaction that fails is rolled back and tried again; one that
keeps failing is split, record by record, and a record whose own transaction cannot commit is dead-lettered on
its own (its bytes stay in the source topic) — a poison record never stops a partition. A transaction refused
because the group moved on is given up: the rebalance that follows restores and re-reads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from engine.kafka.admin import CLIENT_LOG, admin
from engine.kafka.transactions import Aborted, Fenced, Refused, TxnProducer, transactional_id
from engine.runtime.checkpoint import OFFSETS_TAG, Checkpoint, CommitStats
from engine.runtime.fatal import SOFTWARE, TEMPORARY, fatal
from engine.runtime.faults import Fault, FaultyProducer
from engine.runtime.stage import Stage, Unit
from engine.runtime.work import Input, PartitionWork
from engine.settings import Settings
from engine.state.restore import RestoreFailed, restore
from schemas.deadletter import ReasonCode

log = logging.getLogger("oms.runtime")

#: Attempts at one transaction before its batch is split record by record.
MAX_ATTEMPTS = 4
#: Attempts at one record's own transaction before the record is dead-lettered on its own.
RECORD_ATTEMPTS = 3


@dataclass
class RuntimeStats(CommitStats):
    batches: int = 0
    assignments: int = 0
    fenced_slots: int = 0  # transactional ids of departed workers taken over (their open transactions aborted)
    restore_ms: float = 0.0  # the last assignment's fence + restore
    isolated_batches: int = 0
    standby_records: int = 0  # changelog records copied into standby stores
    standby_rounds: int = 0
    last_assigned: list[str] = field(default_factory=list)


def instance_id(app_id: str, index: int) -> str:
    return f"{app_id}-w{index}"


class StreamRuntime:
    """Every stage of one worker, on one consumer and one transactional producer, in one thread."""

    def __init__(self, settings: Settings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.instance = instance_id(settings.app_id, index)
        self.stages: list[Stage] = []
        self.by_topic: dict[str, Stage] = {}
        self.stats = RuntimeStats()
        self.ready = False
        self.generation = 0
        self.assigned: list[tuple[str, int]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = threading.Event()
        #: on stop, stay a member of the group (a restart takes the partitions back without a rebalance) rather
        #: than leave it (the partitions move to the other workers at once)
        self.keep_membership = False
        self.on_assigned: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._producer: Any = None
        self._checkpoint: Checkpoint | None = None
        self._fault = Fault.from_env()
        self._seen_slots: set[str] = set()
        #: held while stores change hands: an assignment's restore, a standby round
        self._stores_lock = threading.Lock()
        self._standby: threading.Thread | None = None

    # -- declaration --------------------------------------------------------------------------------------
    def add(self, stage: Stage) -> None:
        for topic in stage.inputs:
            other = self.by_topic.get(topic)
            if other is not None:
                raise ValueError(f"{topic} is the input of both {other.name} and {stage.name}: one writer per key")
            self.by_topic[topic] = stage
        self.stages.append(stage)

    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    def changelogs(self) -> list[str]:
        return sorted({t.changelog for s in self.stages for t in s.tables.values()})

    def active(self) -> list[str]:
        return [f"{t}/{p}" for t, p in self.assigned]

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.stages or self._thread is not None:
            return
        self.loop = loop
        self._thread = threading.Thread(target=self._main, name="oms-stream", daemon=True)
        self._thread.start()
        if self.settings.standby_replicas:
            self._standby = threading.Thread(target=self._follow_standby, name="oms-standby", daemon=True)
            self._standby.start()

    def stop(self, timeout_s: float = 30.0, keep_membership: bool = False) -> None:
        """Finish the batch in hand (its transaction commits or aborts), then leave the group (or, with
        ``keep_membership``, stay in it for a session: a restart with the same index takes the partitions back
        without a rebalance) and close."""
        self.keep_membership = self.keep_membership or keep_membership
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # outside any record's processing: the runtime itself failed
            log.exception("stream runtime failed")
            fatal(SOFTWARE, f"stream runtime failed: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        settings = self.settings
        self._new_producer()
        consumer = self._consumer = Consumer(self._consumer_config())
        consumer.subscribe(self.topics(), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        batch_max = settings.batch_max
        linger = settings.batch_within_s
        try:
            while not self.stopping.is_set():
                first = consumer.poll(0.1)
                if first is None:
                    continue
                messages = [first]
                messages += consumer.consume(batch_max - 1, timeout=0)
                if len(messages) < batch_max and linger > 0:
                    messages += consumer.consume(batch_max - len(messages), timeout=linger)
                self._batch(messages)
        finally:
            self.ready = False
            try:
                if not self.keep_membership:
                    # A static member's close() never leaves the group (KIP-345); unsubscribing first does.
                    consumer.unsubscribe()
                    consumer.poll(0.5)  # serves the revocation, then the leave goes out
                consumer.close()
            finally:
                if self._producer is not None:
                    self._producer.close()

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        session_ms = int(s.session_timeout_s * 1000)
        return {
            "bootstrap.servers": s.bootstrap,
            "group.id": s.app_id,
            "group.instance.id": self.instance,
            "client.id": self.instance,
            "partition.assignment.strategy": "range",
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(500, min(3000, session_ms // 10)),
            "max.poll.interval.ms": 300_000,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50,
            "queued.max.messages.kbytes": 32768,
            "log_level": 4,
            "logger": CLIENT_LOG,
        }

    def _new_producer(self) -> None:
        """Take this slot's transactional id (aborting whatever a dead predecessor left open)."""
        if self._producer is not None:
            self._producer.close()
        s = self.settings
        deadline = time.monotonic() + max(60.0, s.transaction_timeout_s * 2)
        while True:
            producer = TxnProducer(
                s.bootstrap, transactional_id(s.app_id, f"w{self.index}"), timeout_s=s.transaction_timeout_s
            )
            try:
                producer.init()
                break
            except Fenced as exc:
                producer.close()
                if time.monotonic() > deadline:
                    fatal(TEMPORARY, f"cannot take the transactional id: {exc}")
                log.warning("transactional id not taken yet (%s); again", exc)
                time.sleep(0.5)
        self._producer = FaultyProducer(producer, self._fault) if self._fault is not None else producer
        self._checkpoint = Checkpoint(self._producer, self._group_metadata, self.stats)

    def _group_metadata(self) -> Any:
        assert self._consumer is not None
        return self._consumer.consumer_group_metadata()

    # -- rebalances ---------------------------------------------------------------------------------------
    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.ready = False
        self.assigned = []
        for stage in self.stages:
            stage.revoke()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._stores_lock:  # a standby round in progress finishes first
            self._assign(consumer, partitions)

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        self.ready = False
        self.generation += 1
        self.stats.assignments += 1
        owned: dict[Stage, set[int]] = {}
        for tp in partitions:
            stage = self.by_topic.get(tp.topic)
            if stage is not None:
                owned.setdefault(stage, set()).add(tp.partition)
        self._fence_departed()
        committed = self._committed(consumer, partitions)
        targets = {
            (tp.topic, tp.partition): tp.offset
            for tp in committed
            if tp.offset >= 0 and (tp.metadata or "") == OFFSETS_TAG
        }
        parts = [part for stage, ps in owned.items() for part in stage.changelog_parts(ps)]

        def caught_up() -> bool:  # every stored position at least the offset this engine committed
            return all(
                self.by_topic[topic].stored_next_offset(topic, partition) >= offset
                for (topic, partition), offset in targets.items()
            )

        try:
            restored = restore(
                self.settings.bootstrap, parts, caught_up, timeout_s=self.settings.transaction_timeout_s + 60
            )
        except (RestoreFailed, KafkaException) as exc:
            fatal(TEMPORARY, f"cannot restore the tables of the assigned partitions: {exc}")
        starts = []
        for stage in self.stages:
            ps = owned.get(stage, set())
            stage.assign(ps, self.generation)
            stage.stats.restored += restored if ps else 0
        for tp in partitions:
            stage = self.by_topic.get(tp.topic)
            if stage is None:
                continue
            position = stage.position(tp.topic, tp.partition)
            group = next((c.offset for c in committed if (c.topic, c.partition) == (tp.topic, tp.partition)), -1)
            if group >= 0 and group != position:
                stage.stats.reseeks += 1  # the group's offset is not where the state is: the state decides
            starts.append(TopicPartition(tp.topic, tp.partition, position))
        consumer.assign(starts)
        self.assigned = sorted((tp.topic, tp.partition) for tp in starts)
        self.stats.restore_ms = round((time.monotonic() - started) * 1000, 1)
        self.stats.last_assigned = self.active()
        log.info(
            "generation %d: %d input partitions, %d changelog records restored in %.0f ms",
            self.generation,
            len(starts),
            restored,
            self.stats.restore_ms,
        )
        self.ready = True
        if self.loop is not None:
            for stage in self.stages:
                self.loop.call_soon_threadsafe(stage.logic.on_assigned, stage.owned())

    def _committed(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets, once stable (no pending transaction sent offsets for them)."""
        try:
            return list(consumer.committed(partitions, timeout=self.settings.transaction_timeout_s + 30))
        except KafkaException as exc:
            log.warning("committed offsets not read (%s): restoring to the changelogs' ends only", exc)
            return []

    def _fence_departed(self) -> None:
        """Abort the open transactions of worker slots that are no longer members of the group."""
        s = self.settings
        try:
            client = admin(s.bootstrap, quiet=True)
            group = client.describe_consumer_groups([s.app_id])[s.app_id].result(timeout=10)
        except Exception as exc:
            log.warning("group not described (%s): departed workers are not fenced early", exc)
            return
        members = {m.group_instance_id for m in group.members if m.group_instance_id}
        self._seen_slots |= members
        departed = sorted(self._seen_slots - members - {self.instance})
        if not departed:
            return
        prefix = f"{s.app_id}-"

        def fence(slot: str) -> str:
            producer = TxnProducer(s.bootstrap, transactional_id(s.app_id, slot[len(prefix) :]), timeout_s=30.0)
            try:
                producer.init()
            finally:
                producer.close()
            return slot

        with ThreadPoolExecutor(max_workers=len(departed)) as pool:
            for result in pool.map(lambda slot: _try(fence, slot), departed):
                if result is not None:
                    self.stats.fenced_slots += 1
                    log.warning("fenced the transactional id of %s (left the group)", result)
                    self._seen_slots.discard(result)

    # -- standby copies -------------------------------------------------------------------------------------
    def _follow_standby(self) -> None:
        """Keep every table partition this worker does not own close to its changelog, so that taking it over
        restores only what was written since the last round."""
        s = self.settings
        while not self.stopping.wait(s.standby_interval_s):
            with self._stores_lock:
                parts = [
                    part
                    for stage in self.stages
                    for part in stage.changelog_parts(set(range(s.partitions)) - stage.owned())
                ]
                try:
                    copied = restore(s.bootstrap, parts, timeout_s=60.0)
                except (RestoreFailed, KafkaException) as exc:
                    log.warning("standby round failed (%s); next round in %.0fs", exc, s.standby_interval_s)
                    continue
            self.stats.standby_records += copied
            self.stats.standby_rounds += 1

    # -- batches ------------------------------------------------------------------------------------------
    def _batch(self, messages: list[Any]) -> None:
        self.stats.batches += 1
        groups: dict[tuple[Stage, int], list[Input]] = {}
        by_topic = self.by_topic
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            stage = by_topic.get(topic)
            if stage is None or partition not in stage._owned:
                if stage is not None:
                    stage.stats.stale += 1
                continue
            if not stage.admit(topic, partition, offset):
                continue
            record = Input(topic, partition, offset, m.key(), m.value(), m.timestamp()[1], tuple(m.headers() or ()))
            key = (stage, partition)
            found = groups.get(key)
            if found is None:
                groups[key] = [record]
            else:
                found.append(record)
        if groups:
            self._commit(groups)

    def _commit(self, groups: dict[tuple[Stage, int], list[Input]]) -> None:
        units = [stage.run(partition, records) for (stage, partition), records in groups.items()]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            outcome = self._try_commit(units)
            if outcome == "committed":
                return
            if outcome == "given-up":
                self._rewind(groups)
                return
            if attempt < MAX_ATTEMPTS:
                time.sleep(min(2.0, 0.05 * 2**attempt))
        log.error("a batch of %d records did not commit after %d attempts: committing it record by record",
                  sum(len(r) for r in groups.values()), MAX_ATTEMPTS)  # fmt: skip
        self.stats.isolated_batches += 1
        self._rewind(groups)
        self._isolate(groups)

    def _try_commit(self, units: list[Unit]) -> str:
        """ "committed", "retry" (rolled back; the same units may be sent again) or "given-up" (the group moved
        on or the producer was fenced: re-read from the state)."""
        assert self._checkpoint is not None
        try:
            self._checkpoint.commit(units)
        except Fenced as exc:
            for unit in units:
                unit.stage.stats.fenced += 1
            log.warning("producer fenced (%s): a new one takes the id; the batch is read again", exc)
            self._new_producer()
            return "given-up"
        except Aborted as exc:
            for unit in units:
                unit.stage.stats.aborted += 1
            if exc.rebalance:
                for unit in units:
                    unit.stage.stats.fenced += 1
                log.warning("transaction refused by the group (%s): the batch is given up for the rebalance", exc)
                return "given-up"
            log.warning("transaction aborted (%s)", exc)
            return "retry"
        except Refused as exc:
            log.warning("a record was refused (%s): the batch is split", exc)
            return "retry"
        self._after_commit(units)
        return "committed"

    def _after_commit(self, units: list[Unit]) -> None:
        if self.loop is None:
            return
        for unit in units:
            if unit.work.side_effects:
                self.loop.call_soon_threadsafe(unit.stage.after_commit, unit)

    def _rewind(self, groups: dict[tuple[Stage, int], list[Input]]) -> None:
        """Records of a transaction that did not commit are read again from the stages' positions."""
        assert self._consumer is not None
        for (stage, partition), records in groups.items():
            for topic in {r.topic for r in records}:
                stage.rewind(topic, partition)
                if partition in stage._owned:
                    try:
                        self._consumer.seek(TopicPartition(topic, partition, stage.position(topic, partition)))
                    except KafkaException as exc:  # revoked meanwhile: the next assignment starts over
                        log.info("seek %s/%d not done: %s", topic, partition, exc)

    def _isolate(self, groups: dict[tuple[Stage, int], list[Input]]) -> None:
        """Commit a failing batch one record per transaction; a record that cannot commit alone is dead-lettered
        on its own."""
        for (stage, partition), records in groups.items():
            for record in records:
                if partition not in stage._owned or self.stopping.is_set():
                    return
                if not stage.admit(record.topic, partition, record.offset):
                    continue
                stage.stats.isolated += 1
                unit = stage.run(partition, [record])
                outcome = "retry"
                for _ in range(RECORD_ATTEMPTS):
                    outcome = self._try_commit([unit])
                    if outcome != "retry":
                        break
                if outcome == "committed":
                    continue
                if outcome == "given-up":
                    self._rewind({(stage, partition): [record]})
                    return
                letter = _letter_unit(stage, partition, record, "its transaction could not be committed")
                for _ in range(RECORD_ATTEMPTS):
                    outcome = self._try_commit([letter])
                    if outcome != "retry":
                        break
                if outcome == "given-up":
                    self._rewind({(stage, partition): [record]})
                    return
                if outcome != "committed":
                    fatal(TEMPORARY, f"not even a dead letter commits for {record.topic}/{partition}@{record.offset}")
                log.error("%s/%d@%d dead-lettered: it could not be committed", record.topic, partition, record.offset)


def _letter_unit(stage: Stage, partition: int, record: Input, why: str) -> Unit:
    """A unit that only dead-letters ``record`` and moves the position past it (no state change)."""
    work = PartitionWork(stage.name, partition, {}, {}, stage.watermarks.get(partition, 0), stage.dead_letters_topic)
    work.begin_record(record)
    work.dead_letter(record, ReasonCode.PROCESSING_ERROR, why)
    work.end_record()
    return stage.unit_of(partition, [record], work, {record.topic: record.offset + 1}, 0)


def _try(fn: Callable[[str], str], arg: str) -> str | None:
    try:
        return fn(arg)
    except Exception as exc:
        log.warning("fencing %s failed: %s", arg, exc)
        return None
