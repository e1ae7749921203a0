"""Shopify ``orders/create|updated|paid|cancelled`` webhook: decimal strings, ISO times, HMAC-signed.

Status: ``cancelled_at`` set, or financial_status refunded / voided → cancelled; fulfillment_status
fulfilled / partial → shipped; ``closed_at`` → finished; financial_status pending / authorized →
pending payment; otherwise paid. A refunded line item (``refunds[].refund_line_items``) is cancelled.
The risk recommendation (``risk.recommendation`` or ``risk_recommendation``, added by the shop's app from
``OrderRiskSummary``) becomes the flag ``shopify_risk_<cancel|investigate>``.

Deliveries are verified with :func:`verify_hmac` over the raw body, and deduplicated on
``X-Shopify-Webhook-Id`` at the edge and on ``updated_at`` in the stream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from agents.ingest.adapters.base import Source, build, ident, integer, iso_time, items, obj, sku_code, text, yuan
from schemas.order import LineState, OrderStatus


def verify_hmac(secret: str, raw_body: bytes, header: str | None) -> bool:
    """``X-Shopify-Hmac-SHA256`` = base64(HMAC-SHA256(app secret, raw body)); compared in constant time."""
    if not header or not secret:
        return False
    digest = base64.b64encode(hmac.new(secret.encode(), raw_body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(digest, header.strip())


def sign(secret: str, raw_body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), raw_body, hashlib.sha256).digest()).decode()


def _status(order: dict[str, Any]) -> OrderStatus:
    financial = str(order.get("financial_status") or "")
    fulfillment = str(order.get("fulfillment_status") or "")
    if order.get("cancelled_at") or financial in ("refunded", "voided"):
        return OrderStatus.CANCELLED
    if order.get("closed_at") and fulfillment == "fulfilled":
        return OrderStatus.FINISHED
    if fulfillment in ("fulfilled", "partial"):
        return OrderStatus.SHIPPED
    if financial in ("pending", "authorized", ""):
        return OrderStatus.PENDING_PAYMENT
    return OrderStatus.PAID


def adapt(source: Source, payload: Any) -> Any:
    order = obj(payload)
    order_id = ident(order, "id", "$")
    refunded: set[str] = set()
    for r_i, refund in enumerate(order.get("refunds") or []):
        for l_i, rli in enumerate(obj(refund, f"$.refunds[{r_i}]").get("refund_line_items") or []):
            refunded.add(ident(obj(rli, f"$.refunds[{r_i}].refund_line_items[{l_i}]"), "line_item_id", "$"))
    lines = []
    for i, raw in enumerate(items(order, "line_items", "$")):
        path = f"$.line_items[{i}]"
        item = obj(raw, path)
        qty = integer(item, "quantity", path)
        price = yuan(item, "price", path)
        discount = sum(
            yuan(obj(a, f"{path}.discount_allocations[{j}]"), "amount", path)
            for j, a in enumerate(item.get("discount_allocations") or [])
        )
        line_id = ident(item, "id", path)
        lines.append(
            {
                "line_no": i + 1,
                "sku": sku_code(item.get("sku"), f"{path}.sku"),
                "quantity": qty,
                "unit_price_fen": price,
                "paid_fen": price * qty - discount if 0 <= qty <= 1_000_000 else None,
                "status": (LineState.CANCELLED if line_id in refunded else LineState.ACTIVE).value,
                "platform_line_id": line_id,
                "title": text(item, "title", path)[:300],
            }
        )
    address = obj(order.get("shipping_address") or order.get("billing_address") or {}, "$.shipping_address")
    customer = obj(order.get("customer") or {}, "$.customer")
    shipping = sum(
        yuan(obj(s, f"$.shipping_lines[{j}]"), "price", f"$.shipping_lines[{j}]")
        for j, s in enumerate(order.get("shipping_lines") or [])
    )
    risk = order.get("risk") if isinstance(order.get("risk"), dict) else {}
    recommendation = str(risk.get("recommendation") or order.get("risk_recommendation") or "").lower()
    created = iso_time(order, "created_at", "$")
    name = " ".join(
        x
        for x in (text(address, "first_name", "$.shipping_address"), text(address, "last_name", "$.shipping_address"))
        if x
    )
    return build(
        source,
        order_id,
        {
            "status": _status(order).value,
            "buyer": {
                "id": text(customer, "id", "$.customer") or text(order, "email", "$") or f"shopify-{order_id}",
                "nick": text(customer, "first_name", "$.customer")[:128],
                "phone": text(customer, "phone", "$.customer")[:40],
            },
            "receiver": {
                "name": name[:100] or text(customer, "first_name", "$.customer")[:100] or "?",
                "phone": text(address, "phone", "$.shipping_address")[:40],
                "country": (text(address, "country_code", "$.shipping_address") or "US")[:2].upper(),
                "province": text(address, "province", "$.shipping_address")[:60],
                "city": text(address, "city", "$.shipping_address")[:60],
                "street": " ".join(
                    x
                    for x in (
                        text(address, "address1", "$.shipping_address"),
                        text(address, "address2", "$.shipping_address"),
                    )
                    if x
                )[:300],
                "postal_code": text(address, "zip", "$.shipping_address")[:20],
            },
            "lines": lines,
            "currency": (text(order, "currency", "$") or "USD").upper(),
            "shipping_fen": shipping,
            "created_at": created,
            "paid_at": iso_time(order, "processed_at", "$", required=False),
            "buyer_message": text(order, "note", "$"),
            "version": iso_time(order, "updated_at", "$", required=False) or created,
            "risk_flags": [f"shopify_risk_{recommendation}"] if recommendation in ("cancel", "investigate") else [],
        },
    )
