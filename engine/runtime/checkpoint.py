"""The commit protocol of a worker, as one class: a batch's units become one Kafka transaction, or nothing.

One transaction per batch, whatever stages and partitions the batch touched (KIP-447):

1. ``begin``;
2. every unit's outputs, in processing order;
3. every unit's table writes to its changelog partition (the partition of its input), the new positions last;
4. the input offsets with ``send_offsets_to_transaction`` and the consumer's group metadata — the fencing: the
   group coordinator takes them only from a member of its current generation;
5. ``commit`` — the one durability barrier: it returns once every record is acknowledged and the transaction
   is committed;
6. only then the local stores take the same bytes, with the changelog offsets they got
   (:meth:`engine.runtime.stage.Stage.apply`).

Anything that fails before the commit returns is rolled back (``abort``) before this returns, so a retry
always starts a clean transaction and nothing of a failed one is ever visible or applied. What to do next —
try again, give the batch up for a rebalance, make a new producer — is the caller's (engine.runtime.runner).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from engine.kafka.transactions import Fenced
from engine.runtime.faults import TxnInfo
from engine.runtime.stage import Unit

log = logging.getLogger("oms.checkpoint")

#: Marks the consumer group offsets this engine commits (a reset by an operator carries none).
OFFSETS_TAG = "oms"


@dataclass
class CommitStats:
    transactions: int = 0
    records: int = 0
    commit_ms_sum: float = 0.0
    commit_ms_max: float = 0.0
    aborted: int = 0
    fenced: int = 0
    rebalanced: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Checkpoint:
    def __init__(self, producer: Any, group_metadata: Callable[[], Any], stats: CommitStats | None = None) -> None:
        self.producer = producer
        self.group_metadata = group_metadata
        self.stats = stats or CommitStats()

    def commit(self, units: list[Unit]) -> None:
        """Commit ``units`` as one transaction and apply them locally; raises Aborted/Fenced/Refused (rolled back)."""
        producer = self.producer
        delivered: dict[tuple[str, int], int] = {}
        changelogs = [(unit, unit.changelog()) for unit in units]
        producer.begin(_describe(units, changelogs))
        try:
            for unit in units:
                for out in unit.work.outputs:
                    producer.produce(out.topic, out.key, out.value, out.partition, out.headers)
            for unit, changelog in changelogs:
                for _table, topic, writes in changelog:
                    last = len(writes) - 1
                    for i, (key, value) in enumerate(writes.items()):
                        callback = _recorder(delivered, topic, unit.partition) if i == last else None
                        producer.produce(topic, key, value, unit.partition, on_delivery=callback)
            offsets = [
                TopicPartition(topic, unit.partition, offset, metadata=OFFSETS_TAG)
                for unit in units
                for topic, offset in unit.next_offsets.items()
            ]
            producer.send_offsets(offsets, self.group_metadata())
            started = time.monotonic()
            producer.commit()
        except Fenced:
            self.stats.fenced += 1
            raise
        except Exception as exc:
            self.stats.aborted += 1
            if getattr(exc, "rebalance", False):
                self.stats.rebalanced += 1
            producer.abort()  # before anything else: the next transaction must start clean
            raise
        spent = (time.monotonic() - started) * 1000
        stats = self.stats
        stats.transactions += 1
        stats.records += sum(len(u.records) for u in units)
        stats.commit_ms_sum += spent
        stats.commit_ms_max = max(stats.commit_ms_max, spent)
        for unit in units:
            unit.stage.apply(unit, delivered)
        producer.applied()


def _describe(units: list[Unit], changelogs: list[tuple[Unit, list[Any]]]) -> TxnInfo:
    info = TxnInfo()
    info.sends = sum(len(u.work.outputs) for u in units) + sum(len(w) for _, c in changelogs for _, _, w in c)
    for unit in units:
        name = unit.stage.name
        info.admitted[name] = info.admitted.get(name, unit.stage.stats.admitted) + len(unit.records)
        by_topic = info.offsets.setdefault(name, {}).setdefault(unit.partition, {})
        for record in unit.records:
            by_topic.setdefault(record.topic, []).append(record.offset)
    return info


def _recorder(delivered: dict[tuple[str, int], int], topic: str, partition: int) -> Any:
    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            delivered[(topic, partition)] = msg.offset()

    return on_delivery
