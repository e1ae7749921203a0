"""Douyin shop order (抖店 ``order.orderDetail`` / ``searchList``): money in integer fen, unix seconds.

Status mapping (order_status): 1 → pending payment; 105 (paid), 2 (备货中) → paid; 101 (partly shipped),
3 → shipped; 4 → cancelled; 5 → finished. A SKU order with an after-sale refund in progress is
refunding; a settled refund cancels the line. Receivers are masked (``mask_post_*``); the encrypted
fields are kept out of the canonical order and decrypted only through the platform at waybill time.
"""

from __future__ import annotations

from typing import Any

from agents.ingest.adapters.base import (
    AdapterError,
    Source,
    build,
    fen,
    ident,
    integer,
    items,
    obj,
    sku_code,
    text,
    unix_seconds,
)
from schemas.deadletter import ReasonCode
from schemas.order import LineState, OrderStatus

STATUS = {
    1: OrderStatus.PENDING_PAYMENT,
    105: OrderStatus.PAID,
    2: OrderStatus.PAID,
    101: OrderStatus.SHIPPED,
    3: OrderStatus.SHIPPED,
    4: OrderStatus.CANCELLED,
    5: OrderStatus.FINISHED,
}
REFUND_DONE = {3}  # refund_status: 0 none, 1 in progress, 2 rejected … 3 refunded


def _name(addr: dict[str, Any], key: str) -> str:
    part = addr.get(key)
    if isinstance(part, dict):
        return str(part.get("name") or "")[:60]
    return str(part or "")[:60] if isinstance(part, str | int) and not isinstance(part, bool) else ""


def adapt(source: Source, payload: Any) -> Any:
    order = obj(payload)
    order_id = ident(order, "order_id", "$")
    status = integer(order, "order_status", "$")
    if status not in STATUS:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"$.order_status: unknown Douyin order status {status}")
    addr = obj(order.get("mask_post_addr") or order.get("post_addr") or {}, "$.mask_post_addr")
    lines = []
    for i, raw in enumerate(items(order, "sku_order_list", "$")):
        path = f"$.sku_order_list[{i}]"
        sku = obj(raw, path)
        after_sale = obj(sku.get("after_sale_info") or {}, f"{path}.after_sale_info")
        refund = integer(after_sale, "refund_status", f"{path}.after_sale_info", required=False)
        state = LineState.ACTIVE
        if refund in REFUND_DONE:
            state = LineState.CANCELLED
        elif refund:
            state = LineState.REFUNDING
        lines.append(
            {
                "line_no": i + 1,
                "sku": sku_code(sku.get("out_sku_id") or sku.get("code"), f"{path}.out_sku_id"),
                "quantity": integer(sku, "item_num", path),
                "unit_price_fen": fen(sku, "origin_amount", path),
                "paid_fen": fen(sku, "pay_amount", path, required=False),
                "status": state.value,
                "platform_line_id": ident(sku, "order_id", path),
                "title": text(sku, "product_name", path)[:300],
            }
        )
    created = unix_seconds(order, "create_time", "$")
    return build(
        source,
        order_id,
        {
            "status": STATUS[status].value,
            "buyer": {"id": text(order, "open_id", "$") or text(order, "doudian_open_id", "$") or f"douyin-{order_id}"},
            "receiver": {
                "name": text(order, "mask_post_receiver", "$")[:100] or "?",
                "phone": text(order, "mask_post_tel", "$")[:40],
                "province": _name(addr, "province"),
                "city": _name(addr, "city"),
                "district": _name(addr, "town"),
                "street": (_name(addr, "street") + " " + text(addr, "detail", "$.mask_post_addr")).strip()[:300],
            },
            "lines": lines,
            "currency": "CNY",
            "shipping_fen": fen(order, "post_amount", "$", required=False),
            "created_at": created,
            "paid_at": unix_seconds(order, "pay_time", "$", required=False),
            "buyer_message": text(order, "buyer_words", "$"),
            "seller_memo": text(order, "seller_words", "$"),
            "version": unix_seconds(order, "update_time", "$", required=False) or created,
        },
    )
