"""The transactional producer of a worker (and of the one-off publishers: rules, layouts, policies, tests).

A worker has one, ``transactional.id = <app id>.<group instance id>`` (Kafka's KIP-447 design, what Kafka
Streams' exactly_once_v2 uses): every transaction carries its input offsets, sent with
``send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())``. The group coordinator accepts
them only from a member of the current generation, so a worker that paused past its session timeout, lost the
network or has not noticed a rebalance cannot commit anything: its offsets are refused, and its transaction —
outputs, changelog records, input positions — is aborted. Nothing it wrote is ever seen by a ``read_committed``
reader. The id being stable per worker slot also means that a restarted worker fences its dead predecessor the
moment it starts (``init_transactions`` aborts whatever the predecessor left open), and the runtime fences the
ids of slots that left the group (engine.runtime.runner), so a zombie's open transaction is aborted at once
instead of holding readers back until the transaction timeout.

Every record of a transaction must come back from the broker with an offset before the transaction commits.
librdkafka acknowledges a batch "implicitly" when a later batch of the same partition succeeds after the first
failed with a retriable error (seen here on a partition whose leader was still being elected: the first batch
was never written, the second was, and both were reported delivered, the first without an offset). A record
reported without an offset, or with an error, makes ``commit`` roll the transaction back instead (``Aborted``),
so the batch is sent again whole: a committed transaction never misses a record.

Errors come back as two kinds: :class:`Aborted` (the transaction was rolled back and may be tried again, or the
batch given up — ``rebalance`` says whether the group moved on) and :class:`Fenced` (this producer is finished:
make a new one). A produce the client refuses outright (a record over the size limit) is :class:`Refused`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from engine.kafka.clients import CLIENT_LOG, PARTITIONER

log = logging.getLogger("oms.txn")

#: Errors of ``send_offsets_to_transaction`` that mean the group moved on without us (a rebalance, a newer
#: instance with our group.instance.id): the batch is given up, never retried.
GROUP_MOVED = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
}


class Fenced(RuntimeError):
    """This producer lost its transactional id to a newer instance (or hit another fatal error): whatever it
    was writing is aborted, and it can do nothing more."""


class Aborted(RuntimeError):
    """The transaction was rolled back. ``rebalance``: the consumer group refused the offsets (it moved on)."""

    def __init__(self, message: str, rebalance: bool = False) -> None:
        super().__init__(message)
        self.rebalance = rebalance


class Refused(RuntimeError):
    """The client refused one record outright (e.g. larger than ``message.max.bytes``)."""


def transactional_id(app_id: str, slot: str) -> str:
    return f"{app_id}.{slot}"


class TxnProducer:
    """A confluent-kafka transactional producer. Blocking calls (``init``, ``commit``, ``abort``) wait for the
    broker; ``produce`` never blocks for long."""

    def __init__(self, bootstrap: str, txn_id: str, timeout_s: float = 60.0, **overrides: Any) -> None:
        self.txn_id = txn_id
        self.timeout_s = timeout_s
        conf = {
            "bootstrap.servers": bootstrap,
            "transactional.id": txn_id,
            "partitioner": PARTITIONER,
            "acks": "all",
            "linger.ms": 2,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "transaction.timeout.ms": int(timeout_s * 1000),
            "message.timeout.ms": int(timeout_s * 1000),
            "retry.backoff.ms": 10,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "log_level": 4,
            "logger": CLIENT_LOG,
        }
        conf.update(overrides)
        self._p = Producer(conf)
        self.fenced = False
        self.open = False
        self._unconfirmed: list[str] = []  # records of the open transaction without a confirmed offset

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

    def begin(self, info: Any = None) -> None:
        """Start a transaction. ``info`` says what it will hold (read by a fault-injecting wrapper only)."""
        self._unconfirmed = []
        try:
            self._p.begin_transaction()
            self.open = True
        except KafkaException as exc:
            raise self._classify(exc, "begin") from None

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp: int = 0,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        callback = self._confirm if on_delivery is None else self._confirm_then(on_delivery)
        while True:
            try:
                # The common case without a dict of keyword arguments: a worker sends every record through here.
                if partition is None and not headers and not timestamp:
                    self._p.produce(topic, value, key, on_delivery=callback)
                else:
                    self._p.produce(
                        topic,
                        value,
                        key,
                        -1 if partition is None else partition,
                        on_delivery=callback,
                        timestamp=timestamp,
                        headers=list(headers) if headers else None,
                    )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._p.poll(0.01)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise Refused(f"{topic}: record of {len(value or b'')} bytes refused: {err.str()}") from None
                raise self._classify(exc, "produce") from None

    def _confirm(self, err: Any, msg: Any) -> None:
        if err is not None or msg.offset() is None:  # an offset the client does not know reads as None
            self._unconfirmed.append(f"{msg.topic()}/{msg.partition()}: {err or 'no offset'}")

    def _confirm_then(self, callback: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            self._confirm(err, msg)
            callback(err, msg)

        return on_delivery

    def send_offsets(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        """Make the input offsets part of the transaction (checked against the group's generation)."""
        try:
            self._p.send_offsets_to_transaction(offsets, group_metadata, self.timeout_s)
        except KafkaException as exc:
            raise self._classify(exc, "send_offsets") from None

    def commit(self) -> None:
        """Flush and commit. Returns only when every record of the transaction is acknowledged and the
        transaction is committed — the one durability barrier a batch needs."""
        deadline = time.monotonic() + self.timeout_s
        left = self._p.flush(self.timeout_s)  # every delivery report is in before the commit is asked for
        if left or self._unconfirmed:
            what = f"{left} record(s) not delivered" if left else f"{len(self._unconfirmed)} record(s) unconfirmed"
            example = f" (e.g. {self._unconfirmed[0]})" if self._unconfirmed else ""
            raise Aborted(f"{self.txn_id}: {what}{example}: the transaction is rolled back")
        while True:
            try:
                self._p.commit_transaction(max(1.0, deadline - time.monotonic()))
                self.open = False
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and not err.fatal() and time.monotonic() < deadline:
                    continue
                raise self._classify(exc, "commit") from None

    def abort(self) -> None:
        """Roll the open transaction back (nothing of it becomes visible). A no-op without one."""
        if not self.open or self.fenced:
            return
        try:
            self._p.abort_transaction(self.timeout_s)
            self.open = False
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal():
                self.fenced = True
                raise Fenced(f"{self.txn_id}: abort: {err.name()}: {err.str()}") from None
            raise Aborted(f"{self.txn_id}: abort failed: {err.name()}: {err.str()}") from None

    def applied(self) -> None:
        """The committed transaction is in the local stores too (a hook for a fault-injecting wrapper)."""

    def close(self) -> None:
        """Let go of the producer (an open transaction is aborted by the broker or the next holder). A fenced
        producer has nothing left to deliver: what it could not flush is lost on purpose."""
        try:
            self._p.purge()
            self._p.flush(0)
        except KafkaException as exc:
            log.info("%s: closed with %s", self.txn_id, exc.args[0])

    def _classify(self, exc: KafkaException, what: str) -> Exception:
        err: KafkaError = exc.args[0]
        text = f"{self.txn_id}: {what}: {err.name()}: {err.str()}"
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            self.fenced = True
            return Fenced(text)
        return Aborted(text, rebalance=err.code() in GROUP_MOVED)
