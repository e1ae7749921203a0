"""The invariant checker bites: each test feeds it a history with one specific fault."""

from __future__ import annotations

import msgspec

from agents.inventory.core import SkuStock, apply
from engine.invariants import RunRecords, check
from schemas.inventory import Receive, Release, Reserve, receive_id, release_id, reserve_id
from schemas.order import Address, Buyer, Channel, Order, OrderLine, line_id
from schemas.saga import DecisionLine, DecisionStatus, OrderDecision, RejectReason, decision_id

T = "acme"


def order(n: int, skus: list[str]) -> Order:
    return Order(
        tenant=T,
        order_id=f"web-s1-{n}",
        channel=Channel.WEB,
        shop_id="s1",
        platform_order_id=str(n),
        buyer=Buyer(id="b"),
        receiver=Address(name="x"),
        created_at=1,
        ingested_at=2,
        lines=[OrderLine(line_no=i + 1, sku=s, quantity=1, unit_price_fen=100) for i, s in enumerate(skus)],
    )


def decision(o: Order, status: DecisionStatus) -> OrderDecision:
    return OrderDecision(
        decision_id=decision_id(T, o.order_id),
        tenant=T,
        order_id=o.order_id,
        channel=o.channel,
        status=status,
        reason=None if status is DecisionStatus.ACCEPTED else RejectReason.INSUFFICIENT_STOCK,
        lines=[DecisionLine(line_id=line_id(o.order_id, ln.line_no), sku=ln.sku, quantity=1) for ln in o.lines],
        order_created_at=1,
        ingested_at=2,
        decided_at=3,
    )


def history() -> RunRecords:
    """Two SKUs with 1 unit each; order 1 takes both (accepted), order 2 wants A too (rejected)."""
    rec = RunRecords()
    stocks: dict[str, SkuStock] = {}
    cmds = [
        Receive(
            command_id=receive_id(T, s, "W", "d"),
            tenant=T,
            sku=s,
            origin="l",
            seq=i,
            ts=1,
            warehouse="W",
            quantity=1,
            document_id="d",
        )
        for i, s in enumerate(["A", "B"])
    ]
    o1, o2 = order(1, ["A", "B"]), order(2, ["A"])
    for o in (o1, o2):
        for ln in o.lines:
            lid = line_id(o.order_id, ln.line_no)
            cmds.append(
                Reserve(
                    command_id=reserve_id(T, lid),
                    tenant=T,
                    sku=ln.sku,
                    origin="c",
                    seq=len(cmds),
                    ts=2,
                    order_id=o.order_id,
                    line_id=lid,
                    quantity=1,
                )
            )
    reservations = {}
    for cmd in cmds:
        s = stocks.get(cmd.sku) or SkuStock(T, cmd.sku)
        out = apply(s, reservations.get(getattr(cmd, "line_id", None)), cmd)
        stocks[cmd.sku] = out.stock
        if out.reservation_changed:
            reservations[cmd.line_id] = out.reservation
        rec.stock_events += out.events
    rec.commands = cmds
    rec.orders = [o1, o2]
    rec.decisions = [decision(o1, DecisionStatus.ACCEPTED), decision(o2, DecisionStatus.REJECTED)]
    return rec


def test_a_correct_history_passes() -> None:
    verdict = check(history())
    assert verdict.ok, verdict.violations
    assert verdict.counts["accepted"] == 1 and verdict.counts["rejected"] == 1 and verdict.oversold_units == 0


def test_a_command_applied_twice_is_caught() -> None:
    rec = history()
    ev = rec.stock_events[0]  # the receive of A, applied "again" with a later version
    rec.stock_events.append(msgspec.structs.replace(ev, version=99, on_hand=ev.on_hand + 1))
    verdict = check(rec)
    assert any(v.startswith("I3") and "applied twice" in v for v in verdict.violations)


def test_a_redelivered_event_copy_is_not_a_violation() -> None:
    rec = history()
    rec.stock_events.append(rec.stock_events[1])
    assert check(rec).ok


def test_oversell_is_caught_and_counted() -> None:
    rec = history()
    last = rec.stock_events[-1]
    rec.stock_events.append(
        msgspec.structs.replace(
            last,
            event_id="reserve.acme.web-s1-9#1",
            line_id="web-s1-9#1",
            version=last.version + 1,
            d_reserved=1,
            reserved=last.reserved + 1,
        )
    )
    verdict = check(rec)
    assert any(v.startswith("I1") for v in verdict.violations)
    assert verdict.oversold_units == 1


def test_a_lost_event_breaks_the_version_chain() -> None:
    rec = history()
    del rec.stock_events[0]  # A's receipt (version 1); its reservation (version 2) remains
    assert any("missing versions" in v for v in check(rec).violations)


def test_a_double_receive_breaks_conservation() -> None:
    rec = history()
    rec.commands = [c for c in rec.commands if not isinstance(c, Receive) or c.sku != "B"]  # B never received
    assert any(v.startswith("I2") for v in check(rec).violations)


def test_a_rejected_order_holding_stock_is_caught() -> None:
    rec = history()
    rec.decisions[0] = decision(rec.orders[0], DecisionStatus.REJECTED)
    assert any("rejected but still holds" in v for v in check(rec).violations)


def test_two_different_decisions_and_a_missing_one_are_caught() -> None:
    rec = history()
    rec.decisions.append(decision(rec.orders[1], DecisionStatus.ACCEPTED))
    rec.orders.append(order(3, ["B"]))
    violations = check(rec).violations
    assert any("more than one decision" in v for v in violations)
    assert any("without a decision" in v for v in violations)


def test_release_then_reserve_again_of_one_line_is_caught() -> None:
    rec = history()
    lid = line_id("web-s1-1", 1)
    last = max(e.version for e in rec.stock_events if e.sku == "A")
    base = next(e for e in rec.stock_events if e.line_id == lid)
    rel = Release(
        command_id=release_id(T, lid), tenant=T, sku="A", origin="r", seq=1, ts=3, order_id="web-s1-1", line_id=lid
    )
    rec.stock_events.append(
        msgspec.structs.replace(
            base, event_id=rel.command_id, kind="release", d_reserved=-1, reserved=0, version=last + 1
        )
    )
    rec.stock_events.append(
        msgspec.structs.replace(base, event_id="reserve.acme.again", d_reserved=1, reserved=1, version=last + 2)
    )
    assert any(v.startswith("I3") for v in check(rec).violations)
