"""Aftersales rules without servers: write-back in each platform's shape and its retries, notifications, the
delivered state per order, returns to stock and to quarantine (only where their lines left from), and store
pickups (claimed, wrong code, locked after too many, store required, retried claims, expired, no secret, counter
sales), the pickup API's parsing and the pickup desk's retries. Pure functions over records; the pipeline test
drives the same through Kafka."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from agents.aftersales import views
from agents.aftersales.core import (
    PICKUP_ATTEMPTS,
    WRITEBACK_ATTEMPTS,
    AftersalesState,
    claim_key,
    on_goods_issued,
    on_opened,
    on_pickup_claim,
    on_pickup_due,
    on_pickup_ready,
    on_return_received,
    on_return_requested,
    on_tracking,
    on_writeback_result,
    pickup_code,
)
from agents.aftersales.writeback import write_back
from agents.orders.core import order_opened
from engine.http.edge import Problem
from engine.kafka.clients import Message
from engine.runtime.stamp import Stamp
from engine.settings import Settings, SettingsError
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import (
    CustomerNotification,
    OrderProgress,
    OrderTracking,
    PickupClaim,
    PickupLine,
    PickupReady,
    ProgressEvent,
    ReceivedLine,
    ReturnLine,
    ReturnReceived,
    ReturnRequested,
    ReturnSettled,
    WriteBackRequest,
    WriteBackResult,
)
from schemas.inbox import OperatorAction
from schemas.inventory import Issue, Return
from schemas.order import Address, Buyer, Channel, Order, OrderLine, OrderStatus
from schemas.review import OperatorActionKind
from schemas.shipping import GoodsIssued, PackedLine, TrackingStatus
from workload import aftersales as desk_module
from workload.aftersales import PickupDesk

SECRET = b"test-secret-123"
STAMP = Stamp("aftersales.x.p0", 7)


def _order(channel: str, lines: int = 2, **changes: object) -> Order:
    return Order(
        tenant="acme", order_id=f"{channel}-s1-77", channel=Channel(channel), shop_id="s1", platform_order_id="77",
        status=OrderStatus.PAID, buyer=Buyer(id="b1"),
        receiver=Address(name="李四", phone="13900001234", province="北京市", city="北京市"),
        lines=[OrderLine(line_no=i + 1, sku=f"SKU-{i}", quantity=i + 1, unit_price_fen=100, platform_line_id=f"77-{i}")
               for i in range(lines)],
        created_at=1, ingested_at=1, version=1, **changes,  # type: ignore[arg-type]
    )  # fmt: skip


def _state(channel: str, lines: int = 2, **changes: object) -> AftersalesState:
    state = on_opened(None, order_opened(_order(channel, lines, **changes), 10), 10).state
    assert state is not None
    return state


def _issued(order_id: str, lines: dict[int, int], waybill: str = "SF1", carrier: str = "sf", n: int = 1) -> GoodsIssued:
    return GoodsIssued(
        issue_id=f"shp{n}.{order_id}",
        tenant="acme",
        order_id=order_id,
        shipment_id=f"shp{n}",
        warehouse="WH1",
        lines=[
            PackedLine(order_id=order_id, line_id=f"{order_id}#{no}", sku=f"SKU-{no - 1}", units=u)
            for no, u in lines.items()
        ],
        waybills=[waybill],
        carriers={waybill: carrier},
        ts=50,
    )


def _of(outputs: list, typ: type) -> list:
    return [o for o in outputs if isinstance(o, typ)]


# -- write-back: each platform's shape ------------------------------------------------------------------------
def test_each_platform_gets_its_own_shape_and_a_partial_parcel_names_its_lines() -> None:
    tmall = _state("tmall")
    whole = write_back(tmall, ["tmall-s1-77#1", "tmall-s1-77#2"], "sf", "SF1", unshipped_left=False)
    assert (whole.method, whole.request) == (
        "taobao.logistics.offline.send",
        {"tid": "77", "out_sid": "SF1", "company_code": "SF"},
    )
    part = write_back(tmall, ["tmall-s1-77#2"], "zto", "ZT9", unshipped_left=False)  # the second of two parcels
    assert part.request == {"tid": "77", "out_sid": "ZT9", "company_code": "ZTO", "is_split": 1, "sub_tid": "77-1"}
    assert part.idempotency_key == "wb.acme.tmall-s1-77.ZT9"
    jd = write_back(_state("jd"), ["jd-s1-77#1", "jd-s1-77#2"], "sf", "SF2", unshipped_left=False)
    assert (jd.method, jd.request) == (
        "jingdong.pop.order.shipment",
        {"orderId": "77", "logiCoprId": 467, "logiNo": "SF2"},
    )
    shopify = write_back(_state("shopify"), ["shopify-s1-77#1"], "sf", "SF3", unshipped_left=True)
    assert shopify.request is not None
    assert shopify.request["fulfillment"]["line_items"] == [{"id": "77-0", "quantity": 1}]
    assert shopify.request["fulfillment"]["tracking_company"] == "SF Express"


def test_douyin_waits_for_the_last_parcel_own_stores_have_nothing_and_unknown_codes_are_not_guessed() -> None:
    douyin = _state("douyin")
    first = write_back(douyin, ["douyin-s1-77#1"], "sf", "SF4", unshipped_left=True)
    assert first.request is None and "last parcel" in first.reason
    last = write_back(douyin, ["douyin-s1-77#2"], "sf", "SF5", unshipped_left=False)
    assert last.request == {"order_id": "77", "company_code": "shunfeng", "logistics_code": "SF5"}
    assert write_back(_state("web"), ["web-s1-77#1"], "sf", "SF6", False).reason.startswith("own store")
    unknown = write_back(_state("jd"), ["jd-s1-77#1"], "yto", "YT1", False)
    assert unknown.request is None and "no jd code for carrier 'yto'" in unknown.reason


# -- shipped: write-back through the outbox, notification -----------------------------------------------------
def test_a_partial_shipment_writes_back_its_lines_and_tells_the_customer_with_the_phone_masked() -> None:
    step = on_goods_issued(_state("tmall"), _issued("tmall-s1-77", {2: 2}, "ZT9", "zto"), 60)
    [progress] = _of(step.outputs, OrderProgress)
    assert (progress.event, progress.detail, progress.waybill) == (ProgressEvent.SHIPPED, "partial", "ZT9")
    [request] = _of(step.outputs, WriteBackRequest)
    assert (request.request_id, request.attempt, request.method) == (
        "wb.acme.tmall-s1-77.ZT9#1",
        1,
        "taobao.logistics.offline.send",
    )
    assert request.request["sub_tid"] == "77-1"
    [note] = _of(step.outputs, CustomerNotification)
    assert (note.template, note.to_masked) == ("shipped", "139****1234")
    assert note.params == {"order_no": "77", "carrier": "中通快递", "waybill": "ZT9"}
    again = on_goods_issued(step.state, _issued("tmall-s1-77", {2: 2}, "ZT9", "zto"), 61)
    assert again.note == "duplicate_goods_issued" and not again.outputs


def test_a_refused_write_back_is_sent_again_with_the_same_key_until_acknowledged_and_late_answers_change_nothing() -> (
    None
):
    shipped = on_goods_issued(_state("jd"), _issued("jd-s1-77", {1: 1, 2: 2}), 60)
    [first] = _of(shipped.outputs, WriteBackRequest)

    def answer(request: WriteBackRequest, ok: bool) -> WriteBackResult:
        return WriteBackResult(
            request_id=request.request_id, tenant="acme", order_id=request.order_id,
            idempotency_key=request.idempotency_key, attempt=request.attempt, ok=ok,
            error="" if ok else "isv.service-busy", platform_ref="jd-1" if ok else "", ts=70,
        )  # fmt: skip

    retry = on_writeback_result(shipped.state, answer(first, False), 70)
    [second] = retry.outputs
    assert (second.request_id, second.idempotency_key, second.request) == (
        "wb.acme.jd-s1-77.SF1#2",
        first.idempotency_key,
        first.request,
    )
    late = on_writeback_result(retry.state, answer(first, True), 71)  # the first attempt's answer, after all
    assert late.note == "late_writeback_result" and not late.outputs
    done = on_writeback_result(retry.state, answer(second, True), 72)
    [ack] = done.outputs
    assert (ack.event, ack.detail) == (ProgressEvent.WRITTEN_BACK, "jd jd-1")
    assert done.state is not None and done.state.writebacks[first.idempotency_key].status == "acknowledged"


def test_a_write_back_the_platform_keeps_refusing_is_recorded_as_failed_after_its_attempts() -> None:
    step = on_goods_issued(_state("jd"), _issued("jd-s1-77", {1: 1, 2: 2}), 60)
    [request] = _of(step.outputs, WriteBackRequest)
    state = step.state
    for _ in range(WRITEBACK_ATTEMPTS):
        result = WriteBackResult(
            request_id=request.request_id, tenant="acme", order_id="jd-s1-77", idempotency_key=request.idempotency_key,
            attempt=request.attempt, ok=False, error="down", ts=70,
        )  # fmt: skip
        step = on_writeback_result(state, result, 70)
        state = step.state
        request = step.outputs[0] if isinstance(step.outputs[0], WriteBackRequest) else request
    [failed] = step.outputs
    assert failed.event is ProgressEvent.WRITEBACK_FAILED and failed.detail.count("down") == WRITEBACK_ATTEMPTS


# -- tracking per order ---------------------------------------------------------------------------------------
def _tracking(waybill: str, status: TrackingStatus, at: int, exception: bool = False) -> OrderTracking:
    final = status in (TrackingStatus.DELIVERED, TrackingStatus.RETURNED)
    return OrderTracking(
        tenant="acme", order_id="jd-s1-77", carrier="sf", waybill=waybill, status=status,
        exception=exception, final=final, occurred_at=at, ts=at,
    )  # fmt: skip


def test_an_order_is_delivered_when_every_waybill_is_and_nothing_is_left_to_ship() -> None:
    state = on_goods_issued(_state("jd"), _issued("jd-s1-77", {1: 1}, "SF1"), 60).state
    one = on_tracking(state, _tracking("SF1", TrackingStatus.DELIVERED, 100), 100)
    assert not _of(one.outputs, OrderProgress)  # line 2 has not shipped yet
    state = on_goods_issued(one.state, _issued("jd-s1-77", {2: 2}, "SF2", n=2), 110).state
    trouble = on_tracking(state, _tracking("SF2", TrackingStatus.IN_TRANSIT, 120, exception=True), 120)
    assert [p.event for p in _of(trouble.outputs, OrderProgress)] == [ProgressEvent.EXCEPTION]
    done = on_tracking(trouble.state, _tracking("SF2", TrackingStatus.DELIVERED, 130), 130)
    assert [p.event for p in _of(done.outputs, OrderProgress)] == [ProgressEvent.DELIVERED]
    assert [n.template for n in _of(done.outputs, CustomerNotification)] == ["delivered"]
    same = on_tracking(done.state, _tracking("SF2", TrackingStatus.DELIVERED, 130), 131)
    assert same.note == "tracking_unchanged" and not same.outputs


# -- returns --------------------------------------------------------------------------------------------------
def test_a_return_sends_sellable_units_back_to_stock_and_damaged_ones_to_quarantine_with_the_refund() -> None:
    state = on_goods_issued(_state("jd"), _issued("jd-s1-77", {1: 1, 2: 2}), 60).state
    too_many = ReturnRequested(
        tenant="acme", order_id="jd-s1-77", return_id="r1", lines=[ReturnLine(line_id="jd-s1-77#2", quantity=3)], ts=70
    )
    assert on_return_requested(state, too_many, 70).refused[0] == "return_invalid"  # type: ignore[index]
    request = ReturnRequested(
        tenant="acme", order_id="jd-s1-77", return_id="r1", lines=[ReturnLine(line_id="jd-s1-77#2", quantity=2)], ts=70
    )
    asked = on_return_requested(state, request, 70)
    assert [p.event for p in asked.outputs] == [ProgressEvent.RETURN_REQUESTED]
    more = ReturnRequested(
        tenant="acme", order_id="jd-s1-77", return_id="r2", lines=[ReturnLine(line_id="jd-s1-77#2", quantity=1)], ts=71
    )
    assert on_return_requested(asked.state, more, 71).refused is not None  # both units are already asked back
    receipt = ReturnReceived(
        tenant="acme", order_id="jd-s1-77", return_id="r1", warehouse="WH1",
        lines=[ReceivedLine(line_id="jd-s1-77#2", quantity=1, disposition="sellable"),
               ReceivedLine(line_id="jd-s1-77#2", quantity=1, disposition="damaged")],
        ts=80,
    )  # fmt: skip
    got = on_return_received(asked.state, receipt, STAMP, 80)
    returns = _of(got.outputs, Return)
    assert [(r.warehouse, r.quantity, r.sku) for r in returns] == [("WH1", 1, "SKU-1"), ("WH1/quarantine", 1, "SKU-1")]
    assert len({r.command_id for r in returns}) == 2 and [r.seq for r in returns] == [STAMP.seq(0), STAMP.seq(1)]
    [settled] = _of(got.outputs, ReturnSettled)
    assert settled.refund_fen == 200 and [s.refund_fen for s in settled.lines] == [100, 100]  # 2 units paid 200
    assert on_return_received(got.state, receipt, STAMP, 81).note == "duplicate_return_receipt"
    unasked = ReturnReceived(
        tenant="acme", order_id="jd-s1-77", return_id="r9", warehouse="WH1", lines=receipt.lines, ts=82
    )
    assert on_return_received(got.state, unasked, STAMP, 82).refused[0] == "return_invalid"  # type: ignore[index]


# -- store pickup and counter sales ---------------------------------------------------------------------------
def _ready(order_id: str) -> PickupReady:
    return PickupReady(
        tenant="acme", order_id=order_id, store="STORE-1",
        lines=[PickupLine(line_id=f"{order_id}#1", sku="SKU-0", quantity=1)], reply_to="acme:s1:b-b1", ts=100,
    )  # fmt: skip


def test_a_pickup_is_announced_with_its_code_and_handed_over_to_the_right_code_only() -> None:
    state = _state("web", 1, delivery="pickup", pickup_store="STORE-1")
    ready = on_pickup_ready(state, _ready("web-s1-77"), SECRET, 3_600_000, STAMP, 100)
    code = pickup_code(SECRET, "acme", "web-s1-77")
    assert len(code) == 6 and code == pickup_code(SECRET, "acme", "web-s1-77") != pickup_code(
        b"other-secret!", "acme", "web-s1-77"
    )
    [note] = _of(ready.outputs, CustomerNotification)
    assert (note.template, note.params["code"], note.params["store"]) == ("pickup_ready", code, "STORE-1")
    wrong = PickupClaim(tenant="acme", order_id="web-s1-77", code=_wrong(code), store="STORE-1", ts=200)
    assert on_pickup_claim(ready.state, wrong, SECRET, STAMP, 200).refused[0] == "pickup_refused"  # type: ignore[index]
    claim = PickupClaim(tenant="acme", order_id="web-s1-77", code=code, store="STORE-1", actor="token-ab12", ts=200)
    done = on_pickup_claim(ready.state, claim, SECRET, STAMP, 200)
    [issue] = _of(done.outputs, Issue)
    assert (issue.line_id, issue.sku) == ("web-s1-77#1", "SKU-0")
    [goods] = _of(done.outputs, GoodsIssued)
    assert (goods.warehouse, goods.waybills) == ("STORE-1", [])
    [picked] = [p for p in _of(done.outputs, OrderProgress) if p.event is ProgressEvent.PICKED_UP]
    assert picked.detail == "STORE-1 by token-ab12"  # the caller the API took from the token
    assert on_pickup_claim(done.state, claim, SECRET, STAMP, 201).note == "duplicate_pickup_claim"
    assert on_pickup_due(done.state, 10**9).note == "pickup_not_due"  # claimed: never expires


def test_an_unclaimed_pickup_expires_at_its_deadline_and_is_cancelled_through_the_order_stage() -> None:
    state = _state("web", 1, delivery="pickup", pickup_store="STORE-1")
    ready = on_pickup_ready(state, _ready("web-s1-77"), SECRET, 1_000, STAMP, 100)
    assert on_pickup_due(ready.state, 1_099).note == "pickup_not_due"
    expired = on_pickup_due(ready.state, 1_100)
    [cancel] = _of(expired.outputs, OperatorAction)
    assert (cancel.action, cancel.inbox_key, cancel.note) == (
        OperatorActionKind.CANCEL,
        "acme:s1:b-b1",
        "pickup_expired",
    )
    assert [p.event for p in _of(expired.outputs, OrderProgress)] == [ProgressEvent.PICKUP_EXPIRED]
    code = pickup_code(SECRET, "acme", "web-s1-77")
    late = PickupClaim(tenant="acme", order_id="web-s1-77", code=code, store="STORE-1", ts=1_200)
    refused = on_pickup_claim(expired.state, late, SECRET, STAMP, 1_200).refused
    assert refused == ("pickup_refused", "web-s1-77: the pickup expired")


def test_a_counter_sale_is_handed_over_as_soon_as_it_is_reserved() -> None:
    state = _state("pos", 1, delivery="counter", pickup_store="STORE-1")
    step = on_pickup_ready(state, _ready("pos-s1-77"), SECRET, 1_000, STAMP, 100)
    assert [type(o).__name__ for o in step.outputs] == ["Issue", "GoodsIssued", "OrderProgress", "CustomerNotification"]
    assert on_pickup_due(step.state, 10**9).note == "pickup_not_due"


def test_a_return_of_a_short_picks_remainder_line_is_received_as_its_order_line() -> None:
    """Units re-reserved after a short pick ship as ``<line>/r``: they come back as that line's SKU and price."""
    remainder = _issued("jd-s1-77", {2: 1})
    remainder = GoodsIssued(
        **{
            **{f: getattr(remainder, f) for f in remainder.__struct_fields__},
            "lines": [PackedLine(order_id="jd-s1-77", line_id="jd-s1-77#2/r", sku="SKU-1", units=1)],
        }
    )
    state = on_goods_issued(_state("jd"), remainder, 60).state
    asked = on_return_requested(
        state,
        ReturnRequested(
            tenant="acme",
            order_id="jd-s1-77",
            return_id="r1",
            lines=[ReturnLine(line_id="jd-s1-77#2/r", quantity=1)],
            ts=70,
        ),
        70,
    )
    receipt = ReturnReceived(
        tenant="acme", order_id="jd-s1-77", return_id="r1", warehouse="WH1",
        lines=[ReceivedLine(line_id="jd-s1-77#2/r", quantity=1, disposition="sellable")], ts=80,
    )  # fmt: skip
    got = on_return_received(asked.state, receipt, STAMP, 80)
    [command] = _of(got.outputs, Return)
    [settled] = _of(got.outputs, ReturnSettled)
    assert (command.sku, command.line_id, command.quantity) == ("SKU-1", "jd-s1-77#2/r", 1)
    assert settled.refund_fen == 100  # line 2 paid 200 for 2 units


# -- pickups: the secret, the lockout, the store, the actor, retried claims --------------------------------------
CODE = pickup_code(SECRET, "acme", "web-s1-77")


def _wrong(code: str, n: int = 0) -> str:
    """The ``n``-th code that is not ``code``."""
    return [c for c in (f"{i:06d}" for i in range(PICKUP_ATTEMPTS + 2)) if c != code][n]


def _waiting(hold_ms: int = 3_600_000, secret: bytes | None = SECRET) -> AftersalesState:
    """A pickup order of one line, ready in STORE-1 since 100."""
    ready = on_pickup_ready(
        _state("web", 1, delivery="pickup", pickup_store="STORE-1"), _ready("web-s1-77"), secret, hold_ms, STAMP, 100
    )
    assert ready.state is not None and ready.state.pickup is not None
    return ready.state


def _claim(code: str, store: str | None = "STORE-1", claim_id: str | None = None, at: int = 200) -> PickupClaim:
    return PickupClaim(tenant="acme", order_id="web-s1-77", code=code, store=store, claim_id=claim_id, ts=at)


def test_wrong_codes_lock_the_pickup_for_good_after_the_attempts_and_a_retried_wrong_claim_counts_once() -> None:
    first = on_pickup_claim(_waiting(), _claim(_wrong(CODE, 0), claim_id="c0"), SECRET, STAMP, 200)
    assert first.refused == ("pickup_refused", f"web-s1-77: wrong pickup code (1 of {PICKUP_ATTEMPTS})")
    assert first.changed and first.state is not None and first.state.pickup is not None
    again = on_pickup_claim(first.state, _claim(_wrong(CODE, 0), claim_id="c0"), SECRET, STAMP, 201)
    assert again.refused == first.refused and not again.changed  # the same claim: counted once
    assert again.state is not None and again.state.pickup is not None and again.state.pickup.wrong == 1
    state = first.state
    for i in range(1, PICKUP_ATTEMPTS):
        assert not state.pickup.locked  # type: ignore[union-attr]
        step = on_pickup_claim(state, _claim(_wrong(CODE, i), claim_id=f"c{i}"), SECRET, STAMP, 200 + i)
        assert step.refused is not None and step.state is not None
        state = step.state
    assert step.refused[1].startswith(f"web-s1-77: wrong pickup code ({PICKUP_ATTEMPTS} of {PICKUP_ATTEMPTS}); locked")
    assert state.pickup is not None and state.pickup.locked and state.pickup.status == "ready"
    right = on_pickup_claim(state, _claim(CODE, claim_id="buyer"), SECRET, STAMP, 300)  # the right code, too late
    assert right.refused == ("pickup_refused", f"web-s1-77: locked after {PICKUP_ATTEMPTS} wrong pickup codes")
    assert not right.changed and not right.outputs
    assert on_pickup_claim(state, _claim(CODE), SECRET, STAMP, 10**6).refused == right.refused  # for good
    expired = on_pickup_due(state, 100 + 3_600_000)  # it expires unclaimed: cancelled, its stock released
    assert [a.note for a in _of(expired.outputs, OperatorAction)] == ["pickup_expired"]


def test_a_claim_must_name_the_orders_store_and_a_claim_elsewhere_tests_no_code() -> None:
    state = _waiting()
    nowhere = on_pickup_claim(state, _claim(CODE, store=None), SECRET, STAMP, 200)
    assert nowhere.refused == ("pickup_refused", "web-s1-77: a claim must name the store handing it over")
    assert not nowhere.outputs and not nowhere.changed
    elsewhere = on_pickup_claim(state, _claim(_wrong(CODE), store="STORE-2"), SECRET, STAMP, 200)
    assert elsewhere.refused == ("pickup_refused", "web-s1-77 waits in STORE-1, not STORE-2")
    assert not elsewhere.changed  # no attempt counted: the code was not even looked at
    right_code_wrong_store = on_pickup_claim(state, _claim(CODE, store="STORE-2"), SECRET, STAMP, 200)
    assert right_code_wrong_store.refused is not None and not _of(right_code_wrong_store.outputs, Issue)


def test_a_claim_sent_again_gets_its_first_answer_and_never_a_second_hand_over() -> None:
    state = _waiting()
    first = on_pickup_claim(state, _claim(CODE, claim_id="POS-1"), SECRET, STAMP, 200)
    assert len(_of(first.outputs, Issue)) == 1 and first.refused is None
    for at in (201, 100 + 3_600_000 + 1):  # a retry, even one arriving after the deadline: the same answer
        again = on_pickup_claim(first.state, _claim(CODE, claim_id="POS-1", at=at), SECRET, STAMP, at)
        assert (again.note, again.refused, again.outputs, again.changed) == ("duplicate_pickup_claim", None, [], False)
    other = on_pickup_claim(first.state, _claim(CODE, claim_id="POS-2"), SECRET, STAMP, 202)
    assert other.refused == ("pickup_refused", "web-s1-77 was already handed over (another claim)")
    assert not other.outputs
    # Without an id, the same order, store and code are the same claim (keyed under the secret).
    bare = on_pickup_claim(state, _claim(CODE), SECRET, STAMP, 200)
    assert bare.state is not None and bare.state.pickup is not None
    assert list(bare.state.pickup.answers) == [claim_key(SECRET, "acme", "web-s1-77", "STORE-1", CODE)]
    assert on_pickup_claim(bare.state, _claim(CODE, at=201), SECRET, STAMP, 201).note == "duplicate_pickup_claim"
    assert claim_key(SECRET, "acme", "web-s1-77", "STORE-1", CODE) != claim_key(
        b"another-secret-16", "acme", "web-s1-77", "STORE-1", CODE
    )


def test_a_claim_after_the_deadline_by_its_record_time_is_refused_before_any_tick_expires_it() -> None:
    state = _waiting(hold_ms=1_000)
    assert on_pickup_claim(state, _claim(CODE), SECRET, STAMP, 1_099).refused is None
    late = on_pickup_claim(state, _claim(CODE), SECRET, STAMP, 1_100)
    assert late.refused == ("pickup_refused", "web-s1-77: the pickup expired") and not late.outputs


def test_without_a_secret_no_code_is_issued_every_claim_is_refused_and_the_pickup_expires() -> None:
    state = _waiting(hold_ms=1_000, secret=None)
    assert state.pickup is not None and state.pickup.code == ""
    ready = on_pickup_ready(
        _state("web", 1, delivery="pickup", pickup_store="STORE-1"), _ready("web-s1-77"), None, 1_000, STAMP, 100
    )
    [progress] = ready.outputs  # recorded as ready, and nothing is sent to the buyer
    assert progress.event is ProgressEvent.PICKUP_READY and "OMS_PICKUP_SECRET" in progress.detail
    for code in ("000000", pickup_code(b"oms-local-pickup-secret", "acme", "web-s1-77")):  # the old public default
        refused = on_pickup_claim(state, _claim(code), None, STAMP, 200)
        assert refused.refused is not None and "OMS_PICKUP_SECRET" in refused.refused[1] and not refused.outputs
    assert _of(on_pickup_due(state, 1_100).outputs, OperatorAction)
    counter = on_pickup_ready(
        _state("pos", 1, delivery="counter", pickup_store="STORE-1"), _ready("pos-s1-77"), None, 1_000, STAMP, 100
    )
    assert len(_of(counter.outputs, Issue)) == 1  # a counter sale needs no code


def test_the_pickup_secret_has_no_default_and_a_short_one_is_refused() -> None:
    assert Settings().pickup_secret is None and Settings.from_env({}).pickup_secret is None
    with pytest.raises(SettingsError, match="OMS_PICKUP_SECRET"):
        Settings.from_env({"OMS_PICKUP_SECRET": "short-secret"})
    assert Settings.from_env({"OMS_PICKUP_SECRET": "s" * 16}).pickup_secret == "s" * 16


def test_the_api_claim_needs_a_store_takes_the_actor_from_the_token_and_one_id_per_claim() -> None:
    secret = "s" * 16
    body = json.dumps({"code": CODE, "store": "STORE-1", "actor": "mallory"}).encode()
    record = views.pickup_claim(body, "acme", "web-s1-77", "token:ab12", secret, 5)
    assert (record.actor, record.store, record.code) == ("token-ab12", "STORE-1", CODE)  # never the body's actor
    derived = claim_key(secret.encode(), "acme", "web-s1-77", "STORE-1", CODE)
    assert record.claim_id == derived == views.pickup_claim(body, "acme", "web-s1-77", "token:ab12", secret, 9).claim_id
    keyed = views.pickup_claim(body, "acme", "web-s1-77", "token:ab12", secret, 5, idempotency_key="POS-7-1")
    assert keyed.claim_id == "POS-7-1"
    in_body = json.dumps({"code": CODE, "store": "STORE-1", "claim_id": "POS-7-1"}).encode()
    assert views.pickup_claim(in_body, "acme", "web-s1-77", "token:ab12", secret, 5, "POS-7-1").claim_id == "POS-7-1"
    refused = {
        "no store": (json.dumps({"code": CODE}).encode(), None, "store is required"),
        "empty store": (json.dumps({"code": CODE, "store": ""}).encode(), None, "store is required"),
        "two ids": (in_body, "POS-7-2", "differ"),
        "bad id": (json.dumps({"code": CODE, "store": "STORE-1", "claim_id": "a:b"}).encode(), None, "claim_id"),
    }
    for name, (raw, key, why) in refused.items():
        with pytest.raises(Problem) as caught:
            views.pickup_claim(raw, "acme", "web-s1-77", "token:ab12", secret, 5, key)
        assert caught.value.status == 422 and why in caught.value.message, name


# -- returns only where the lines left from ------------------------------------------------------------------------
def _asked_back() -> AftersalesState:
    """jd-s1-77 shipped from WH1; line 2 (2 units) asked back as r1."""
    state = on_goods_issued(_state("jd"), _issued("jd-s1-77", {1: 1, 2: 2}), 60).state
    request = ReturnRequested(
        tenant="acme", order_id="jd-s1-77", return_id="r1", lines=[ReturnLine(line_id="jd-s1-77#2", quantity=2)], ts=70
    )
    asked = on_return_requested(state, request, 70).state
    assert asked is not None
    return asked


def _receipt(warehouse: str, order_id: str = "jd-s1-77", line: str = "jd-s1-77#2", units: int = 2) -> ReturnReceived:
    return ReturnReceived(
        tenant="acme", order_id=order_id, return_id="r1", warehouse=warehouse,
        lines=[ReceivedLine(line_id=line, quantity=units, disposition="sellable")], ts=80,
    )  # fmt: skip


def test_a_receipt_into_another_or_an_unknown_warehouse_or_a_quarantine_location_is_refused_and_moves_nothing() -> None:
    asked = _asked_back()
    cases = {
        "WH-GHOST": "jd-s1-77#2 left from WH1; its units come back there, not to WH-GHOST",
        "WH2": "jd-s1-77#2 left from WH1; its units come back there, not to WH2",
        "WH1/quarantine": "received into WH1/quarantine, a quarantine location",
    }
    for warehouse, why in cases.items():
        step = on_return_received(asked, _receipt(warehouse), STAMP, 80)
        assert step.refused is not None and step.refused[0] == "return_invalid" and why in step.refused[1], warehouse
        assert not step.outputs and not step.changed and step.state is asked
    right = on_return_received(asked, _receipt("WH1"), STAMP, 81)  # still receivable where it left from
    assert [(r.warehouse, r.quantity) for r in _of(right.outputs, Return)] == [("WH1", 2)]


def test_goods_handed_over_in_a_store_come_back_to_that_store() -> None:
    picked = on_pickup_claim(_waiting(), _claim(CODE), SECRET, STAMP, 200).state
    request = ReturnRequested(
        tenant="acme", order_id="web-s1-77", return_id="r1", lines=[ReturnLine(line_id="web-s1-77#1", quantity=1)],
        ts=300,
    )  # fmt: skip
    asked = on_return_requested(picked, request, 300).state
    elsewhere = on_return_received(asked, _receipt("WH1", "web-s1-77", "web-s1-77#1", 1), STAMP, 310)
    assert elsewhere.refused is not None and "left from STORE-1" in elsewhere.refused[1]
    back = on_return_received(asked, _receipt("STORE-1", "web-s1-77", "web-s1-77#1", 1), STAMP, 311)
    assert [(r.warehouse, r.sku) for r in _of(back.outputs, Return)] == [("STORE-1", "SKU-0")]


def test_the_api_refuses_a_receipt_into_a_quarantine_location() -> None:
    body = json.dumps(
        {"warehouse": "WH-SH/quarantine", "lines": [{"line_id": "o#1", "quantity": 1, "disposition": "sellable"}]}
    ).encode()
    with pytest.raises(Problem) as caught:
        views.return_receipt(body, "acme", "o", "r1", 5)
    assert caught.value.status == 422 and "quarantine" in caught.value.message
    ok = views.return_receipt(body.replace(b"WH-SH/quarantine", b"WH-SH"), "acme", "o", "r1", 5)
    assert ok.warehouse == "WH-SH"


# -- the pickup desk: a client that retries -------------------------------------------------------------------
class _Store(BaseHTTPRequestHandler):
    """The engine's pickup API as the desk sees it: answers from a script ("drop": the answer is lost)."""

    script: ClassVar[list[str]] = []
    seen: ClassVar[list[tuple[str | None, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers.get("Idempotency-Key"), body))
        answer = type(self).script.pop(0) if type(self).script else "202"
        if answer == "drop":  # the request arrived; its answer never does
            self.close_connection = True
            self.connection.shutdown(2)
            return
        raw = json.dumps({"order_id": "web-1", "claim_id": body.get("claim_id")}).encode()
        self.send_response(int(answer))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def store_api() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Store.script, _Store.seen = [], []
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _desk(port: int) -> PickupDesk:
    settings = Settings(pickup_hold_s=60).with_(web_port=port)
    return PickupDesk(settings, Topics("t"), {"acme": "tok"}, 1, 7)


def _note(order_id: str = "web-1", ready_at: int | None = None) -> CustomerNotification:
    return CustomerNotification(
        notification_id=f"{order_id}.pickup_ready.ready", tenant="acme", order_id=order_id, template="pickup_ready",
        to_masked="139****1234", params={"order_no": "1", "store": "STORE-1", "code": "123456"},
        ts=int(time.time() * 1000) if ready_at is None else ready_at,
    )  # fmt: skip


def test_the_desk_sends_a_claim_again_with_the_same_id_until_the_engine_answers(store_api: int) -> None:
    _Store.script = ["503", "drop", "500", "202"]
    desk = _desk(store_api)
    desk.claim(_note())
    assert desk.claimed == {"acme:web-1"} and desk.retries == 3 and desk.failed == 0
    ids = {key for key, _ in _Store.seen} | {body["claim_id"] for _, body in _Store.seen}
    assert len(_Store.seen) == 4 and ids == {desk.claim_id(_note())}  # one claim, sent four times
    assert _Store.seen[0][1] == {"code": "123456", "store": "STORE-1", "claim_id": desk.claim_id(_note())}


def test_the_desk_takes_a_4xx_as_final_and_never_comes_too_close_to_the_deadline(store_api: int) -> None:
    _Store.script = ["422", "202"]
    desk = _desk(store_api)
    desk.claim(_note())
    assert desk.claimed == set() and desk.refused == {"acme:web-1": 422} and len(_Store.seen) == 1
    late = _note("web-2", ready_at=int(time.time() * 1000) - 50_000)  # 10 s left of its 60: the buyer stays home
    desk.claim(late)
    assert desk.too_late == {"acme:web-2"} and len(_Store.seen) == 1


def test_a_claim_never_answered_counts_as_made_only_when_it_is_on_the_inbox(
    store_api: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = _desk(store_api)
    for order_id in ("web-1", "web-2"):
        desk.unanswered[f"acme:{order_id}"] = desk.claim_id(_note(order_id))
    on_inbox = PickupClaim(
        tenant="acme", order_id="web-1", code="123456", store="STORE-1", claim_id=desk.claim_id(_note("web-1")), ts=1
    )
    other = PickupClaim(tenant="acme", order_id="web-2", code="123456", store="STORE-1", claim_id="someone-else", ts=1)

    def inbox(bootstrap: str, topics: list[str]) -> Iterator[Message]:
        assert topics == [desk.topics.aftersales_inbox]
        for i, record in enumerate([on_inbox, other]):
            yield Message(topics[0], 0, i, record.key.encode(), wire.encode(record), 1)

    monkeypatch.setattr(desk_module, "read_topics", inbox)
    desk.resolve()
    assert desk.claimed == {"acme:web-1"} and set(desk.unanswered) == {"acme:web-2"}
