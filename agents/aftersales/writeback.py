"""Channel write-back (回传物流) and customer notifications (发货/签收通知), pure: what each platform expects when
a parcel of one of its orders leaves, and what the customer is told.

One request per order and waybill, in the platform's own shape, with an idempotency key (``wb.<tenant>.<order>.
<waybill>``) so the outbox that sends it can retry without shipping an order twice on the platform:

* Taobao / Tmall ``taobao.logistics.offline.send``: ``tid``, ``out_sid`` (the waybill), ``company_code``; a
  partial shipment adds ``is_split`` = 1 and ``sub_tid`` (the platform ids of the lines in the parcel);
* JD ``jingdong.pop.order.shipment``: ``orderId``, ``logiCoprId`` (JD's numeric carrier id), ``logiNo``;
* Douyin ``order.logisticsAdd``: ``order_id``, ``company_code``, ``logistics_code`` — whole orders only, so a
  split order is written back once, with the waybill of its last parcel, when nothing of it is left to ship;
* Shopify fulfillment: ``tracking_number``, ``tracking_company``, ``line_items`` (``id``, ``quantity``);
* the retailer's own web store and POS have no platform to tell: only the customer is notified.

A carrier a platform has no code for here is refused with a reason rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agents.shipping.labels import mask_phone
from schemas.aftersales import SoldLine
from schemas.order import Channel

__all__ = ["CARRIER_CODES", "WriteBack", "carrier_name", "mask_phone", "write_back"]

#: Carrier codes per platform (only those documented in the platforms' own lists; add more by configuration).
CARRIER_CODES: dict[str, dict[str, Any]] = {
    "sf": {"taobao": "SF", "jd": 467, "douyin": "shunfeng", "shopify": "SF Express"},
    "zto": {"taobao": "ZTO", "jd": 1499, "douyin": "zhongtong", "shopify": "ZTO Express"},
    "jd": {"taobao": "JD", "jd": 2087, "douyin": "jd", "shopify": "JD Logistics"},
}
CARRIER_NAMES = {"sf": "顺丰速运", "zto": "中通快递", "jd": "京东物流", "yto": "圆通速递", "ems": "EMS"}


@dataclass(frozen=True)
class WriteBack:
    """One request to a platform, or why there is none (``request`` None: ``reason`` says why)."""

    channel: str
    method: str | None
    request: dict[str, Any] | None
    idempotency_key: str
    reason: str = ""


class SoldOrder(Protocol):
    """What write-back needs of an order (aftersales keeps it from the order's approval)."""

    tenant: str
    order_id: str
    channel: str
    platform_order_id: str
    lines: list[SoldLine]


def carrier_name(carrier: str) -> str:
    return CARRIER_NAMES.get(carrier, carrier)


def write_back(
    order: SoldOrder, shipped_line_ids: Sequence[str], carrier: str, waybill: str, unshipped_left: bool
) -> WriteBack:
    """The platform request for one parcel of ``order``: its lines ``shipped_line_ids`` left with ``waybill`` of
    ``carrier``; ``unshipped_left`` says whether lines of the order are still to ship after this parcel."""
    key = f"wb.{order.tenant}.{order.order_id}.{waybill}"
    channel = Channel(order.channel)
    platform = {Channel.TMALL: "taobao", Channel.TAOBAO: "taobao"}.get(channel, channel.value)
    if channel in (Channel.WEB, Channel.POS):
        return WriteBack(channel.value, None, None, key, "own store: nothing to write back")
    code = CARRIER_CODES.get(carrier, {}).get(platform)
    if code is None:
        return WriteBack(platform, None, None, key, f"no {platform} code for carrier {carrier!r}")
    wanted = set(shipped_line_ids)
    lines = [ln for ln in order.lines if ln.line_id in wanted]
    partial = len(lines) < len(order.lines)  # 拆单: some lines only
    if platform == "taobao":
        request: dict[str, Any] = {"tid": order.platform_order_id, "out_sid": waybill, "company_code": code}
        if partial:
            request |= {"is_split": 1, "sub_tid": ",".join(ln.platform_line_id or str(ln.line_no) for ln in lines)}
        return WriteBack(platform, "taobao.logistics.offline.send", request, key)
    if platform == "jd":
        request = {"orderId": order.platform_order_id, "logiCoprId": code, "logiNo": waybill}
        return WriteBack(platform, "jingdong.pop.order.shipment", request, key)
    if platform == "douyin":
        if unshipped_left:
            return WriteBack(platform, None, None, key, "douyin ships whole orders: written back with the last parcel")
        request = {"order_id": order.platform_order_id, "company_code": code, "logistics_code": waybill}
        return WriteBack(platform, "order.logisticsAdd", request, key)
    request = {
        "fulfillment": {
            "tracking_number": waybill,
            "tracking_company": code,
            "line_items": [{"id": ln.platform_line_id, "quantity": ln.quantity} for ln in lines],
            "notify_customer": False,  # the engine notifies (below), once
        }
    }
    return WriteBack(platform, "fulfillments.create", request, key)
