"""Aftersales rules without servers: write-back in each platform's shape and its retries, notifications, the
delivered state per order, returns to stock and to quarantine, and store pickups (claimed, wrong code, expired,
counter sales). Pure functions over records; the pipeline test drives the same through Kafka."""

from __future__ import annotations

from agents.aftersales.core import (
    WRITEBACK_ATTEMPTS,
    AftersalesState,
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
from engine.runtime.stamp import Stamp
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
    wrong = PickupClaim(tenant="acme", order_id="web-s1-77", code="000000" if code != "000000" else "111111", ts=200)
    assert on_pickup_claim(ready.state, wrong, STAMP, 200).refused[0] == "pickup_refused"  # type: ignore[index]
    claim = PickupClaim(tenant="acme", order_id="web-s1-77", code=code, store="STORE-1", ts=200)
    done = on_pickup_claim(ready.state, claim, STAMP, 200)
    [issue] = _of(done.outputs, Issue)
    assert (issue.line_id, issue.sku) == ("web-s1-77#1", "SKU-0")
    [goods] = _of(done.outputs, GoodsIssued)
    assert (goods.warehouse, goods.waybills) == ("STORE-1", [])
    assert on_pickup_claim(done.state, claim, STAMP, 201).note == "duplicate_pickup_claim"
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
    late = PickupClaim(tenant="acme", order_id="web-s1-77", code=pickup_code(SECRET, "acme", "web-s1-77"), ts=1_200)
    assert on_pickup_claim(expired.state, late, STAMP, 1_200).refused[0] == "pickup_refused"  # type: ignore[index]


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
