"""Tmall / Taobao trade (``taobao.trade.fullinfo.get``, TMC pushes): yuan strings, China-time dates.

Status mapping (Trade.status): WAIT_BUYER_PAY, TRADE_NO_CREATE_PAY, PAY_PENDING, WAIT_PRE_AUTH_CONFIRM →
pending payment; WAIT_SELLER_SEND_GOODS → paid; PAID_FORBID_CONSIGN → held by the platform;
SELLER_CONSIGNED_PART, WAIT_BUYER_CONFIRM_GOODS, TRADE_BUYER_SIGNED → shipped; TRADE_FINISHED → finished;
TRADE_CLOSED (refunded after payment), TRADE_CLOSED_BY_TAOBAO (closed unpaid) → cancelled.
A line's ``refund_status`` WAIT_SELLER_AGREE / WAIT_BUYER_RETURN_GOODS / WAIT_SELLER_CONFIRM_GOODS → refunding,
SUCCESS → cancelled. ``top_hold=1`` sets the risk flag ``taobao_top_hold``.
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
from schemas.order import LineState, OrderStatus

STATUS = {
    "TRADE_NO_CREATE_PAY": OrderStatus.PENDING_PAYMENT,
    "WAIT_BUYER_PAY": OrderStatus.PENDING_PAYMENT,
    "PAY_PENDING": OrderStatus.PENDING_PAYMENT,
    "WAIT_PRE_AUTH_CONFIRM": OrderStatus.PENDING_PAYMENT,
    "WAIT_SELLER_SEND_GOODS": OrderStatus.PAID,
    "PAID_FORBID_CONSIGN": OrderStatus.HOLD_BY_PLATFORM,
    "SELLER_CONSIGNED_PART": OrderStatus.SHIPPED,
    "WAIT_BUYER_CONFIRM_GOODS": OrderStatus.SHIPPED,
    "TRADE_BUYER_SIGNED": OrderStatus.SHIPPED,
    "TRADE_FINISHED": OrderStatus.FINISHED,
    "TRADE_CLOSED": OrderStatus.CANCELLED,
    "TRADE_CLOSED_BY_TAOBAO": OrderStatus.CANCELLED,
}
REFUNDING = {"WAIT_SELLER_AGREE", "WAIT_BUYER_RETURN_GOODS", "WAIT_SELLER_CONFIRM_GOODS"}


def adapt(source: Source, payload: Any) -> Any:
    trade = obj(payload)
    tid = text(trade, "tid_str", "$") or ident(trade, "tid", "$")
    status_code = text(trade, "status", "$", required=True)
    if status_code not in STATUS:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"$.status: unknown Taobao trade status {status_code!r}")
    lines = []
    for i, raw in enumerate(items(trade, "orders", "$", inner="order")):
        path = f"$.orders[{i}]"
        line = obj(raw, path)
        qty = integer(line, "num", path)
        refund = text(line, "refund_status", path)
        line_status = STATUS.get(text(line, "status", path))
        state = LineState.ACTIVE
        if refund in REFUNDING:
            state = LineState.REFUNDING
        elif refund == "SUCCESS" or line_status is OrderStatus.CANCELLED:
            state = LineState.CANCELLED
        paid = line.get("divide_order_fee") not in (None, "")
        lines.append(
            {
                "line_no": i + 1,
                "sku": sku_code(line.get("outer_sku_id") or line.get("outer_iid"), f"{path}.outer_sku_id"),
                "quantity": qty,
                "unit_price_fen": yuan(line, "price", path),
                "paid_fen": yuan(line, "divide_order_fee" if paid else "payment", path, required=False, default=0),
                "status": state.value,
                "platform_line_id": text(line, "oid_str", path) or ident(line, "oid", path),
                "title": text(line, "title", path)[:300],
            }
        )
    created = local_time(trade, "created", "$")
    flags = ["taobao_top_hold"] if integer(trade, "top_hold", "$", required=False) == 1 else []
    if str(trade.get("forbid_consign") or "0") == "1":
        flags.append("taobao_forbid_consign")
    return build(
        source,
        tid,
        {
            "status": STATUS[status_code].value,
            "buyer": {
                "id": text(trade, "buyer_open_uid", "$") or text(trade, "buyer_nick", "$", required=True),
                "nick": text(trade, "buyer_nick", "$")[:128],
            },
            "receiver": {
                "name": text(trade, "receiver_name", "$")[:100],
                "phone": (text(trade, "receiver_mobile", "$") or text(trade, "receiver_phone", "$"))[:40],
                "province": text(trade, "receiver_state", "$")[:60],
                # 省直辖县 come in receiver_district with an empty city
                "city": (text(trade, "receiver_city", "$") or text(trade, "receiver_district", "$"))[:60],
                "district": text(trade, "receiver_district", "$")[:60],
                "street": " ".join(
                    x for x in (text(trade, "receiver_town", "$"), text(trade, "receiver_address", "$")) if x
                )[:300],
                "postal_code": text(trade, "receiver_zip", "$")[:20],
            },
            "lines": lines,
            "currency": "CNY",
            "shipping_fen": yuan(trade, "post_fee", "$", required=False),
            "created_at": created,
            "paid_at": local_time(trade, "pay_time", "$", required=False),
            "buyer_message": text(trade, "buyer_message", "$"),
            "seller_memo": text(trade, "seller_memo", "$"),
            "version": local_time(trade, "modified", "$", required=False) or created,
            "risk_flags": flags,
        },
    )
