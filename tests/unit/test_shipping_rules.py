"""Shipping rules without servers: the tracking state machine (late and duplicated scans never move a parcel
backwards) and carrier choice (shop preference, rules, the cheapest rate, the default), on worked examples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.shipping.carriers import NoCarrier, choose_carrier, price, rate_for
from agents.tracking.core import PROGRESS, Tracking, apply_event
from schemas.shipping import CarrierEvent, CarrierRate, CarrierRule, ShippingPolicy, TrackingStatus, TrackingUpdate

S = TrackingStatus


def scan(n: int, status: TrackingStatus, at: int) -> CarrierEvent:
    return CarrierEvent(tenant="acme", carrier="sf", waybill="SF100", event_id=f"e{n}", status=status, occurred_at=at)


def run(*events: CarrierEvent) -> tuple[Tracking | None, list[str], list]:
    state, notes, updates = None, [], []
    for event in events:
        applied = apply_event(state, event, now=9_000)
        state = applied.state
        notes.append(applied.note)
        for update in applied.outputs:
            if isinstance(update, TrackingUpdate):
                updates.append((update.status, update.exception, update.reason))
    return state, notes, updates


# -- tracking ------------------------------------------------------------------------------------------------
def test_scans_in_order_move_the_parcel_to_delivered_and_nothing_moves_it_after() -> None:
    state, notes, updates = run(
        scan(1, S.PICKED_UP, 100),
        scan(2, S.IN_TRANSIT, 200),
        scan(3, S.OUT_FOR_DELIVERY, 300),
        scan(4, S.DELIVERED, 400),
        scan(5, S.RETURNED, 500),
    )
    assert notes == ["progress", "progress", "progress", "final", "after_final"]
    assert state.status is S.DELIVERED and state.final and len(state.history) == 5
    assert updates[-1] == (S.DELIVERED, False, "final")


def test_late_and_duplicated_scans_never_move_the_parcel_backwards() -> None:
    state, notes, updates = run(
        scan(1, S.OUT_FOR_DELIVERY, 300),
        scan(2, S.PICKED_UP, 100),  # late
        scan(1, S.OUT_FOR_DELIVERY, 300),  # the same event again
        scan(3, S.IN_TRANSIT, 200),  # late
    )
    assert notes == ["progress", "late", "duplicate", "late"]
    assert state.status is S.OUT_FOR_DELIVERY and updates == [(S.OUT_FOR_DELIVERY, False, "progress")]
    assert [h[1] for h in state.history] == ["picked_up", "in_transit", "out_for_delivery"]  # kept, in time order


def test_an_exception_stays_open_until_the_parcel_moves_again_and_an_old_one_is_late() -> None:
    _, notes, updates = run(
        scan(1, S.IN_TRANSIT, 200),
        scan(2, S.EXCEPTION, 250),
        scan(3, S.EXCEPTION, 260),  # still open: nothing new to say
        scan(4, S.IN_TRANSIT, 270),  # the same stage scanned again after it: moving again
        scan(5, S.EXCEPTION, 150),  # older than the last move
    )
    assert notes == ["progress", "exception", "late", "recovered", "late"]
    assert updates == [
        (S.IN_TRANSIT, False, "progress"),
        (S.IN_TRANSIT, True, "exception"),
        (S.IN_TRANSIT, False, "recovered"),
    ]
    state, notes, _ = run(scan(1, S.IN_TRANSIT, 200), scan(2, S.EXCEPTION, 250), scan(3, S.RETURNED, 300))
    assert notes[-1] == "final" and state.status is S.RETURNED and state.exception_at is None


def test_apply_does_not_change_its_input() -> None:
    state = run(scan(1, S.IN_TRANSIT, 200))[0]
    before = state.copy()
    apply_event(state, scan(2, S.DELIVERED, 300), 1)
    assert state == before


_progress = [s for s in PROGRESS]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_progress), st.integers(0, 1000)), min_size=1, max_size=12), st.randoms())
def test_any_order_of_the_same_scans_ends_in_the_same_stage_and_never_goes_back(
    scans: list[tuple[TrackingStatus, int]], rnd: object
) -> None:
    events = [scan(i, status, at) for i, (status, at) in enumerate(scans)]
    events += events[: len(events) // 2]  # redeliveries
    shuffled = list(events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    ends = []
    for order in (events, shuffled):
        state, rank = None, -1
        for event in order:
            state = apply_event(state, event, 1).state
            assert PROGRESS[state.status] >= rank  # never backwards
            rank = PROGRESS[state.status]
        ends.append(state.status)
    assert ends[0] == ends[1] == max((s for s, _ in scans), key=PROGRESS.__getitem__)


# -- carrier choice ------------------------------------------------------------------------------------------
RATES = [
    CarrierRate(carrier="yto", region="*", first_fen=500, step_fen=200),
    CarrierRate(carrier="sf", region="*", first_fen=1200, step_fen=500),
    CarrierRate(carrier="sf", region="上海市", first_fen=800, step_fen=300),  # SF is cheap in Shanghai
    CarrierRate(carrier="yto", region="新疆维吾尔自治区", first_fen=2000, step_fen=1500, max_g=20_000),
]


def test_price_is_first_weight_then_each_started_step() -> None:
    rate = CarrierRate(carrier="sf", first_g=1000, first_fen=1200, step_g=500, step_fen=300)
    assert [price(rate, g) for g in (0, 1000, 1001, 1500, 1501)] == [1200, 1200, 1500, 1500, 1800]
    assert rate_for(RATES, "sf", "上海市", "上海市").first_fen == 800
    assert rate_for(RATES, "sf", "北京市", "北京市").region == "*" and rate_for(RATES, "zto", "x", "y") is None


def test_the_cheapest_carrier_for_the_region_and_weight_wins_with_its_cost() -> None:
    policy = ShippingPolicy(rates=RATES)
    assert choose_carrier(policy, ["sf", "yto"], "s1", "北京市", "北京市", 800) == choose_carrier(
        policy, ["yto", "sf"], "s1", "北京市", "北京市", 800
    )
    beijing = choose_carrier(policy, ["sf", "yto"], "s1", "北京市", "北京市", 2500)
    assert (beijing.carrier, beijing.reason, beijing.cost_fen) == ("yto", "cheapest", 900)
    shanghai = choose_carrier(policy, ["sf", "yto"], "s1", "上海市", "上海市", 900)
    assert (shanghai.carrier, shanghai.cost_fen) == ("yto", 500)
    heavy = choose_carrier(policy, ["sf", "yto"], "s1", "新疆维吾尔自治区", "乌鲁木齐市", 25_000)
    assert heavy.carrier == "sf"  # yto does not take 25 kg to Xinjiang


def test_shop_preference_then_rules_then_default() -> None:
    rule = CarrierRule(rule_id="fragile-north", carrier="sf", regions=["北京市"], min_g=3000)
    policy = ShippingPolicy(shop_carriers={"vip": ["jd", "sf"]}, rules=[rule], rates=RATES)
    assert choose_carrier(policy, ["yto", "sf"], "vip", "北京市", "北京市", 100).reason == "shop"  # jd not here
    by_rule = choose_carrier(policy, ["yto", "sf"], "s1", "北京市", "北京市", 3000)
    assert (by_rule.carrier, by_rule.reason, by_rule.cost_fen) == ("sf", "rule:fragile-north", 2200)
    assert choose_carrier(policy, ["yto", "sf"], "s1", "北京市", "北京市", 2999).reason == "cheapest"
    unpriced = choose_carrier(ShippingPolicy(), ["ems", "sf"], "s1", "北京市", "北京市", 100)
    assert (unpriced.carrier, unpriced.reason, unpriced.cost_fen) == ("ems", "default", None)
    with pytest.raises(NoCarrier):
        choose_carrier(policy, [], "s1", "北京市", "北京市", 100)


# -- labels --------------------------------------------------------------------------------------------------
def _pdf_strings(raw: bytes) -> list[str]:
    """The text a PDF page shows: its literal strings with PDF escapes undone, UCS-2 in the CID font."""
    import re

    cid = re.search(rb"/BaseFont /STSong-Light /DescendantFonts.*?/Name /(F\d+)", raw, flags=re.S)
    out = []
    for font, literal in re.findall(rb"/(F\d+) [\d.]+ Tf(?:(?!Tf)[^(])*\(((?:\\.|[^\\)])*)\) Tj", raw, flags=re.S):
        data, i = bytearray(), 0
        while i < len(literal):
            if literal[i : i + 1] == b"\\":
                octal = re.match(rb"[0-7]{1,3}", literal[i + 1 : i + 4])
                if octal:
                    data.append(int(octal.group(), 8))
                    i += 1 + len(octal.group())
                    continue
                data += literal[i + 1 : i + 2]
                i += 2
                continue
            data.append(literal[i])
            i += 1
        out.append(data.decode("utf-16-be" if cid and font == cid.group(1) else "latin-1"))
    return out


def test_a_label_shows_the_waybill_and_the_sender_and_masks_the_receiver_and_is_the_same_every_time() -> None:
    from agents.shipping.labels import Label, mask_name, mask_phone, masked_address, render
    from schemas.order import Address

    receiver = Address(name="李四", phone="13900001234", province="北京市", city="北京市", district="朝阳区",
                       street="建国路 88 号")  # fmt: skip
    label = Label("sf", "SF1234567890", "oms 上海仓", "021-55550000", "上海市 浦东新区 仓库路 1 号", receiver,
                  ("tmall-s1-1", "tmall-s1-2"), "1/2")  # fmt: skip
    pdf = render(label)
    assert pdf.startswith(b"%PDF-") and pdf == render(label)  # deterministic: a reprint is the same document
    text = "\n".join(_pdf_strings(pdf))
    for shown in ("SF1234567890", "SF  1/2", "李*", "139****1234", "北京市 北京市 朝阳区 ***", "021-55550000",
                  "tmall-s1-1, tmall-s1-2"):  # fmt: skip
        assert shown in text, shown
    for hidden in ("李四", "13900001234", "建国路"):
        assert hidden not in text, hidden
    assert (mask_name("欧阳娜娜"), mask_name(""), mask_phone("+86 139-0000-1234"), mask_phone("12345")) == (
        "欧***",
        "",
        "861******1234",
        "*****",
    )
    assert masked_address(Address(name="x", province="上海市")) == "上海市 ***"


# -- e-waybills ----------------------------------------------------------------------------------------------
def _parcels(n: int, carrier: str = "sf", warehouse: str = "WH-SH") -> list:
    from agents.shipping.waybills import Party, WaybillRequest
    from schemas.order import Address

    sender = Party("oms 上海仓", "021-55550000", "上海市 浦东新区 仓库路 1 号")
    to = Address(name="李四", phone="13900001234", province="北京市", city="北京市", street="建国路 88 号")
    return [
        WaybillRequest(f"p{i}.{warehouse}", carrier, warehouse, sender, to, 500 + i, (f"o{i}",), (("SKU-1", 1),))
        for i in range(n)
    ]


def test_waybills_are_unique_and_a_parcel_asked_for_twice_keeps_its_number() -> None:
    from agents.shipping.waybills import SimulatedCarrier, request_all

    carrier = SimulatedCarrier()
    first, retries = request_all(carrier, _parcels(25) + _parcels(7, warehouse="WH-BJ"))
    numbers = [r.waybill for r in first]
    assert retries == 0 and None not in numbers and len(set(numbers)) == 32
    assert carrier.calls == 3 + 1  # batches of at most 10 per carrier and warehouse
    again, _ = request_all(carrier, _parcels(25))
    assert [r.waybill for r in again] == numbers[:25]  # the same parcels: the same numbers, none issued twice
    assert len(carrier.issued) == 32


def test_a_lost_answer_or_a_refused_call_is_retried_without_a_second_number() -> None:
    from agents.shipping.waybills import SimulatedCarrier, request_all

    lossy = SimulatedCarrier(timeout_every=2)  # every second call issues, then its answer is lost
    results, retries = request_all(lossy, _parcels(30))
    assert retries == 2 and lossy.calls == 5  # calls 2 and 4 lost their answers and were asked again
    assert all(r.waybill for r in results) and len(lossy.issued) == 30
    assert len({r.waybill for r in results}) == 30
    refusing = SimulatedCarrier(fail_every=1)  # down for good
    results, retries = request_all(refusing, _parcels(3), attempts=3)
    assert retries == 2 and {r.error for r in results} == {"unavailable"} and refusing.issued == {}


def test_a_range_that_runs_out_says_so_per_parcel() -> None:
    from agents.shipping.waybills import SimulatedCarrier, request_all

    results, _ = request_all(SimulatedCarrier(range_size=4), _parcels(6))
    assert [r.error for r in results] == [None] * 4 + ["range_exhausted"] * 2


def test_the_cainiao_adapter_sends_the_documented_fields_in_batches_of_ten_and_reads_modules() -> None:
    from agents.shipping.waybills import CAINIAO_METHOD, CainiaoAdapter, SimulatedCarrier, request_all

    carrier, calls = SimulatedCarrier(), []

    def transport(method: str, params: dict) -> dict:
        calls.append((method, params))
        return carrier.cainiao(method, params)

    adapter = CainiaoAdapter(transport, user_id=7)
    results, _ = request_all(adapter, _parcels(12))
    assert all(r.waybill and r.print_data for r in results) and len({r.waybill for r in results}) == 12
    assert [len(p["param_waybill_cloud_print_apply_new_request"]["trade_order_info_dtos"]) for _, p in calls] == [
        10,
        2,
    ]
    method, params = calls[0]
    body = params["param_waybill_cloud_print_apply_new_request"]
    dto = body["trade_order_info_dtos"][0]
    assert method == CAINIAO_METHOD and body["cp_code"] == "sf" and body["sender"]["mobile"] == "021-55550000"
    assert set(dto) == {"object_id", "order_info", "package_info", "recipient", "template_url", "user_id"}
    assert dto["package_info"] == {"id": "p0.WH-SH", "items": [{"name": "SKU-1", "count": 1}], "weight": 500}
    assert "139****1234" in results[0].print_data  # what gets printed is masked
    refused = CainiaoAdapter(lambda m, p: {"error_response": {"code": 7, "msg": "isv.invalid"}}, user_id=7)
    results, retries = request_all(refused, _parcels(1), attempts=2)
    assert retries == 1 and results[0].error == "unavailable"
