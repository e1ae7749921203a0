"""Fulfilment on the real broker: from acceptance to waves, pick lists and picked — a split order, a merge, a
cancellation inside a merge window, a layout change while running, pick confirmations by topic and HTTP with a
short pick re-allocated and one shipped partial — ending with every invariant (I1–I6, F1–F8) checked from the
result topics against what was sent."""

from __future__ import annotations

import msgspec
import pytest

from agents.fulfilment.layout import generate_layout
from agents.fulfilment.picking import report
from agents.fulfilment.publish import publish_layouts
from schemas import wire
from schemas.fulfilment import Layout, PickConfirmation, PickList, WavePolicy
from schemas.inventory import Receive, receive_id
from schemas.order import Address, Buyer, Channel, LineState, Order, OrderLine, OrderStatus, order_id
from tests.pipeline.harness import Pipeline, http, wait_for
from tests.pipeline.test_channels_pipeline import auth
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.delivery import Credentials
from workload.generator import DAY_START_MS, Workload, WorkloadSpec

pytestmark = pytest.mark.pipeline

SHANGHAI = Address(name="王五", phone="13800000000", province="上海市", city="上海市", street="南京西路 1 号")
BEIJING = Address(name="赵六", phone="13900000000", province="北京市", city="北京市", street="长安街 2 号")
LEAVING_TENANT = "cove"  # its merge window is long enough for a cancellation to arrive inside it on any machine
WAVES = WavePolicy(group_by=["carrier"], release_count=8, release_after_s=2, path="optimal")


def order(n: int, lines: list[tuple[str, int]], receiver: Address, buyer: str, at: int, **changes: object) -> Order:
    base = Order(
        tenant="acme",
        order_id=order_id(Channel.TMALL, "tm-1", f"ff{n}"),
        channel=Channel.TMALL,
        shop_id="tm-1",
        platform_order_id=f"ff{n}",
        status=OrderStatus.PAID,
        buyer=Buyer(id=buyer),
        receiver=receiver,
        lines=[OrderLine(line_no=i + 1, sku=s, quantity=q, unit_price_fen=990) for i, (s, q) in enumerate(lines)],
        created_at=at,
        ingested_at=at,
        version=at,
    )
    return msgspec.structs.replace(base, **changes)


def receipts(tenant: str, placed: dict[tuple[str, str], int]) -> list[Receive]:
    return [
        Receive(
            command_id=receive_id(tenant, sku, wh, "ff"),
            tenant=tenant,
            sku=sku,
            origin="ff-loader",
            seq=i + 1,
            ts=1,
            warehouse=wh,
            quantity=qty,
            document_id="ff",
        )
        for i, ((sku, wh), qty) in enumerate(sorted(placed.items()))
    ]


def test_orders_go_from_acceptance_to_pick_lists(pipeline: Pipeline) -> None:
    workload = Workload(WorkloadSpec(orders=400, seed=31, skus=60, hot_skus=4, hot_stock_ratio=0.6))
    skus = [workload.spec.sku(i + 1) for i in range(workload.spec.skus)] + ["ONLY-SH", "ONLY-BJ"]
    layouts = [
        generate_layout(t, workload.spec.warehouses, skus, merge_window_s=3, waves=WAVES) for t in workload.spec.tenants
    ]
    # The order cancelled inside its merge window belongs to a tenant of its own whose window is long: the
    # window is wall time from its acceptance (the record's time), so a short one would race a loaded machine.
    slow = generate_layout(LEAVING_TENANT, ["WH-SH"], ["ONLY-SH"], merge_window_s=600, waves=WAVES)
    publish_layouts(pipeline.settings, [*layouts, slow], "test-layouts")
    pipeline.load(workload)
    pipeline.send_commands(receipts("acme", {("ONLY-SH", "WH-SH"): 50, ("ONLY-BJ", "WH-BJ"): 50}))
    pipeline.send_commands(receipts(LEAVING_TENANT, {("ONLY-SH", "WH-SH"): 5}))
    pool = pipeline.start_workers(2)

    now = DAY_START_MS + 12 * 3_600_000  # channel time inside the workload's day (its orders' times)
    split = order(1, [("ONLY-SH", 1), ("ONLY-BJ", 2)], SHANGHAI, "split-buyer", now)
    merge_a = order(2, [("ONLY-SH", 1)], SHANGHAI, "merge-buyer", now)
    merge_b = order(3, [("ONLY-SH", 2)], SHANGHAI, "merge-buyer", now + 1)
    elsewhere = order(4, [("ONLY-SH", 1)], BEIJING, "merge-buyer", now + 2)  # same buyer, other address
    leaving = order(5, [("ONLY-SH", 1)], SHANGHAI, "leaving-buyer", now + 3, tenant=LEAVING_TENANT)
    pipeline.send_orders([split, merge_a, merge_b, elsewhere, leaving])
    pipeline.wait_decisions(5, timeout_s=120)
    cancelled = msgspec.structs.replace(
        leaving,
        status=OrderStatus.CANCELLED,
        version=now + 10,
        lines=[msgspec.structs.replace(ln, status=LineState.CANCELLED) for ln in leaving.lines],
    )
    pipeline.send_orders([cancelled])  # well inside its 10-minute merge window

    # A layout change while running: every bin of the split order's SKUs moves, and waves group by shape too.
    def moved(layout: Layout) -> Layout:
        return msgspec.structs.replace(
            layout,
            version=2,
            waves=msgspec.structs.replace(WAVES, group_by=["carrier", "shape"]),
            warehouses=[
                msgspec.structs.replace(
                    w,
                    bins=[
                        msgspec.structs.replace(b, bin=f"{b.bin}-v2", aisle=1, depth_cm=100)
                        if b.sku.startswith("ONLY-")
                        else b
                        for b in w.bins
                    ],
                )
                for w in layout.warehouses
            ],
        )

    orders = list(workload.orders())
    pipeline.send_orders(orders[: len(orders) // 2])
    publish_layouts(pipeline.settings, [moved(layouts[0]), layouts[1]], "test-layouts")
    late = order(6, [("ONLY-SH", 1)], BEIJING, "late-buyer", now + 20)
    pipeline.send_orders([*orders[len(orders) // 2 :], late])
    unique = len({o.key for o in orders}) + 6
    pipeline.wait_decisions(unique, timeout_s=240, pool=pool)

    missing: dict[str, object] = {}

    def settled() -> bool:
        out = pipeline.outputs()
        withdrawn = {w.order_id for w in out.withdrawals}
        lines = {ln.line_id for s in out.shipments for ln in s.lines}
        shipments = {s.shipment_id for s in out.shipments}
        waved = {sid for w in out.waves for sid in w.shipment_ids}
        shipping = {k for k, sent in pipeline.inputs.orders.items() if sent.latest().delivery == "ship"}
        want = {
            ln.line_id
            for d in out.decisions
            if d.status.value == "accepted" and d.order_id not in withdrawn and d.key in shipping
            for ln in d.lines
        }
        missing.update(unshipped=sorted(want - lines)[:5], unwaved=sorted(shipments - waved)[:5])
        return want <= lines and shipments <= waved

    try:
        wait_for(settled, 120, "every accepted line shipped and every shipment waved")
    except AssertionError:
        pipeline.dump_logs()
        raise AssertionError(f"fulfilment did not settle: {missing}") from None
    pipeline.inputs.fulfilment_complete = True
    verdict = assert_invariants(pipeline)
    out = pipeline.outputs()

    by_order: dict[str, list] = {}
    for s in out.shipments:
        for o in s.order_ids:
            by_order.setdefault(o, []).append(s)
    # The split: one order, two warehouses, two shipments.
    assert sorted(s.warehouse for s in by_order[split.order_id]) == ["WH-BJ", "WH-SH"]
    # The merge: two orders of one buyer and address in one shipment; the same buyer elsewhere is not merged.
    (merged,) = by_order[merge_a.order_id]
    assert sorted(merged.order_ids) == sorted([merge_a.order_id, merge_b.order_id])
    assert by_order[elsewhere.order_id][0].order_ids == [elsewhere.order_id]
    # The cancellation inside the window: it left its merge and ships nothing.
    assert leaving.order_id not in by_order
    assert [(w.order_id, w.outcome) for w in out.withdrawals] == [(leaving.order_id, "left")]
    # The layout change reached the pick lists: the late order is picked from a moved bin.
    late_bins = {
        s.bin
        for p in out.pick_lists
        for s in p.stops
        if s.shipment_id in {x.shipment_id for x in by_order[late.order_id]}
    }
    assert late_bins and all(b.endswith("-v2") for b in late_bins)
    assert all(p.length_cm <= p.s_shape_cm for p in out.pick_lists)  # the optimal walk never loses to S-shape
    assert verdict.counts["merged_shipments"] >= 1 and verdict.counts["split_orders"] >= 1
    assert verdict.counts["waves"] >= 2 and verdict.counts["pick_lists"] >= verdict.counts["waves"]


def test_picks_are_confirmed_short_picks_resolved_and_picked_shipments_ship_through_a_failing_carrier(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    """Picking with shorts (re-allocated, partial), then shipping: packed, carriers chosen, waybills asked of a
    carrier that refuses every other call (asked again), issued stock, goods issued per order."""
    waves = WavePolicy(group_by=["carrier"], release_count=50, release_after_s=1)
    layout = generate_layout("acme", ["WH-SH", "WH-BJ"], ["PK-A", "PK-B", "PK-C"], merge_window_s=1, waves=waves)
    publish_layouts(pipeline.settings, [layout], "test-layouts")
    stock = {("PK-A", "WH-SH"): 5, ("PK-A", "WH-BJ"): 5, ("PK-B", "WH-SH"): 10, ("PK-C", "WH-SH"): 10}
    pipeline.send_commands(receipts("acme", stock))
    pool = pipeline.start_workers(2, carrier_fail_every=2)
    now = DAY_START_MS + 12 * 3_600_000
    moved = order(11, [("PK-A", 3), ("PK-C", 1)], SHANGHAI, "buyer-1", now)  # PK-A: 2 missing, WH-BJ has it
    partial = order(12, [("PK-B", 2)], SHANGHAI, "buyer-2", now + 1)  # PK-B: none left elsewhere
    whole = order(13, [("PK-C", 2)], SHANGHAI, "buyer-3", now + 2)
    pipeline.send_orders([moved, partial, whole])
    pipeline.wait_decisions(3, timeout_s=120, pool=pool)

    def pick_lists(lines: set[str]) -> dict[str, PickList] | None:
        found = {s.line_id: p for p in pipeline.outputs().pick_lists for s in p.stops}
        return found if lines <= found.keys() else None

    short_a, short_b = f"{moved.order_id}#1", f"{partial.order_id}#1"
    first = wait_for(lambda: pick_lists({short_a, short_b, f"{whole.order_id}#1"}), 120, "the first pick lists")
    lists = {p.pick_list_id: p for p in first.values()}
    sent: list[PickConfirmation] = []
    # An over-pick is refused whole (dead letter, refused outcome), before the real report of that list.
    over = report(first[short_a], DAY_START_MS, {short_a: 4})
    pipeline.send_bad(pipeline.topics.fulfilment_inbox, over.key, wire.encode(over))
    for n, pick in enumerate(sorted(lists.values(), key=lambda p: p.pick_list_id)):
        confirmation = report(pick, DAY_START_MS, {short_a: 1, short_b: 0})
        sent.append(confirmation)
        if n == 0:  # by topic (a scanner), twice: applied once
            pipeline.send(pipeline.topics.fulfilment_inbox, [confirmation, confirmation])
        else:  # by the HTTP API
            body = wire.to_builtins(confirmation)
            status, answer = http("POST", pipeline.api("/api/v1/acme/pick-confirmations"), body, auth(credentials))
            assert status == 202, answer
    status, answer = http(
        "POST", pipeline.api("/api/v1/acme/pick-confirmations"), {"warehouse": "WH-SH"}, auth(credentials)
    )
    assert status == 422 and "pick_list_id" in answer["message"]  # not a confirmation: refused at the door
    status, _ = http("POST", pipeline.api("/api/v1/acme/pick-confirmations"), {}, {"Authorization": "Bearer x"})
    assert status == 401

    remainder = f"{short_a}/r"
    second = wait_for(lambda: pick_lists({remainder}), 120, "the re-reserved line's pick list")
    again = report(second[remainder], DAY_START_MS)
    sent.append(again)
    status, _ = http(
        "POST", pipeline.api("/api/v1/acme/pick-confirmations", 1), wire.to_builtins(again), auth(credentials)
    )
    assert status == 202
    pipeline.inputs.picks.extend(sent)

    def applied() -> bool:
        out = pipeline.outputs()
        done = {o.pick_list_id for o in out.pick_outcomes if o.status == "confirmed"}
        return done >= {s.pick_list_id for s in sent} and len(out.short_picks) >= 2

    wait_for(applied, 120, "every confirmation applied and both shorts answered")

    def shipped() -> bool:  # everything picked left (S2 then checks it is all, once)
        out = pipeline.outputs()
        return len(out.shipped) >= sum(1 for p in out.picked_shipments if any(ln.picked for ln in p.lines))

    wait_for(shipped, 120, "the picked shipments shipped")
    pipeline.inputs.fulfilment_complete = True
    verdict = assert_invariants(pipeline)
    out = pipeline.outputs()

    answers = {a.line_id: (a.outcome, a.reason, a.remainder_warehouse) for a in out.short_picks}
    assert answers == {short_a: ("reallocated", "reallocated", "WH-BJ"), short_b: ("partial", "no_stock", None)}
    (shipment,) = [s for s in out.shipments if any(ln.line_id == remainder for ln in s.lines)]
    assert shipment.warehouse == "WH-BJ" and shipment.split_reason == "short_pick"
    refused = [o for o in out.pick_outcomes if o.status == "refused"]
    assert len(refused) == 1 and "over-pick" in refused[0].errors[0]
    # The missing units left WH-SH's count and reservation together; what was picked shipped (issued).
    assert verdict.counts["final_levels"]["acme:PK-A"] == {"WH-SH": [2, 0], "WH-BJ": [3, 0]}
    assert verdict.counts["final_levels"]["acme:PK-B"] == {"WH-SH": [8, 0]}
    assert verdict.counts["final_levels"]["acme:PK-C"] == {"WH-SH": [7, 0]}
    assert verdict.counts["short_lines"] == 2 and verdict.counts["picks_confirmed"] == len(sent)
    assert verdict.counts["shipments_picked"] == len(out.shipments)  # every shipment picked, once (F8)
    (moved_picked,) = [p for p in out.picked_shipments if short_a in {ln.line_id for ln in p.lines}]
    assert {ln.line_id: (ln.asked, ln.picked) for ln in moved_picked.lines}[short_a] == (3, 1)
    # Shipping: the carrier refused calls and they were asked again (the fault fired and overlapped the work);
    # every picked shipment shipped with unique numbers (S1–S4 in the verdict).
    refused_calls = [a for a in out.waybill_answers if a.error == "unavailable"]
    assert refused_calls, "the carrier never refused a call: the retry path was not exercised"
    assert verdict.counts["shipments_shipped"] == len(out.shipped) >= 2 and verdict.counts["shipments_failed"] == 0
    waybills = [p.waybill for s in out.shipped for p in s.parcels]
    assert len(waybills) == len(set(waybills)) == verdict.counts["parcels"]
    goods = {(g.order_id, ln.line_id): ln.units for g in out.goods_issued for ln in g.lines}
    assert goods[(moved.order_id, short_a)] == 1 and goods[(moved.order_id, remainder)] == 2
    assert goods[(whole.order_id, f"{whole.order_id}#1")] == 2
    assert not any(order_id == partial.order_id for order_id, _ in goods)  # nothing of it was picked
