"""The shipping core without servers: packing (every picked unit in exactly one parcel, within the limits,
the same way every time) and one shipment from picked to shipped — waybills asked for, retried, fallen back
on, late answers ignored, and what shipping emits (the shipment, an issue per line, goods issued per order)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.shipping.core import Phase, ShipmentState, Step, on_answer, on_picked
from agents.shipping.packing import PackLine, pack
from engine.runtime.stamp import Stamp
from schemas.fulfilment import PickedShipmentLine, ShipmentPicked
from schemas.inventory import Issue
from schemas.order import Address
from schemas.shipping import (
    CarrierRate,
    GoodsIssued,
    ItemSize,
    ShipmentFailed,
    ShipmentShipped,
    ShippingPolicy,
    WaybillAnswer,
    WaybillWanted,
)

SIZES = {"HEAVY": ItemSize(weight_g=6_000, volume_cm3=20_000), "LIGHT": ItemSize(weight_g=200, volume_cm3=500)}
DEFAULT = ItemSize(weight_g=500, volume_cm3=2_000)


# -- packing -------------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["HEAVY", "LIGHT", "OTHER", "HUGE"]), st.integers(min_value=0, max_value=12)),
        min_size=1,
        max_size=6,
    )
)
def test_every_picked_unit_is_in_exactly_one_parcel_within_the_limits(spec: list[tuple[str, int]]) -> None:
    sizes = {**SIZES, "HUGE": ItemSize(weight_g=25_000, volume_cm3=10)}
    lines = [PackLine(f"o{i % 2}", f"o{i % 2}#{i}", sku, units) for i, (sku, units) in enumerate(spec)]
    parcels = pack("S1", lines, sizes, DEFAULT, max_g=20_000, max_cm3=100_000)
    packed: Counter = Counter()
    for parcel in parcels:
        for ln in parcel.lines:
            packed[ln.line_id] += ln.units
        if parcel.oversize:
            assert [ln.units for ln in parcel.lines] == [1]
        else:
            assert parcel.weight_g <= 20_000 and parcel.volume_cm3 <= 100_000
        assert parcel.weight_g == sum(sizes.get(ln.sku, DEFAULT).weight_g * ln.units for ln in parcel.lines)
    assert packed == Counter({ln.line_id: ln.units for ln in lines if ln.units})
    assert [p.parcel_id for p in parcels] == [f"S1/{n}" for n in range(1, len(parcels) + 1)]
    again = pack("S1", list(reversed(lines)), sizes, DEFAULT, max_g=20_000, max_cm3=100_000)
    assert [(p.parcel_id, p.lines) for p in again] == [(p.parcel_id, p.lines) for p in parcels]


def test_heavy_units_fill_parcels_first_and_light_ones_top_them_up() -> None:
    lines = [PackLine("o1", "o1#1", "LIGHT", 5), PackLine("o1", "o1#2", "HEAVY", 4)]
    parcels = pack("S9", lines, SIZES, DEFAULT, max_g=20_000, max_cm3=100_000)
    # 3 heavy units (18 kg) + 5 light (1 kg) in the first parcel, the 4th heavy unit alone in the second.
    assert [(p.parcel_id, [(ln.sku, ln.units) for ln in p.lines], p.weight_g) for p in parcels] == [
        ("S9/1", [("HEAVY", 3), ("LIGHT", 5)], 19_000),
        ("S9/2", [("HEAVY", 1)], 6_000),
    ]


# -- one shipment ---------------------------------------------------------------------------------------------
RECEIVER = Address(name="张三", phone="13812345678", province="上海市", city="上海市", street="世纪大道 1 号")
POLICY = ShippingPolicy(
    rates=[
        CarrierRate(carrier="zto", first_fen=800, step_fen=200),
        CarrierRate(carrier="sf", first_fen=1200, step_fen=300),
    ],
    sku_sizes=SIZES,
    waybill_attempts=2,
)


def picked(*lines: tuple[str, str, str, int, int]) -> ShipmentPicked:
    return ShipmentPicked(
        tenant="acme",
        shipment_id="SH-1",
        warehouse="WH-SH",
        carrier="sf",
        order_ids=sorted({ln[0] for ln in lines}),
        lines=[
            PickedShipmentLine(order_id=o, line_id=line, sku=sku, asked=asked, picked=got)
            for o, line, sku, asked, got in lines
        ],
        pick_list_ids=["PL-1"],
        shop_id="s1",
        receiver=RECEIVER,
        ts=1_000,
    )


def answer(wanted: WaybillWanted, waybill: str | None = None, error: str | None = None) -> WaybillAnswer:
    return WaybillAnswer(
        request_id=wanted.request_id,
        tenant=wanted.tenant,
        shipment_id=wanted.shipment_id,
        parcel_id=wanted.parcel_id,
        carrier=wanted.carrier,
        attempt=wanted.attempt,
        waybill=waybill,
        error=error,
        ts=2_000,
    )


def of(step: Step, kind: type) -> list:
    return [o for o in step.outputs if isinstance(o, kind)]


STAMP = Stamp("shipping.x.p0", 7)


def test_a_picked_shipment_ships_when_every_parcel_has_its_waybill() -> None:
    first = on_picked(
        None,
        picked(("o1", "o1#1", "HEAVY", 4, 4), ("o1", "o1#2", "LIGHT", 2, 2), ("o2", "o2#1", "LIGHT", 3, 0)),
        POLICY,
        ["sf", "zto"],
        1_000,
    )
    wanted = of(first, WaybillWanted)
    assert [(w.parcel_id, w.carrier, w.attempt, w.order_ids) for w in wanted] == [
        ("SH-1/1", "zto", 1, ["o1"]),  # the cheapest carrier for the region; o2 had nothing picked
        ("SH-1/2", "zto", 1, ["o1"]),
    ]
    assert first.state is not None and first.state.phase is Phase.AWAITING_WAYBILLS
    second = on_answer(first.state, answer(wanted[0], "ZTO1"), POLICY, STAMP, 2_000)
    assert second.outputs == [] and second.note == "waybill"
    assert on_answer(second.state, answer(wanted[0], "ZTO1"), POLICY, STAMP, 2_100).note == "late_answer"
    last = on_answer(second.state, answer(wanted[1], "ZTO2"), POLICY, STAMP, 2_200)
    assert last.note == "shipped" and last.state is not None and last.state.phase is Phase.SHIPPED
    (shipped,) = of(last, ShipmentShipped)
    assert [(p.parcel_id, p.waybill, p.carrier_reason) for p in shipped.parcels] == [
        ("SH-1/1", "ZTO1", "cheapest"),
        ("SH-1/2", "ZTO2", "cheapest"),
    ]
    issues = of(last, Issue)
    # One issue per line (the heavy line is split over both parcels), stamped from the answer that shipped it.
    assert [(i.line_id, i.sku, i.shipment_id, i.origin, i.seq) for i in issues] == [
        ("o1#1", "HEAVY", "SH-1", "shipping.x.p0", 7 * 1024),
        ("o1#2", "LIGHT", "SH-1", "shipping.x.p0", 7 * 1024 + 1),
    ]
    (goods,) = of(last, GoodsIssued)
    assert goods.order_id == "o1" and goods.waybills == ["ZTO1", "ZTO2"]
    assert [(ln.line_id, ln.units) for ln in goods.lines] == [("o1#1", 4), ("o1#2", 2)]
    assert on_answer(last.state, answer(wanted[1], "ZTO2"), POLICY, STAMP, 2_300).note == "late_answer"


def test_a_lost_answer_is_asked_again_of_the_same_carrier_then_the_next_carrier_takes_over() -> None:
    first = on_picked(None, picked(("o1", "o1#1", "LIGHT", 1, 1)), POLICY, ["sf", "zto"], 1_000)
    (w1,) = of(first, WaybillWanted)
    retry = on_answer(first.state, answer(w1, error="timeout"), POLICY, STAMP, 2_000)
    (w2,) = of(retry, WaybillWanted)
    assert (w2.parcel_id, w2.carrier, w2.attempt, w2.request_id) == ("SH-1/1", "zto", 2, "SH-1/1#2")
    # The first request's answer arriving now (late) changes nothing.
    assert on_answer(retry.state, answer(w1, "ZTO-LATE"), POLICY, STAMP, 2_050).note == "late_answer"
    fallback = on_answer(retry.state, answer(w2, error="unavailable"), POLICY, STAMP, 2_100)  # attempts used up
    (w3,) = of(fallback, WaybillWanted)
    assert (w3.carrier, w3.attempt) == ("sf", 3)
    assert fallback.state is not None and fallback.state.parcels[0].carrier_reason == "fallback"
    done = on_answer(fallback.state, answer(w3, "SF1"), POLICY, STAMP, 2_200)
    (shipped,) = of(done, ShipmentShipped)
    assert [(p.carrier, p.waybill, p.cost_fen) for p in shipped.parcels] == [("sf", "SF1", 1200)]


def test_a_shipment_no_carrier_serves_fails_and_issues_nothing() -> None:
    first = on_picked(None, picked(("o1", "o1#1", "LIGHT", 1, 1)), POLICY, ["sf", "zto"], 1_000)
    (w1,) = of(first, WaybillWanted)
    step = on_answer(first.state, answer(w1, error="range_exhausted"), POLICY, STAMP, 2_000)
    (w2,) = of(step, WaybillWanted)
    assert w2.carrier == "sf"
    failed = on_answer(step.state, answer(w2, error="rejected: address"), POLICY, STAMP, 2_100)
    assert failed.state is not None and failed.state.phase is Phase.FAILED
    assert of(failed, Issue) == [] and len(of(failed, ShipmentFailed)) == 1
    assert of(failed, ShipmentFailed)[0].errors == ["zto#1: range_exhausted", "sf#2: rejected: address"]


def test_a_second_copy_a_shipment_with_nothing_picked_and_one_without_a_receiver() -> None:
    first = on_picked(None, picked(("o1", "o1#1", "LIGHT", 1, 1)), POLICY, ["sf"], 1_000)
    assert isinstance(first.state, ShipmentState)
    assert on_picked(first.state, picked(("o1", "o1#1", "LIGHT", 1, 1)), POLICY, ["sf"], 1_100).outputs == []
    assert on_picked(None, picked(("o1", "o1#1", "LIGHT", 2, 0)), POLICY, ["sf"], 1_000).note == "nothing_picked"
    anonymous = ShipmentPicked(
        tenant="acme",
        shipment_id="SH-2",
        warehouse="WH-SH",
        carrier="sf",
        order_ids=["o1"],
        lines=[],
        pick_list_ids=[],
        ts=1,
    )
    refused = on_picked(None, anonymous, POLICY, ["sf"], 1_000)
    assert refused.refused is not None and refused.refused[0] == "missing_receiver"
    assert on_picked(None, picked(("o1", "o1#1", "LIGHT", 1, 1)), POLICY, [], 1_000).refused == (
        "no_carrier",
        "WH-SH: the warehouse has no carrier",
    )


# -- the carrier gateway's answers over the simulated carrier -------------------------------------------------
class MemoryRedis:
    """The few Redis calls the simulated carrier makes, in memory (its state is Redis's in the pipeline)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}

    def incr(self, key: str) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    def hget(self, key: str, field: str) -> bytes | None:
        return self.hashes.get(key, {}).get(field)

    def hsetnx(self, key: str, field: str, value: object) -> bool:
        found = self.hashes.setdefault(key, {})
        if field in found:
            return False
        found[field] = str(value).encode()
        return True


def test_the_gateway_answers_each_request_once_and_a_parcel_asked_again_keeps_its_number() -> None:
    from agents.shipping.gateway import LocalCarrier, answer_all

    step = on_picked(
        None,
        picked(*[(f"o{n}", f"o{n}#1", "HEAVY", 3, 3) for n in range(1, 5)]),
        POLICY,
        ["sf", "zto"],
        1_000,
    )
    wanted = of(step, WaybillWanted)  # 4 orders x 3 heavy units (18 kg): 4 parcels
    assert len(wanted) == 4
    carrier = LocalCarrier(MemoryRedis(), "t", timeout_every=2, fail_every=3, max_batch=3)
    first = answer_all(carrier, wanted)  # call 1: parcels 1-3 numbered; call 2: parcel 4 numbered, answer lost
    assert [(a.request_id, a.error) for a in first] == [
        ("SH-1/1#1", None),
        ("SH-1/2#1", None),
        ("SH-1/3#1", None),
        ("SH-1/4#1", "timeout"),
    ]
    again = answer_all(carrier, wanted[3:])  # call 3: refused as a whole
    assert [a.error for a in again] == ["unavailable"]
    assert answer_all(carrier, wanted[3:])[0].error == "timeout"  # call 4: lost again
    last = answer_all(carrier, wanted[3:])  # call 5: the number issued in call 2, not a new one
    numbers = [a.waybill for a in first[:3]] + [last[0].waybill]
    assert numbers == [f"ZTO001{n:09d}" for n in range(4)]
