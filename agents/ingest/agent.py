"""The ingest agent (Kafka route): raw channel payloads → the same adapters as the API → ``orders``.

Raw topics are ``<prefix>.raw.<channel>``, keyed ``tenant:shop_id:platform_order_id`` (the channel's own
JSON as the value), so that every update of one platform order stays in order on one partition.
Anything that cannot become a canonical order is dead-lettered with its reason and original bytes.
"""

from __future__ import annotations

import time
from typing import Any

import faust
from faust.types import EventT, StreamT

from agents.ingest.adapters import AdapterError, Source, adapt
from agents.ingest.adapters.base import parse_json
from engine.app import context
from engine.catalog import Catalog, Lookup
from engine.stage import PartitionWork, Stage
from engine.tenants import Tenants
from schemas.deadletter import ReasonCode


def install(app: faust.App, tenants: Tenants | None, catalog: Catalog) -> Stage:
    ctx = context(app)
    topics, settings = ctx.topics, ctx.settings
    raw = app.topic(*topics.raw.values(), key_type=bytes, value_type=bytes, partitions=settings.partitions)
    stage = Stage(app, "ingest")
    adapted: dict[tuple[str, int, int], Any] = {}  # filled by prefetch, read by handle, per batch
    known = [Lookup()]  # the catalog answer for the current batch

    def classify(event: EventT) -> Any:
        """The canonical order, or (reason, detail, tenant) for a dead letter."""
        msg = event.message
        channel = topics.channel_of(msg.topic)
        key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else str(msg.key or "")
        parts = key.split(":", 2)
        if channel is None or len(parts) != 3 or not all(parts):
            return (ReasonCode.BAD_KEY, f"key {key[:80]!r} is not tenant:shop_id:platform_order_id", None)
        tenant, shop, platform_id = parts
        if tenants is not None and not tenants.known(tenant):
            return (ReasonCode.UNKNOWN_TENANT, f"tenant {tenant!r} is not configured", None)
        value = msg.value or b""
        if len(value) > settings.max_payload_bytes:
            return (ReasonCode.OVERSIZE, f"{len(value)} bytes > {settings.max_payload_bytes}", tenant)
        try:
            order = adapt(Source(tenant, channel, shop, received_at=int(time.time() * 1000)), parse_json(value))
        except AdapterError as exc:
            return (exc.reason, exc.detail, tenant)
        if order.platform_order_id != platform_id:
            return (
                ReasonCode.BAD_KEY,
                f"key names order {platform_id!r}, payload is {order.platform_order_id!r}",
                tenant,
            )
        return order

    async def prefetch(events: list[EventT]) -> None:
        adapted.clear()
        orders = []
        for event in events:
            result = classify(event)
            adapted[(event.message.topic, event.message.partition, event.message.offset)] = result
            if not isinstance(result, tuple):
                orders.append(result)
        checked = [o for o in orders if tenants is not None and tenants.checks_catalog(o.tenant)]
        known[0] = await catalog.lookup(checked) if checked else Lookup()

    def handle(work: PartitionWork, event: EventT) -> None:
        msg = event.message
        result = adapted.pop((msg.topic, msg.partition, msg.offset), None) or classify(event)
        if not stage.routed_here(work, event, msg.key.decode("utf-8", "replace") if msg.key else ""):
            return
        if isinstance(result, tuple):
            stage.dead_letter(work, event, result[0], result[1], result[2])
            return
        unknown = known[0].unknown(result)
        if unknown:
            stage.dead_letter(work, event, ReasonCode.UNKNOWN_SKU, f"unknown SKU(s) {unknown[:5]}", result.tenant)
            return
        work.emit(topics.orders, result)

    @app.agent(raw, name="ingest", concurrency=1)
    async def ingest(stream: StreamT) -> None:
        await stage.run(stream, handle, prefetch=prefetch)

    return stage
