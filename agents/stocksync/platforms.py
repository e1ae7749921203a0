"""Stock updates in each platform's own request shape, and their answers read back (pure; I/O in the gateway).

=========  ==========================================================  ===============================================
platform   request                                                     accepted when
=========  ==========================================================  ===============================================
taobao     ``POST /router/rest`` form: ``method=taobao.item.quantity.  ``item_quantity_update_response`` (an
           update``, ``outer_id`` (the SKU), ``quantity``, ``type=1``  ``error_response`` is a refusal)
           (full; 2 would be incremental)
jd         ``POST /routerjson`` form: ``method=jingdong.stock.write.   ``..._responce.success`` true
           updateSkuStock``, ``360buy_param_json={"outerId","stockNum"}``
douyin     ``POST /sku/syncStock`` JSON: ``out_sku_id``, ``stock_num``,  ``code == 10000``
           ``incremental=false``, ``idempotent_id``
shopify    ``POST /admin/api/2024-01/inventory_levels/set.json`` JSON:  HTTP 200 with ``inventory_level``
           ``location_id``, ``inventory_item_id`` (the SKU), ``available``
=========  ==========================================================  ===============================================

Every request carries ``X-Oms-Tenant`` and ``X-Oms-Shop`` (whose shop: a real adapter signs with the shop's
session instead) and ``Idempotency-Key`` (the update id).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.stocksync import StockUpdate

SHOPIFY_PATH = "/admin/api/2024-01/inventory_levels/set.json"


@dataclass(frozen=True)
class PlatformRequest:
    path: str
    body: bytes
    content_type: str
    headers: dict[str, str]


def request_for(u: StockUpdate) -> PlatformRequest:
    headers = {"X-Oms-Tenant": u.tenant, "X-Oms-Shop": u.shop_id, "Idempotency-Key": u.update_id}
    form = "application/x-www-form-urlencoded"
    if u.platform == "taobao":
        fields = {"method": "taobao.item.quantity.update", "outer_id": u.sku, "quantity": u.quantity, "type": 1}
        return PlatformRequest("/router/rest", urllib.parse.urlencode(fields).encode(), form, headers)
    if u.platform == "jd":
        param = orjson.dumps({"outerId": u.sku, "stockNum": u.quantity}).decode()
        fields = {"method": "jingdong.stock.write.updateSkuStock", "360buy_param_json": param}
        return PlatformRequest("/routerjson", urllib.parse.urlencode(fields).encode(), form, headers)
    if u.platform == "douyin":
        body = {"out_sku_id": u.sku, "stock_num": u.quantity, "incremental": False, "idempotent_id": u.update_id}
        return PlatformRequest("/sku/syncStock", orjson.dumps(body), "application/json", headers)
    body = {"location_id": u.location_id, "inventory_item_id": u.sku, "available": u.quantity}
    return PlatformRequest(SHOPIFY_PATH, orjson.dumps(body), "application/json", headers)


def accepted(platform: str, status: int, body: bytes) -> tuple[bool, str]:
    """Whether the platform applied the update, and its words (bounded)."""
    words = body[:500].decode(errors="replace")
    try:
        doc: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return False, f"HTTP {status}: {words}"
    if status != 200 or not isinstance(doc, dict):
        return False, f"HTTP {status}: {words}"
    if platform == "taobao":
        return "item_quantity_update_response" in doc, words
    if platform == "jd":
        answer = doc.get("jingdong_stock_write_updateSkuStock_responce") or {}
        return bool(answer.get("success")), words
    if platform == "douyin":
        return doc.get("code") == 10000, words
    return "inventory_level" in doc, words
