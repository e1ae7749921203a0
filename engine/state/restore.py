"""Bring table stores up to their changelogs: what a worker does for every partition it is assigned.

Each changelog partition is read ``read_committed`` from the offset after the one its store holds to its end —
the last stable offset, so nothing of a transaction still open (a fenced writer's, about to be aborted) is
applied. Records are applied in batches with the offset they reached; a tombstone deletes its key.

"Its end" is not always enough. A transaction is committed before its markers reach every partition, and on a
cluster the marker of a changelog partition may land a moment after the consumer group's offsets became
readable. So a restore can be given a *target*: a predicate over the restored stores (the stage's positions
at least the committed offsets, engine.runtime.runner), and it keeps reading until the target holds — the end
moves once the marker lands — or fails after ``timeout_s``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from engine.kafka.admin import CLIENT_LOG
from engine.state.store import TableStore

log = logging.getLogger("oms.restore")

#: Records applied to a store in one write.
CHUNK = 20_000


class RestoreFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Part:
    """One changelog partition to restore into ``store``."""

    topic: str
    partition: int
    store: TableStore


def restore(
    bootstrap: str,
    parts: list[Part],
    target: Callable[[], bool] | None = None,
    timeout_s: float = 120.0,
) -> int:
    """Restore every part; returns the records applied. Raises RestoreFailed if the end or the target is not
    reached within ``timeout_s``."""
    if not parts:
        return 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"oms-restore-{uuid.uuid4().hex}",  # never joins: partitions are assigned, nothing committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,
            "queued.max.messages.kbytes": 65536,
            "log_level": 3,
            "logger": CLIENT_LOG,
        }
    )
    try:
        return _restore(consumer, parts, target, timeout_s)
    finally:
        consumer.close()


def _restore(consumer: Consumer, parts: list[Part], target: Callable[[], bool] | None, timeout_s: float) -> int:
    by_tp = {(p.topic, p.partition): p for p in parts}
    assignment = []
    for part in parts:
        low, high = _watermarks(consumer, part.topic, part.partition)
        held = part.store.offset(part.partition)
        if held is not None and held >= high:
            # The store holds offsets the changelog does not have: the topic was recreated (a new run, a reset).
            log.warning(
                "%s/%d: local store is at offset %d but the changelog ends at %d: restoring it from scratch",
                part.topic,
                part.partition,
                held,
                high,
            )
            part.store.reset(part.partition)
            held = None
        start = OFFSET_BEGINNING if held is None else max(held + 1, low)
        assignment.append(TopicPartition(part.topic, part.partition, start))
    consumer.assign(assignment)
    pending = set(by_tp)
    writes: dict[tuple[str, int], dict[bytes, bytes | None]] = {}
    last: dict[tuple[str, int], int] = {}
    applied = 0
    deadline = time.monotonic() + timeout_s

    def flush(tp: tuple[str, int]) -> None:
        batch = writes.pop(tp, None)
        if batch:
            by_tp[tp].store.apply(tp[1], batch, last[tp])

    while True:
        for m in consumer.consume(num_messages=10_000, timeout=0.2):
            tp = (m.topic(), m.partition())
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    flush(tp)
                    pending.discard(tp)
                    continue
                raise KafkaException(err)
            batch = writes.get(tp)
            if batch is None:
                batch = writes[tp] = {}
            batch[m.key()] = m.value()
            last[tp] = m.offset()
            applied += 1
            if len(batch) >= CHUNK:
                flush(tp)
        if not pending:
            for tp in list(writes):
                flush(tp)
            if target is None or target():
                return applied
        if time.monotonic() > deadline:
            what = f"{len(pending)} changelog partition(s) not at their end" if pending else "the target not reached"
            raise RestoreFailed(f"restore timed out after {timeout_s:.0f}s: {what}")


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    deadline = time.monotonic() + 30
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            return int(low), int(high)
        except KafkaException:  # a topic just created: its leader is not elected yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
