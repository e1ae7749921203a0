"""Inventory rules: no oversell, conservation, effects once, no silent drop — without any server."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.inventory.core import Level, LineReservation, LineState, SkuStock, apply, choose_warehouse, quote
from schemas.deadletter import ReasonCode
from schemas.inventory import (
    Adjust,
    CommandKind,
    Issue,
    Quote,
    Receive,
    Release,
    Reserve,
    Return,
    ShortPick,
    adjust_id,
    issue_id,
    receive_id,
    release_id,
    reserve_id,
    return_id,
    short_id,
)
from schemas.saga import LineStatus, RejectReason

T, SKU = "t1", "SKU-1"
RETENTION = 7 * 86_400_000
REPLY = "t1:s1:b-buyer"


def receive(wh: str, qty: int, seq: int, origin: str = "loader", unit_cost: int | None = None) -> Receive:
    return Receive(
        command_id=receive_id(T, SKU, wh, f"doc{seq}"),
        tenant=T,
        sku=SKU,
        origin=origin,
        seq=seq,
        ts=1,
        warehouse=wh,
        quantity=qty,
        unit_cost_fen=100 + (seq * 37) % 91 if unit_cost is None else unit_cost,
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
        reply_to=REPLY,
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


def short(line: str, qty: int, seq: int, origin: str = "pick.0") -> ShortPick:
    return ShortPick(
        command_id=short_id(T, line),
        tenant=T,
        sku=SKU,
        origin=origin,
        seq=seq,
        ts=5,
        order_id=line.split("#")[0],
        line_id=line,
        quantity=qty,
        pick_list_id="wave.t1.WH-A.1.Z.1",
    )


def empty() -> SkuStock:
    return SkuStock(tenant=T, sku=SKU)


def run(stock: SkuStock, line: LineReservation | None, cmd: object) -> object:
    return apply(stock, line, cmd, RETENTION)


def levels(stock: SkuStock) -> dict[str, list[int]]:
    return {wh: [v.on_hand, v.reserved] for wh, v in stock.levels.items()}


def test_receive_then_reserve_takes_from_the_fullest_warehouse() -> None:
    s = run(empty(), None, receive("WH-A", 5, 1)).stock
    s = run(s, None, receive("WH-B", 9, 2)).stock
    out = run(s, None, reserve("o1#1", 4, 1))
    assert out.line == LineReservation(order_id="o1", warehouse="WH-B", quantity=4, state=LineState.OPEN)
    assert levels(out.stock) == {"WH-A": [5, 0], "WH-B": [9, 4]}
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
    assert res.status is LineStatus.RESERVED and res.warehouse == "WH-B" and res.reply_to == REPLY


def test_preferred_warehouses_are_tried_in_order() -> None:
    s = run(run(empty(), None, receive("WH-A", 2, 1)).stock, None, receive("WH-B", 9, 2)).stock
    assert choose_warehouse(s, 2, ["WH-A", "WH-B"]) == "WH-A"
    assert choose_warehouse(s, 3, ["WH-A", "WH-B"]) == "WH-B"
    assert choose_warehouse(s, 3, ["WH-A", "WH-X"]) is None


def test_a_quarantine_location_is_counted_but_never_reserved_from() -> None:
    s = run(run(empty(), None, receive("WH-A", 1, 1)).stock, None, receive("WH-A/quarantine", 50, 2)).stock
    assert s.levels["WH-A/quarantine"].on_hand == 50
    assert choose_warehouse(s, 2, []) is None and choose_warehouse(s, 1, []) == "WH-A"
    assert choose_warehouse(s, 2, ["WH-A/quarantine"]) is None


def test_reserve_beyond_available_is_rejected_and_changes_nothing_but_the_stamp() -> None:
    s = run(empty(), None, receive("WH-A", 3, 1)).stock
    s = run(s, None, reserve("o1#1", 2, 1)).stock
    out = run(s, None, reserve("o2#1", 2, 2))
    assert out.line.state is LineState.REFUSED and not out.events
    assert out.results[0].status is LineStatus.REJECTED
    assert out.results[0].reason is RejectReason.INSUFFICIENT_STOCK
    assert levels(out.stock) == levels(s) and out.stock.origins["coord.o0"].seq == 2


def test_reserve_of_an_unknown_sku_says_so() -> None:
    out = run(empty(), None, reserve("o1#1", 1, 1))
    assert out.results[0].reason is RejectReason.UNKNOWN_SKU
    again = run(out.stock, out.line, reserve("o1#1", 1, 1))  # redelivered: answered the same, not "stale"
    assert again.note == "duplicate" and not again.refused and again.results[0].reason is RejectReason.UNKNOWN_SKU


def test_redelivered_reserve_has_no_second_effect_and_is_answered_again() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    first = run(s, None, reserve("o1#1", 3, 7))
    again = run(first.stock, first.line, reserve("o1#1", 3, 7))
    assert again.note == "duplicate" and not again.events and again.stock is first.stock and not again.refused
    assert again.results[0].status is LineStatus.RESERVED
    assert levels(again.stock)["WH-A"] == [10, 3]


def test_replay_after_release_does_not_reserve_again() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    r = run(s, None, reserve("o1#1", 3, 7))
    rel = run(r.stock, r.line, release("o1#1", 1))
    assert rel.line.state is LineState.RELEASED and levels(rel.stock)["WH-A"] == [10, 0]
    replay = run(rel.stock, rel.line, reserve("o1#1", 3, 7))  # same stamp, after the release
    assert replay.note == "duplicate" and levels(replay.stock)["WH-A"] == [10, 0]
    assert replay.results[0].status is LineStatus.REJECTED
    assert replay.results[0].reason is RejectReason.NOT_RESERVABLE
    fresh_stamp = run(rel.stock, rel.line, reserve("o1#1", 3, 99))  # re-sent under a new stamp
    assert not fresh_stamp.events and fresh_stamp.results[0].reason is RejectReason.NOT_RESERVABLE


def test_release_before_any_reserve_leaves_a_mark_that_refuses_the_reserve() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    out = run(s, None, release("o9#1", 1))
    assert not out.events and levels(out.stock) == levels(s)
    assert out.line is not None and out.line.state is LineState.RELEASED and out.line.quantity == 0
    late = run(out.stock, out.line, reserve("o9#1", 2, 5))
    assert not late.events and late.results[0].reason is RejectReason.NOT_RESERVABLE


def test_a_command_below_the_high_water_mark_that_was_never_applied_is_refused_not_dropped() -> None:
    """A reordered command (N arrives after N+1) must not vanish as a "duplicate": it is refused with
    ``stale_sequence`` (a dead letter), and a reserve is answered so its saga still hears back."""
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    s = run(s, None, reserve("o2#1", 1, 8)).stock  # seq 8 arrived first
    late = run(s, None, reserve("o1#1", 2, 7))  # seq 7 of the same origin, never applied
    assert late.refused and late.refused[0] is ReasonCode.STALE_SEQUENCE and not late.events
    assert late.results[0].status is LineStatus.REJECTED and late.results[0].reason is RejectReason.ENGINE_ERROR
    doc = run(s, None, receive("WH-A", 5, 1, origin="coord.o0"))  # a document command, reordered
    assert doc.refused and doc.refused[0] is ReasonCode.STALE_SEQUENCE
    redelivered = run(s, None, receive("WH-A", 10, 1))  # the very same receipt again
    assert redelivered.note == "duplicate" and not redelivered.refused and not redelivered.events


def test_a_late_release_of_an_open_line_is_refused_not_dropped() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    r = run(s, None, reserve("o1#1", 3, 5, origin="coord.o0"))
    newer = run(r.stock, None, reserve("o2#1", 1, 9, origin="coord.o0")).stock
    stale = run(newer, r.line, release("o1#1", 6, origin="coord.o0"))
    assert stale.refused and stale.refused[0] is ReasonCode.STALE_SEQUENCE and not stale.events


def test_idle_origins_are_forgotten_after_the_retention() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1, origin="old-loader")).stock
    later = receive("WH-A", 1, 1, origin="new-loader")
    later = msgspec.structs.replace(later, ts=1 + RETENTION)
    out = run(s, None, later)
    assert set(out.stock.origins) == {"new-loader"}


def test_closed_lines_expire_after_the_retention_and_open_ones_never() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    r = run(s, None, reserve("o1#1", 3, 5))
    assert r.line.expires_at(RETENTION) is None
    rel = run(r.stock, r.line, release("o1#1", 6))
    assert rel.line.expires_at(RETENTION) == rel.line.closed_at + RETENTION


def test_issue_ships_a_reservation_once() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    r = run(s, None, reserve("o1#1", 4, 1))
    shipped = run(r.stock, r.line, issue("o1#1", 1))
    assert levels(shipped.stock)["WH-A"] == [6, 0] and shipped.line.state is LineState.ISSUED
    [ev] = shipped.events
    assert (ev.d_on_hand, ev.d_reserved) == (-4, -4)
    twice = run(shipped.stock, shipped.line, issue("o1#1", 2))  # a second issue under a new stamp
    assert twice.refused and twice.refused[0] is ReasonCode.NOT_RESERVED and not twice.events


def test_adjust_never_goes_below_reserved() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    s = run(s, None, reserve("o1#1", 8, 1)).stock
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
    out = run(s, None, down)
    assert out.refused and out.refused[0] is ReasonCode.WOULD_OVERSELL and levels(out.stock)["WH-A"] == [10, 8]
    ok = run(s, None, Adjust(**{**_fields(down), "delta": -2, "seq": 2}))
    assert levels(ok.stock)["WH-A"] == [8, 8]
    unknown = run(s, None, Adjust(**{**_fields(down), "warehouse": "WH-Z", "seq": 3}))
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
    out = run(empty(), None, ret)
    assert levels(out.stock)["WH-A"] == [2, 0] and out.events[0].kind is CommandKind.RETURN


def test_state_round_trips_through_json() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    r = run(s, None, reserve("o1#1", 4, 1))
    assert msgspec.json.decode(msgspec.json.encode(r.stock), type=SkuStock) == r.stock
    assert msgspec.json.decode(msgspec.json.encode(r.line), type=LineReservation) == r.line
    assert r.stock.levels["WH-A"] == Level(10, 4)


def test_apply_does_not_mutate_its_input() -> None:
    s = run(empty(), None, receive("WH-A", 10, 1)).stock
    before = msgspec.json.encode(s)
    run(s, None, reserve("o1#1", 4, 1))
    assert msgspec.json.encode(s) == before


def _fields(cmd: Adjust) -> dict:
    return {f: getattr(cmd, f) for f in cmd.__struct_fields__}


def test_a_short_pick_takes_the_missing_units_out_of_the_reservation_and_the_count_at_once() -> None:
    stock = run(empty(), None, receive("WH-A", 10, 1)).stock
    reserved = run(stock, None, reserve("o1#1", 4, 1))
    out = run(reserved.stock, reserved.line, short("o1#1", 3, 1))
    assert levels(out.stock) == {"WH-A": [7, 1]}  # available stays 6: nobody else can take the missing units
    assert out.line.state is LineState.OPEN and out.line.quantity == 1
    (event,) = out.events
    assert (event.kind, event.d_on_hand, event.d_reserved, event.line_id) == (CommandKind.SHORT, -3, -3, "o1#1")
    again = run(out.stock, out.line, short("o1#1", 3, 1))
    assert again.note == "duplicate" and not again.events and not again.refused
    shipped = run(out.stock, out.line, issue("o1#1", 1))
    assert levels(shipped.stock) == {"WH-A": [6, 0]}  # the one unit picked leaves


def test_a_line_shorted_of_everything_is_closed_and_more_than_it_holds_is_refused() -> None:
    stock = run(empty(), None, receive("WH-A", 5, 1)).stock
    reserved = run(stock, None, reserve("o1#1", 2, 1))
    too_many = run(reserved.stock, reserved.line, short("o1#1", 3, 1))
    assert too_many.refused[0] is ReasonCode.NOT_RESERVED and not too_many.events
    whole = run(reserved.stock, reserved.line, short("o1#1", 2, 1))
    assert whole.line.state is LineState.RELEASED and levels(whole.stock) == {"WH-A": [3, 0]}
    assert run(whole.stock, whole.line, release("o1#1", 1)).events == []  # nothing left to release
    never = run(stock, None, short("o2#1", 1, 2))
    assert never.refused[0] is ReasonCode.NOT_RESERVED


def test_a_short_after_the_line_was_released_still_corrects_the_count_but_never_below_reserved() -> None:
    stock = run(empty(), None, receive("WH-A", 3, 1)).stock
    first = run(stock, None, reserve("o1#1", 2, 1))
    gone = run(first.stock, first.line, release("o1#1", 1))
    other = run(gone.stock, None, reserve("o2#1", 3, 2))
    refused = run(other.stock, gone.line, short("o1#1", 1, 1))
    assert refused.refused[0] is ReasonCode.WOULD_OVERSELL and not refused.events
    corrected = run(gone.stock, gone.line, short("o1#1", 1, 1))
    assert corrected.note == "short_after_close" and levels(corrected.stock) == {"WH-A": [2, 0]}


def test_a_reserve_never_takes_an_excluded_warehouse() -> None:
    stock = run(run(empty(), None, receive("WH-A", 9, 1)).stock, None, receive("WH-B", 2, 2)).stock
    cmd = msgspec.structs.replace(reserve("o1#1/r", 2, 1, warehouses=["WH-A", "WH-B"]), exclude=["WH-A"])
    assert run(stock, None, cmd).line.warehouse == "WH-B"
    none_left = msgspec.structs.replace(reserve("o2#1/r", 3, 2), exclude=["WH-A"])
    assert run(stock, None, none_left).results[0].reason is RejectReason.INSUFFICIENT_STOCK


def test_a_quote_answers_what_is_available_where_and_changes_nothing() -> None:
    stock = run(run(empty(), None, receive("WH-A", 9, 1)).stock, None, receive("WH-B", 2, 2)).stock
    stock = run(stock, None, reserve("o1#1", 4, 1)).stock  # the fullest: WH-A
    ask = Quote(
        command_id="quote.t1.o2.SKU-1", tenant=T, sku=SKU, origin="coord.o0", seq=1, ts=9, order_id="o2",
        reply_to=REPLY, warehouses=["WH-B", "WH-A", "WH-C"],
    )  # fmt: skip
    answer = quote(stock, ask)
    assert answer.available == {"WH-B": 2, "WH-A": 5, "WH-C": 0} and answer.key == REPLY
    assert quote(stock, msgspec.structs.replace(ask, warehouses=[])).available == {"WH-A": 5, "WH-B": 2}
    with pytest.raises(TypeError):
        apply(stock, None, ask, RETENTION)


# ---- property: any interleaving of commands, with redeliveries, keeps I1–I3 ----

_line = st.sampled_from([f"o{i}#1" for i in range(6)])
_op = st.one_of(
    st.tuples(st.just("receive"), st.sampled_from(["WH-A", "WH-B"]), st.integers(1, 5)),
    st.tuples(st.just("reserve"), _line, st.integers(1, 4)),
    st.tuples(st.just("release"), _line, st.just(0)),
    st.tuples(st.just("issue"), _line, st.just(0)),
    st.tuples(st.just("short"), _line, st.integers(1, 3)),
    st.tuples(st.just("redeliver"), st.integers(0, 1000), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, max_size=60))
def test_random_command_streams_keep_the_invariants(ops: list[tuple]) -> None:
    """The coordinator sends one reserve per line; anything else here is a redelivery of an earlier
    command. Conservation is checked against the unique commands sent, not against the events, so a
    redelivery that has a second effect shows up."""
    stock, lines = empty(), {}
    sent: list = []
    seqs = {"loader": 0, "coord.o0": 0, "coord.r0": 0, "ship.0": 0, "pick.0": 0}
    unique_received: dict[str, int] = {}
    issued = 0
    late_issues: dict[str, int] = {}
    reserve_effects: dict[str, int] = {}
    close_effects: dict[str, int] = {}

    def next_seq(origin: str) -> int:
        seqs[origin] += 1
        return seqs[origin]

    received_value = 0
    value_moved = 0
    for op, a, b in ops:
        if op == "redeliver" or (op == "reserve" and any(getattr(c, "line_id", None) == a for c in sent)):
            if not sent:
                continue
            cmd = sent[(a if isinstance(a, int) else 0) % len(sent)]
        elif op == "receive":
            cmd = receive(a, b, next_seq("loader"))
            unique_received[cmd.command_id] = b
            received_value += b * cmd.unit_cost_fen
        elif op == "reserve":
            cmd = reserve(a, b, next_seq("coord.o0"))
        elif op == "release":
            cmd = release(a, next_seq("coord.r0"))
        elif op == "short":
            if any(getattr(c, "line_id", None) == a and isinstance(c, ShortPick) for c in sent):
                continue  # a line is picked once
            cmd = short(a, b, next_seq("pick.0"))
        else:
            cmd = issue(a, next_seq("ship.0"))
        sent.append(cmd)
        line = getattr(cmd, "line_id", None)
        out = run(stock, lines.get(line), cmd)
        stock = out.stock
        if out.line_changed:
            lines[line] = out.line
        assert not (out.refused and out.refused[0] is ReasonCode.STALE_SEQUENCE), "a redelivery is not stale"
        for ev in out.events:
            assert ev.on_hand - ev.reserved >= 0 and ev.reserved >= 0  # I1 at every step
            value_moved += ev.d_value_fen
            assert ev.value_fen >= 0 and (ev.on_hand > 0 or ev.value_fen == 0)  # no value without units
            assert ev.d_value_fen == 0 or ev.d_on_hand != 0
            issued += -ev.d_on_hand if ev.kind in (CommandKind.ISSUE, CommandKind.SHORT) else 0
            if ev.kind is CommandKind.RESERVE:
                reserve_effects[ev.line_id] = reserve_effects.get(ev.line_id, 0) + 1
            if ev.kind is CommandKind.RELEASE or (ev.kind is CommandKind.ISSUE and ev.d_reserved):
                close_effects[ev.line_id] = close_effects.get(ev.line_id, 0) + 1
            elif ev.kind is CommandKind.ISSUE:  # the goods of a released line left (too late to stop them)
                late_issues[ev.line_id] = late_issues.get(ev.line_id, 0) + 1
    # valuation: what the events moved is what the pools hold; units out took value, never more than came in
    assert sum(stock.values.values()) == value_moved <= received_value
    # I2: conservation against the unique commands
    assert sum(v.on_hand for v in stock.levels.values()) == sum(unique_received.values()) - issued
    # reserved equals what the open reservations hold
    held = sum(r.quantity for r in lines.values() if r and r.state is LineState.OPEN)
    assert sum(v.reserved for v in stock.levels.values()) == held
    # I3: each line reserved at most once, released or issued at most once
    assert all(n == 1 for n in reserve_effects.values())
    assert all(n == 1 for n in close_effects.values())
    assert all(n == 1 and close_effects.get(line) == 1 for line, n in late_issues.items())  # once, after release


def test_an_issue_after_the_line_was_released_takes_the_goods_off_the_count_once_never_below_reserved() -> None:
    """A cancellation that came too late to stop the parcel (拦截失败): the goods left, so on-hand follows."""
    stock = run(empty(), None, receive("WH-A", 3, 1)).stock
    first = run(stock, None, reserve("o1#1", 2, 1))
    gone = run(first.stock, first.line, release("o1#1", 1))
    shipped = run(gone.stock, gone.line, issue("o1#1", 1))
    assert shipped.note == "issue_after_release" and levels(shipped.stock) == {"WH-A": [1, 0]}
    (event,) = shipped.events
    assert (event.kind, event.d_on_hand, event.d_reserved) == (CommandKind.ISSUE, -2, 0)
    assert shipped.line.state is LineState.ISSUED
    assert run(shipped.stock, shipped.line, issue("o1#1", 2)).refused[0] is ReasonCode.NOT_RESERVED  # once
    other = run(gone.stock, None, reserve("o2#1", 3, 2))
    refused = run(other.stock, gone.line, issue("o1#1", 1))
    assert refused.refused[0] is ReasonCode.WOULD_OVERSELL and not refused.events
    never = run(stock, None, release("o3#1", 1))  # released before any reserve: nothing was picked
    assert run(stock, never.line, issue("o3#1", 2)).refused[0] is ReasonCode.NOT_RESERVED


# ---- moving-average cost (移动加权平均) kept by the SKU's writer ----


def returned(line: str, qty: int, seq: int, wh: str = "WH-A") -> Return:
    return Return(
        command_id=return_id(T, line, f"rma{seq}"),
        tenant=T,
        sku=SKU,
        origin="after.0",
        seq=seq,
        ts=6,
        warehouse=wh,
        quantity=qty,
        order_id=line.split("#")[0],
        line_id=line,
        document_id=f"rma{seq}",
    )


def test_moving_average_through_the_stock_writer_on_the_worked_numbers() -> None:
    """R1 100 @ ¥10, R2 100 @ ¥12, a sale of 150, R3 50 @ ¥9, then 10 of the sale returned: the sale costs ¥1,650
    (avg ¥11.00), the average is ¥10.00 after R3, and the return comes back at ¥11.00 → ¥10.09."""
    s = run(empty(), None, receive("WH-A", 100, 1, unit_cost=1000)).stock
    s = run(s, None, receive("WH-A", 100, 2, unit_cost=1200)).stock
    assert s.values["WH-A"] == 220_000 and s.unit_cost("WH-A") == 1100
    held = run(s, None, reserve("o1#1", 150, 1))
    shipped = run(held.stock, held.line, issue("o1#1", 1))
    (ev,) = shipped.events
    assert (ev.d_value_fen, ev.unit_cost_fen, ev.value_fen) == (-165_000, 1100, 55_000)
    assert shipped.line.cost_fen == 165_000 and shipped.stock.unit_cost("WH-A") == 1100  # an outflow keeps it
    s = run(shipped.stock, None, receive("WH-A", 50, 3, unit_cost=900)).stock
    assert s.unit_cost("WH-A") == 1000
    back = run(s, shipped.line, returned("o1#1", 10, 1))
    (ev,) = back.events
    assert (ev.kind, ev.d_value_fen, ev.unit_cost_fen, ev.value_fen) == (CommandKind.RETURN, 11_000, 1100, 111_000)
    assert back.stock.unit_cost("WH-A") == 1009  # ¥10.09
    assert (back.line.returned, back.line.returned_cost_fen) == (10, 11_000)
    rest = run(back.stock, back.line, returned("o1#1", 140, 2))  # the rest of the line: exactly what is left
    assert rest.events[0].d_value_fen == 165_000 - 11_000 and rest.line.returned_cost_fen == 165_000


def test_a_return_the_writer_no_longer_remembers_comes_back_at_the_current_cost_and_says_so() -> None:
    s = run(empty(), None, receive("WH-A", 4, 1, unit_cost=250)).stock
    out = run(s, None, returned("o9#1", 2, 1))
    assert out.note == "return_at_current_cost" and out.events[0].d_value_fen == 500


def test_losses_and_gains_are_valued_at_the_average_and_an_empty_pool_keeps_its_last_cost() -> None:
    s = run(empty(), None, receive("WH-A", 3, 1, unit_cost=101)).stock
    s = run(s, None, receive("WH-A", 3, 2, unit_cost=100)).stock  # 6 units worth 603: avg 100.5 → 101 shown
    adjust = Adjust(
        command_id=adjust_id(T, SKU, "WH-A", "count1"), tenant=T, sku=SKU, origin="count", seq=1, ts=7,
        warehouse="WH-A", delta=-6, document_id="count1",
    )  # fmt: skip
    gone = run(s, None, adjust)
    assert gone.events[0].d_value_fen == -603 and gone.stock.values["WH-A"] == 0  # the last units take the rest
    gain = msgspec.structs.replace(adjust, command_id=adjust_id(T, SKU, "WH-A", "count2"), seq=2, delta=2)
    found = run(gone.stock, None, gain)
    assert found.events[0].d_value_fen == 2 * 101  # 盘盈 at the last known cost
