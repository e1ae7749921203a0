"""A gateway: a thread that turns request records into calls to an outside service and its answers into records
(carriers' waybill numbers, platforms' write-backs). I/O, never a decision: what to do with an answer is decided
by the stage that reads it from its log.

Each gateway has its own consumer group (the request topic's partitions are shared among the workers), reads a
batch, calls the service, writes one answer per request, and commits the batch only once every answer was
delivered. A crash in between asks again: requests carry an idempotency key the service honours, and the stage
ignores a second answer.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from engine.kafka.clients import producer
from engine.settings import Settings
from schemas import wire
from schemas.deadletter import DeadLetter, dead_letter

log = logging.getLogger("oms.gateway")


class Gateway(threading.Thread):
    """Subclasses set ``name``, ``request_type`` and implement :meth:`answer`."""

    request_type: Any = None

    def __init__(self, name: str, settings: Settings, requests_topic: str, dead_letters_topic: str) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.requests_topic = requests_topic
        self.dead_letters_topic = dead_letters_topic
        self.stopping = threading.Event()
        self.answered = 0

    def answer(self, requests: list[Any]) -> list[tuple[str, str, Any]]:
        """One or more ``(topic, key, record)`` answers for the batch."""
        raise NotImplementedError

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": f"{self.settings.app_id}-{self.name}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        out = producer(self.settings.bootstrap)
        consumer.subscribe([self.requests_topic])
        try:
            while not self.stopping.is_set():
                messages = [m for m in consumer.consume(500, timeout=0.5) if not m.error()]
                if not messages:
                    continue
                requests = []
                for m in messages:
                    try:
                        requests.append(wire.decode(m.value(), self.request_type))
                    except wire.WireError as exc:
                        out.produce(self.dead_letters_topic, key=m.key(), value=wire.encode(self._letter(m, exc)))
                for topic, key, record in self.answer(requests):
                    out.produce(topic, key=key.encode(), value=wire.encode(record))
                if out.flush(30) != 0:
                    log.error("%s: answers not delivered within 30 s; asking again", self.name)
                    first: dict[int, int] = {}
                    for m in messages:  # back to the first of each partition: nothing is committed past it
                        first[m.partition()] = min(first.get(m.partition(), m.offset()), m.offset())
                    for partition, offset in first.items():
                        consumer.seek(TopicPartition(self.requests_topic, partition, offset))
                    continue
                self.answered += len(requests)
                consumer.commit(asynchronous=False)
        except Exception:
            log.exception("%s stopped", self.name)
        finally:
            consumer.close()

    def _letter(self, m: Any, exc: wire.WireError) -> DeadLetter:
        return dead_letter(
            self.name,
            m.topic(),
            m.partition(),
            m.offset(),
            m.key(),
            m.value(),
            exc.reason,
            exc.detail,
            m.timestamp()[1],
        )
