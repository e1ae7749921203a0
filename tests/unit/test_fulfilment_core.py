"""The fulfilment rules (agents.fulfilment.core) without a stage: a parcel into its merge group, a withdrawal, a
merge window passing, waving, and a picker's report — each a function of the state it is given."""

from __future__ import annotations

import msgspec

from agents.fulfilment import core
from agents.fulfilment.layout import generate_layout
from agents.fulfilment.picking import report
from agents.fulfilment.waves import Pending, WaveBook
from engine.runtime.stamp import Stamp
from schemas.deadletter import ReasonCode
from schemas.fulfilment import (
    AllocationPolicy,
    LineShort,
    OrderWithdrawn,
    ParcelAccepted,
    PickList,
    PickOutcome,
    ShipmentLine,
    ShipmentPicked,
    Wave,
    WavePolicy,
)
from schemas.inventory import ShortPick

SKUS = [f"SKU-{i:03d}" for i in range(20)]
DAY = 86_400_000


def layout(window_s: int = 3, alone: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    waves = WavePolicy(group_by=["carrier"], release_count=2, release_after_s=2)
    found = generate_layout("acme", ["WH-SH"], SKUS, merge_window_s=window_s, waves=waves)
    return msgspec.structs.replace(found, allocation=AllocationPolicy(ship_alone_skus=list(alone)))


def parcel(n: int, ts: int, skus: tuple[str, ...] = ("SKU-001",), buyer: str = "b") -> ParcelAccepted:
    order_id = f"o{n}"
    return ParcelAccepted(
        tenant="acme",
        order_id=order_id,
        shop_id="s1",
        warehouse="WH-SH",
        merge_key=f"acme:s1:{buyer}:addr",
        lines=[
            ShipmentLine(order_id=order_id, line_id=f"{order_id}#{i}", sku=s, quantity=2) for i, s in enumerate(skus)
        ],
        reply_to=f"acme:s1:b-{buyer}",
        ts=ts,
    )


def test_parcels_of_one_buyer_merge_a_ship_alone_sku_leaves_alone_and_the_window_says_when() -> None:
    first = core.accept(layout(alone=("SKU-009",)), None, parcel(1, 1_000, ("SKU-001", "SKU-009")), DAY)
    group = first.state
    assert group is not None and first.changed and first.note == ""
    assert [len(w.lines) for w in group.waiting] == [1, 1] and first.due == [4_000, 4_000]
    second = core.accept(layout(alone=("SKU-009",)), group, parcel(2, 2_000), DAY)
    assert second.note == "merged" and second.due == [] and not second.release_now
    assert group.waiting[0].order_ids == ["o1", "o2"] and group.expires_at is None  # something waits: kept
    assert core.accept(layout(window_s=0), None, parcel(3, 1_000), DAY).release_now


def test_a_window_passing_releases_the_group_and_a_withdrawal_is_then_too_late() -> None:
    group = core.accept(layout(), None, parcel(1, 1_000), DAY).state
    assert group is not None
    assert core.release(group, 3_999, 3, DAY).shipments == []
    released = core.release(group, 4_000, 3, DAY)
    (shipment,) = released.shipments
    assert shipment.order_ids == ["o1"] and released.later is None and group.expires_at == 4_000 + DAY
    withdrawn = OrderWithdrawn(tenant="acme", order_id="o1", warehouse="WH-SH", merge_key="acme:s1:b:addr", ts=5_000)
    step = core.withdraw(group, withdrawn, DAY)
    (told,) = step.outputs
    assert (told.outcome, told.shipment_ids, step.note) == ("too_late", [shipment.shipment_id], "withdrawn_refused")
    unknown = core.withdraw(None, withdrawn, DAY)
    assert not unknown.changed and unknown.outputs[0].outcome == "unknown"


def waved(*skus: str) -> tuple[core.Waved, list[Pending]]:
    shipments = []
    for n, sku in enumerate(skus):
        group = core.accept(layout(), None, parcel(n, 1_000, (sku,), buyer=f"b{n}"), DAY).state
        assert group is not None
        shipments += core.release(group, 4_000, 3, DAY).shipments
    waiting = [Pending(s, 4_000) for s in shipments]
    return core.wave(WaveBook("acme", "WH-SH"), layout(), waiting, 4_000, DAY), waiting


def test_shipments_wave_by_count_with_their_pick_lists_and_one_without_a_bin_waits() -> None:
    step, waiting = waved("SKU-001", "SKU-002", "SKU-NOBIN")
    assert [type(o) for o in step.outputs][:2] == [Wave, PickList]
    (wave,) = [o for o in step.outputs if isinstance(o, Wave)]
    assert sorted(wave.shipment_ids) == sorted(p.shipment.shipment_id for p in waiting[:2])
    assert [p.shipment.shipment_id for p in step.blocked] == [waiting[2].shipment.shipment_id]
    assert step.counts == {"shipment_without_bin": 1, "waves": 1, "pick_lists": len(step.tasks)}
    assert {p.shipment.shipment_id for p in step.picking} == set(wave.shipment_ids)
    assert all(p.pending == p.lists and p.expires_at == 4_000 + DAY for p in step.picking)
    assert core.retry_blocked(core.WarehouseState("acme", "WH-SH", 0, blocked=1, blocked_version=0), layout())


def test_a_short_pick_tells_the_inventory_and_the_order_and_the_shipment_is_picked() -> None:
    step, _ = waved("SKU-001", "SKU-002")
    (task,) = step.tasks
    records = {p.shipment.shipment_id: p for p in step.picking}
    short_line = task.pick_list.stops[0].line_id
    picker = report(task.pick_list, 9_000, {short_line: 1})
    done = core.confirm(task, picker, records, layout(), Stamp("fulfilment.x.p0", 7), 10_000)
    kinds = [type(o) for o in done.outputs]
    assert kinds[0] is PickOutcome and kinds.count(ShipmentPicked) == 2 and kinds[-2:] == [ShortPick, LineShort]
    assert done.changed and done.state is task and task.confirmed == picker
    assert done.picking == dict.fromkeys(sorted(records))  # picked: both records are forgotten
    short = done.outputs[-2]
    assert (short.line_id, short.quantity, short.seq, short.ts) == (short_line, 1, Stamp("x", 7).seq(0), 10_000)
    assert done.counts == {"picks_confirmed": 1, "shipments_picked": 2, "short_picks": 1}
    again = core.confirm(task, picker, records, layout(), Stamp("fulfilment.x.p0", 8), 11_000)
    assert (again.note, again.outputs, again.changed) == ("duplicate_pick", [], False)
    other = core.confirm(task, report(task.pick_list, 9_000), records, layout(), Stamp("fulfilment.x.p0", 9), 11_000)
    assert other.refused is not None and other.refused[0] is ReasonCode.PICK_REFUSED


def test_a_report_for_a_pick_list_never_released_is_refused_and_told() -> None:
    step, _ = waved("SKU-001", "SKU-002")
    (task,) = step.tasks
    elsewhere = msgspec.structs.replace(report(task.pick_list, 9_000), warehouse="WH-BJ")
    refused = core.confirm(task, elsewhere, {}, layout(), Stamp("fulfilment.x.p0", 1), 10_000)
    (told,) = refused.outputs
    assert refused.refused is not None and refused.refused[0] is ReasonCode.UNKNOWN_PICK_LIST
    assert (told.status, refused.note, refused.changed) == ("refused", "picks_refused", False)
