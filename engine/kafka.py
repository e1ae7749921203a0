"""confluent-kafka helpers for everything outside Faust: admin, producers, and reading topics back.

Every producer made here partitions with ``murmur2_random`` — the Java/aiokafka partitioner that Faust
uses — so a key lands on the same partition whoever writes it (DESIGN.md §5). Use ``producer()``; never
build a confluent-kafka Producer by hand.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONER = "murmur2_random"


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached; the message says where we looked."""


def admin(bootstrap: str, quiet: bool = False) -> AdminClient:
    """``quiet`` silences librdkafka's own connection log, for probes that report failure themselves."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000}
    if quiet:
        conf["log_level"] = 0
    return AdminClient(conf)


def wait_for_broker(bootstrap: str, timeout_s: float = 60.0) -> dict[int, str]:
    """A real metadata round trip: returns {broker id: host:port} or raises KafkaUnavailable."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    client = admin(bootstrap, quiet=True)
    while time.monotonic() < deadline:
        try:
            md = client.list_topics(timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            if md.brokers:
                return {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}
        except KafkaException as exc:
            last = exc
        time.sleep(0.3)
    raise KafkaUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s ({last})")


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    replication: int = 1,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (with their partition count); returns the created ones.
    An existing topic with a different partition count is an error: it would remap keys."""
    client = admin(bootstrap)
    names = list(names)
    existing = client.list_topics(timeout=10).topics
    for name in names:
        if name in existing and len(existing[name].partitions) != partitions:
            raise ValueError(f"topic {name} has {len(existing[name].partitions)} partitions, settings say {partitions}")
    configs = configs or {}
    todo = [NewTopic(n, partitions, replication, config=configs.get(n, {})) for n in names if n not in existing]
    if not todo:
        return []
    for fut in client.create_topics(todo, operation_timeout=30).values():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_topics_visible(client, [t.topic for t in todo])
    return [t.topic for t in todo]


def _wait_topics_visible(client: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = client.list_topics(timeout=5).topics
        if all(n in md and md[n].partitions and not md[n].error for n in names):
            return
        time.sleep(0.2)
    raise KafkaUnavailable(f"topics not visible after {timeout_s}s: {names}")


def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a finished run's namespace)."""
    client = admin(bootstrap)
    names = [n for n in client.list_topics(timeout=10).topics if n.startswith(prefix)]
    if names:
        for fut in client.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result()
    return names


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

    def send(self, topic: str, key: str | bytes | None, value: bytes, headers: dict[str, bytes] | None = None) -> None:
        while True:
            try:
                self._p.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let it drain
                self._p.poll(0.05)
        self.sent += 1
        if self.sent % 1000 == 0:
            self._p.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._p.flush(timeout_s)
        if remaining:
            raise DeliveryFailed(f"{remaining} records not delivered within {timeout_s}s")
        if self.errors:
            raise DeliveryFailed(f"{len(self.errors)} records failed, first: {self.errors[0]}")


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def read_topics(bootstrap: str, topics: Iterable[str], timeout_s: float = 60.0) -> Iterator[Message]:
    """Read every record currently in ``topics`` from the beginning, up to the end offsets taken when the
    call starts, in partition order. For checking result topics after a run."""
    topics = list(topics)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"oms-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        md = consumer.list_topics(timeout=10).topics
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for t in topics:
            if t not in md:
                continue
            for p in md[t].partitions:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if hi > lo:
                    ends[(t, p)] = hi
                    assignment.append(TopicPartition(t, p, lo))
        if not assignment:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        pending = dict(ends)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topics} did not reach the end offsets: {pending}")
            batch = consumer.consume(num_messages=10_000, timeout=0.5)
            for m in batch:
                tp = (m.topic(), m.partition())
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        if tp in pending and m.offset() >= pending[tp]:
                            pending.pop(tp, None)
                        continue
                    raise KafkaException(m.error())
                if tp not in pending:
                    continue
                yield Message(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1])
                if m.offset() + 1 >= pending[tp]:
                    pending.pop(tp)
    finally:
        consumer.close()


def tail(bootstrap: str, topics: list[str], on_message: Callable[[Message], None], stop: Callable[[], bool]) -> None:
    """Follow ``topics`` from the beginning until ``stop()`` says so (progress counting in the main job)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"oms-tail-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(topics)
    try:
        while not stop():
            for m in consumer.consume(num_messages=5000, timeout=0.2):
                if m.error():
                    continue
                on_message(Message(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1]))
    finally:
        consumer.close()


def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> dict[str, int]:
    """Per ``topic/partition``: records not yet committed by consumer group ``group`` (only those > 0)."""
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
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"oms-lag-{uuid.uuid4().hex}", "log_level": 0})
    try:
        lag = {}
        for tp in tps:
            lo, hi = reader.get_watermark_offsets(tp, timeout=10)
            behind = hi - max(lo, committed.get((tp.topic, tp.partition), lo))
            if behind > 0:
                lag[f"{tp.topic}/{tp.partition}"] = behind
        return lag
    finally:
        reader.close()


class AsyncProducer:
    """confluent-kafka for asyncio callers (the HTTP API): idempotent, acks=all, murmur2; ``send`` returns
    once the broker has the record. A daemon thread serves the delivery callbacks."""

    def __init__(self, bootstrap: str) -> None:
        import asyncio
        import threading

        self._loop = asyncio.get_running_loop()
        self._p = producer(bootstrap, **{"linger.ms": 2})
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="oms-api-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._p.poll(0.05)

    async def send(self, topic: str, key: str, value: bytes, headers: dict[str, bytes] | None = None) -> None:
        fut = self._loop.create_future()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            self._loop.call_soon_threadsafe(_settle, fut, err)

        while True:
            try:
                self._p.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                break
            except BufferError:
                import asyncio

                await asyncio.sleep(0.01)
        await fut

    def close(self, timeout_s: float = 10.0) -> None:
        self._p.flush(timeout_s)
        self._closed.set()


def _settle(fut: Any, err: KafkaError | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(DeliveryFailed(str(err)))
