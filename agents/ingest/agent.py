"""The ingest stage (Kafka route): raw channel payloads → the same adapters as the API → the order inbox.

Raw topics are ``<prefix>.raw.<channel>``, keyed ``tenant:shop_id:platform_order_id`` (the channel's own JSON
as the value), so that every update of one platform order stays in order on one partition. Anything that
cannot become a canonical order is dead-lettered with its reason and original bytes. The stage keeps no state
but its positions, and reads nothing outside its input: the time an order was received is its record's time.
"""

from __future__ import annotations

from typing import NamedTuple

import faust

from agents.ingest.adapters import AdapterError, Source, adapt
from agents.ingest.adapters.base import parse_json
from engine.app import context
from engine.runtime.kit import KeyedLogic
from engine.runtime.stage import Stage
from engine.runtime.work import Input, PartitionWork
from engine.tenants import Tenants
from engine.topics import Topics
from schemas.deadletter import ReasonCode
from schemas.inbox import OrderSnapshot
from schemas.order import Channel

#: Set by whoever first produced an order (the API, a load generator): when it was sent, in epoch ms.
SENT_HEADER = "oms-sent-ms"


class RawOrder(NamedTuple):
    """A raw record's key, read: what the stage can know of it before it parses the payload."""

    channel: Channel
    key: str  # tenant:shop_id:platform_order_id
    tenant: str
    shop: str
    platform_id: str


class IngestLogic(KeyedLogic[None]):
    """No state and no time of its own: the record's key is the order's, its time the time it was received."""

    name = "ingest"
    tables = ()

    def __init__(self, topics: Topics, partitions: int, tenants: Tenants | None, max_payload_bytes: int) -> None:
        self.inputs = tuple(topics.raw.values())
        self.topics = topics
        self.partitions = partitions
        self.tenants = tenants
        self.max_bytes = max_payload_bytes

    def decode(self, work: PartitionWork, record: Input) -> RawOrder | None:
        """The payload is the channel's own JSON, parsed by its adapter (``handle``); here, only the key."""
        channel = self.topics.channel_of(record.topic)
        key = record.key.decode("utf-8", "replace") if record.key else ""
        parts = key.split(":", 2)
        if channel is None or len(parts) != 3 or not all(parts):
            work.dead_letter(record, ReasonCode.BAD_KEY, f"key {key[:80]!r} is not tenant:shop_id:platform_order_id")
            return None
        return RawOrder(channel, key, *parts)

    def route(self, item: RawOrder) -> tuple[str, str | None]:
        return item.key, None  # a misrouted raw record's letter has never named a tenant

    def event_time(self, item: RawOrder, record: Input) -> None:
        return None

    def handle(self, work: PartitionWork, record: Input, item: RawOrder) -> None:
        tenant = item.tenant
        if self.tenants is not None and not self.tenants.known(tenant):
            work.dead_letter(record, ReasonCode.UNKNOWN_TENANT, f"tenant {tenant!r} is not configured")
            return
        value = record.value or b""
        if len(value) > self.max_bytes:
            work.dead_letter(record, ReasonCode.OVERSIZE, f"{len(value)} bytes > {self.max_bytes}", tenant)
            return
        try:
            order = adapt(Source(tenant, item.channel, item.shop, received_at=record.timestamp_ms), parse_json(value))
        except AdapterError as exc:
            work.dead_letter(record, exc.reason, exc.detail, tenant)
            return
        if order.platform_order_id != item.platform_id:
            detail = f"key names order {item.platform_id!r}, payload is {order.platform_order_id!r}"
            work.dead_letter(record, ReasonCode.BAD_KEY, detail, tenant)
            return
        snapshot = OrderSnapshot(order=order)
        sent = [(name, v) for name, v in record.headers if name == SENT_HEADER]  # for end-to-end latency
        work.emit(self.topics.order_inbox, snapshot.key, snapshot, headers=sent or None)


def install(app: faust.App, tenants: Tenants | None) -> Stage:
    ctx = context(app)
    logic = IngestLogic(ctx.topics, ctx.settings.partitions, tenants, ctx.settings.max_payload_bytes)
    return Stage(app, logic)
