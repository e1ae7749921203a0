"""Ingestion API (a Faust web view on every worker).

* ``POST /api/v1/{tenant}/{channel}/{shop}/orders`` — one platform payload, a JSON array of them, or
  ``{"orders": [...]}``; bearer token of the tenant. Answers 202 with the canonical order id per order
  (``accepted`` or ``duplicate``), 207 when some orders of a batch were refused, or a 4xx.
* ``POST /webhooks/shopify/orders`` — Shopify order webhooks, authenticated by ``X-Shopify-Hmac-SHA256``
  and the shop domain, deduplicated on ``X-Shopify-Webhook-Id``.

A delivery is remembered in Redis (``SET NX`` with a TTL) before it is produced, so a redelivered webhook
or a repeated pull is answered ``duplicate`` without a second record; the review stage deduplicates again
by channel version, so a Redis outage never creates a second order.
"""

from __future__ import annotations

import time
from typing import Any

import faust

from agents.ingest.adapters.shopify import verify_hmac
from agents.ingest.edge import ItemError, Parsed, Refused, parse
from engine import redisx
from engine.app import context
from engine.catalog import Catalog
from engine.http import Edge, Problem, problem, reply
from schemas import wire
from schemas.deadletter import ReasonCode


def install(app: faust.App, edge: Edge, catalog: Catalog) -> None:
    topics = context(app).topics

    async def accept(
        view: faust.web.View,
        request: Any,
        tenant: str,
        channel: str,
        shop: str,
        body: bytes,
        dedupe_key: str | None = None,
    ) -> faust.web.Response:
        """Validate the body as ``channel`` payloads of ``tenant``/``shop`` and submit what is valid."""
        content_type = request.headers.get("Content-Type")
        parsed = parse(tenant, channel, shop, body, content_type, _now(), edge.settings.max_payload_bytes)
        if isinstance(parsed, Refused):
            return reply(view, parsed.status, parsed.body())
        return await submit(view, parsed, dedupe_key)

    async def submit(view: faust.web.View, parsed: Parsed, dedupe_key: str | None = None) -> faust.web.Response:
        """Catalog check, idempotency, produce; then one answer for the whole request."""
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
            key = edge.keys.idempotency(order.tenant, dedupe_key or f"{order.order_id}:{order.version}")
            fresh = await redisx.safely(
                "idempotency", edge.redis.set(key, order.order_id, nx=True, ex=edge.settings.idempotency_ttl_s), True
            )
            if not fresh:
                results[index] = {"index": index, "order_id": order.order_id, "status": "duplicate"}
                continue
            try:
                await producer.send(
                    topics.orders, order.key, wire.encode(order), {"oms-sent-ms": str(order.ingested_at).encode()}
                )
            except Exception as exc:
                await redisx.safely("idempotency undo", edge.redis.delete(key))  # let the caller's retry through
                raise Problem(503, "unavailable", f"could not store the order, retry later: {exc}") from None
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
                dedupe = f"shopify-webhook:{webhook}" if webhook else None
                return await accept(self, request, tenant, "shopify", shop.shop_id, body, dedupe)
            except Problem as exc:
                return problem(self, exc)


def _now() -> int:
    return int(time.time() * 1000)
