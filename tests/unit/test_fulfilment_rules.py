"""Fulfilment rules on small worked examples: allocation (分仓/拆单), merge (合单), waves (波次), pick confirmation."""

from __future__ import annotations

from pathlib import Path

import msgspec
import orjson
import pytest

from agents.fulfilment.allocation import LineRequest, allocate, allocate_ranked, candidates
from agents.fulfilment.layout import LayoutFileError, check_layout, generate_layout, load_layouts
from agents.fulfilment.merge import MergeGroup, ParcelPlan, add_order, cancel_order, merge_key, next_due, release_due
from agents.fulfilment.picking import confirm, report
from agents.fulfilment.waves import LayoutError, WaveBook, add_shipment, bins_by_sku, pick_lists
from agents.fulfilment.waves import release_due as release_waves
from schemas.fulfilment import (
    AllocationPolicy,
    BinSpec,
    CarrierSpec,
    Layout,
    Shipment,
    ShipmentLine,
    WarehouseSpec,
    WavePolicy,
    ZoneSpec,
)
from schemas.order import Address

HANGZHOU = Address(name="张三", phone="138", province="浙江省", city="杭州市", street="文三路 1 号")
GUANGZHOU = Address(name="李四", phone="139", province="广东省", city="广州市", street="天河路 2 号")


def layout(strategy: str = "fewest-parcels", **policy: object) -> Layout:
    def wh(name: str, regions: list[str]) -> WarehouseSpec:
        return WarehouseSpec(warehouse=name, regions=regions, carriers=["sf"])

    return Layout(
        tenant="acme",
        version=1,
        warehouses=[
            wh("WH-SH", ["浙江省", "上海市"]),
            wh("WH-HZ", ["浙江省/杭州市"]),
            wh("WH-GZ", ["广东省"]),
        ],
        allocation=AllocationPolicy(strategy=strategy, warehouse_order=["WH-SH", "WH-GZ", "WH-HZ"], **policy),  # type: ignore[arg-type]
    )


LINES = [LineRequest("o1/1", "tea", 2), LineRequest("o1/2", "cup", 1)]


# -- allocation ----------------------------------------------------------------------------------------------
def test_candidates_rank_city_then_province_then_the_tenant_order() -> None:
    assert candidates(layout(), "shop-1", HANGZHOU) == ["WH-HZ", "WH-SH", "WH-GZ"]
    assert candidates(layout(), "shop-1", GUANGZHOU) == ["WH-GZ", "WH-SH", "WH-HZ"]


def test_ship_from_store_ranks_a_store_in_the_receivers_city_first_and_ships_from_it_when_it_has_the_units() -> None:
    plan = layout("ship-from-store")
    store = WarehouseSpec(warehouse="ST-HZ-1", kind="store", regions=["浙江省/杭州市"], carriers=["sf"])
    plan = msgspec.structs.replace(plan, warehouses=[*plan.warehouses, store])
    assert candidates(plan, "shop-1", HANGZHOU) == ["ST-HZ-1", "WH-HZ", "WH-SH", "WH-GZ"]
    assert candidates(plan, "shop-1", GUANGZHOU)[0] == "WH-GZ"  # no store there: as usual, the store last
    ranked = candidates(plan, "shop-1", HANGZHOU)
    found = allocate_ranked(plan, ranked, LINES, {"tea": {"ST-HZ-1": 2, "WH-HZ": 9}, "cup": {"WH-HZ": 9}})
    assert [(p.warehouse, p.line_ids) for p in found.parcels] == [("ST-HZ-1", ("o1/1",)), ("WH-HZ", ("o1/2",))]
    # the regional strategy would not start from the store
    assert candidates(layout(), "shop-1", HANGZHOU)[0] == "WH-HZ"


def test_a_shop_override_keeps_only_its_warehouses_in_its_order() -> None:
    plan = layout(shop_warehouses={"outlet": ["WH-GZ", "WH-SH"]})
    assert candidates(plan, "outlet", HANGZHOU) == ["WH-GZ", "WH-SH"]


def test_fewest_parcels_prefers_one_farther_warehouse_to_two_near_ones() -> None:
    # Hangzhou's city warehouse has the tea but no cup; Shanghai has both: one parcel from Shanghai.
    stock = {"tea": {"WH-HZ": 5, "WH-SH": 5}, "cup": {"WH-SH": 1, "WH-GZ": 9}}
    found = allocate(layout(), "shop-1", HANGZHOU, LINES, stock)
    assert [(p.warehouse, p.line_ids) for p in found.parcels] == [("WH-SH", ("o1/1", "o1/2"))]
    assert not found.split and not found.unallocated


def test_region_takes_the_nearest_warehouse_per_line_and_splits() -> None:
    stock = {"tea": {"WH-HZ": 5, "WH-SH": 5}, "cup": {"WH-SH": 1, "WH-GZ": 9}}
    found = allocate(layout("region"), "shop-1", HANGZHOU, LINES, stock)
    assert [(p.warehouse, p.line_ids, p.reason) for p in found.parcels] == [
        ("WH-HZ", ("o1/1",), "warehouse"),
        ("WH-SH", ("o1/2",), "warehouse"),
    ]


def test_stock_first_takes_the_first_listed_warehouse_that_ships_everything() -> None:
    stock = {"tea": {"WH-GZ": 5, "WH-HZ": 5}, "cup": {"WH-GZ": 1, "WH-HZ": 1}}
    found = allocate(layout("stock-first"), "shop-1", HANGZHOU, LINES, stock)
    assert [p.warehouse for p in found.parcels] == ["WH-GZ"]  # listed before WH-HZ, though farther


def test_no_single_warehouse_splits_with_the_fewest_parcels() -> None:
    stock = {"tea": {"WH-GZ": 2}, "cup": {"WH-HZ": 1}}
    found = allocate(layout(), "shop-1", HANGZHOU, LINES, stock)
    assert sorted((p.warehouse, p.line_ids) for p in found.parcels) == [("WH-GZ", ("o1/1",)), ("WH-HZ", ("o1/2",))]
    assert found.split


def test_lines_of_one_sku_draw_on_the_same_units_and_a_line_is_never_divided() -> None:
    lines = [LineRequest("o1/1", "tea", 3), LineRequest("o1/2", "tea", 3)]
    stock = {"tea": {"WH-HZ": 4, "WH-SH": 3}}
    found = allocate(layout("region"), "shop-1", HANGZHOU, lines, stock)
    assert [(p.warehouse, p.line_ids) for p in found.parcels] == [("WH-HZ", ("o1/1",)), ("WH-SH", ("o1/2",))]
    short = allocate(layout("region"), "shop-1", HANGZHOU, [LineRequest("o2/1", "tea", 5)], stock)
    assert short.parcels == [] and short.unallocated == ["o2/1"]


def test_ship_alone_skus_get_a_parcel_of_their_own() -> None:
    stock = {"tea": {"WH-SH": 5}, "cup": {"WH-SH": 5}}
    found = allocate(layout(ship_alone_skus=["tea"]), "shop-1", HANGZHOU, LINES, stock)
    assert [(p.warehouse, p.line_ids, p.reason) for p in found.parcels] == [
        ("WH-SH", ("o1/2",), None),
        ("WH-SH", ("o1/1",), "ship_alone"),
    ]


# -- merge ---------------------------------------------------------------------------------------------------
def parcel(order: str, warehouse: str = "WH-SH", carrier: str = "sf", alone: bool = False) -> ParcelPlan:
    return ParcelPlan(
        warehouse, carrier, (ShipmentLine(order_id=order, line_id=f"{order}/1", sku="tea", quantity=1),), alone=alone
    )


def test_the_merge_key_ignores_spacing_and_case_but_not_the_address() -> None:
    same = Address(name="张三 ", phone="138", province="浙江省", city="杭州市", street="文三路  1 号")
    assert merge_key("acme", "s1", "b1", HANGZHOU) == merge_key("acme", "s1", "b1", same)
    moved = Address(name="张三", phone="138", province="浙江省", city="杭州市", street="文三路 9 号")
    assert merge_key("acme", "s1", "b1", HANGZHOU) != merge_key("acme", "s1", "b1", moved)
    assert merge_key("acme", "s1", "b1", HANGZHOU) != merge_key("acme", "s2", "b1", HANGZHOU)
    assert merge_key("acme", "s1", "b1", HANGZHOU) != merge_key("other", "s1", "b1", HANGZHOU)


def test_orders_within_the_window_ship_as_one() -> None:
    group = MergeGroup("acme", "s1")
    assert add_order(group, "o1", [parcel("o1")], ts=0) == ["shp.o1.WH-SH.0"]
    assert add_order(group, "o2", [parcel("o2"), parcel("o2", "WH-GZ")], ts=60_000) == [
        "shp.o1.WH-SH.0",
        "shp.o2.WH-GZ.1",
    ]
    assert next_due(group, 600) == 600_000
    assert release_due(group, 599_999, 600) == []
    first = release_due(group, 600_000, 600)
    assert [(s.shipment_id, s.order_ids, len(s.lines)) for s in first] == [("shp.o1.WH-SH.0", ["o1", "o2"], 2)]
    second = release_due(group, 660_000, 600)
    assert [(s.shipment_id, s.order_ids) for s in second] == [("shp.o2.WH-GZ.1", ["o2"])]


def test_a_different_carrier_or_a_ship_alone_parcel_does_not_merge() -> None:
    group = MergeGroup("acme", "s1")
    add_order(group, "o1", [parcel("o1")], ts=0)
    add_order(group, "o2", [parcel("o2", carrier="zto")], ts=1)
    add_order(group, "o3", [parcel("o3", alone=True)], ts=2)
    assert len(group.waiting) == 3


def test_a_cancelled_order_leaves_its_merge_before_release_and_is_refused_after() -> None:
    group = MergeGroup("acme", "s1")
    add_order(group, "o1", [parcel("o1")], ts=0)
    add_order(group, "o2", [parcel("o2")], ts=1)
    assert cancel_order(group, "o2") == "left"
    (shipment,) = release_due(group, 600_000, 600)
    assert shipment.order_ids == ["o1"] and {ln.order_id for ln in shipment.lines} == {"o1"}
    assert cancel_order(group, "o1") == "refused"
    assert cancel_order(group, "o9") == "unknown"


def test_an_order_that_was_alone_in_its_merge_leaves_nothing_behind() -> None:
    group = MergeGroup("acme", "s1")
    add_order(group, "o1", [parcel("o1")], ts=0)
    assert cancel_order(group, "o1") == "left"
    assert group.waiting == [] and release_due(group, 10**9, 600) == []


def test_adding_an_order_twice_changes_nothing() -> None:
    group = MergeGroup("acme", "s1")
    add_order(group, "o1", [parcel("o1")], ts=0)
    assert add_order(group, "o1", [parcel("o1")], ts=5) == ["shp.o1.WH-SH.0"]
    assert len(group.waiting[0].lines) == 1


# -- waves and pick lists ------------------------------------------------------------------------------------
def wave_layout(**waves: object) -> Layout:
    zone = ZoneSpec(zone="A", aisles=4, pitch_cm=300, length_cm=1000)
    bins = [
        BinSpec(bin=f"A{a}-{d}", sku=f"sku-{a}-{d}", zone="A", aisle=a, bay=d // 100 + 1, depth_cm=d)
        for a in range(1, 5)
        for d in (100, 500, 900)
    ]
    warehouse = WarehouseSpec(warehouse="WH-SH", carriers=["sf", "zto"], zones=[zone], bins=bins, cart_units=4)
    return Layout(tenant="acme", version=1, warehouses=[warehouse], waves=WavePolicy(**waves))  # type: ignore[arg-type]


def shipment(n: int, skus: list[str], carrier: str = "sf", quantity: int = 1) -> Shipment:
    lines = [ShipmentLine(order_id=f"o{n}", line_id=f"o{n}/{i}", sku=s, quantity=quantity) for i, s in enumerate(skus)]
    return Shipment(
        shipment_id=f"shp{n}",
        tenant="acme",
        shop_id="s1",
        warehouse="WH-SH",
        carrier=carrier,
        lines=lines,
        order_ids=[f"o{n}"],
        ts=0,
    )


def test_a_group_is_released_when_it_reaches_the_count() -> None:
    plan = wave_layout(release_count=2, group_by=["carrier"])
    book = WaveBook("acme", "WH-SH")
    assert add_shipment(book, plan, shipment(1, ["sku-1-100"]), ts=0) == []
    assert add_shipment(book, plan, shipment(2, ["sku-2-100"], carrier="zto"), ts=1) == []
    ((wave, picks),) = add_shipment(book, plan, shipment(3, ["sku-3-900"]), ts=2)
    assert wave.group == "carrier=sf" and wave.trigger == "count" and wave.shipment_ids == ["shp1", "shp3"]
    assert [s.shipment_id for p in picks for s in p.stops] == ["shp1", "shp3"]
    assert list(book.groups) == ["carrier=zto"]


def test_the_oldest_shipment_waiting_long_enough_releases_its_group_in_cutoff_order() -> None:
    # zto is collected at 15:00, sf at the default 18:00: zto's wave goes first when both are due.
    plan = wave_layout(release_after_s=60, group_by=["carrier"])
    plan = msgspec.structs.replace(plan, carriers=[CarrierSpec(carrier="zto", cutoff_minute=900)])
    book = WaveBook("acme", "WH-SH")
    add_shipment(book, plan, shipment(1, ["sku-1-100"]), ts=0)
    add_shipment(book, plan, shipment(2, ["sku-2-100"], carrier="zto"), ts=30_000)
    assert release_waves(book, plan, 59_999) == []
    assert [w.group for w, _ in release_waves(book, plan, 60_000)] == ["carrier=sf"]
    add_shipment(book, plan, shipment(3, ["sku-3-100"]), ts=60_000)
    assert [w.group for w, _ in release_waves(book, plan, 200_000)] == ["carrier=zto", "carrier=sf"]


def test_single_unit_and_multi_unit_shipments_wave_apart() -> None:
    plan = wave_layout(release_count=10, group_by=["shape"])
    book = WaveBook("acme", "WH-SH")
    add_shipment(book, plan, shipment(1, ["sku-1-100"]), ts=0)
    add_shipment(book, plan, shipment(2, ["sku-1-100", "sku-2-500"]), ts=0)
    add_shipment(book, plan, shipment(3, ["sku-1-500"], quantity=2), ts=0)
    assert {g: [p.shipment.shipment_id for p in items] for g, items in book.groups.items()} == {
        "shape=single": ["shp1"],
        "shape=multi": ["shp2", "shp3"],
    }


def test_a_unit_cap_releases_before_the_count() -> None:
    plan = wave_layout(release_count=50, max_units=5, group_by=[])
    book = WaveBook("acme", "WH-SH")
    assert add_shipment(book, plan, shipment(1, ["sku-1-100"], quantity=3), ts=0) == []
    ((wave, _),) = add_shipment(book, plan, shipment(2, ["sku-2-100"], quantity=2), ts=0)
    assert wave.units == 5 and wave.group == "all"


def test_carts_never_exceed_capacity_and_keep_a_shipment_together() -> None:
    plan = wave_layout()
    warehouse = plan.warehouses[0]
    ships = [
        shipment(1, ["sku-1-100", "sku-4-900"]),
        shipment(2, ["sku-2-500", "sku-3-500"]),
        shipment(3, ["sku-1-900"]),
    ]
    lists = pick_lists("w1", "acme", warehouse, ships, "optimal")
    loads = [sum(s.quantity for s in p.stops) for p in lists]
    assert all(load <= warehouse.cart_units for load in loads)
    assert [sorted({s.shipment_id for s in p.stops}) for p in lists] == [["shp1", "shp2"], ["shp3"]]
    for p in lists:
        assert p.length_cm <= p.s_shape_cm and p.exact


def test_a_sku_without_a_bin_is_a_layout_error() -> None:
    book = WaveBook("acme", "WH-SH")
    with pytest.raises(LayoutError, match="no bin in WH-SH for nope"):
        add_shipment(book, wave_layout(), shipment(1, ["nope"]), ts=0)


def test_the_bin_nearest_the_front_is_the_pick_face() -> None:
    plan = wave_layout()
    extra = BinSpec(bin="A1-far", sku="sku-2-500", zone="A", aisle=1, bay=9, depth_cm=950)
    warehouse = msgspec.structs.replace(plan.warehouses[0], bins=[*plan.warehouses[0].bins, extra])
    assert bins_by_sku(warehouse)["sku-2-500"].bin == "A1-far"  # aisle 1 comes before aisle 2


# -- pick confirmation ---------------------------------------------------------------------------------------
def test_a_full_pick_has_no_shorts_and_a_short_pick_names_the_missing_units() -> None:
    warehouse = wave_layout().warehouses[0]
    (pick,) = pick_lists("w1", "acme", warehouse, [shipment(1, ["sku-1-100", "sku-2-500"], quantity=2)], "optimal")
    full = confirm(pick, report(pick, 1))
    assert full.ok and full.shorts == [] and sum(full.picked.values()) == 4
    short = confirm(pick, report(pick, 1, {"o1/1": 0}))
    assert short.ok
    assert [(s.line_id, s.missing, s.picked, s.bin) for s in short.shorts] == [("o1/1", 2, 0, "A2-500")]


def test_over_picks_unknown_stops_and_missing_stops_are_refused_whole() -> None:
    warehouse = wave_layout().warehouses[0]
    (pick,) = pick_lists("w1", "acme", warehouse, [shipment(1, ["sku-1-100", "sku-2-500"])], "optimal")
    over = confirm(pick, report(pick, 1, {"o1/0": 2}))
    assert not over.ok and "over-pick" in over.errors[0] and over.picked == {}
    partial = msgspec.structs.replace(report(pick, 1), lines=report(pick, 1).lines[:1])
    assert any("is not confirmed" in e for e in confirm(pick, partial).errors)
    stranger = msgspec.structs.replace(report(pick, 1), pick_list_id="w9.A.1")
    assert confirm(pick, stranger).errors


# -- layout files --------------------------------------------------------------------------------------------
def test_the_example_layout_file_loads_and_passes_its_checks() -> None:
    (found,) = load_layouts(Path(__file__).parents[2] / "deploy" / "layout.toml")
    assert found.tenant == "acme" and check_layout(found) == []
    assert all(w.bins for w in found.warehouses)


def test_a_layout_file_reports_every_problem_with_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "bins.csv").write_text("warehouse,bin,sku,zone,aisle,bay,level,depth_cm\nW1,b1,tea,Z,9,1,1,100\n")
    (tmp_path / "layout.toml").write_text(
        """
[[layouts]]
tenant = "acme"
version = 1
allocation = { warehouse_order = ["W9"] }
[[layouts.warehouses]]
warehouse = "W1"
carriers = ["sf"]
bins_csv = "bins.csv"
zones = [{ zone = "Z", aisles = 2, pitch_cm = 300, length_cm = 1000 }]
[[layouts]]
tenant = "beta"
version = 0
warehouses = []
"""
    )
    with pytest.raises(LayoutFileError) as caught:
        load_layouts(tmp_path / "layout.toml")
    message = str(caught.value)
    assert "bin b1 (aisle 9, 100 cm) is outside zone Z" in message
    assert "unknown warehouse W9" in message
    assert "layouts[1] (beta)" in message and "version" in message


def test_the_generated_layout_slots_fast_movers_near_the_depot_and_checks_clean() -> None:
    skus = [f"sku-{i:04d}" for i in range(900)]
    found = generate_layout("acme", ["WH-SH", "WH-GZ", "WH-BJ"], skus)
    assert check_layout(found) == []
    bins = bins_by_sku(found.warehouses[0])
    assert set(bins) == set(skus)
    assert bins["sku-0000"].depth_cm < bins["sku-0700"].depth_cm or bins["sku-0700"].zone == "B"
    assert generate_layout("acme", ["WH-SH"], skus) == generate_layout("acme", ["WH-SH"], skus)


def test_the_pick_confirmation_endpoint_refuses_what_is_not_a_confirmation_with_a_reason() -> None:
    from agents.fulfilment.views import parse
    from engine.http.edge import Problem

    body = {"warehouse": "WH-SH", "pick_list_id": "wave.acme.WH-SH.1.A.1", "lines": [
        {"shipment_id": "shp.1", "line_id": "o1#1", "bin": "WH-SH-A01-01-1", "picked": 2}]}  # fmt: skip
    confirmation = parse(orjson.dumps(body), "acme", "token:abcd", 123)
    assert (confirmation.key, confirmation.ts, confirmation.picker) == ("acme:WH-SH", 123, "token-abcd")
    for raw, status, code in [
        (b"not json", 400, "malformed_json"),
        (b"[1]", 400, "malformed_json"),
        (orjson.dumps({**body, "tenant": "blue"}), 422, "tenant_mismatch"),
        (orjson.dumps({**body, "lines": []}), 422, "schema_violation"),
        (orjson.dumps({**body, "lines": [{**body["lines"][0], "picked": -1}]}), 422, "schema_violation"),
    ]:
        with pytest.raises(Problem) as refused:
            parse(raw, "acme", "token:abcd", 123)
        assert (refused.value.status, refused.value.code) == (status, code), raw
