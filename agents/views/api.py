"""Query API (on every worker; bearer token of the tenant — a token reads its own tenant only):

* ``GET /api/v1/{tenant}/orders/{order_id}`` — the order view: status, lines with their warehouse, review, the
  decision, allocation, shipments (wave, picked, parcels with waybill and tracking), progress (shipped, delivered,
  written back, returns), returns, vouchers. 404 ``not_found`` when nothing is known of it.
* ``GET /api/v1/{tenant}/orders?buyer=<buyer id>`` — the buyer's orders (ids, newest first, at most ``limit``,
  default 50, max 500) with their status;
  ``GET /api/v1/{tenant}/orders?channel=<channel>&shop=<shop>&platform_order_id=<id>`` — one order by the
  channel's own id (the same view as by id).
* ``GET /api/v1/{tenant}/shipments/{shipment_id}`` and ``GET /api/v1/{tenant}/waybills/{waybill}`` — a shipment.
* ``GET /api/v1/{tenant}/stock/{sku}`` — available to promise (on hand − reserved) per warehouse and in all;
  ``GET /api/v1/{tenant}/stock?skus=A,B,…`` — the same for up to ``MAX_SKUS`` SKUs; both with what each shop
  may sell (stock sync: the quantity its platform last accepted).
* ``GET /api/v1/{tenant}/stock-sync/{shop}`` — per SKU, the last quantity sent to the shop and its platform's
  answer, and which SKUs were refused last.

Every answer is a read model (engine.readmodels.projector): it trails the result topics by the projector's lag,
never disagrees with them. Answers carry an ``ETag`` (a digest of the body); a request with a matching
``If-None-Match`` gets 304 and no body. Redis down: 503 ``unavailable``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import faust
import orjson

from agents.views import read
from agents.views.projection import buyer_key, order_key, shipment_key, stock_key, sync_key, waybill_key
from engine.http.edge import Edge, Problem, at_most, problem
from engine.readmodels.projector import namespace
from engine.readmodels.redis import ERRORS
from schemas.order import Channel, order_id

MAX_SKUS = 200
MAX_BUYER_ORDERS = 500


class Reader:
    """Reads views from Redis (async, the API's client)."""

    def __init__(self, edge: Edge) -> None:
        self.redis = edge.redis
        self.space = namespace(edge.settings)

    def _k(self, key: str) -> str:
        return f"{self.space}:{key}"

    async def order(self, tenant: str, oid: str) -> dict[str, Any] | None:
        order = await self.redis.hgetall(self._k(order_key(tenant, oid)))
        ids = read.shipment_ids(order)
        shipments = await self._hashes([shipment_key(tenant, s) for s in ids], ids)
        wbs = read.waybills(shipments)
        tracking = await self._hashes([waybill_key(tenant, w) for w in wbs], wbs)
        return read.order_view(tenant, oid, order, shipments, tracking)

    async def shipment(self, tenant: str, sid: str) -> dict[str, Any] | None:
        shipment = await self.redis.hgetall(self._k(shipment_key(tenant, sid)))
        wbs = read.waybills({sid: shipment})
        tracking = await self._hashes([waybill_key(tenant, w) for w in wbs], wbs)
        return read.shipment_view(tenant, sid, shipment, tracking)

    async def shipment_of_waybill(self, tenant: str, waybill: str) -> str | None:
        raw = await self.redis.hget(self._k(waybill_key(tenant, waybill)), "shipment")
        return orjson.loads(raw)["shipment_id"] if raw else None

    async def buyer(self, tenant: str, buyer: str, limit: int) -> list[dict[str, Any]]:
        placed = await self.redis.hgetall(self._k(buyer_key(tenant, buyer)))
        newest = sorted(((orjson.loads(v), k.decode()) for k, v in placed.items()), reverse=True)[:limit]
        out = []
        for created_at, oid in newest:
            view = await self.order(tenant, oid)
            out.append({"order_id": oid, "created_at": created_at, "status": view["status"] if view else "unknown"})
        return out

    async def stock(self, tenant: str, skus: list[str]) -> list[dict[str, Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for sku in skus:
            pipe.hgetall(self._k(stock_key(tenant, sku)))
        return [read.stock_view(tenant, sku, h) for sku, h in zip(skus, await pipe.execute(), strict=True)]

    async def sync(self, tenant: str, shop: str) -> dict[str, Any] | None:
        synced = await self.redis.hgetall(self._k(sync_key(tenant, shop)))
        return read.sync_view(tenant, shop, synced) if synced else None

    async def _hashes(self, keys: list[str], names: list[str]) -> dict[str, read.Hash]:
        if not keys:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._k(key))
        return dict(zip(names, await pipe.execute(), strict=True))


def answer(view: faust.web.View, request: Any, body: Any) -> faust.web.Response:
    """200 with an ETag, or 304 when the caller already has this body."""
    raw = orjson.dumps(body)
    tag = f'"{hashlib.sha256(raw).hexdigest()[:24]}"'
    if request.headers.get("If-None-Match") == tag:
        return view.bytes(b"", status=304, headers={"ETag": tag})
    return view.bytes(raw, content_type="application/json", headers={"ETag": tag})


def _int(request: Any, name: str, default: int, most: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise Problem(400, "bad_query", f"{name} must be a whole number from 1 to {most}")
    return int(raw)


def install(app: faust.App, edge: Edge) -> None:
    views = Reader(edge)

    async def guarded(view: faust.web.View, request: Any, tenant: str, produce: Any) -> faust.web.Response:
        try:
            edge.authenticate(request, tenant)
            try:
                body = await produce()
            except ERRORS as exc:
                raise Problem(503, "unavailable", f"the read models cannot be read now: {exc}") from None
            if body is None:
                raise Problem(404, "not_found", "nothing is known of it (yet: views trail the topics by a moment)")
            return answer(view, request, body)
        except Problem as exc:
            return problem(view, exc)

    @app.page("/api/v1/{tenant}/orders/{order_id}")
    class OrderView(faust.web.View):
        async def get(self, request: Any, tenant: str, order_id: str) -> faust.web.Response:
            return await guarded(self, request, tenant, lambda: views.order(tenant, order_id))

    @app.page("/api/v1/{tenant}/orders")
    class OrdersView(faust.web.View):
        async def get(self, request: Any, tenant: str) -> faust.web.Response:
            q = request.query

            async def produce() -> Any:
                if "buyer" in q:
                    limit = _int(request, "limit", 50, MAX_BUYER_ORDERS)
                    return {"buyer": q["buyer"], "orders": await views.buyer(tenant, q["buyer"], limit)}
                if {"channel", "shop", "platform_order_id"} <= set(q):
                    if q["channel"] not in {c.value for c in Channel}:
                        raise Problem(400, "bad_query", f"unknown channel {q['channel']!r}")
                    return await views.order(tenant, order_id(q["channel"], q["shop"], q["platform_order_id"]))
                raise Problem(400, "bad_query", "ask by ?buyer=<id>, or by ?channel=&shop=&platform_order_id=")

            return await guarded(self, request, tenant, produce)

    @app.page("/api/v1/{tenant}/shipments/{shipment_id}")
    class ShipmentView(faust.web.View):
        async def get(self, request: Any, tenant: str, shipment_id: str) -> faust.web.Response:
            return await guarded(self, request, tenant, lambda: views.shipment(tenant, shipment_id))

    @app.page("/api/v1/{tenant}/waybills/{waybill}")
    class WaybillView(faust.web.View):
        async def get(self, request: Any, tenant: str, waybill: str) -> faust.web.Response:
            async def produce() -> Any:
                sid = await views.shipment_of_waybill(tenant, waybill)
                return await views.shipment(tenant, sid) if sid else None

            return await guarded(self, request, tenant, produce)

    @app.page("/api/v1/{tenant}/stock/{sku}")
    class StockView(faust.web.View):
        async def get(self, request: Any, tenant: str, sku: str) -> faust.web.Response:
            async def produce() -> Any:
                (level,) = await views.stock(tenant, [sku])
                return level if level["known"] else None

            return await guarded(self, request, tenant, produce)

    @app.page("/api/v1/{tenant}/stock-sync/{shop}")
    class StockSyncView(faust.web.View):
        async def get(self, request: Any, tenant: str, shop: str) -> faust.web.Response:
            return await guarded(self, request, tenant, lambda: views.sync(tenant, shop))

    @app.page("/api/v1/{tenant}/stock")
    class StockListView(faust.web.View):
        async def get(self, request: Any, tenant: str) -> faust.web.Response:
            async def produce() -> Any:
                skus = [s for s in request.query.get("skus", "").split(",") if s]
                if not skus:
                    raise Problem(400, "bad_query", "ask by ?skus=A,B,…")
                at_most(skus, MAX_SKUS, "SKUs in one request")
                return {"stock": await views.stock(tenant, skus)}

            return await guarded(self, request, tenant, produce)
