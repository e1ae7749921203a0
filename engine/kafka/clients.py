"""confluent-kafka producers and readers for everything outside a stage's own transactions.

Use ``producer()`` for every producer: it is idempotent, ``acks=all`` and partitions with murmur2 like Faust.
Readers read ``read_committed`` so that records of aborted (fenced) transactions are never counted.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from engine.kafka.admin import CLIENT_LOG, admin

PARTITIONER = "murmur2_random"


@functools.lru_cache(maxsize=1 << 16)
def partition_for(key: str | bytes, partitions: int) -> int:
    """Kafka's default (murmur2) partition for a key: where every producer must have put it. Cached: the
    hash is pure Python, and the same buyers and SKUs come back all day."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The current end offset of each partition of ``topic``."""
    consumer = _reader(bootstrap, "ends")
    try:
        return {p: watermarks(consumer, topic, p)[1] for p in range(partitions)}
    finally:
        consumer.close()


def watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets of a partition, waiting out a leader election (a topic just created)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            return int(lo), int(hi)
        except KafkaException:  # NOT_LEADER_FOR_PARTITION and the like are not flagged retriable
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def producer(bootstrap: str, **overrides: Any) -> Producer:
    """An idempotent, acks=all producer partitioning like Faust (murmur2)."""
    conf = {
        "bootstrap.servers": bootstrap,
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        "logger": CLIENT_LOG,
    }
    conf.update(overrides)
    if conf["partitioner"] != PARTITIONER:
        raise ValueError("every producer must use murmur2_random, like Faust")
    return Producer(conf)


class DeliveryFailed(RuntimeError):
    pass


class Sender:
    """Produce many records and know that all of them were delivered (or why not)."""

    def __init__(self, bootstrap: str, **overrides: Any) -> None:
        self._p = producer(bootstrap, **overrides)
        self.errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        headers: dict[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._p.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery, **extra)
                break
            except BufferError:  # local queue full: let it drain
                self._p.poll(0.05)
        self.sent += 1
        if self.sent % 1000 == 0:
            self._p.poll(0)

    def poll(self) -> None:
        """Serve delivery reports without waiting (a long-lived sender calls it now and then)."""
        self._p.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._p.flush(timeout_s)
        if remaining:
            raise DeliveryFailed(f"{remaining} records not delivered within {timeout_s}s")
        if self.errors:
            raise DeliveryFailed(f"{len(self.errors)} records failed, first: {self.errors[0]}")


class AsyncProducer:
    """confluent-kafka for asyncio callers (the HTTP API): idempotent, acks=all, murmur2. ``send`` returns
    once the broker has the record; a daemon thread serves the delivery callbacks."""

    def __init__(self, bootstrap: str, **overrides: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._p = producer(bootstrap, **{"linger.ms": 2, **overrides})
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="oms-api-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._p.poll(0.05)

    async def send(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        headers: dict[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        fut = self._loop.create_future()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            self._loop.call_soon_threadsafe(_settle, fut, err)

        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._p.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered, **extra)
                break
            except BufferError:
                await asyncio.sleep(0.01)
        await fut

    def close(self, timeout_s: float = 10.0) -> None:
        self._p.flush(timeout_s)
        self._closed.set()


def _settle(fut: asyncio.Future, err: KafkaError | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(DeliveryFailed(str(err)))


class Message(NamedTuple):
    """A record read from a topic (also what a stage's logic is given: engine.runtime.work.Input). A named tuple:
    immutable, and built for every record a worker reads, so it must be cheap to make."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


def _reader(bootstrap: str, purpose: str, **overrides: Any) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"oms-{purpose}-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "log_level": 3,
        "logger": CLIENT_LOG,
    }
    conf.update(overrides)
    return Consumer(conf)


def read_topics(
    bootstrap: str, topics: Iterable[str], timeout_s: float = 60.0, starts: dict[tuple[str, int], int] | None = None
) -> Iterator[Message]:
    """Every committed record currently in ``topics`` (from ``starts`` or the beginning) up to the end offsets
    taken when the call starts, in partition order. For checking result topics after a run."""
    topics = list(topics)
    consumer = _reader(bootstrap, "reader")
    try:
        md = consumer.list_topics(timeout=10).topics
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for t in topics:
            if t not in md:
                continue
            for p in md[t].partitions:
                lo, hi = watermarks(consumer, t, p)
                start = max(lo, (starts or {}).get((t, p), lo))
                if hi > start:
                    ends[(t, p)] = hi
                    assignment.append(TopicPartition(t, p, start))
        if not assignment:
            return
        consumer.assign(assignment)
        yield from _drain(consumer, ends, timeout_s, topics)
    finally:
        consumer.close()


def _drain(consumer: Consumer, ends: dict[tuple[str, int], int], timeout_s: float, what: Any) -> Iterator[Message]:
    """Consume until every partition in ``ends`` reached its end offset. With ``read_committed`` the last
    offsets may be transaction markers, which are never delivered: the end-of-partition event says so."""
    deadline = time.monotonic() + timeout_s
    pending = dict(ends)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {what} did not reach the end offsets: {pending}")
        for m in consumer.consume(num_messages=10_000, timeout=0.5):
            tp = (m.topic(), m.partition())
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if tp in pending and m.offset() >= pending[tp]:
                        pending.pop(tp, None)
                    continue
                raise KafkaException(m.error())
            if tp not in pending:
                continue
            yield Message(
                m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1], tuple(m.headers() or ())
            )
            if m.offset() + 1 >= pending[tp]:
                pending.pop(tp)


def tail(bootstrap: str, topics: list[str], on_message: Callable[[Message], None], stop: Callable[[], bool]) -> None:
    """Follow ``topics`` from the beginning until ``stop()`` says so (progress counting in the main job)."""
    consumer = _reader(bootstrap, "tail", **{"enable.partition.eof": False})
    consumer.subscribe(topics)
    try:
        while not stop():
            for m in consumer.consume(num_messages=5000, timeout=0.2):
                if m.error():
                    continue
                on_message(Message(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1]))
    finally:
        consumer.close()


def unprocessed(bootstrap: str, group: str, topics: Iterable[str], timeout_s: float = 60.0) -> dict[str, int]:
    """Per ``topic/partition``: committed records after consumer group ``group``'s committed offset.

    Lag from offsets alone never reaches zero when the writers are transactional (the last offset is a commit
    marker), so this reads what lies after the commit point and counts real records."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    topics = list(topics)
    client = admin(bootstrap, quiet=True)
    md = client.list_topics(timeout=10).topics
    tps = [TopicPartition(t, p) for t in topics if t in md for p in md[t].partitions]
    committed: dict[tuple[str, int], int] = {}
    fut = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group]
    for tp in fut.result().topic_partitions:
        if tp.offset >= 0:
            committed[(tp.topic, tp.partition)] = tp.offset
    counts: dict[str, int] = {}
    for m in read_topics(bootstrap, topics, timeout_s, starts=committed):
        name = f"{m.topic}/{m.partition}"
        counts[name] = counts.get(name, 0) + 1
    return counts
