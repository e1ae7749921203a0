"""One transactional producer per (stage, input partition): the fencing token of a partition's single writer.

Its ``transactional.id`` is ``<app id>.<stage>.<partition>``. A worker that is assigned the partition creates
a producer with that id and initialises it; the broker then bumps the id's epoch and aborts whatever the
previous holder left open. From that moment the previous holder — a worker that paused past its session
timeout, lost the network, or simply has not noticed the rebalance — can make nothing take effect: its sends
and commits fail with a fatal "fenced" error, and everything it wrote in its open transaction is aborted, so
``read_committed`` readers (every stage, the table restore, the invariant checker) never see it. This is the
same fencing as Kafka's first exactly-once design (a transactional id per input partition), chosen over the
consumer-group-generation fencing of KIP-447 because the next owner here restores its tables from changelog
topics that a zombie's late commit could otherwise still change under it.

A batch's outputs, its changelog records and its input offsets are one transaction: all or nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from engine.kafka.clients import CLIENT_LOG, PARTITIONER

log = logging.getLogger("oms.txn")


class Fenced(RuntimeError):
    """This producer lost its transactional id to a newer instance (or hit another fatal error): whatever it
    was writing is aborted, and this worker must not write for the partition until it is assigned it again."""


class Aborted(RuntimeError):
    """The transaction was aborted for a reason that allows another try (a timeout, a broker hiccup)."""


def transactional_id(app_id: str, stage: str, partition: int) -> str:
    return f"{app_id}.{stage}.{partition}"


class TxnProducer:
    """A confluent-kafka transactional producer for one input partition. Blocking calls (``init``, ``commit``,
    ``abort``) are meant to run in a worker thread; ``produce`` never blocks for long."""

    def __init__(self, bootstrap: str, txn_id: str, timeout_s: float = 60.0, **overrides: Any) -> None:
        self.txn_id = txn_id
        self.timeout_s = timeout_s
        conf = {
            "bootstrap.servers": bootstrap,
            "transactional.id": txn_id,
            "partitioner": PARTITIONER,
            "acks": "all",
            "linger.ms": 1,
            "compression.type": "lz4",
            "transaction.timeout.ms": int(timeout_s * 1000),
            "message.timeout.ms": int(timeout_s * 1000),
            "retry.backoff.ms": 10,
            "queue.buffering.max.messages": 1_000_000,
            "log_level": 4,
            "logger": CLIENT_LOG,
        }
        conf.update(overrides)
        self._p = Producer(conf)
        self.fenced = False

    def init(self) -> None:
        """Take the transactional id: fences every earlier holder and aborts its open transaction."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._p.init_transactions(max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and time.monotonic() < deadline:
                    continue
                self.fenced = True
                raise Fenced(f"{self.txn_id}: init_transactions failed: {err}") from None

    def begin(self) -> None:
        try:
            self._p.begin_transaction()
        except KafkaException as exc:
            raise self._classify(exc, "begin") from None

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int = 0,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "timestamp": timestamp}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                self._p.produce(topic, **kwargs)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._p.poll(0.01)
            except KafkaException as exc:
                raise self._classify(exc, "produce") from None

    def commit(self) -> None:
        """Flush and commit. Returns only when every record of the transaction is acknowledged and the
        transaction is committed — the one durability barrier a batch needs."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._p.commit_transaction(max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and not err.fatal() and time.monotonic() < deadline:
                    continue
                raise self._classify(exc, "commit") from None

    def abort(self) -> None:
        try:
            self._p.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            raise self._classify(exc, "abort") from None

    def close(self) -> None:
        """Let go of the producer (an open transaction is aborted by the broker or the next holder)."""
        self._p.purge()
        self._p.flush(0)

    def _classify(self, exc: KafkaException, what: str) -> Exception:
        err: KafkaError = exc.args[0]
        if err.fatal():
            self.fenced = True
            return Fenced(f"{self.txn_id}: {what}: {err.name()}: {err.str()}")
        if err.txn_requires_abort():
            try:
                self._p.abort_transaction(self.timeout_s)
            except KafkaException as again:
                if again.args[0].fatal():
                    self.fenced = True
                    return Fenced(f"{self.txn_id}: abort after {err.name()}: {again.args[0]}")
                raise
            return Aborted(f"{self.txn_id}: {what}: {err.name()}: {err.str()}")
        return Aborted(f"{self.txn_id}: {what}: {err.name()}: {err.str()}")
