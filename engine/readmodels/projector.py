"""Projectors: result topics into read models in Redis (what the query API reads), never written by a core.

A :class:`Projection` says, for one record of one of its topics, which fields of which Redis hashes it sets
(:class:`Write`); the :class:`Projector` thread runs it over the topics as they grow and the :func:`rebuild`
function over them from the beginning. Both apply the writes the same way, so a rebuild of a namespace ends
equal to the live model once both read the same records.

**Versioned.** Every write carries the source record's position — its offset in its partition, or a version the
record carries (a SKU's stock version) — and Redis keeps a field's newest write only (Lua, one call per hash:
engine.readmodels.versioned). A projection writes each field from one source: one topic, and there one key (so
one partition, where offsets only grow). So a late update — a replay after a crash, a rebuild racing the live
projector, a worker that lost its partitions and still flushes — never overwrites a newer one, and applying
the same records twice changes nothing.

**At least once.** The projector has its own consumer group (``<app>-views``), reads ``read_committed`` (aborted
outputs never reach a view), writes a batch to Redis and only then commits its offsets. A crash in between reads
the batch again; the versions make that a no-op. When Redis is down it backs off and writes the same batch
again: it never commits past a record whose writes did not reach Redis. A record it cannot decode is logged
(bounded), counted and skipped: the topics are the engine's own outputs, so that is a bug to see, not input to
retry for ever.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from confluent_kafka import Consumer, KafkaError, TopicPartition

from engine.kafka.clients import read_topics
from engine.readmodels.versioned import APPLY_IF_NEWER
from engine.settings import Settings

log = logging.getLogger("oms.views")

#: Redis errors the projector waits out (and retries the batch after).
ERRORS = (redis.RedisError, OSError)


@dataclass(frozen=True, slots=True)
class Write:
    """Set (``value``) or delete (``None``) one field of one hash, if ``version`` is newer than the field's."""

    key: str  # the hash, under the projector's namespace
    field: str
    version: int
    value: bytes | None


class Projection(Protocol):
    """What a projector runs: the topics it reads and, per record, its writes."""

    name: str

    def topics(self) -> list[str]: ...

    def project(self, topic: str, partition: int, offset: int, value: bytes) -> list[Write]:
        """The record's writes; raises ``ValueError`` (``wire.WireError`` is one) for a record it cannot read."""
        ...


def namespace(settings: Settings, suffix: str = "views") -> str:
    """Where a deployment's read models live in Redis: ``<topic prefix>:<suffix>``."""
    return f"{settings.topic_prefix}:{suffix}"


class Applier:
    """Writes to Redis, one ``APPLY_IF_NEWER`` call per hash, in one pipeline per batch."""

    def __init__(self, client: redis.Redis, space: str) -> None:
        self.client = client
        self.space = space
        self.script = client.register_script(APPLY_IF_NEWER)

    def apply(self, writes: Iterable[Write]) -> int:
        """How many writes were newer than what Redis held (and so took effect)."""
        by_key: dict[str, list[Any]] = defaultdict(list)
        for w in writes:
            by_key[w.key] += [w.field, w.version, b"" if w.value is None else w.value]
        if not by_key:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key, args in by_key.items():
            full = f"{self.space}:{key}"
            self.script(keys=[full, f"{full}:versions"], args=args, client=pipe)
        return sum(int(n) for n in pipe.execute())


@dataclass
class ProjectorStats:
    records: int = 0
    writes: int = 0
    applied: int = 0  # writes newer than Redis held
    batches: int = 0
    undecodable: int = 0
    redis_errors: int = 0  # failed attempts to write a batch (each one retried)


class Projector(threading.Thread):
    """Result topics → Redis, as they grow. ``Projector(settings, projection).start()``; ``stopping.set()``."""

    def __init__(
        self,
        settings: Settings,
        projection: Projection,
        *,
        space: str | None = None,
        group: str | None = None,
        batch_max: int = 2000,
        max_backoff_s: float = 5.0,
    ) -> None:
        super().__init__(name=f"{projection.name}-projector", daemon=True)
        self.settings = settings
        self.projection = projection
        self.space = space or namespace(settings)
        self.group = group or projector_group(settings)
        self.batch_max = batch_max
        self.max_backoff_s = max_backoff_s
        self.stopping = threading.Event()
        self.counts = ProjectorStats()

    def stats(self) -> dict[str, int]:
        return dict(vars(self.counts))

    def run(self) -> None:
        applier = Applier(redis.Redis.from_url(self.settings.redis, socket_timeout=5.0), self.space)
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe(self.projection.topics())
        try:
            while not self.stopping.is_set():
                messages = consumer.consume(self.batch_max, timeout=0.5)
                if not messages:
                    continue
                writes: list[Write] = []
                ends: dict[tuple[str, int], int] = {}
                for m in messages:
                    if m.error():
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("%s: %s", self.name, m.error())
                        continue
                    writes += self._project(m.topic(), m.partition(), m.offset(), m.value())
                    ends[(m.topic(), m.partition())] = m.offset() + 1
                if not self._apply_until_done(applier, writes):
                    return  # stopping while Redis is down: nothing committed past what was written
                self.counts.records += sum(1 for m in messages if not m.error())
                self.counts.batches += 1
                if ends:
                    consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
        except Exception:
            log.exception("%s stopped", self.name)
        finally:
            consumer.close()

    def _project(self, topic: str, partition: int, offset: int, value: bytes | None) -> list[Write]:
        try:
            return self.projection.project(topic, partition, offset, value or b"")
        except ValueError as exc:
            self.counts.undecodable += 1
            if self.counts.undecodable <= 20:
                log.error("%s: skipped %s/%d@%d: %s", self.name, topic, partition, offset, str(exc)[:300])
            return []

    def _apply_until_done(self, applier: Applier, writes: list[Write]) -> bool:
        backoff = 0.1
        while True:
            try:
                self.counts.applied += applier.apply(writes)
                self.counts.writes += len(writes)
                return True
            except ERRORS as exc:
                self.counts.redis_errors += 1
                log.warning("%s: redis unavailable (%s); retrying in %.1fs", self.name, exc, backoff)
                if self.stopping.wait(backoff):
                    return False
                backoff = min(self.max_backoff_s, backoff * 2)


def projector_group(settings: Settings) -> str:
    return f"{settings.app_id}-views"


def clear(client: redis.Redis, space: str) -> int:
    """Delete every hash of a namespace (and its versions); how many keys went."""
    gone = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{space}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            gone += client.unlink(*batch)
            batch = []
    if batch:
        gone += client.unlink(*batch)
    return gone


def rebuild(
    settings: Settings,
    projection: Projection,
    space: str | None = None,
    *,
    fresh: bool = True,
    batch: int = 5000,
    timeout_s: float = 600.0,
    progress: Any = None,
) -> dict[str, int]:
    """Run ``projection`` over its topics from the beginning to their end offsets as of now, into ``space`` (the
    live namespace by default), deleting the namespace first when ``fresh``. The live projector may keep running:
    writes of both are versioned, so the newest wins whichever arrives last. ``progress(records)`` is called
    after every batch. Returns counts."""
    space = space or namespace(settings)
    client = redis.Redis.from_url(settings.redis, socket_timeout=10.0)
    applier = Applier(client, space)
    counts = {"cleared": clear(client, space) if fresh else 0, "records": 0, "writes": 0, "applied": 0}
    counts["undecodable"] = 0
    pending: list[Write] = []
    for m in read_topics(settings.bootstrap, projection.topics(), timeout_s=timeout_s):
        try:
            pending += projection.project(m.topic, m.partition, m.offset, m.value or b"")
        except ValueError:
            counts["undecodable"] += 1
        counts["records"] += 1
        if counts["records"] % batch == 0:
            _flush(applier, pending, counts)
            pending = []
            if progress is not None:
                progress(counts["records"])
    _flush(applier, pending, counts)
    return counts


def _flush(applier: Applier, writes: list[Write], counts: dict[str, int]) -> None:
    counts["writes"] += len(writes)
    counts["applied"] += applier.apply(writes)


def dump(client: redis.Redis, space: str) -> dict[str, dict[bytes, bytes]]:
    """Every hash of a namespace (versions left out), by key without the namespace: what a reader sees."""
    out: dict[str, dict[bytes, bytes]] = {}
    for key in _keys(client, space):
        name = key.decode()
        if name.endswith(":versions"):
            continue
        out[name[len(space) + 1 :]] = client.hgetall(key)
    return out


def _keys(client: redis.Redis, space: str) -> Iterator[bytes]:
    yield from client.scan_iter(match=f"{space}:*", count=1000)
