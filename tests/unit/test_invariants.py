"""The invariant checker on hand-made histories: a correct one passes, and each way a wrong engine could fool a
checker that trusted the engine's own outputs is caught (no servers)."""

from __future__ import annotations

import base64

import msgspec

from invariants import Inputs, Outputs, check
from schemas import wire
from schemas.deadletter import DeadLetter, ReasonCode
from schemas.fulfilment import AllocatedParcel, OrderAllocation
from schemas.inventory import CommandKind, Receive, StockEvent, receive_id
from schemas.order import Address, Buyer, Channel, LineState, Order, OrderLine, OrderStatus
from schemas.review import CancellationKind, OrderCancellation, Outcome, ReviewDecision
from schemas.saga import DecisionLine, DecisionStatus, OrderDecision, RejectReason

T = "acme"


def order(oid: str = "web-s1-1", status: OrderStatus = OrderStatus.PAID, version: int = 1, **kw: object) -> Order:
    base = Order(
        tenant=T,
        order_id=oid,
        channel=Channel.WEB,
        shop_id="s1",
        platform_order_id=oid.rsplit("-", 1)[-1],
        status=status,
        buyer=Buyer(id="b1"),
        receiver=Address(name="x"),
        lines=[
            OrderLine(line_no=1, sku="A", quantity=2, unit_price_fen=100),
            OrderLine(line_no=2, sku="B", quantity=1, unit_price_fen=100),
        ],
        created_at=1,
        ingested_at=1,
        version=version,
    )
    return msgspec.structs.replace(base, **kw)


def receive(sku: str, qty: int) -> Receive:
    return Receive(
        command_id=receive_id(T, sku, "WH", "d1"), tenant=T, sku=sku, origin="l", seq=1, ts=1,
        warehouse="WH", quantity=qty, document_id="d1",
    )  # fmt: skip


class History:
    """Stock events per SKU with running versions and levels, as a correct engine writes them."""

    def __init__(self) -> None:
        self.events: list[StockEvent] = []
        self.levels: dict[str, list[int]] = {}
        self.versions: dict[str, int] = {}

    def add(self, sku: str, kind: CommandKind, d_on: int, d_res: int, event_id: str, line: str | None = None) -> None:
        level = self.levels.setdefault(sku, [0, 0])
        level[0] += d_on
        level[1] += d_res
        self.versions[sku] = self.versions.get(sku, 0) + 1
        self.events.append(
            StockEvent(
                event_id=event_id, tenant=T, sku=sku, warehouse="WH", kind=kind, d_on_hand=d_on, d_reserved=d_res,
                on_hand=level[0], reserved=level[1], version=self.versions[sku],
                order_id=line.split("#")[0] if line else None, line_id=line, origin="o", seq=1, ts=1,
            )
        )  # fmt: skip


def decision(oid: str, status: DecisionStatus, lines: list[tuple[str, str, int]], reason: RejectReason | None = None):
    return OrderDecision(
        decision_id=f"decision.{T}.{oid}", tenant=T, order_id=oid, channel=Channel.WEB, status=status, reason=reason,
        lines=[DecisionLine(line_id=lid, sku=sku, quantity=q, warehouse="WH") for lid, sku, q in lines],
        order_created_at=1, ingested_at=1, decided_at=2,
    )  # fmt: skip


def correct() -> tuple[Inputs, Outputs, History]:
    """One order accepted (A x2, B x1) against receipts of A x5 and B x1."""
    inputs = Inputs()
    inputs.add_stock([receive("A", 5), receive("B", 1)])
    inputs.add_orders([order()])
    h = History()
    h.add("A", CommandKind.RECEIVE, 5, 0, receive_id(T, "A", "WH", "d1"))
    h.add("B", CommandKind.RECEIVE, 1, 0, receive_id(T, "B", "WH", "d1"))
    h.add("A", CommandKind.RESERVE, 0, 2, "reserve.acme.web-s1-1#1", "web-s1-1#1")
    h.add("B", CommandKind.RESERVE, 0, 1, "reserve.acme.web-s1-1#2", "web-s1-1#2")
    out = Outputs(stock_events=h.events)
    d = decision("web-s1-1", DecisionStatus.ACCEPTED, [("web-s1-1#1", "A", 2), ("web-s1-1#2", "B", 1)])
    out.decisions.append(d)
    out.decision_bytes[d.decision_id] = {wire.encode(d)}
    out.allocations.append(allocation(d))
    return inputs, out, h


def allocation(d: OrderDecision) -> OrderAllocation:
    """The allocation record the order stage writes with an accepted decision."""
    homes: dict[str, list[str]] = {}
    for line in d.lines:
        homes.setdefault(line.warehouse or "", []).append(line.line_id)
    parcels = [AllocatedParcel(warehouse=wh, line_ids=ids) for wh, ids in homes.items()]
    return OrderAllocation(tenant=d.tenant, order_id=d.order_id, strategy="fullest", parcels=parcels, ts=2)


def violations(inputs: Inputs, out: Outputs) -> str:
    return "\n".join(check(inputs, out, partitions=4).violations)


def test_a_correct_history_passes() -> None:
    inputs, out, _ = correct()
    verdict = check(inputs, out, 4)
    assert verdict.ok, verdict.violations
    assert verdict.counts["accepted"] == 1 and verdict.counts["final_levels"]["acme:A"] == {"WH": [5, 2]}


def test_an_order_that_was_sent_and_never_decided_is_caught_even_if_nothing_mentions_it() -> None:
    inputs, out, _ = correct()
    inputs.add_orders([order("web-s1-2")])  # sent; the engine wrote nothing at all about it
    assert "web-s1-2 was sent and has no decision" in violations(inputs, out)


def test_accepted_lines_are_checked_against_the_order_as_sent_not_the_decision() -> None:
    inputs, out, h = correct()
    # The engine reserved 1 unit of A (the decision agrees with itself), the channel sent 2.
    h.events[2] = msgspec.structs.replace(h.events[2], d_reserved=1, reserved=1)
    h.events[3] = h.events[3]
    wrong = decision("web-s1-1", DecisionStatus.ACCEPTED, [("web-s1-1#1", "A", 1), ("web-s1-1#2", "B", 1)])
    out.decisions[0] = wrong
    out.decision_bytes = {wrong.decision_id: {wire.encode(wrong)}}
    found = violations(inputs, out)
    assert "reserved web-s1-1#1 as A x1, the channel sent A x2" in found


def test_an_accepted_order_missing_a_reservation_is_caught() -> None:
    inputs, out, h = correct()
    out.stock_events = [e for e in h.events if e.line_id != "web-s1-1#2"]
    assert "accepted without reserving ['web-s1-1#2']" in violations(inputs, out)


def test_final_reserved_must_equal_the_open_lines_of_accepted_orders() -> None:
    inputs, out, h = correct()
    # An extra reservation no order explains (a leak): the line bookkeeping alone would not notice.
    h.add("A", CommandKind.RESERVE, 0, 1, "reserve.acme.ghost#1", "ghost#1")
    out.stock_events = h.events
    assert "reserved 3, the open lines of accepted orders need 2" in violations(inputs, out)


def test_two_different_contents_under_one_decision_id_are_caught_even_with_one_status() -> None:
    inputs, out, _ = correct()
    d = out.decisions[0]
    other = msgspec.structs.replace(d, detail="replayed differently")
    out.decisions.append(other)
    out.decision_bytes[d.decision_id].add(wire.encode(other))
    assert "carries 2 different contents" in violations(inputs, out)


def test_a_decision_for_an_order_nobody_sent_is_caught() -> None:
    inputs, out, _ = correct()
    ghost = decision("web-s1-9", DecisionStatus.REJECTED, [], RejectReason.INSUFFICIENT_STOCK)
    out.decisions.append(ghost)
    assert "decision for an order nobody sent" in violations(inputs, out)


def test_a_rejection_caused_by_the_engine_is_a_failure() -> None:
    inputs, out, h = correct()
    out.stock_events = h.events[:2]
    d = decision("web-s1-1", DecisionStatus.REJECTED, [], RejectReason.ENGINE_ERROR)
    out.decisions, out.decision_bytes, out.allocations = [d], {d.decision_id: {wire.encode(d)}}, []
    verdict = check(inputs, out, 4)
    assert "rejected by the engine itself" in "\n".join(verdict.violations) and verdict.counts["engine_failures"] == 1


def test_a_held_order_is_an_open_state_only_when_something_may_hold_it() -> None:
    inputs, out, h = correct()
    out.decisions, out.decision_bytes, out.stock_events, out.allocations = [], {}, h.events[:2], []
    held = ReviewDecision(review_id="r", tenant=T, order_id="web-s1-1", channel=Channel.WEB, outcome=Outcome.HELD, ts=1)
    out.reviews.append(held)
    assert "has no decision" in violations(inputs, out), "no rules, no platform hold: holding it is wrong"
    inputs.rules = True
    assert check(inputs, out, 4).ok


def test_unpaid_is_an_open_state_only_if_it_was_never_paid() -> None:
    inputs, out, h = correct()
    out.decisions, out.decision_bytes, out.stock_events, out.allocations = [], {}, h.events[:2], []
    out.reviews.append(
        ReviewDecision(
            review_id="r", tenant=T, order_id="web-s1-1", channel=Channel.WEB, outcome=Outcome.AWAITING_PAYMENT, ts=1
        )
    )
    assert "has no decision" in violations(inputs, out)  # it was sent paid
    inputs.orders.clear()
    inputs.add_orders([order(status=OrderStatus.PENDING_PAYMENT)])
    assert check(inputs, out, 4).ok


def test_conservation_counts_the_receipts_sent_not_the_dead_letters() -> None:
    inputs, out, _ = correct()
    inputs.add_stock([receive("C", 4)])  # sent, valid, and the engine dead-lettered it
    out.dead_letters.append(_letter(wire.encode(receive("C", 4)), ReasonCode.WOULD_OVERSELL))
    found = violations(inputs, out)
    assert "receive.acme.C.WH.d1 was sent and never took effect" in found
    assert "holds a valid Receive that nobody meant to be refused" in found


def test_a_refusal_the_sender_meant_is_justified() -> None:
    inputs, out, _ = correct()
    cmd = receive("C", 4)
    inputs.add_stock([cmd])
    inputs.refused_commands[cmd.command_id] = ReasonCode.WOULD_OVERSELL
    out.dead_letters.append(_letter(wire.encode(cmd), ReasonCode.WOULD_OVERSELL))
    assert check(inputs, out, 4).ok


def test_engine_dead_letters_are_never_justified_and_bad_records_must_be_dead_lettered() -> None:
    inputs, out, _ = correct()
    out.dead_letters.append(_letter(b"\x00garbage", ReasonCode.PROCESSING_ERROR))
    inputs.bad_records.add(b"{never seen")
    found = violations(inputs, out)
    assert "the engine's own failure" in found and "a bad record was never dead-lettered" in found


def test_two_writers_of_one_stock_version_are_caught() -> None:
    inputs, out, h = correct()
    twin = msgspec.structs.replace(h.events[2], event_id="reserve.acme.zombie#1", line_id="zombie#1")
    out.stock_events.append(twin)
    assert "written by two events" in violations(inputs, out)


def test_a_rejected_order_holding_stock_and_a_cancel_without_a_channel_cancel_are_caught() -> None:
    inputs, out, _ = correct()
    d = decision("web-s1-1", DecisionStatus.CANCELLED, [], RejectReason.CANCELLED)
    out.decisions, out.decision_bytes, out.allocations = [d], {d.decision_id: {wire.encode(d)}}, []
    found = violations(inputs, out)
    assert "was cancelled but still holds reservations" in found
    assert "its channel never cancelled it" in found


def test_a_channel_cancel_after_acceptance_must_release_everything() -> None:
    inputs, out, h = correct()
    inputs.add_orders([order(status=OrderStatus.CANCELLED, version=2)])
    out.cancellations.append(
        OrderCancellation(
            cancellation_id="c", tenant=T, order_id="web-s1-1", kind=CancellationKind.ORDER, reason="x",
            stage="orders", ts=2,
        )
    )  # fmt: skip
    assert "should hold []" in violations(inputs, out)
    h.add("A", CommandKind.RELEASE, 0, -2, "release.acme.web-s1-1#1", "web-s1-1#1")
    h.add("B", CommandKind.RELEASE, 0, -1, "release.acme.web-s1-1#2", "web-s1-1#2")
    out.stock_events = h.events
    assert check(inputs, out, 4).ok


def test_a_refunded_line_must_be_released() -> None:
    inputs, out, _ = correct()
    refunded = order(version=2, lines=[
        OrderLine(line_no=1, sku="A", quantity=2, unit_price_fen=100),
        OrderLine(line_no=2, sku="B", quantity=1, unit_price_fen=100, status=LineState.CANCELLED),
    ])  # fmt: skip
    inputs.add_orders([refunded])
    assert "should hold ['web-s1-1#1']" in violations(inputs, out)


def _letter(raw: bytes, reason: ReasonCode) -> DeadLetter:
    return DeadLetter(
        dead_letter_id="dlq.x.0.0", reason=reason, detail="", stage="inventory", source_topic="t.inventory-commands",
        source_partition=0, source_offset=0, key_b64=None, value_b64=base64.b64encode(raw).decode(), ts=1,
    )  # fmt: skip


# -- fulfilment (F1–F5) --------------------------------------------------------------------------------------
def _fulfilment_history() -> tuple[Inputs, Outputs]:
    from schemas.fulfilment import PickList, PickStop, Shipment, ShipmentLine, Wave

    inputs = Inputs()
    one, two = order("web-s1-1"), order("web-s1-2")
    inputs.add_orders([one, two])
    out = Outputs()
    for o in (one, two):
        out.decisions.append(
            OrderDecision(
                decision_id=f"d.{o.order_id}", tenant=T, order_id=o.order_id, channel=Channel.WEB,
                status=DecisionStatus.ACCEPTED, reason=None, detail="",
                lines=[DecisionLine(line_id=f"{o.order_id}#{ln.line_no}", sku=ln.sku, quantity=ln.quantity,
                                    warehouse="WH") for ln in o.lines],
                order_created_at=1, ingested_at=1, decided_at=2,
            )
        )  # fmt: skip
    out.allocations.extend(allocation(d) for d in out.decisions)
    lines = [
        ShipmentLine(order_id=o.order_id, line_id=f"{o.order_id}#{ln.line_no}", sku=ln.sku, quantity=ln.quantity)
        for o in (one, two)
        for ln in o.lines
    ]
    out.shipments.append(
        Shipment(shipment_id="shp.1", tenant=T, shop_id="s1", warehouse="WH", carrier="sf", lines=lines,
                 order_ids=[one.order_id, two.order_id], ts=3)
    )  # fmt: skip
    stops = [
        PickStop(bin=f"b-{ln.sku}", sku=ln.sku, quantity=ln.quantity, aisle=1, depth_cm=100, shipment_id="shp.1",
                 line_id=ln.line_id)
        for ln in lines
    ]  # fmt: skip
    out.pick_lists.append(
        PickList(pick_list_id="w1.A.1", wave_id="w1", tenant=T, warehouse="WH", zone="A", stops=stops,
                 path="optimal", length_cm=200, s_shape_cm=200)
    )  # fmt: skip
    out.waves.append(
        Wave(wave_id="w1", tenant=T, warehouse="WH", group="all", trigger="count", shipment_ids=["shp.1"],
             pick_list_ids=["w1.A.1"], lines=4, units=6, ts=4)
    )  # fmt: skip
    inputs.fulfilment_complete = True
    return inputs, out


def _fulfilment_verdict(inputs: Inputs, out: Outputs) -> list[str]:
    from invariants.check import Verdict
    from invariants.fulfilment import check_fulfilment

    verdict = Verdict()
    check_fulfilment(inputs, out, verdict)
    return verdict.violations


def test_a_correct_merge_into_one_shipment_passes() -> None:
    assert _fulfilment_verdict(*_fulfilment_history()) == []


def test_a_merge_across_buyers_is_caught_from_the_orders_as_sent() -> None:
    inputs, out = _fulfilment_history()
    other = order("web-s1-2", buyer=Buyer(id="someone-else"))
    inputs.orders[other.key].snapshots[0] = other
    assert any(v.startswith("F2") for v in _fulfilment_verdict(inputs, out))


def test_a_line_shipped_twice_or_never_or_picked_short_is_caught() -> None:
    inputs, out = _fulfilment_history()
    twice = msgspec.structs.replace(out.shipments[0], shipment_id="shp.2")
    out.shipments.append(twice)
    found = _fulfilment_verdict(inputs, out)
    assert any("is in shipments shp.1 and shp.2" in v for v in found)
    assert any("shp.2 is in no wave" in v for v in found)
    inputs, out = _fulfilment_history()
    out.shipments[0] = msgspec.structs.replace(out.shipments[0], lines=out.shipments[0].lines[:-1])
    assert any("is in no shipment" in v for v in _fulfilment_verdict(inputs, out))
    inputs, out = _fulfilment_history()
    short = out.pick_lists[0]
    out.pick_lists[0] = msgspec.structs.replace(short, stops=short.stops[:-1])
    assert any(v.startswith("F4") and "too little" in v for v in _fulfilment_verdict(inputs, out))


def test_a_shipment_from_another_warehouse_than_the_reservation_is_caught() -> None:
    inputs, out = _fulfilment_history()
    out.shipments[0] = msgspec.structs.replace(out.shipments[0], warehouse="WH-2")
    assert any(v.startswith("F3") for v in _fulfilment_verdict(inputs, out))


def test_an_allocation_missing_twice_or_naming_another_warehouse_is_caught() -> None:
    inputs, out = _fulfilment_history()
    out.allocations.pop()
    assert any("with 0 different allocation record(s)" in v for v in _fulfilment_verdict(inputs, out))
    inputs, out = _fulfilment_history()
    out.allocations.append(msgspec.structs.replace(out.allocations[0], quoted=True))
    assert any("with 2 different allocation record(s)" in v for v in _fulfilment_verdict(inputs, out))
    inputs, out = _fulfilment_history()
    parcel = out.allocations[0].parcels[0]
    wrong = msgspec.structs.replace(parcel, warehouse="WH-2")
    out.allocations[0] = msgspec.structs.replace(out.allocations[0], parcels=[wrong])
    assert any(v.startswith("F3") and "allocated" in v for v in _fulfilment_verdict(inputs, out))


# -- picking (F6, F7) ----------------------------------------------------------------------------------------
def _short_history() -> tuple[Inputs, Outputs, History]:
    """The order of ``correct()`` picked: A 1 of 2 (short 1, no other warehouse: partial), B 1 of 1."""
    from schemas.fulfilment import PickConfirmation, PickedLine, PickedStop, PickOutcome, ShortPickOutcome

    inputs, out, h = correct()
    picked = {"web-s1-1#1": ("A", 2, 1), "web-s1-1#2": ("B", 1, 1)}
    inputs.picks.append(
        PickConfirmation(
            tenant=T, warehouse="WH", pick_list_id="w1.A.1", ts=5,
            lines=[PickedLine(shipment_id="shp.1", line_id=lid, bin="b", picked=p)
                   for lid, (_, _, p) in picked.items()],
        )
    )  # fmt: skip
    out.pick_outcomes.append(
        PickOutcome(
            tenant=T, warehouse="WH", pick_list_id="w1.A.1", status="confirmed", ts=5,
            stops=[PickedStop(shipment_id="shp.1", line_id=lid, sku=sku, asked=a, picked=p)
                   for lid, (sku, a, p) in picked.items()],
        )
    )  # fmt: skip
    h.add("A", CommandKind.SHORT, -1, -1, "short.acme.web-s1-1#1", "web-s1-1#1")
    out.short_picks.append(
        ShortPickOutcome(
            tenant=T, order_id="web-s1-1", line_id="web-s1-1#1", sku="A", warehouse="WH", missing=1,
            outcome="partial", reason="no_stock", ts=6,
        )
    )  # fmt: skip
    return inputs, out, h


def test_a_short_pick_shipped_partial_passes_and_its_stock_adds_up() -> None:
    inputs, out, _ = _short_history()
    verdict = check(inputs, out, partitions=4)
    assert verdict.ok, verdict.violations
    assert verdict.counts["short_lines"] == 1 and verdict.counts["short_outcomes"] == {"partial": 1}


def test_a_short_never_applied_or_applied_wrong_or_invented_is_caught() -> None:
    inputs, out, h = _short_history()
    h.events.pop()  # the stock was never corrected
    found = violations(inputs, out)
    assert "never corrected" in found and "reserved 2, the open lines of accepted orders need 1" in found
    inputs, out, h = _short_history()
    h.events[-1] = msgspec.structs.replace(h.events[-1], d_on_hand=-2, on_hand=3)
    assert "F7: web-s1-1#1: short of 1, applied as on_hand -2" in violations(inputs, out)
    inputs, out, h = _short_history()
    inputs.picks[0] = msgspec.structs.replace(
        inputs.picks[0], lines=[msgspec.structs.replace(ln, picked=ln.picked + 1) for ln in inputs.picks[0].lines]
    )
    found = violations(inputs, out)
    assert "picked 2, the line has 1" in found  # B: an over-pick the engine should have refused
    assert "but nobody reported it short" in found  # A was picked whole: its short is invented


def test_a_pick_confirmation_lost_or_applied_twice_and_a_missing_remainder_are_caught() -> None:
    inputs, out, _ = _short_history()
    out.pick_outcomes.clear()
    assert "was sent and never applied" in violations(inputs, out)
    inputs, out, _ = _short_history()
    out.pick_outcomes.append(out.pick_outcomes[0])
    assert "was confirmed 2 times" in violations(inputs, out)
    inputs, out, _ = _short_history()
    out.short_picks[0] = msgspec.structs.replace(out.short_picks[0], outcome="reallocated", reason="reallocated")
    assert "does not hold 1" in violations(inputs, out)


def test_an_order_older_than_the_retention_must_be_dead_lettered_as_forgotten_never_dropped() -> None:
    from schemas.inbox import OrderSnapshot

    inputs, out, _ = correct()
    old = order("web-s1-7", created_at=0, version=0)  # the day's other order is at time 1
    inputs.add_orders([old])
    inputs.order_retention_ms = 1
    assert "acme:web-s1-7 is older than the retention, yet was neither decided nor dead-lettered" in violations(
        inputs, out
    )
    letter = _letter(wire.encode(OrderSnapshot(order=old)), ReasonCode.FORGOTTEN_ORDER)
    out.dead_letters.append(msgspec.structs.replace(letter, stage="orders"))
    verdict = check(inputs, out, partitions=4)
    assert verdict.ok, verdict.violations
    assert verdict.counts["open"] == {"forgotten": 1}
    inputs.order_retention_ms = 2  # within the retention: the engine had no reason to forget it
    found = violations(inputs, out)
    assert "but the order is within the retention" in found and "web-s1-7 was sent and has no decision" in found


def test_a_shipment_is_reported_picked_once_with_what_the_pickers_said() -> None:
    from invariants.check import Verdict
    from invariants.picking import Truth, check_picking
    from schemas.fulfilment import PickConfirmation, PickedLine, PickedShipmentLine, ShipmentPicked

    inputs, out = _fulfilment_history()
    shipment = out.shipments[0]
    inputs.picks.append(
        PickConfirmation(tenant=T, warehouse="WH", pick_list_id="w1.A.1", ts=5, lines=[
            PickedLine(shipment_id="shp.1", line_id=ln.line_id, bin=f"b-{ln.sku}", picked=ln.quantity)
            for ln in shipment.lines])
    )  # fmt: skip

    def f8(out: Outputs) -> list[str]:
        verdict = Verdict()
        check_picking(inputs, out, Truth(inputs), {}, verdict)
        return [x for x in verdict.violations if x.startswith("F8")]

    assert f8(out) == ["F8: every line of shp.1 was confirmed, yet it was never reported picked"]
    lines = [
        PickedShipmentLine(order_id=ln.order_id, line_id=ln.line_id, sku=ln.sku, asked=ln.quantity, picked=ln.quantity)
        for ln in shipment.lines
    ]
    sent = inputs.orders[f"{T}:{shipment.order_ids[0]}"].latest()
    done = ShipmentPicked(tenant=T, shipment_id="shp.1", warehouse="WH", carrier="sf", order_ids=shipment.order_ids,
                          lines=lines, pick_list_ids=["w1.A.1"], shop_id=sent.shop_id, receiver=sent.receiver,
                          ts=6)  # fmt: skip
    out.picked_shipments.append(done)
    assert f8(out) == []
    elsewhere = msgspec.structs.replace(sent.receiver, city="别处")
    out.picked_shipments[:] = [msgspec.structs.replace(done, receiver=elsewhere)]
    assert f8(out)[0].startswith("F8: shp.1 goes to") and "not where its orders go" in f8(out)[0]
    out.picked_shipments[:] = [done]
    out.picked_shipments.append(done)
    assert f8(out) == ["F8: shp.1 was reported picked 2 times"]
    wrong = msgspec.structs.replace(done, lines=[msgspec.structs.replace(lines[0], picked=0), *lines[1:]])
    out.picked_shipments[:] = [wrong]
    assert f8(out)[0].startswith("F8: shp.1 was reported picked as")
