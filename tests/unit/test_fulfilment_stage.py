"""The fulfilment stage's logic replayed in-process over hand-made inbox records (no servers): parcels are
released once their merge window has passed on record time, whatever the phase of the ticks; withdrawals
inside and after the window; a layout that arrives after the parcels; replay from a snapshot gives the same."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from agents.fulfilment.agent import FulfilmentLogic
from agents.fulfilment.layout import generate_layout
from agents.fulfilment.picking import report
from engine.kafka.clients import Message, partition_for
from engine.runtime.replay import Replay
from engine.topics import Topics
from schemas import wire
from schemas.deadletter import DeadLetter, ReasonCode
from schemas.fulfilment import (
    LayoutVersion,
    LineShort,
    OrderWithdrawn,
    ParcelAccepted,
    PickList,
    PickOutcome,
    Shipment,
    ShipmentLine,
    ShipmentPicked,
    Tick,
    Wave,
    WavePolicy,
    WithdrawalOutcome,
)
from schemas.inventory import ShortPick

TOPICS = Topics("t")
PARTITIONS = 4
SKUS = [f"SKU-{i:03d}" for i in range(40)]
KEY = "acme:WH-SH"
P = partition_for(KEY, PARTITIONS)


class Inbox:
    """Records of one fulfilment-inbox partition, in offset order."""

    def __init__(self) -> None:
        self.records: list[Message] = []

    def add(self, record: object, ts: int, key: str | None = KEY) -> None:
        raw = wire.encode(record)
        self.records.append(
            Message(TOPICS.fulfilment_inbox, P, len(self.records), key.encode() if key else None, raw, ts, ())
        )


def parcel(
    n: int, ts: int, buyer: str | None = None, skus: tuple[str, ...] = ("SKU-001",), qty: int = 1
) -> ParcelAccepted:
    order_id = f"o{n}"
    return ParcelAccepted(
        tenant="acme",
        order_id=order_id,
        shop_id="s1",
        warehouse="WH-SH",
        merge_key=f"acme:s1:{buyer or order_id}:addr",
        lines=[
            ShipmentLine(order_id=order_id, line_id=f"{order_id}#{i}", sku=s, quantity=qty) for i, s in enumerate(skus)
        ],
        reply_to=f"acme:s1:b-{buyer or order_id}",
        ts=ts,
    )


def layout(version: int = 1, window_s: int = 3):  # type: ignore[no-untyped-def]
    waves = WavePolicy(group_by=["carrier"], release_count=5, release_after_s=2)
    return generate_layout("acme", ["WH-SH"], SKUS, version=version, merge_window_s=window_s, waves=waves)


def run(inbox: Inbox, snapshot_at: int | None = None) -> dict[str, list]:
    logic = FulfilmentLogic(TOPICS, PARTITIONS, retention_ms=7 * 86_400_000)
    replay = Replay(logic, "t.dead-letters")
    if snapshot_at is None:
        outputs = replay.run(inbox.records, batch=3)
    else:
        outputs = replay.run(inbox.records[:snapshot_at], batch=5)
        again = Replay(FulfilmentLogic(TOPICS, PARTITIONS, 7 * 86_400_000), "t.dead-letters", replay.state.snapshot())
        outputs += again.run(inbox.records, batch=2)
    kinds = {
        TOPICS.shipments: Shipment,
        TOPICS.waves: Wave,
        TOPICS.pick_lists: PickList,
        TOPICS.withdrawals: WithdrawalOutcome,
        TOPICS.pick_outcomes: PickOutcome,
        TOPICS.inventory_commands: ShortPick,
        TOPICS.order_inbox: LineShort,
        TOPICS.picked_shipments: ShipmentPicked,
        TOPICS.shipping_inbox: ShipmentPicked,
        "t.dead-letters": DeadLetter,
    }
    found: dict[str, list] = {t: [] for t in kinds}
    for out in outputs:
        assert out.topic in kinds, f"unexpected output on {out.topic}"
        found[out.topic].append(wire.decode(out.value, kinds[out.topic]))
    return found


@pytest.mark.parametrize("phase_ms", [0, 1, 499, 500, 999])
def test_every_parcel_is_released_once_after_its_window_whatever_the_tick_phase(phase_ms: int) -> None:
    rng = random.Random(phase_ms)
    inbox = Inbox()
    start = 1_000_000
    inbox.add(LayoutVersion(layout=layout()), start, key="acme")
    arrivals = sorted(start + rng.randint(0, 20_000) for _ in range(30))
    tick, n = start + phase_ms, 0
    for at in [*arrivals, start + 40_000]:
        while tick <= at:
            inbox.add(Tick(ts=tick), tick, key=None)
            tick += 1000
        if n < len(arrivals):
            inbox.add(parcel(n, at), at)
            n += 1
    out = run(inbox)
    released = Counter(o for s in out[TOPICS.shipments] for o in s.order_ids)
    assert released == Counter({f"o{i}": 1 for i in range(30)})  # each once, none lost
    for shipment in out[TOPICS.shipments]:
        assert shipment.ts - arrivals[int(shipment.order_ids[0][1:])] >= 3000  # not before its window
    waved = Counter(sid for w in out[TOPICS.waves] for sid in w.shipment_ids)
    assert set(waved) == {s.shipment_id for s in out[TOPICS.shipments]} and set(waved.values()) == {1}


def test_a_buyer_s_orders_in_one_window_merge_and_a_withdrawal_leaves_or_is_too_late() -> None:
    inbox = Inbox()
    inbox.add(LayoutVersion(layout=layout()), 0, key="acme")
    inbox.add(parcel(1, 1_000, buyer="b"), 1_000)
    inbox.add(parcel(2, 2_000, buyer="b", skus=("SKU-002", "SKU-003")), 2_000)
    inbox.add(parcel(3, 2_500, buyer="b"), 2_500)
    inbox.add(
        OrderWithdrawn(tenant="acme", order_id="o3", warehouse="WH-SH", merge_key="acme:s1:b:addr", ts=3_000), 3_000
    )
    for t in range(3_000, 12_000, 1000):
        inbox.add(Tick(ts=t + 10), t + 10, key=None)
    inbox.add(
        OrderWithdrawn(tenant="acme", order_id="o1", warehouse="WH-SH", merge_key="acme:s1:b:addr", ts=13_000), 13_000
    )
    out = run(inbox)
    (shipment,) = out[TOPICS.shipments]
    assert shipment.order_ids == ["o1", "o2"] and len(shipment.lines) == 3
    assert [(w.order_id, w.outcome) for w in out[TOPICS.withdrawals]] == [("o3", "left"), ("o1", "too_late")]
    assert out[TOPICS.withdrawals][1].shipment_ids == [shipment.shipment_id]


def test_shipments_wait_for_a_layout_and_a_restart_point_changes_nothing() -> None:
    inbox = Inbox()
    for n in range(6):
        inbox.add(parcel(n, 1_000 + n), 1_000 + n)
    for t in range(2_000, 30_000, 1000):
        if t == 12_000:
            inbox.add(LayoutVersion(layout=layout(window_s=600)), t, key="acme")  # arrives late
        inbox.add(Tick(ts=t), t, key=None)
    whole = run(inbox)
    # Without a layout the default window (600 s) applies to what arrived before it; none is due yet.
    assert whole[TOPICS.shipments] == []
    inbox.add(Tick(ts=700_000), 700_000, key=None)
    whole = run(inbox)
    assert len(whole[TOPICS.shipments]) == 6 and len(whole[TOPICS.waves]) >= 1
    assert all(s.carrier == "unassigned" for s in whole[TOPICS.shipments])  # no layout when they came
    for cut in (3, len(inbox.records) // 2, len(inbox.records) - 1):
        assert run(inbox, snapshot_at=cut) == whole


def test_a_confirmed_short_pick_corrects_the_stock_and_tells_the_order_once_and_a_bad_one_changes_nothing() -> None:
    inbox = Inbox()
    inbox.add(LayoutVersion(layout=layout()), 0, key="acme")
    inbox.add(parcel(1, 1_000, skus=("SKU-001", "SKU-002"), qty=3), 1_000)
    inbox.add(parcel(2, 1_100), 1_100)
    for t in range(2_000, 12_000, 1000):
        inbox.add(Tick(ts=t), t, key=None)
    picks = {s.line_id: p for p in run(inbox)[TOPICS.pick_lists] for s in p.stops}
    short_list, other_list = picks["o1#1"], picks["o2#0"]
    assert short_list is not other_list or len(short_list.stops) == 3
    over = report(short_list, 20_000, {"o1#1": 4})  # more than asked: refused whole
    unknown = msgspec.structs.replace(report(other_list, 20_000), pick_list_id="wave.acme.WH-SH.99.Z1.1")
    good = report(short_list, 21_000, {"o1#1": 1})
    for n, record in enumerate([over, unknown, good, good]):  # the good one twice: applied once
        inbox.add(record, 20_000 + n * 1_000)
    out = run(inbox)
    letters = sorted(d.reason for d in out["t.dead-letters"])
    assert letters == sorted([ReasonCode.PICK_REFUSED, ReasonCode.UNKNOWN_PICK_LIST])
    refused, unknown_outcome, confirmed = out[TOPICS.pick_outcomes]
    assert (refused.status, unknown_outcome.status, confirmed.status) == ("refused", "refused", "confirmed")
    assert "over-pick" in refused.errors[0]
    assert [(s.line_id, s.asked, s.picked) for s in confirmed.shorts] == [("o1#1", 3, 1)]
    (command,) = out[TOPICS.inventory_commands]
    assert (command.line_id, command.order_id, command.quantity, command.sku) == ("o1#1", "o1", 2, "SKU-002")
    (told,) = out[TOPICS.order_inbox]
    assert (told.line_id, told.missing, told.picked, told.reply_to) == ("o1#1", 2, 1, "acme:s1:b-o1")
    # Shipments all of whose stops were on the confirmed list are picked, with what was picked per line.
    on_list = {s.shipment_id for s in short_list.stops}
    elsewhere = {s.shipment_id for p in picks.values() if p is not short_list for s in p.stops}
    picked = {p.shipment_id: p for p in out[TOPICS.picked_shipments]}
    assert set(picked) == on_list - elsewhere and picked
    o1 = next(p for p in picked.values() if "o1" in p.order_ids)
    assert {(ln.line_id, ln.asked, ln.picked) for ln in o1.lines} == {("o1#0", 3, 3), ("o1#1", 3, 1)}
    assert o1.pick_list_ids == [short_list.pick_list_id]
    for cut in (len(inbox.records) - 2, len(inbox.records) - 4):  # a restart in between changes nothing
        assert run(inbox, snapshot_at=cut) == out


def test_a_reallocated_parcel_joins_the_order_s_group_once_per_line() -> None:
    inbox = Inbox()
    inbox.add(LayoutVersion(layout=layout()), 0, key="acme")
    inbox.add(parcel(1, 1_000, buyer="b"), 1_000)
    again = msgspec.structs.replace(
        parcel(1, 1_500, buyer="b", skus=("SKU-004",)),
        lines=[ShipmentLine(order_id="o1", line_id="o1#7/r", sku="SKU-004", quantity=2)],
        reallocated=True,
    )
    inbox.add(again, 1_500)
    inbox.add(again, 1_600)  # a second copy adds nothing
    inbox.add(parcel(1, 1_700, buyer="b"), 1_700)  # nor does the order's own parcel again
    for t in range(2_000, 12_000, 1000):
        inbox.add(Tick(ts=t), t, key=None)
    (shipment,) = run(inbox)[TOPICS.shipments]
    assert sorted(ln.line_id for ln in shipment.lines) == ["o1#0", "o1#7/r"]
    assert shipment.reply_to == "acme:s1:b-b"


def test_shipments_released_before_any_layout_wait_one_key_each_and_wave_once_a_layout_comes() -> None:
    """A warehouse with no layout yet cannot wave: its shipments wait in their own keys (its state only counts
    them, so a day of them never makes one huge record), and the first layout that has the warehouse waves them
    all, once — a SKU without a bin keeps its shipment waiting for the next layout version."""
    from agents.fulfilment.agent import BLOCKED, WAREHOUSES, WarehouseState

    inbox = Inbox()
    for n in range(40):
        inbox.add(parcel(n, 1_000 + n), 1_000 + n)
    inbox.add(parcel(99, 1_500, skus=("SKU-NOBIN",)), 1_500)
    for t in range(2_000, 700_000, 50_000):
        inbox.add(Tick(ts=t), t, key=None)
    inbox.add(Tick(ts=700_000), 700_000, key=None)  # every window is over: 41 shipments, no layout to wave them
    before = len(inbox.records)
    inbox.add(LayoutVersion(layout=layout(window_s=600)), 701_000, key="acme")
    for t in (702_000, 703_000, 710_000):
        inbox.add(Tick(ts=t), t, key=None)
    logic = FulfilmentLogic(TOPICS, PARTITIONS, retention_ms=7 * 86_400_000)
    replay = Replay(logic, "t.dead-letters")
    outputs = replay.run(inbox.records[:before], batch=7)
    waiting = replay.state.stores[BLOCKED].partitions[P]
    state = wire.decode_state(replay.state.stores[WAREHOUSES].partitions[P][KEY.encode()], WarehouseState)
    assert len(waiting) == 41 and state.blocked == 41
    assert len(replay.state.stores[WAREHOUSES].partitions[P][KEY.encode()]) < 300, "the warehouse record stays small"
    assert not [o for o in outputs if o.topic == TOPICS.waves]
    outputs += replay.run(inbox.records, batch=3)
    waved = Counter(sid for o in outputs if o.topic == TOPICS.waves for sid in wire.decode(o.value, Wave).shipment_ids)
    shipments = [wire.decode(o.value, Shipment) for o in outputs if o.topic == TOPICS.shipments]
    assert len(shipments) == 41
    assert set(waved.values()) == {1} and set(waved) == {s.shipment_id for s in shipments if s.order_ids != ["o99"]}
    state = wire.decode_state(replay.state.stores[WAREHOUSES].partitions[P][KEY.encode()], WarehouseState)
    assert state.blocked == 1 and state.blocked_version == 1, "the shipment with a SKU without a bin still waits"
    assert [k.decode().rsplit(":", 1)[-1] for k in replay.state.stores[BLOCKED].partitions[P]] == [
        s.shipment_id for s in shipments if s.order_ids == ["o99"]
    ]
