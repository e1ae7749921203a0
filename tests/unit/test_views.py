"""The views projection and the views it reads back (agents.views), without servers: which fields each record
writes and at which version, and the status an order's parts add up to."""

from __future__ import annotations

import orjson
import pytest

from agents.views.projection import Views, buyer_key, order_key, shipment_key, stock_key, waybill_key
from agents.views.read import order_view, shipment_view, status, stock_view
from engine.readmodels.projector import Write
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import OrderProgress, ProgressEvent
from schemas.fulfilment import Shipment, ShipmentLine, ShipmentPicked, Wave, WithdrawalOutcome
from schemas.inbox import OrderSnapshot
from schemas.inventory import CommandKind, StockEvent
from schemas.order import Address, Buyer, Channel, Order, OrderLine, order_id
from schemas.review import Outcome, ReviewDecision
from schemas.saga import DecisionLine, DecisionStatus, LineResult, LineStatus, OrderDecision
from schemas.shipping import ShipmentShipped, ShippedParcel, TrackingStatus, TrackingUpdate

T = Topics("t")
V = Views(T)
OID = order_id(Channel.TMALL, "tm-1", "v1")
RECEIVER = Address(name="王五", phone="13800000000", province="上海市", city="上海市", street="南京西路 1 号")


def order(version: int = 100) -> Order:
    return Order(
        tenant="acme", order_id=OID, channel=Channel.TMALL, shop_id="tm-1", platform_order_id="v1",
        buyer=Buyer(id="b-1"), receiver=RECEIVER,
        lines=[OrderLine(line_no=1, sku="S1", quantity=2, unit_price_fen=990)],
        created_at=50, ingested_at=60, version=version,
    )  # fmt: skip


def project(topic: str, record: object, offset: int = 7) -> list[Write]:
    return V.project(topic, 0, offset, wire.encode(record))


def apply(writes: list[Write], into: dict[str, dict[bytes, tuple[int, bytes]]]) -> None:
    """What APPLY_IF_NEWER does in Redis, for the read side's tests: a field keeps its newest version."""
    for w in writes:
        fields = into.setdefault(w.key, {})
        current = fields.get(w.field.encode())
        if (current is None or w.version > current[0]) and w.value is not None:
            fields[w.field.encode()] = (w.version, w.value)


def hashes(into: dict[str, dict[bytes, tuple[int, bytes]]]) -> dict[str, dict[bytes, bytes]]:
    return {k: {f: v for f, (_, v) in fields.items()} for k, fields in into.items()}


def test_an_order_snapshot_writes_the_order_and_its_buyer_at_the_channel_version() -> None:
    writes = project(T.order_inbox, OrderSnapshot(order=order(version=123)), offset=9)
    assert {(w.key, w.field, w.version) for w in writes} == {
        (order_key("acme", OID), "order", 123),
        (buyer_key("acme", "b-1"), OID, 123),
    }
    summary = orjson.loads(next(w.value for w in writes if w.field == "order") or b"")
    assert summary["buyer_id"] == "b-1" and summary["goods_fen"] == 1980 and summary["lines"][0]["sku"] == "S1"


def test_other_inbox_records_write_nothing_and_bad_bytes_are_refused() -> None:
    result = LineResult(
        result_id="r", tenant="acme", order_id=OID, line_id=f"{OID}#1", sku="S1", status=LineStatus.RESERVED,
        warehouse="WH-SH", quantity=2, reply_to="acme:tm-1:b-b-1", ts=1,
    )  # fmt: skip
    assert project(T.order_inbox, result) == []
    with pytest.raises(ValueError):
        V.project(T.order_decisions, 0, 1, b"{not json")
    with pytest.raises(ValueError):
        V.project(T.order_decisions, 0, 1, b'{"tenant": "acme"}')


def test_stock_is_versioned_by_the_skus_stock_version_per_warehouse() -> None:
    event = StockEvent(
        event_id="e", tenant="acme", sku="S1", warehouse="WH-SH", kind=CommandKind.RESERVE, d_on_hand=0,
        d_reserved=2, on_hand=10, reserved=2, version=41, origin="o", seq=1, ts=5,
    )  # fmt: skip
    (w,) = project(T.stock_events, event, offset=900)
    assert (w.key, w.field, w.version) == (stock_key("acme", "S1"), "WH-SH", 41)
    other = orjson.dumps({"on_hand": 3, "reserved": 3, "version": 12, "ts": 1})
    view = stock_view("acme", "S1", {b"WH-SH": w.value or b"", b"WH-BJ": other})
    assert view["atp"] == 8 and view["on_hand"] == 13 and view["reserved"] == 5 and view["version"] == 41
    assert view["warehouses"]["WH-BJ"]["atp"] == 0
    assert stock_view("acme", "NOPE", {})["known"] is False


def test_a_late_copy_never_wins() -> None:
    into: dict[str, dict[bytes, tuple[int, bytes]]] = {}
    apply(project(T.order_inbox, OrderSnapshot(order=order(version=200))), into)
    apply(project(T.order_inbox, OrderSnapshot(order=order(version=100))), into)  # an older channel version
    (summary,) = [orjson.loads(v) for k, v in hashes(into)[order_key("acme", OID)].items() if k == b"order"]
    assert summary["version"] == 200


def _decision(status: DecisionStatus) -> OrderDecision:
    return OrderDecision(
        decision_id="d", tenant="acme", order_id=OID, channel=Channel.TMALL, status=status,
        lines=[DecisionLine(line_id=f"{OID}#1", sku="S1", quantity=2, warehouse="WH-SH")],
        order_created_at=50, ingested_at=60, decided_at=70,
    )  # fmt: skip


def test_an_orders_status_follows_its_parts_in_any_order() -> None:
    review = ReviewDecision(
        review_id="r", tenant="acme", order_id=OID, channel=Channel.TMALL, outcome=Outcome.HELD, ts=1
    )
    released = ReviewDecision(
        review_id="r2", tenant="acme", order_id=OID, channel=Channel.TMALL, outcome=Outcome.RELEASED, ts=2
    )
    shipment = Shipment(
        shipment_id="shp1", tenant="acme", shop_id="tm-1", warehouse="WH-SH", carrier="sf",
        lines=[ShipmentLine(order_id=OID, line_id=f"{OID}#1", sku="S1", quantity=2)], order_ids=[OID], ts=3,
    )  # fmt: skip
    wave = Wave(
        wave_id="w1", tenant="acme", warehouse="WH-SH", group="carrier=sf", trigger="count", shipment_ids=["shp1"],
        pick_list_ids=["p1"], lines=1, units=2, ts=4,
    )  # fmt: skip
    picked = ShipmentPicked(
        tenant="acme", shipment_id="shp1", warehouse="WH-SH", carrier="sf", order_ids=[OID], lines=[],
        pick_list_ids=["p1"], ts=5,
    )  # fmt: skip
    parcel = ShippedParcel(
        parcel_id="shp1.1", carrier="sf", carrier_reason="default", waybill="SF1", weight_g=100, volume_cm3=10,
        lines=[],
    )  # fmt: skip
    shipped = ShipmentShipped(
        tenant="acme", shipment_id="shp1", warehouse="WH-SH", shop_id="tm-1", order_ids=[OID], parcels=[parcel], ts=6
    )
    tracking = TrackingUpdate(
        tenant="acme", carrier="sf", waybill="SF1", status=TrackingStatus.DELIVERED, final=True, occurred_at=7,
        reason="final", ts=7,
    )  # fmt: skip

    def progress(event: ProgressEvent, n: int) -> OrderProgress:
        return OrderProgress(progress_id=f"pg{n}", tenant="acme", order_id=OID, event=event, ts=10 + n)

    steps: list[tuple[str, object, str]] = [
        (T.order_inbox, OrderSnapshot(order=order()), "received"),
        (T.review_decisions, review, "held"),
        (T.review_decisions, released, "reviewed"),
        (T.order_decisions, _decision(DecisionStatus.ACCEPTED), "accepted"),
        (T.shipments, shipment, "accepted"),
        (T.waves, wave, "waved"),
        (T.picked_shipments, picked, "picked"),
        (T.shipped, shipped, "picked"),
        (T.order_progress, progress(ProgressEvent.SHIPPED, 1), "shipped"),
        (T.tracking_updates, tracking, "shipped"),
        (T.order_progress, progress(ProgressEvent.DELIVERED, 2), "delivered"),
        (T.order_progress, progress(ProgressEvent.RETURN_RECEIVED, 3), "returned"),
    ]

    def view(steps_so_far: list[tuple[str, object, str]], reverse: bool = False) -> dict:
        """The view after these records (each at its own offset), applied in their order or reversed."""
        into: dict[str, dict[bytes, tuple[int, bytes]]] = {}
        writes = [project(topic, record, offset) for offset, (topic, record, _) in enumerate(steps_so_far)]
        for w in reversed(writes) if reverse else writes:
            apply(w, into)
        h = hashes(into)
        ships = {k.split(":")[-1]: v for k, v in h.items() if k.startswith("shipment:")}
        tracks = {k.split(":")[-1]: v for k, v in h.items() if k.startswith("waybill:")}
        result = order_view("acme", OID, h.get(order_key("acme", OID), {}), ships, tracks)
        assert result is not None
        return result

    for n in range(1, len(steps) + 1):
        assert view(steps[:n])["status"] == steps[n - 1][2], f"after {steps[n - 1][1].__class__.__name__}"
    # The same parts in reverse arrival order: the same view.
    assert view(steps) == view(steps, reverse=True)
    full = view(steps)
    (s,) = full["shipments"]
    assert s["parcels"][0]["waybill"] == "SF1" and s["parcels"][0]["tracking"]["status"] == "delivered"
    assert full["lines"][0]["warehouse"] == "WH-SH" and full["buyer_id"] == "b-1"
    into: dict[str, dict[bytes, tuple[int, bytes]]] = {}
    for offset, (topic, record, _) in enumerate(steps):
        apply(project(topic, record, offset), into)
    h = hashes(into)
    assert b"shipment" in h[waybill_key("acme", "SF1")]
    ship = shipment_view("acme", "shp1", h[shipment_key("acme", "shp1")], {"SF1": h[waybill_key("acme", "SF1")]})
    assert ship is not None and ship["status"] == "shipped" and ship["wave"]["wave_id"] == "w1"


def test_rejections_cancellations_and_withdrawn_shipments() -> None:
    assert status({"order": {}, "decision": {"status": "rejected"}}, {}) == "rejected"
    cancel = {"kind": "order", "line_ids": [], "reason": "channel_cancelled", "ts": 1}
    accepted = {"order": {}, "decision": {"status": "accepted"}, "cancellation:c1": cancel}
    assert status(accepted, {}) == "cancelled"
    left = WithdrawalOutcome(tenant="acme", order_id=OID, warehouse="WH-SH", outcome="left", shipment_ids=["a"], ts=1)
    withdrawal = orjson.loads(project(T.withdrawals, left)[0].value or b"")
    parts = {"order": {}, "decision": {"status": "accepted"}, "withdrawal:WH-SH": withdrawal}
    # The withdrawn shipment was waved; the one left is not yet: the order is not "waved".
    assert status(parts, {"a": {"wave": {}}, "b": {}}) == "accepted"
    assert status(parts, {"a": {"wave": {}}, "b": {"wave": {}, "picked": {}}}) == "picked"
    assert order_view("acme", OID, {}, {}, {}) is None
