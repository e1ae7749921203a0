"""Read a small compacted topic completely in every worker, and keep its latest value per key.

For what every worker shows whatever partitions it owns (the API's view of the review rules per tenant):
no consumer group, every partition assigned, read from the beginning, then followed. Nothing read this way
decides anything; decisions read configuration from their own inbox (schemas.inbox): ``publish`` puts a copy
into every partition of each inbox, in one transaction with the compacted topic the API shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.kafka.transactions import Aborted, TxnProducer
from engine.settings import Settings

log = logging.getLogger("oms.broadcast")

#: Tries of a publishing transaction that is rolled back (e.g. a record not confirmed) before giving up.
PUBLISH_ATTEMPTS = 3


def publish(
    settings: Settings,
    publisher: str,
    copies: Iterable[tuple[str, bytes, bytes]],
    latest: Iterable[tuple[str, bytes, bytes]],
) -> None:
    """Blocking. One transaction: each ``(inbox topic, key, value)`` of ``copies`` to every partition of that
    topic, each ``(topic, key, value)`` of ``latest`` once (keyed). All or nothing: no partition can see a version
    another never will. ``publisher`` names the writer (its transactional id), e.g. ``rules-api-0``."""
    copies, latest = list(copies), list(latest)
    producer = TxnProducer(settings.bootstrap, f"{settings.app_id}.{publisher}", timeout_s=30.0)
    try:
        producer.init()
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                producer.begin()
                for topic, key, value in copies:
                    for partition in range(settings.partitions):
                        producer.produce(topic, key, value, partition=partition)
                for topic, key, value in latest:
                    producer.produce(topic, key, value)
                producer.commit()
                return
            except Aborted as exc:  # rolled back whole: nothing of it is visible; send it again
                producer.abort()
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                log.warning("publish by %s rolled back (%s); again", publisher, exc)
                time.sleep(0.2 * attempt)
    finally:
        producer.close()


def follow(
    app: faust.App,
    bootstrap: str,
    topic: str,
    partitions: int,
    on_record: Callable[[bytes | None, bytes | None], None],
) -> None:
    """Call ``on_record(key, value)`` for every record of ``topic``, from the start, for as long as the app
    runs. ``partitions`` is the topic's partition count (every topic here has the same)."""

    @app.task
    async def _follow() -> None:
        while not app.should_stop:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
            )
            try:
                await consumer.start()
                consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
                await consumer.seek_to_beginning()
                while not app.should_stop:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        for record in records:
                            try:
                                on_record(record.key, record.value)
                            except Exception:  # a bad record must not stop the follower
                                log.exception("broadcast %s: bad record at offset %s", topic, record.offset)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("broadcast %s: reader failed; restarting", topic)
                await asyncio.sleep(2.0)
            finally:
                await consumer.stop()
