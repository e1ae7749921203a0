"""The generated day as the channels would send it: each platform's own JSON, plus the mess of real life.

Renderers turn a canonical order into Tmall/Taobao, JD, Douyin, Shopify or web/POS payloads. They are
written from the platforms' documented fields, independently of the adapters, so a round trip through
both is a check of each. ``channel_day`` adds what a day brings: redelivered webhooks, unpaid orders
paid later, cancellations and line refunds before shipment, JD orders locked by the platform, orders that
trip review rules, and a small share of bad payloads.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import orjson

from schemas.order import Channel, LineState, Order, OrderStatus

CST = timezone(timedelta(hours=8))
HTTP_CHANNELS = {Channel.WEB, Channel.POS}  # the retailer's own systems call the API
WEBHOOK_CHANNELS = {Channel.SHOPIFY}  # signed webhooks
SHOPIFY_DOMAIN = "{tenant}-{shop}.myshopify.com"


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _cst(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m-%d %H:%M:%S")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def taobao(
    o: Order,
    status: str = "WAIT_SELLER_SEND_GOODS",
    version: int = 0,
    refunds: dict[int, str] | None = None,
    top_hold: int = 0,
) -> dict[str, Any]:
    refunds = refunds or {}
    version = version or o.created_at
    return {
        "tid": int(o.platform_order_id),
        "tid_str": o.platform_order_id,
        "type": "fixed",
        "status": status,
        "created": _cst(o.created_at),
        "pay_time": _cst(o.paid_at or o.created_at),
        "modified": _cst(version),
        "buyer_nick": o.buyer.nick or o.buyer.id,
        "buyer_open_uid": o.buyer.id,
        "buyer_message": o.buyer_message,
        "seller_memo": o.seller_memo,
        "payment": _yuan(o.goods_fen + o.shipping_fen),
        "post_fee": _yuan(o.shipping_fen),
        "receiver_name": o.receiver.name,
        "receiver_state": o.receiver.province,
        "receiver_city": o.receiver.city,
        "receiver_district": o.receiver.district,
        "receiver_address": o.receiver.street,
        "receiver_mobile": o.receiver.phone,
        "receiver_zip": o.receiver.postal_code,
        "top_hold": top_hold,
        "orders": {
            "order": [
                {
                    "oid": int(f"{o.platform_order_id}{ln.line_no:02d}"),
                    "oid_str": f"{o.platform_order_id}{ln.line_no:02d}",
                    "outer_sku_id": ln.sku,
                    "num": ln.quantity,
                    "price": _yuan(ln.unit_price_fen),
                    "payment": _yuan(ln.unit_price_fen * ln.quantity),
                    "divide_order_fee": _yuan(ln.unit_price_fen * ln.quantity),
                    "title": ln.title or ln.sku,
                    "status": status,
                    "refund_status": refunds.get(ln.line_no, "NO_REFUND"),
                }
                for ln in o.lines
            ]
        },
    }


def jd(o: Order, state: str = "WAIT_SELLER_STOCK_OUT", version: int = 0) -> dict[str, Any]:
    version = version or o.created_at
    return {
        "orderId": o.platform_order_id,
        "orderState": state,
        "orderStartTime": _cst(o.created_at),
        "paymentConfirmTime": _cst(o.paid_at or o.created_at),
        "modified": _cst(version),
        "pin": o.buyer.id,
        "orderRemark": o.buyer_message,
        "venderRemark": o.seller_memo,
        "freightPrice": _yuan(o.shipping_fen),
        "orderPayment": _yuan(o.goods_fen + o.shipping_fen),
        "consigneeInfo": {
            "fullname": o.receiver.name,
            "mobile": o.receiver.phone,
            "province": o.receiver.province,
            "city": o.receiver.city,
            "county": o.receiver.district,
            "fullAddress": o.receiver.street,
        },
        "itemInfoList": [
            {
                "skuId": f"{o.platform_order_id}{ln.line_no}",
                "outerSkuId": ln.sku,
                "skuName": ln.title or ln.sku,
                "jdPrice": _yuan(ln.unit_price_fen),
                "itemTotal": str(ln.quantity),
            }
            for ln in o.lines
        ],
    }


def douyin(o: Order, status: int = 2, version: int = 0, refunds: dict[int, int] | None = None) -> dict[str, Any]:
    refunds = refunds or {}
    version = version or o.created_at
    return {
        "order_id": o.platform_order_id,
        "order_status": status,
        "create_time": o.created_at // 1000,
        "pay_time": (o.paid_at or o.created_at) // 1000,
        "update_time": version // 1000,
        "post_amount": o.shipping_fen,
        "buyer_words": o.buyer_message,
        "seller_words": o.seller_memo,
        "open_id": o.buyer.id,
        "mask_post_receiver": o.receiver.name,
        "mask_post_tel": o.receiver.phone,
        "mask_post_addr": {
            "province": {"name": o.receiver.province},
            "city": {"name": o.receiver.city},
            "town": {"name": o.receiver.district},
            "street": {"name": ""},
            "detail": o.receiver.street,
        },
        "sku_order_list": [
            {
                "order_id": f"{o.platform_order_id}{ln.line_no}",
                "parent_order_id": o.platform_order_id,
                "out_sku_id": ln.sku,
                "code": ln.sku,
                "product_name": ln.title or ln.sku,
                "item_num": ln.quantity,
                "origin_amount": ln.unit_price_fen,
                "pay_amount": ln.unit_price_fen * ln.quantity,
                "after_sale_info": {"after_sale_status": 0, "refund_status": refunds.get(ln.line_no, 0)},
            }
            for ln in o.lines
        ],
    }


def shopify(o: Order, version: int = 0, cancelled: bool = False, risk: str | None = None) -> dict[str, Any]:
    version = version or o.created_at
    payload = {
        "id": int(o.platform_order_id),
        "name": f"#{o.platform_order_id[-6:]}",
        "created_at": _iso(o.created_at),
        "updated_at": _iso(version),
        "processed_at": _iso(o.paid_at or o.created_at),
        "cancelled_at": _iso(version) if cancelled else None,
        "currency": o.currency,
        "financial_status": "paid",
        "fulfillment_status": None,
        "note": o.buyer_message,
        "customer": {"id": o.buyer.id, "first_name": o.buyer.nick, "phone": o.buyer.phone},
        "shipping_address": {
            "first_name": o.receiver.name,
            "address1": o.receiver.street,
            "city": o.receiver.city,
            "province": o.receiver.province,
            "country_code": o.receiver.country,
            "phone": o.receiver.phone,
        },
        "shipping_lines": [{"price": _yuan(o.shipping_fen)}],
        "line_items": [
            {
                "id": int(f"{o.platform_order_id}{ln.line_no}"),
                "sku": ln.sku,
                "title": ln.title or ln.sku,
                "quantity": ln.quantity,
                "price": _yuan(ln.unit_price_fen),
            }
            for ln in o.lines
        ],
    }
    if risk:
        payload["risk"] = {"recommendation": risk}
    return payload


def store(o: Order, status: str = "paid", version: int = 0) -> dict[str, Any]:
    version = version or o.created_at
    return {
        "order_no": o.platform_order_id,
        "status": status,
        "created_at": o.created_at,
        "paid_at": o.paid_at,
        "updated_at": version,
        "currency": o.currency,
        "buyer": {"id": o.buyer.id, "name": o.buyer.nick, "phone": o.buyer.phone},
        "receiver": msgspec.to_builtins(o.receiver),
        "shipping_fen": o.shipping_fen,
        "buyer_message": o.buyer_message,
        "seller_memo": o.seller_memo,
        "lines": [
            {
                "line_no": ln.line_no,
                "sku": ln.sku,
                "quantity": ln.quantity,
                "unit_price_fen": ln.unit_price_fen,
                "paid_fen": ln.unit_price_fen * ln.quantity,
            }
            for ln in o.lines
        ],
        **({"delivery": o.delivery, "store_code": o.pickup_store} if o.delivery != "ship" else {}),
    }


def render(o: Order, **kw: Any) -> dict[str, Any]:
    ch = o.channel
    if ch in (Channel.TMALL, Channel.TAOBAO):
        return taobao(o, **kw)
    if ch is Channel.JD:
        return jd(o, **kw)
    if ch is Channel.DOUYIN:
        return douyin(o, **kw)
    if ch is Channel.SHOPIFY:
        return shopify(o, **kw)
    return store(o, **kw)


@dataclass(frozen=True)
class Delivery:
    """One message from a channel: where it goes and the bytes that go there."""

    channel: Channel
    tenant: str
    shop: str
    platform_id: str
    body: bytes
    via: str  # "kafka" (raw topic), "http" (API) or "webhook" (Shopify)
    kind: str  # order, duplicate, update, cancel, refund, unlock, bad
    #: the canonical snapshot this payload means, as the generator intended it (None for a bad payload): what
    #: the invariant checker takes as the truth, independently of the engine's adapters
    intent: Order | None = None

    @property
    def raw_key(self) -> str:
        return f"{self.tenant}:{self.shop}:{self.platform_id}"


@dataclass(frozen=True)
class DayMix:
    """Shares of the day's orders that get each kind of extra delivery."""

    unpaid_first: float = 0.02
    cancel: float = 0.015
    refund_line: float = 0.008
    jd_locked: float = 0.03  # of JD orders
    message_keyword: float = 0.01
    blacklisted_phone: float = 0.003
    bad: float = 0.004


BAD_KINDS = ("garbage", "wrong_type", "zero_quantity", "unknown_sku", "missing_id")


def channel_day(orders: Iterator[Order], seed: int, mix: DayMix | None = None) -> Iterator[Delivery]:
    """The deliveries of a day, in sending order (an update follows its order a little later)."""
    mix = mix or DayMix()
    rng = random.Random(seed * 31337)
    later: list[tuple[int, Delivery]] = []
    n = 0
    for o in orders:
        n += 1
        via = "http" if o.channel in HTTP_CHANNELS else "webhook" if o.channel in WEBHOOK_CHANNELS else "kafka"
        roll = rng.random()
        if roll < mix.message_keyword:
            o = msgspec.structs.replace(o, buyer_message="麻烦改地址到公司")
        elif roll < mix.message_keyword + mix.blacklisted_phone:
            o = msgspec.structs.replace(o, receiver=msgspec.structs.replace(o.receiver, phone="13800000000"))
        v1 = o.created_at
        if rng.random() < mix.bad:
            yield _bad(o, via, rng.choice(BAD_KINDS))
            continue
        if o.channel in (Channel.TMALL, Channel.TAOBAO) and rng.random() < mix.unpaid_first:
            unpaid = _intent(o, OrderStatus.PENDING_PAYMENT, v1)
            yield _delivery(o, via, "order", render(o, status="WAIT_BUYER_PAY", version=v1), unpaid)
            paid = _intent(o, OrderStatus.PAID, v1 + 60_000)
            later.append((n + rng.randint(1, 30), _delivery(o, via, "update", render(o, version=v1 + 60_000), paid)))
        elif o.channel is Channel.JD and rng.random() < mix.jd_locked:
            locked = _intent(o, OrderStatus.HOLD_BY_PLATFORM, v1)
            yield _delivery(o, via, "order", render(o, state="LOCKED", version=v1), locked)
            if rng.random() < 0.5:  # the lock is lifted later; the other half wait for an operator
                unlocked = _intent(o, OrderStatus.PAID, v1 + 120_000)
                payload = render(o, version=v1 + 120_000)
                later.append((n + rng.randint(5, 200), _delivery(o, via, "unlock", payload, unlocked)))
        else:
            yield _delivery(o, via, "order", render(o, version=v1), _intent(o, OrderStatus.PAID, v1))
        r = rng.random()
        if r < mix.cancel:
            later.append((n + rng.randint(1, 400), _cancel(o, via, v1 + 300_000)))
        elif (
            r < mix.cancel + mix.refund_line
            and len(o.lines) > 1
            and o.channel in (Channel.TMALL, Channel.TAOBAO, Channel.DOUYIN)
        ):
            later.append((n + rng.randint(1, 400), _refund(o, via, v1 + 300_000)))
        later.sort(key=lambda x: x[0])
        while later and later[0][0] <= n:
            yield later.pop(0)[1]
    for _, d in later:
        yield d


def _intent(o: Order, status: OrderStatus, version: int, refunded: int | None = None) -> Order:
    """The canonical snapshot a payload means (versions at the second, as the channels send them)."""
    lines = [
        msgspec.structs.replace(ln, status=LineState.CANCELLED) if ln.line_no == refunded else ln for ln in o.lines
    ]
    return msgspec.structs.replace(o, status=status, version=version // 1000 * 1000, lines=lines)


def _delivery(o: Order, via: str, kind: str, payload: Any, intent: Order | None) -> Delivery:
    return Delivery(o.channel, o.tenant, o.shop_id, o.platform_order_id, orjson.dumps(payload), via, kind, intent)


def _cancel(o: Order, via: str, version: int) -> Delivery:
    ch = o.channel
    if ch in (Channel.TMALL, Channel.TAOBAO):
        payload = taobao(o, status="TRADE_CLOSED", version=version)
    elif ch is Channel.JD:
        payload = jd(o, state="TRADE_CANCELED", version=version)
    elif ch is Channel.DOUYIN:
        payload = douyin(o, status=4, version=version)
    elif ch is Channel.SHOPIFY:
        payload = shopify(o, version=version, cancelled=True)
    else:
        payload = store(o, status="cancelled", version=version)
    return _delivery(o, via, "cancel", payload, _intent(o, OrderStatus.CANCELLED, version))


def _refund(o: Order, via: str, version: int) -> Delivery:
    last = o.lines[-1].line_no
    if o.channel is Channel.DOUYIN:
        payload = douyin(o, version=version, refunds={last: 3})
    else:
        payload = taobao(o, version=version, refunds={last: "SUCCESS"})
    return _delivery(o, via, "refund", payload, _intent(o, OrderStatus.PAID, version, refunded=last))


def _bad(o: Order, via: str, kind: str) -> Delivery:
    payload: Any = render(o)
    if kind == "garbage":
        return Delivery(o.channel, o.tenant, o.shop_id, o.platform_order_id, b"\x00{not json at all", via, "bad")
    if kind == "unknown_sku" and via == "kafka":
        # Well formed, with a SKU the retailer does not sell: an order the inventory refuses (the HTTP edge
        # refuses it up front with 422 unknown_sku, the Kafka route cannot look the catalog up).
        bad_line = msgspec.structs.replace(o.lines[0], sku="SKU-NOPE-404")
        odd = msgspec.structs.replace(o, lines=[bad_line, *o.lines[1:]])
        return _delivery(odd, via, "order", render(odd), _intent(odd, OrderStatus.PAID, o.created_at))
    lines_key = {
        "tmall": "orders",
        "taobao": "orders",
        "jd": "itemInfoList",
        "douyin": "sku_order_list",
        "shopify": "line_items",
    }.get(o.channel.value, "lines")
    lines = payload[lines_key]["order"] if lines_key == "orders" else payload[lines_key]
    qty_key = {"tmall": "num", "taobao": "num", "jd": "itemTotal", "douyin": "item_num"}.get(
        o.channel.value, "quantity"
    )
    sku_key = {"tmall": "outer_sku_id", "taobao": "outer_sku_id", "jd": "outerSkuId", "douyin": "out_sku_id"}.get(
        o.channel.value, "sku"
    )
    if kind == "wrong_type":
        lines[0][qty_key] = "two"
    elif kind == "zero_quantity":
        lines[0][qty_key] = 0
    elif kind == "unknown_sku":
        lines[0][sku_key] = "SKU-NOPE-404"
        if o.channel is Channel.DOUYIN:
            lines[0]["code"] = "SKU-NOPE-404"
    else:  # missing_id
        id_key = {"tmall": "tid", "taobao": "tid", "jd": "orderId", "douyin": "order_id", "shopify": "id"}.get(
            o.channel.value, "order_no"
        )
        payload.pop(id_key, None)
        payload.pop("tid_str", None)
    return _delivery(o, via, "bad", payload, None)
