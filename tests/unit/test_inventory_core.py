"""Inventory rules: no oversell, conservation, effects once — without any server."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.inventory.core import Reservation, SkuStock, apply, choose_warehouse
from schemas.deadletter import ReasonCode
from schemas.inventory import (
    Adjust,
    CommandKind,
    Issue,
    Receive,
    Release,
    Reserve,
    Return,
    adjust_id,
    issue_id,
    receive_id,
    release_id,
    reserve_id,
    return_id,
)
from schemas.saga import LineStatus, RejectReason

T, SKU = "t1", "SKU-1"


def receive(wh: str, qty: int, seq: int, origin: str = "loader") -> Receive:
    return Receive(
        command_id=receive_id(T, SKU, wh, f"doc{seq}"),
        tenant=T,
        sku=SKU,
        origin=origin,
        seq=seq,
        ts=1,
        warehouse=wh,
        quantity=qty,
        document_id=f"doc{seq}",
    )


def reserve(line: str, qty: int, seq: int, origin: str = "coord.o0", warehouses: list[str] | None = None) -> Reserve:
    return Reserve(
        command_id=reserve_id(T, line),
        tenant=T,
        sku=SKU,
        origin=origin,
        seq=seq,
        ts=2,
        order_id=line.split("#")[0],
        line_id=line,
        quantity=qty,
        warehouses=warehouses or [],
    )


def release(line: str, seq: int, origin: str = "coord.r0") -> Release:
    return Release(
        command_id=release_id(T, line),
        tenant=T,
        sku=SKU,
        origin=origin,
        seq=seq,
        ts=3,
        order_id=line.split("#")[0],
        line_id=line,
    )


def issue(line: str, seq: int, origin: str = "ship.0") -> Issue:
    return Issue(
        command_id=issue_id(T, line),
        tenant=T,
        sku=SKU,
        origin=origin,
        seq=seq,
        ts=4,
        order_id=line.split("#")[0],
        line_id=line,
    )


def empty() -> SkuStock:
    return SkuStock(T, SKU)


def test_receive_then_reserve_takes_from_the_fullest_warehouse() -> None:
    s = apply(empty(), None, receive("WH-A", 5, 1)).stock
    s = apply(s, None, receive("WH-B", 9, 2)).stock
    out = apply(s, None, reserve("o1#1", 4, 1))
    assert out.reservation == Reservation("o1", "WH-B", 4)
    assert out.stock.levels == {"WH-A": [5, 0], "WH-B": [9, 4]}
    [ev] = out.events
    assert (ev.kind, ev.d_on_hand, ev.d_reserved, ev.on_hand, ev.reserved, ev.version) == (
        CommandKind.RESERVE,
        0,
        4,
        9,
        4,
        3,
    )
    [res] = out.results
    assert res.status is LineStatus.RESERVED and res.warehouse == "WH-B"


def test_preferred_warehouses_are_tried_in_order() -> None:
    s = apply(apply(empty(), None, receive("WH-A", 2, 1)).stock, None, receive("WH-B", 9, 2)).stock
    assert choose_warehouse(s, 2, ["WH-A", "WH-B"]) == "WH-A"
    assert choose_warehouse(s, 3, ["WH-A", "WH-B"]) == "WH-B"
    assert choose_warehouse(s, 3, ["WH-A", "WH-X"]) is None


def test_reserve_beyond_available_is_rejected_and_changes_nothing_but_the_stamp() -> None:
    s = apply(empty(), None, receive("WH-A", 3, 1)).stock
    s = apply(s, None, reserve("o1#1", 2, 1)).stock
    out = apply(s, None, reserve("o2#1", 2, 2))
    assert out.reservation is None and not out.events
    assert out.results[0].status is LineStatus.REJECTED
    assert out.results[0].reason is RejectReason.INSUFFICIENT_STOCK
    assert out.stock.levels == s.levels and out.stock.high_water["coord.o0"] == 2


def test_reserve_of_an_unknown_sku_says_so() -> None:
    out = apply(empty(), None, reserve("o1#1", 1, 1))
    assert out.results[0].reason is RejectReason.UNKNOWN_SKU


def test_redelivered_reserve_has_no_second_effect_and_is_answered_again() -> None:
    s = apply(empty(), None, receive("WH-A", 10, 1)).stock
    first = apply(s, None, reserve("o1#1", 3, 7))
    again = apply(first.stock, first.reservation, reserve("o1#1", 3, 7))
    assert again.duplicate and not again.events and again.stock is first.stock
    assert again.results[0].status is LineStatus.RESERVED
    assert again.stock.levels["WH-A"] == [10, 3]


def test_replay_after_release_does_not_reserve_again() -> None:
    s = apply(empty(), None, receive("WH-A", 10, 1)).stock
    r = apply(s, None, reserve("o1#1", 3, 7))
    rel = apply(r.stock, r.reservation, release("o1#1", 1))
    assert rel.reservation is None and rel.stock.levels["WH-A"] == [10, 0]
    replay = apply(rel.stock, None, reserve("o1#1", 3, 7))  # same stamp, after the release
    assert replay.duplicate and replay.stock.levels["WH-A"] == [10, 0]
    assert replay.results[0].status is LineStatus.REJECTED
    assert replay.results[0].reason is RejectReason.NOT_RESERVABLE


def test_release_without_reservation_is_a_no_op() -> None:
    s = apply(empty(), None, receive("WH-A", 10, 1)).stock
    out = apply(s, None, release("o9#1", 1))
    assert not out.events and out.stock.levels == s.levels and not out.reservation_changed


def test_issue_ships_a_reservation_once() -> None:
    s = apply(empty(), None, receive("WH-A", 10, 1)).stock
    r = apply(s, None, reserve("o1#1", 4, 1))
    shipped = apply(r.stock, r.reservation, issue("o1#1", 1))
    assert shipped.stock.levels["WH-A"] == [6, 0] and shipped.reservation is None
    [ev] = shipped.events
    assert (ev.d_on_hand, ev.d_reserved) == (-4, -4)
    twice = apply(shipped.stock, None, issue("o1#1", 2))  # a second issue under a new stamp
    assert twice.refused and twice.refused[0] is ReasonCode.NOT_RESERVED and not twice.events


def test_adjust_never_goes_below_reserved() -> None:
    s = apply(empty(), None, receive("WH-A", 10, 1)).stock
    s = apply(s, None, reserve("o1#1", 8, 1)).stock
    down = Adjust(
        command_id=adjust_id(T, SKU, "WH-A", "count1"),
        tenant=T,
        sku=SKU,
        origin="wms",
        seq=1,
        ts=5,
        warehouse="WH-A",
        delta=-3,
        reason="count",
        document_id="count1",
    )
    out = apply(s, None, down)
    assert out.refused and out.refused[0] is ReasonCode.WOULD_OVERSELL and out.stock.levels["WH-A"] == [10, 8]
    ok = apply(s, None, Adjust(**{**_fields(down), "delta": -2, "seq": 2}))
    assert ok.stock.levels["WH-A"] == [8, 8]
    unknown = apply(s, None, Adjust(**{**_fields(down), "warehouse": "WH-Z", "seq": 3}))
    assert unknown.refused and unknown.refused[0] is ReasonCode.UNKNOWN_WAREHOUSE


def test_return_adds_to_on_hand() -> None:
    ret = Return(
        command_id=return_id(T, "o1#1", "rma1"),
        tenant=T,
        sku=SKU,
        origin="returns",
        seq=1,
        ts=6,
        warehouse="WH-A",
        quantity=2,
        order_id="o1",
        line_id="o1#1",
        document_id="rma1",
    )
    out = apply(empty(), None, ret)
    assert out.stock.levels["WH-A"] == [2, 0] and out.events[0].kind is CommandKind.RETURN


def test_state_round_trips_through_plain_json_types() -> None:
    s = apply(empty(), None, receive("WH-A", 10, 1)).stock
    r = apply(s, None, reserve("o1#1", 4, 1))
    assert SkuStock.from_state(T, SKU, r.stock.to_state()) == r.stock
    assert Reservation.from_state(r.reservation.to_state()) == r.reservation


def test_apply_does_not_mutate_its_input() -> None:
    s = apply(empty(), None, receive("WH-A", 10, 1)).stock
    before = s.to_state()
    apply(s, None, reserve("o1#1", 4, 1))
    assert s.to_state() == before


def _fields(cmd: Adjust) -> dict:
    return {f: getattr(cmd, f) for f in cmd.__struct_fields__}


# ---- property: any interleaving of commands, with redeliveries, keeps I1–I3 ----

_line = st.sampled_from([f"o{i}#1" for i in range(6)])
_op = st.one_of(
    st.tuples(st.just("receive"), st.sampled_from(["WH-A", "WH-B"]), st.integers(1, 5)),
    st.tuples(st.just("reserve"), _line, st.integers(1, 4)),
    st.tuples(st.just("release"), _line, st.just(0)),
    st.tuples(st.just("issue"), _line, st.just(0)),
    st.tuples(st.just("redeliver"), st.integers(0, 1000), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, max_size=60))
def test_random_command_streams_keep_the_invariants(ops: list[tuple]) -> None:
    """The coordinator sends one reserve per line; anything else here is a redelivery of an earlier
    command. Conservation is checked against the unique commands sent, not against the events, so a
    redelivery that has a second effect shows up."""
    stock, reservations = empty(), {}
    sent: list = []
    seqs = {"loader": 0, "coord.o0": 0, "coord.r0": 0, "ship.0": 0}
    unique_received: dict[str, int] = {}
    issued = 0
    reserve_effects: dict[str, int] = {}
    close_effects: dict[str, int] = {}

    def next_seq(origin: str) -> int:
        seqs[origin] += 1
        return seqs[origin]

    for op, a, b in ops:
        if op == "redeliver" or (op == "reserve" and any(getattr(c, "line_id", None) == a for c in sent)):
            if not sent:
                continue
            cmd = sent[(a if isinstance(a, int) else 0) % len(sent)]
        elif op == "receive":
            cmd = receive(a, b, next_seq("loader"))
            unique_received[cmd.command_id] = b
        elif op == "reserve":
            cmd = reserve(a, b, next_seq("coord.o0"))
        elif op == "release":
            cmd = release(a, next_seq("coord.r0"))
        else:
            cmd = issue(a, next_seq("ship.0"))
        sent.append(cmd)
        line = getattr(cmd, "line_id", None)
        out = apply(stock, reservations.get(line), cmd)
        stock = out.stock
        if out.reservation_changed:
            reservations[line] = out.reservation
        for ev in out.events:
            assert ev.on_hand - ev.reserved >= 0 and ev.reserved >= 0  # I1 at every step
            issued += -ev.d_on_hand if ev.kind is CommandKind.ISSUE else 0
            if ev.kind is CommandKind.RESERVE:
                reserve_effects[ev.line_id] = reserve_effects.get(ev.line_id, 0) + 1
            if ev.kind in (CommandKind.RELEASE, CommandKind.ISSUE):
                close_effects[ev.line_id] = close_effects.get(ev.line_id, 0) + 1
    # I2: conservation against the unique commands
    assert sum(v[0] for v in stock.levels.values()) == sum(unique_received.values()) - issued
    # reserved equals what the open reservations hold
    assert sum(v[1] for v in stock.levels.values()) == sum(r.quantity for r in reservations.values() if r)
    # I3: each line reserved at most once, released or issued at most once
    assert all(n == 1 for n in reserve_effects.values())
    assert all(n == 1 for n in close_effects.values())
