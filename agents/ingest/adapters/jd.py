"""JD POP order (``jingdong.pop.order.search`` / ``enSearch``): yuan strings, numbers as strings.

Status mapping (orderState): WAIT_SELLER_STOCK_OUT, WAIT_SELLER_DELIVERY → paid; LOCKED (a refund is
pending), POP_ORDER_PAUSE, PAUSE → held by the platform; WAIT_GOODS_RECEIVE_CONFIRM → shipped;
FINISHED_L → finished; TRADE_CANCELED → cancelled. ``LOCKED`` also sets the risk flag ``jd_locked``.
"""

from __future__ import annotations

from typing import Any

from agents.ingest.adapters.base import (
    AdapterError,
    Source,
    build,
    ident,
    integer,
    items,
    local_time,
    obj,
    sku_code,
    text,
    yuan,
)
from schemas.deadletter import ReasonCode
from schemas.order import OrderStatus

STATUS = {
    "WAIT_SELLER_STOCK_OUT": OrderStatus.PAID,
    "WAIT_SELLER_DELIVERY": OrderStatus.PAID,
    "LOCKED": OrderStatus.HOLD_BY_PLATFORM,
    "POP_ORDER_PAUSE": OrderStatus.HOLD_BY_PLATFORM,
    "PAUSE": OrderStatus.HOLD_BY_PLATFORM,
    "WAIT_GOODS_RECEIVE_CONFIRM": OrderStatus.SHIPPED,
    "FINISHED_L": OrderStatus.FINISHED,
    "TRADE_CANCELED": OrderStatus.CANCELLED,
}


def adapt(source: Source, payload: Any) -> Any:
    order = obj(payload)
    order_id = ident(order, "orderId", "$")
    state = text(order, "orderState", "$", required=True)
    if state not in STATUS:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"$.orderState: unknown JD order state {state!r}")
    consignee = obj(order.get("consigneeInfo") or {}, "$.consigneeInfo")
    lines = []
    for i, raw in enumerate(items(order, "itemInfoList", "$")):
        path = f"$.itemInfoList[{i}]"
        item = obj(raw, path)
        qty = integer(item, "itemTotal", path)
        price = yuan(item, "jdPrice", path)
        lines.append(
            {
                "line_no": i + 1,
                # outerSkuId "is not guaranteed in extreme cases": then the platform id is the only key we have
                "sku": sku_code(item.get("outerSkuId") or item.get("skuId"), f"{path}.outerSkuId"),
                "quantity": qty,
                "unit_price_fen": price,
                "paid_fen": price * qty if 0 <= qty <= 1_000_000 else None,
                "platform_line_id": ident(item, "skuId", path),
                "title": text(item, "skuName", path)[:300],
            }
        )
    created = local_time(order, "orderStartTime", "$")
    return build(
        source,
        order_id,
        {
            "status": STATUS[state].value,
            "buyer": {"id": text(order, "pin", "$") or text(consignee, "mobile", "$.consigneeInfo") or order_id},
            "receiver": {
                "name": text(consignee, "fullname", "$.consigneeInfo")[:100],
                "phone": (
                    text(consignee, "mobile", "$.consigneeInfo") or text(consignee, "telephone", "$.consigneeInfo")
                )[:40],
                "province": text(consignee, "province", "$.consigneeInfo")[:60],
                "city": text(consignee, "city", "$.consigneeInfo")[:60],
                "district": text(consignee, "county", "$.consigneeInfo")[:60],
                "street": (
                    text(consignee, "town", "$.consigneeInfo") + " " + text(consignee, "fullAddress", "$.consigneeInfo")
                ).strip()[:300],
            },
            "lines": lines,
            "currency": "CNY",
            "shipping_fen": yuan(order, "freightPrice", "$", required=False),
            "created_at": created,
            "paid_at": local_time(order, "paymentConfirmTime", "$", required=False),
            "buyer_message": text(order, "orderRemark", "$"),
            "seller_memo": text(order, "venderRemark", "$"),
            "version": local_time(order, "modified", "$", required=False) or created,
            "risk_flags": ["jd_locked"] if state == "LOCKED" else [],
        },
    )
