"""Ingestion API (a Faust web view on every worker).

* ``POST /api/v1/{tenant}/{channel}/{shop}/orders`` — one platform payload, a JSON array of them, or
  ``{"orders": [...]}``; bearer token of the tenant. Answers 202 with the canonical order id per order
  (``accepted`` or ``duplicate``), 207 when some orders of a batch were refused, or a 4xx.
* ``POST /webhooks/shopify/orders`` — Shopify order webhooks, authenticated by ``X-Shopify-Hmac-SHA256``
  and the shop domain, deduplicated per order on ``X-Shopify-Webhook-Id``.

An order is produced first (idempotent producer, ``acks=all``) and only then remembered in Redis (``SET`` with
a TTL), so a crash between the two can cost a duplicate delivery — which the order stage recognises by channel
version — but never an order. Redis is the fast path that answers ``duplicate`` without producing again; the
order stage is the guard. Every dedupe key names one order, never a request or a batch.
"""

from __future__ import annotations

import time
from typing import Any

import faust

from agents.ingest.adapters.shopify import verify_hmac
from agents.ingest.agent import SENT_HEADER
from agents.ingest.edge import ItemError, Parsed, Refused, parse
from engine.app import context
from engine.http.edge import Edge, Problem, problem, reply
from engine.readmodels import redis as redisx
from engine.readmodels.catalog import Catalog
from schemas import wire
from schemas.deadletter import ReasonCode
from schemas.inbox import OrderSnapshot
from schemas.order import Order


def install(app: faust.App, edge: Edge, catalog: Catalog) -> None:
    topics = context(app).topics

    async def accept(
        view: faust.web.View,
        request: Any,
        tenant: str,
        channel: str,
        shop: str,
        body: bytes,
        delivery_id: str | None = None,
    ) -> faust.web.Response:
        """Validate the body as ``channel`` payloads of ``tenant``/``shop`` and submit what is valid."""
        content_type = request.headers.get("Content-Type")
        parsed = parse(tenant, channel, shop, body, content_type, _now(), edge.settings.max_payload_bytes)
        if isinstance(parsed, Refused):
            return reply(view, parsed.status, parsed.body())
        return await submit(view, parsed, delivery_id)

    def dedupe_key(order: Order, delivery_id: str | None) -> str:
        """One order of one delivery: a redelivered webhook repeats its id, a batch never shares one key."""
        if delivery_id:
            return edge.keys.idempotency(order.tenant, f"{delivery_id}:{order.order_id}:{order.version}")
        return edge.keys.idempotency(order.tenant, f"{order.order_id}:{order.version}")

    async def submit(view: faust.web.View, parsed: Parsed, delivery_id: str | None) -> faust.web.Response:
        """Catalog check, dedupe, produce, remember; then one answer for the whole request."""
        tenants = edge.tenants
        checked = [o for _, o in parsed.orders if tenants is not None and tenants.checks_catalog(o.tenant)]
        lookup = await catalog.lookup(checked)
        results: dict[int, dict[str, Any]] = {
            e.index: {"index": e.index, "status": "rejected", "error": e.code, "message": e.message}
            for e in parsed.errors
        }
        producer = await edge.producer()
        for index, order in parsed.orders:
            unknown = lookup.unknown(order)
            if unknown:
                err = ItemError(index, ReasonCode.UNKNOWN_SKU.value, f"unknown SKU(s) {unknown[:5]}")
                results[index] = {"index": index, "status": "rejected", "error": err.code, "message": err.message}
                continue
            key = dedupe_key(order, delivery_id)
            seen = await redisx.safely("idempotency", edge.redis.exists(key), 0)
            if seen:
                results[index] = {"index": index, "order_id": order.order_id, "status": "duplicate"}
                continue
            snapshot = OrderSnapshot(order=order)
            try:
                await producer.send(
                    topics.order_inbox,
                    snapshot.key,
                    wire.encode(snapshot),
                    {SENT_HEADER: str(order.ingested_at).encode()},
                )
            except Exception as exc:
                raise Problem(503, "unavailable", f"could not store the order, retry later: {exc}") from None
            await redisx.safely("idempotency", edge.redis.set(key, order.order_id, ex=edge.settings.idempotency_ttl_s))
            results[index] = {"index": index, "order_id": order.order_id, "status": "accepted"}
        ordered = [results[i] for i in sorted(results)]
        refused = sum(1 for r in ordered if r["status"] == "rejected")
        if not parsed.batch:
            only = ordered[0]
            return reply(view, 422 if refused else 202, only)
        status = 202 if not refused else (422 if refused == len(ordered) else 207)
        summary = {
            "accepted": sum(r["status"] == "accepted" for r in ordered),
            "duplicates": sum(r["status"] == "duplicate" for r in ordered),
        }
        return reply(view, status, {**summary, "rejected": refused, "results": ordered})

    @app.page("/api/v1/{tenant}/{channel}/{shop}/orders")
    class ChannelOrders(faust.web.View):
        async def post(self, request: Any, tenant: str, channel: str, shop: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                return await accept(self, request, tenant, channel, shop, await edge.body(request))
            except Problem as exc:
                return problem(self, exc)

    @app.page("/webhooks/shopify/orders")
    class ShopifyWebhook(faust.web.View):
        async def post(self, request: Any) -> faust.web.Response:
            try:
                if edge.tenants is None:
                    raise Problem(503, "not_configured", "no tenants are configured on this worker")
                domain = request.headers.get("X-Shopify-Shop-Domain", "")
                found = edge.tenants.shopify_shop(domain)
                if found is None:
                    raise Problem(401, "unknown_shop", f"no tenant has the Shopify shop {domain!r}")
                tenant, shop = found
                body = await edge.body(request)
                if not verify_hmac(shop.webhook_secret(), body, request.headers.get("X-Shopify-Hmac-SHA256")):
                    raise Problem(401, "bad_signature", "X-Shopify-Hmac-SHA256 does not match the body")
                webhook = request.headers.get("X-Shopify-Webhook-Id")
                delivery = f"shopify-webhook:{webhook}" if webhook else None
                return await accept(self, request, tenant, "shopify", shop.shop_id, body, delivery)
            except Problem as exc:
                return problem(self, exc)


def _now() -> int:
    return int(time.time() * 1000)
