"""The aftersales invariants (A1–A4) catch broken histories: tracking that goes back or ends elsewhere than the
carriers said, an order delivered before all of it was, write-backs with gaps or two payloads or no end, returns
nobody received, never applied or put where their line never left from, pickups handed over without a claim, twice,
or cancelled when claimed."""

from __future__ import annotations

import dataclasses

import msgspec

from invariants import Inputs, Outputs
from invariants.aftersales import check_aftersales, expected_returns, handed_over
from invariants.check import Verdict
from schemas.aftersales import (
    OrderProgress,
    ProgressEvent,
    ReceivedLine,
    ReturnReceived,
    ReturnSettled,
    SettledLine,
    WriteBackRequest,
)
from schemas.inventory import CommandKind, StockEvent
from schemas.order import Address, Buyer, Channel, Order, OrderLine
from schemas.review import CancellationKind, OrderCancellation
from schemas.saga import DecisionLine, DecisionStatus, OrderDecision
from schemas.shipping import CarrierEvent, GoodsIssued, PackedLine, TrackingStatus, TrackingUpdate

T = "acme"
S = TrackingStatus


def _order(oid: str, **kw: object) -> Order:
    base = Order(
        tenant=T, order_id=oid, channel=Channel.WEB, shop_id="s1", platform_order_id=oid, buyer=Buyer(id="b1"),
        receiver=Address(name="x"), lines=[OrderLine(line_no=1, sku="A", quantity=2, unit_price_fen=100, paid_fen=180)],
        created_at=1, ingested_at=1, version=1,
    )  # fmt: skip
    return msgspec.structs.replace(base, **kw)


def _accepted(oid: str, warehouse: str = "WH") -> OrderDecision:
    return OrderDecision(
        decision_id=f"d.{oid}", tenant=T, order_id=oid, channel=Channel.WEB, status=DecisionStatus.ACCEPTED,
        lines=[DecisionLine(line_id=f"{oid}#1", sku="A", quantity=2, warehouse=warehouse)],
        order_created_at=1, ingested_at=1, decided_at=2,
    )  # fmt: skip


def _event(kind: CommandKind, oid: str, d_on_hand: int, warehouse: str = "WH", event_id: str = "") -> StockEvent:
    return StockEvent(
        event_id=event_id or f"{kind.value}.{oid}", tenant=T, sku="A", warehouse=warehouse, kind=kind,
        d_on_hand=d_on_hand, d_reserved=0 if kind is CommandKind.RETURN else d_on_hand, on_hand=0, reserved=0,
        version=1, order_id=oid, line_id=f"{oid}#1", origin="o", seq=1, ts=1,
    )  # fmt: skip


def _update(waybill: str, status: TrackingStatus) -> TrackingUpdate:
    final = status in (S.DELIVERED, S.RETURNED)
    return TrackingUpdate(
        tenant=T, carrier="sf", waybill=waybill, status=status, final=final, occurred_at=1, reason="progress", ts=1
    )


def _scan(waybill: str, status: TrackingStatus, n: int) -> CarrierEvent:
    return CarrierEvent(
        tenant=T, carrier="sf", waybill=waybill, event_id=f"{waybill}-{n}", status=status, occurred_at=n
    )


def _progress(oid: str, event: ProgressEvent, ref: str) -> OrderProgress:
    return OrderProgress(progress_id=f"{oid}.{event.value}.{ref}", tenant=T, order_id=oid, event=event, ts=1)


def _issued(oid: str, waybills: list[str]) -> GoodsIssued:
    return GoodsIssued(
        issue_id=f"s1.{oid}", tenant=T, order_id=oid, shipment_id="s1", warehouse="WH",
        lines=[PackedLine(order_id=oid, line_id=f"{oid}#1", sku="A", units=2)], waybills=waybills, ts=1,
    )  # fmt: skip


def _verdict(inputs: Inputs, out: Outputs, applied: dict[str, StockEvent] | None = None) -> list[str]:
    v = Verdict()
    decided = {d.key: d for d in out.decisions}
    check_aftersales(inputs, out, applied or {}, decided, handed_over(inputs, decided), v)
    return v.violations


def _tracked() -> tuple[Inputs, Outputs]:
    inputs, out = Inputs(), Outputs()
    inputs.add_orders([_order("o1")])
    out.decisions.append(_accepted("o1"))
    out.goods_issued.append(_issued("o1", ["SF1"]))
    inputs.carrier_events = [_scan("SF1", s, n) for n, s in enumerate([S.PICKED_UP, S.IN_TRANSIT, S.DELIVERED])]
    inputs.carrier_events.append(inputs.carrier_events[0])  # a duplicate
    out.tracking_updates = [_update("SF1", S.PICKED_UP), _update("SF1", S.DELIVERED)]
    out.order_progress = [_progress("o1", ProgressEvent.DELIVERED, "all")]
    return inputs, out


def test_tracking_as_the_carriers_said_passes_and_going_back_or_ending_elsewhere_is_caught() -> None:
    inputs, out = _tracked()
    assert _verdict(inputs, out) == []
    back = dataclasses.replace(out, tracking_updates=[_update("SF1", S.IN_TRANSIT), _update("SF1", S.PICKED_UP)])
    found = _verdict(inputs, back)
    assert any("went back" in v for v in found) and any("carriers said delivered" in v for v in found)
    after_final = dataclasses.replace(out, tracking_updates=[*out.tracking_updates, _update("SF1", S.RETURNED)])
    assert any("after it was final" in v for v in _verdict(inputs, after_final))


def test_an_order_delivered_before_every_waybill_was_or_twice_is_caught() -> None:
    inputs, out = _tracked()
    out.goods_issued.append(msgspec.structs.replace(_issued("o1", ["SF2"]), issue_id="s2.o1", shipment_id="s2"))
    assert any("not every waybill" in v for v in _verdict(inputs, out))
    inputs, out = _tracked()
    out.order_progress.append(out.order_progress[0])
    assert any("delivered 2 times" in v for v in _verdict(inputs, out))


def _request(attempt: int, payload: dict | None = None) -> WriteBackRequest:
    return WriteBackRequest(
        request_id=f"wb.k#{attempt}", tenant=T, order_id="o1", platform="jd", method="m",
        request=payload or {"orderId": "1"}, idempotency_key="wb.k", attempt=attempt, waybill="SF1", ts=1,
    )  # fmt: skip


def test_write_backs_must_keep_one_payload_count_attempts_without_gaps_and_end_once() -> None:
    inputs, out = Inputs(aftersales_settled=True), Outputs()
    out.writebacks = [_request(1), _request(2)]
    out.order_progress = [_progress("o1", ProgressEvent.WRITTEN_BACK, "wb.k")]
    assert _verdict(inputs, out) == []
    gap = dataclasses.replace(out, writebacks=[_request(1), _request(3)])
    assert any("attempted as [1, 3]" in v for v in _verdict(inputs, gap))
    other = dataclasses.replace(out, writebacks=[_request(1), _request(2, {"orderId": "2"})])
    assert any("different payloads" in v for v in _verdict(inputs, other))
    open_ = dataclasses.replace(out, order_progress=[])
    assert any("never ended" in v for v in _verdict(inputs, open_))
    early = dataclasses.replace(out, order_progress=[_progress("o1", ProgressEvent.WRITEBACK_FAILED, "wb.k")])
    assert any("fewer than 5" in v for v in _verdict(inputs, early))


def _returned() -> tuple[Inputs, Outputs, dict[str, StockEvent]]:
    inputs, out = Inputs(), Outputs()
    inputs.add_orders([_order("o1")])
    out.decisions.append(_accepted("o1"))
    receipt = ReturnReceived(
        tenant=T, order_id="o1", return_id="R1", warehouse="WH",
        lines=[ReceivedLine(line_id="o1#1", quantity=1, disposition="sellable"),
               ReceivedLine(line_id="o1#1", quantity=1, disposition="damaged")], ts=1,
    )  # fmt: skip
    inputs.return_receipts = [receipt]
    ids = list(expected_returns(inputs))
    applied = {
        "i.o1": _event(CommandKind.ISSUE, "o1", -2, "WH", "i.o1"),  # the line left from WH
        ids[0]: _event(CommandKind.RETURN, "o1", 1, "WH", ids[0]),
        ids[1]: _event(CommandKind.RETURN, "o1", 1, "WH/quarantine", ids[1]),
    }
    settled = [
        SettledLine(line_id="o1#1", sku="A", quantity=1, disposition="sellable", location="WH", refund_fen=90),
        SettledLine(
            line_id="o1#1", sku="A", quantity=1, disposition="damaged", location="WH/quarantine", refund_fen=90
        ),
    ]
    out.returns_settled = [
        ReturnSettled(return_id="R1", tenant=T, order_id="o1", warehouse="WH", refund_fen=180, ts=1, lines=settled)
    ]
    return inputs, out, applied


def test_a_return_applied_as_received_passes_and_a_wrong_place_a_missing_one_or_an_invented_one_is_caught() -> None:
    inputs, out, applied = _returned()
    assert _verdict(inputs, out, applied) == []
    ids = list(applied)[1:]
    wrong = {**applied, ids[1]: _event(CommandKind.RETURN, "o1", 1, "WH", ids[1])}  # damaged back on the shelf
    assert any("for WH/quarantine" in v for v in _verdict(inputs, out, wrong))
    missing = {"i.o1": applied["i.o1"], ids[0]: applied[ids[0]]}
    assert any("never took effect" in v for v in _verdict(inputs, out, missing))
    invented = {**applied, "x": _event(CommandKind.RETURN, "o1", 5, "WH", "x")}
    assert any("nobody received" in v for v in _verdict(inputs, out, invented))
    refund = dataclasses.replace(out, returns_settled=[msgspec.structs.replace(out.returns_settled[0], refund_fen=200)])
    assert any("refunds 200 fen" in v for v in _verdict(inputs, refund, applied))


def _pickups() -> tuple[Inputs, Outputs, dict[str, StockEvent]]:
    inputs, out = Inputs(pickups_due=True), Outputs()
    inputs.add_orders(
        [_order("p1", delivery="pickup", pickup_store="ST"), _order("p2", delivery="pickup", pickup_store="ST")]
    )
    out.decisions += [_accepted("p1", "ST"), _accepted("p2", "ST")]
    inputs.pickup_claims = {f"{T}:p1"}
    applied = {"i.p1": _event(CommandKind.ISSUE, "p1", -2, "ST", "i.p1")}
    out.cancellations = [
        OrderCancellation(
            cancellation_id="c.p2", tenant=T, order_id="p2", kind=CancellationKind.ORDER, reason="pickup_expired",
            stage="orders", ts=1,
        )
    ]  # fmt: skip
    return inputs, out, applied


def test_pickups_hand_over_only_what_was_claimed_and_expire_only_what_was_not() -> None:
    inputs, out, applied = _pickups()
    assert _verdict(inputs, out, applied) == []
    unclaimed_issued = {**applied, "i.p2": _event(CommandKind.ISSUE, "p2", -2, "ST", "i.p2")}
    assert any("nobody claimed" in v for v in _verdict(inputs, out, unclaimed_issued))
    assert any("handed over in ST" in v for v in _verdict(inputs, out, {}))  # claimed, never issued
    inputs.pickup_claims.add(f"{T}:p2")
    assert any("but it was claimed" in v for v in _verdict(inputs, out, applied))
    inputs, out, applied = _pickups()
    out.cancellations = []
    assert any("was not cancelled" in v for v in _verdict(inputs, out, applied))


def test_a_return_into_a_warehouse_its_line_never_left_from_is_caught_even_when_a_receipt_said_so() -> None:
    inputs, out, applied = _returned()
    ghost = [msgspec.structs.replace(inputs.return_receipts[0], warehouse="WH-GHOST")]
    inputs.return_receipts = ghost
    ids = list(expected_returns(inputs))
    moved = {
        "i.o1": applied["i.o1"],
        ids[0]: _event(CommandKind.RETURN, "o1", 1, "WH-GHOST", ids[0]),
        ids[1]: _event(CommandKind.RETURN, "o1", 1, "WH-GHOST/quarantine", ids[1]),
    }
    found = _verdict(inputs, out, moved)
    assert any("put A in WH-GHOST; its line left from ['WH']" in v for v in found)
    assert any("put A in WH-GHOST/quarantine; its line left from ['WH']" in v for v in found)


def test_a_claim_sent_several_times_is_one_claim_and_a_second_pick_up_is_caught() -> None:
    inputs, out, applied = _pickups()
    once = _progress("p1", ProgressEvent.PICKED_UP, "claimed")
    out.order_progress = [once]
    inputs.pickup_claims |= {f"{T}:p1"}  # the desk sent it again: still one claim
    assert _verdict(inputs, out, applied) == []
    out.order_progress = [once, once]
    assert any("picked up 2 times" in v for v in _verdict(inputs, out, applied))
    twice = {**applied, "i2.p1": _event(CommandKind.ISSUE, "p1", -2, "ST", "i2.p1")}
    out.order_progress = [once]
    assert any("handed over in ST" in v for v in _verdict(inputs, out, twice))
