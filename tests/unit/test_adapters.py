"""Channel adapters on documented sample payloads, and thousands of malformed ones (hypothesis)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.ingest.adapters import AdapterError, Source, adapt
from agents.ingest.adapters.shopify import sign, verify_hmac
from schemas.deadletter import ReasonCode
from schemas.order import Channel, LineState, Order, OrderStatus

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FILES = {
    Channel.TMALL: "tmall_trade.json",
    Channel.TAOBAO: "tmall_trade.json",
    Channel.JD: "jd_order.json",
    Channel.DOUYIN: "douyin_order.json",
    Channel.SHOPIFY: "shopify_order.json",
    Channel.WEB: "web_order.json",
    Channel.POS: "pos_order.json",
}


def sample(channel: Channel) -> dict[str, Any]:
    return json.loads((SAMPLES / FILES[channel]).read_text())


def src(channel: Channel, shop: str = "s1") -> Source:
    return Source(tenant="acme", channel=channel, shop_id=shop, received_at=1_800_000_000_000)


def test_tmall_trade() -> None:
    o = adapt(src(Channel.TMALL, "flagship"), sample(Channel.TMALL))
    assert o.order_id == "tmall-flagship-3459812345678901234" and o.key == "acme:tmall-flagship-3459812345678901234"
    assert o.status is OrderStatus.PAID and o.currency == "CNY"
    assert [(ln.sku, ln.quantity, ln.unit_price_fen, ln.paid_fen) for ln in o.lines] == [
        ("SKU-00012", 2, 19900, 37400),
        ("SKU-00031", 1, 9900, 9300),
    ]
    assert o.receiver.province == "浙江省" and o.receiver.phone == "13812345678" and "文三路" in o.receiver.street
    assert o.created_at == 1794326412000  # 2026-11-11 00:00:12 China time
    assert o.version == 1794326431000 and o.buyer.id == "AAHk5d-EAAeGwJedwSHtf8qK" and o.buyer_message == "请尽快发货"


def test_jd_order() -> None:
    o = adapt(src(Channel.JD), sample(Channel.JD))
    assert o.order_id == "jd-s1-301234567890" and o.status is OrderStatus.PAID
    assert [(ln.sku, ln.quantity, ln.unit_price_fen) for ln in o.lines] == [("SKU-00003", 2, 29900)]
    assert o.shipping_fen == 1000 and o.receiver.name == "李四" and o.risk_flags == []


def test_douyin_order_money_is_already_fen() -> None:
    o = adapt(src(Channel.DOUYIN), sample(Channel.DOUYIN))
    assert o.order_id == "douyin-s1-6912345678901234567" and o.status is OrderStatus.PAID
    assert [(ln.sku, ln.unit_price_fen, ln.paid_fen) for ln in o.lines] == [("SKU-00007", 19900, 18900)]
    assert o.receiver.name == "王**" and o.receiver.city == "深圳市"  # masked, kept as received
    assert o.created_at == 1794326412000


def test_shopify_order() -> None:
    o = adapt(src(Channel.SHOPIFY, "acme-store"), sample(Channel.SHOPIFY))
    assert o.order_id == "shopify-acme-store-5678901234567" and o.currency == "USD" and o.status is OrderStatus.PAID
    assert [(ln.sku, ln.quantity, ln.unit_price_fen, ln.paid_fen) for ln in o.lines] == [("SKU-00002", 2, 2495, 4990)]
    assert o.shipping_fen == 1000 and o.receiver.country == "US" and o.buyer_message == "Leave at the door"
    assert o.created_at == 1794351906000  # 18:05:06-05:00


def test_web_and_pos_orders() -> None:
    web = adapt(src(Channel.WEB), sample(Channel.WEB))
    assert web.order_id == "web-s1-W202611110001" and web.goods_fen == 9900 + 3 * 1990 and web.shipping_fen == 1000
    pos = adapt(src(Channel.POS, "SH01"), sample(Channel.POS))
    assert pos.receiver.name == "SH01" and pos.lines[0].line_no == 1 and pos.created_at == 1794326500000


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("WAIT_BUYER_PAY", OrderStatus.PENDING_PAYMENT),
        ("TRADE_CLOSED", OrderStatus.CANCELLED),
        ("TRADE_CLOSED_BY_TAOBAO", OrderStatus.CANCELLED),
        ("WAIT_BUYER_CONFIRM_GOODS", OrderStatus.SHIPPED),
        ("TRADE_FINISHED", OrderStatus.FINISHED),
        ("PAID_FORBID_CONSIGN", OrderStatus.HOLD_BY_PLATFORM),
    ],
)
def test_taobao_status_mapping(status: str, expected: OrderStatus) -> None:
    payload = sample(Channel.TMALL) | {"status": status}
    assert adapt(src(Channel.TAOBAO), payload).status is expected


def test_taobao_line_refunds_and_platform_hold() -> None:
    payload = sample(Channel.TMALL)
    payload["top_hold"] = 1
    payload["orders"]["order"][0]["refund_status"] = "WAIT_SELLER_AGREE"
    payload["orders"]["order"][1]["refund_status"] = "SUCCESS"
    o = adapt(src(Channel.TMALL), payload)
    assert [ln.status for ln in o.lines] == [LineState.REFUNDING, LineState.CANCELLED]
    assert o.risk_flags == ["taobao_top_hold"]


def test_jd_locked_is_a_platform_hold() -> None:
    o = adapt(src(Channel.JD), sample(Channel.JD) | {"orderState": "LOCKED"})
    assert o.status is OrderStatus.HOLD_BY_PLATFORM and o.risk_flags == ["jd_locked"]
    assert adapt(src(Channel.JD), sample(Channel.JD) | {"orderState": "TRADE_CANCELED"}).status is OrderStatus.CANCELLED


def test_douyin_statuses_and_refunds() -> None:
    assert adapt(src(Channel.DOUYIN), sample(Channel.DOUYIN) | {"order_status": 4}).status is OrderStatus.CANCELLED
    payload = sample(Channel.DOUYIN)
    payload["sku_order_list"][0]["after_sale_info"]["refund_status"] = 1
    assert adapt(src(Channel.DOUYIN), payload).lines[0].status is LineState.REFUNDING


def test_shopify_cancel_refund_and_risk() -> None:
    cancelled = sample(Channel.SHOPIFY) | {"cancelled_at": "2026-11-10T19:00:00-05:00", "cancel_reason": "customer"}
    assert adapt(src(Channel.SHOPIFY), cancelled).status is OrderStatus.CANCELLED
    refunded = sample(Channel.SHOPIFY) | {"refunds": [{"refund_line_items": [{"line_item_id": 13012345678901}]}]}
    assert adapt(src(Channel.SHOPIFY), refunded).lines[0].status is LineState.CANCELLED
    risky = sample(Channel.SHOPIFY) | {"risk": {"recommendation": "CANCEL"}}
    assert adapt(src(Channel.SHOPIFY), risky).risk_flags == ["shopify_risk_cancel"]
    assert adapt(src(Channel.SHOPIFY), sample(Channel.SHOPIFY) | {"financial_status": "pending"}).status is (
        OrderStatus.PENDING_PAYMENT
    )


@pytest.mark.parametrize(("raw", "fen"), [("0.10", 10), ("19.9", 1990), ("199", 19900), ("0.01", 1), (12.5, 1250)])
def test_money_is_parsed_without_floats(raw: object, fen: int) -> None:
    payload = sample(Channel.JD)
    payload["itemInfoList"][0]["jdPrice"] = raw
    assert adapt(src(Channel.JD), payload).lines[0].unit_price_fen == fen


@pytest.mark.parametrize("raw", ["1e3", "12.345", "NaN", "-Infinity", "１２", "", True, [1]])
def test_bad_money_is_classified(raw: object) -> None:
    payload = sample(Channel.JD)
    payload["itemInfoList"][0]["jdPrice"] = raw
    with pytest.raises(AdapterError) as err:
        adapt(src(Channel.JD), payload)
    assert err.value.reason in (ReasonCode.SCHEMA_VIOLATION, ReasonCode.INVALID_RECORD)
    assert "jdPrice" in err.value.detail


@pytest.mark.parametrize(
    ("mutate", "reason", "needle"),
    [
        (lambda p: p["itemInfoList"][0].update(itemTotal="0"), ReasonCode.INVALID_RECORD, "quantity"),
        (lambda p: p["itemInfoList"][0].update(itemTotal="999999"), ReasonCode.INVALID_RECORD, "quantity"),
        (lambda p: p["itemInfoList"][0].update(jdPrice="99999999.00"), ReasonCode.INVALID_RECORD, "unit_price_fen"),
        (lambda p: p.pop("orderId"), ReasonCode.SCHEMA_VIOLATION, "orderId"),
        (lambda p: p.update(itemInfoList=[]), ReasonCode.INVALID_RECORD, "lines"),
        (lambda p: p.update(itemInfoList="x"), ReasonCode.SCHEMA_VIOLATION, "itemInfoList"),
        (lambda p: p.update(orderState="WHO_KNOWS"), ReasonCode.SCHEMA_VIOLATION, "orderState"),
        (lambda p: p.update(orderStartTime="yesterday"), ReasonCode.SCHEMA_VIOLATION, "orderStartTime"),
    ],
)
def test_bad_fields_are_named(mutate: Any, reason: ReasonCode, needle: str) -> None:
    payload = sample(Channel.JD)
    mutate(payload)
    with pytest.raises(AdapterError) as err:
        adapt(src(Channel.JD), payload)
    assert err.value.reason is reason and needle in err.value.detail


def test_shopify_hmac() -> None:
    body = json.dumps(sample(Channel.SHOPIFY)).encode()
    header = sign("s3cret", body)
    assert verify_hmac("s3cret", body, header)
    assert not verify_hmac("s3cret", body + b" ", header)
    assert not verify_hmac("other", body, header)
    assert not verify_hmac("s3cret", body, None) and not verify_hmac("", body, header)


# ---- property tests: nothing but an Order or an AdapterError comes out, whatever goes in ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(payload: Any, path: tuple, action: str, replacement: Any) -> Any:
    payload = copy.deepcopy(payload)
    if not path:
        return replacement
    parent = payload
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete" and isinstance(parent, dict):
        parent.pop(last, None)
    elif action == "delete" and isinstance(parent, list):
        parent.pop(last)
    else:
        parent[last] = replacement
    return payload


def _classified(channel: Channel, payload: Any) -> None:
    try:
        result = adapt(src(channel), payload)
    except AdapterError as exc:
        assert isinstance(exc.reason, ReasonCode) and exc.detail
        return
    assert isinstance(result, Order)


@pytest.mark.parametrize("channel", list(FILES))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_samples_are_always_classified(channel: Channel, data: st.DataObject) -> None:
    payload = sample(channel)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(payload)
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["delete", "replace"]))
        payload = _mutate(payload, path, action, data.draw(json_values))
    _classified(channel, payload)


@pytest.mark.parametrize("channel", list(FILES))
@settings(max_examples=400, deadline=None)
@given(payload=json_values)
def test_arbitrary_json_is_always_classified(channel: Channel, payload: Any) -> None:
    _classified(channel, payload)


# ---- the HTTP edge validator ----

from agents.ingest.edge import Parsed, Refused, parse  # noqa: E402


def _edge(body: bytes, channel: str = "jd", content_type: str | None = "application/json") -> Parsed | Refused:
    return parse("acme", channel, "s1", body, content_type, 1, 65536)


def test_edge_accepts_single_and_batch() -> None:
    one = json.dumps(sample(Channel.JD)).encode()
    single = _edge(one)
    assert isinstance(single, Parsed) and not single.batch and len(single.orders) == 1
    bad = sample(Channel.JD) | {"orderId": None}
    batch = _edge(json.dumps({"orders": [sample(Channel.JD), bad]}).encode())
    assert isinstance(batch, Parsed) and batch.batch and len(batch.orders) == 1
    assert (
        batch.errors[0].index == 1
        and batch.errors[0].code == "schema_violation"
        and "orderId" in batch.errors[0].message
    )


@pytest.mark.parametrize(
    ("body", "kwargs", "status", "code"),
    [
        (b"{", {}, 400, "malformed_json"),
        (b"x" * 70000, {}, 413, "oversize"),
        (b"{}", {"channel": "ebay"}, 404, "unknown_channel"),
        (b"{}", {"content_type": "text/plain"}, 415, "unsupported_media_type"),
        (b"[]", {}, 422, "schema_violation"),
        (json.dumps([{}] * 501).encode(), {}, 413, "oversize"),
    ],
)
def test_edge_refuses_with_a_status_and_a_reason(body: bytes, kwargs: dict, status: int, code: str) -> None:
    result = _edge(body, **kwargs)
    assert isinstance(result, Refused) and (result.status, result.code) == (status, code) and result.message


@pytest.mark.parametrize("channel", [c.value for c in FILES])
@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_edge_classifies_any_body(channel: str, body: bytes) -> None:
    result = _edge(body, channel=channel)
    if isinstance(result, Refused):
        assert 400 <= result.status < 500 and result.code and result.message
    else:
        assert len(result.orders) + len(result.errors) >= 1
        assert all(e.code and e.message for e in result.errors)
