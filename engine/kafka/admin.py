"""Topic administration: wait for a broker, create and delete topics, and name a topic's incarnation."""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached; the message says where we looked."""


#: librdkafka's own log lines (a coordinator still loading, a broker restarting) go through Python logging:
#: into a worker's log, or the main job's log file, instead of straight onto a terminal with a progress bar.
CLIENT_LOG = logging.getLogger("oms.librdkafka")


def admin(bootstrap: str, quiet: bool = False) -> AdminClient:
    """``quiet`` silences librdkafka's own connection log, for probes that report failure themselves."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000, "logger": CLIENT_LOG}
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
    """Until every partition of ``names`` has a leader that answers (a list-offsets round trip): a producer's first
    batches to a partition whose leader is still being elected fail as "not leader", and an idempotent producer
    may then take a later batch's success for the earlier one's (engine.kafka.transactions)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        md = client.list_topics(timeout=5).topics
        if all(n in md and md[n].partitions and not md[n].error for n in names):
            tps = [TopicPartition(n, p) for n in names for p in md[n].partitions]
            if all(md[tp.topic].partitions[tp.partition].leader >= 0 for tp in tps):
                try:
                    futures = client.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=5)
                    for fut in futures.values():
                        fut.result()
                    return
                except KafkaException as exc:
                    last = str(exc)
        time.sleep(0.2)
    raise KafkaUnavailable(f"topics not ready after {timeout_s}s: {names} ({last})")


def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a finished run's namespace)."""
    client = admin(bootstrap)
    names = [n for n in client.list_topics(timeout=10).topics if n.startswith(prefix)]
    if names:
        for fut in client.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result()
    return names


def topic_epochs(bootstrap: str, names: Iterable[str]) -> dict[str, str]:
    """A short, stable name of each topic's incarnation (from Kafka's topic id): a topic deleted and created
    again gets a new one, so offsets and idempotency stamps of the old one can never be mistaken for it."""
    names = list(names)
    client = admin(bootstrap)
    out: dict[str, str] = {}
    for name, fut in client.describe_topics(TopicCollection(names)).items():
        topic_id = fut.result().topic_id
        raw = bytes.fromhex(f"{topic_id.get_most_significant_bits() & (2**64 - 1):016x}")
        out[name] = base64.b32encode(raw).decode().rstrip("=").lower()[:10]
    return out
