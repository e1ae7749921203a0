"""The retailer's own web store and store POS: a documented JSON format (README "Channel payloads").

Money in integer minor units (``*_fen``), times as ISO 8601 or epoch milliseconds. ``delivery`` is ``ship``
(default), ``pickup`` (门店自提: reserved in ``store_code``, handed over with a pickup code) or ``counter``
(sold at the store's counter); a POS sale with a ``store_code`` is a counter sale unless it says otherwise, and
its receiver is optional (the store's code is used).
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
    iso_time,
    items,
    obj,
    sku_code,
    text,
)
from schemas.deadletter import ReasonCode
from schemas.order import Channel, LineState, OrderStatus

STATUS = {s.value: s for s in OrderStatus}
LINE_STATES = {s.value: s for s in LineState}
DELIVERIES = ("ship", "pickup", "counter")  # shipped by a carrier, picked up in a store, sold at its counter


def adapt(source: Source, payload: Any) -> Any:
    order = obj(payload)
    number = ident(order, "order_no", "$")
    status = text(order, "status", "$", default="paid")
    if status not in STATUS:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"$.status: {status!r} is not one of {sorted(STATUS)}")
    buyer = obj(order.get("buyer") or {}, "$.buyer")
    receiver = order.get("receiver")
    if receiver is None and source.channel is Channel.POS:
        receiver = {"name": text(order, "store_code", "$") or source.shop_id}
    receiver = obj(receiver, "$.receiver") if receiver is not None else None
    if receiver is None:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, "missing field $.receiver")
    lines = []
    for i, raw in enumerate(items(order, "lines", "$")):
        path = f"$.lines[{i}]"
        line = obj(raw, path)
        state = text(line, "status", path, default="active")
        if state not in LINE_STATES:
            raise AdapterError(
                ReasonCode.SCHEMA_VIOLATION, f"{path}.status: {state!r} is not one of {sorted(LINE_STATES)}"
            )
        lines.append(
            {
                "line_no": integer(line, "line_no", path, required=False, default=i + 1),
                "sku": sku_code(line.get("sku"), f"{path}.sku"),
                "quantity": integer(line, "quantity", path),
                "unit_price_fen": fen(line, "unit_price_fen", path),
                "paid_fen": fen(line, "paid_fen", path, required=False, default=0) or None,
                "status": state,
                "title": text(line, "title", path)[:300],
            }
        )
    created = iso_time(order, "created_at", "$")
    store_code = text(order, "store_code", "$")
    delivery = text(
        order, "delivery", "$", default="counter" if source.channel is Channel.POS and store_code else "ship"
    )
    if delivery not in DELIVERIES:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"$.delivery: {delivery!r} is not one of {sorted(DELIVERIES)}")
    if delivery != "ship" and not store_code:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"$.store_code: needed for delivery {delivery!r}")
    return build(
        source,
        number,
        {
            "status": status,
            "buyer": {
                "id": text(buyer, "id", "$.buyer") or text(buyer, "phone", "$.buyer") or f"walk-in-{number}",
                "nick": text(buyer, "name", "$.buyer")[:128],
                "phone": text(buyer, "phone", "$.buyer")[:40],
            },
            "receiver": {
                "name": text(receiver, "name", "$.receiver")[:100],
                "phone": text(receiver, "phone", "$.receiver")[:40],
                "country": (text(receiver, "country", "$.receiver") or "CN")[:2].upper(),
                "province": text(receiver, "province", "$.receiver")[:60],
                "city": text(receiver, "city", "$.receiver")[:60],
                "district": text(receiver, "district", "$.receiver")[:60],
                "street": text(receiver, "street", "$.receiver")[:300],
                "postal_code": text(receiver, "postal_code", "$.receiver")[:20],
            },
            "lines": lines,
            "currency": (text(order, "currency", "$") or "CNY").upper(),
            "shipping_fen": fen(order, "shipping_fen", "$", required=False),
            "created_at": created,
            "paid_at": iso_time(order, "paid_at", "$", required=False),
            "buyer_message": text(order, "buyer_message", "$"),
            "seller_memo": text(order, "seller_memo", "$"),
            "version": iso_time(order, "updated_at", "$", required=False) or created,
            "delivery": delivery,
            "pickup_store": store_code if delivery != "ship" else None,
        },
    )
