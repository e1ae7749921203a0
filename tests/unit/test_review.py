"""Auto-review (审单): rules, holds, releases, cancellations, updates — without servers."""

from __future__ import annotations

import msgspec
import pytest

from agents.review.core import APPROVED, CANCELLED, HELD, KEEP, PENDING_PAYMENT, REJECTED, Review, ReviewState
from agents.review.rules import Facts, evaluate, velocity_windows
from schemas.order import Address, Buyer, Channel, LineState, Order, OrderLine, OrderStatus
from schemas.review import (
    Action,
    AddressIncomplete,
    AddressKeywords,
    AmountOver,
    Blacklist,
    CancelSaga,
    MessageKeywords,
    OrderCancellation,
    Outcome,
    PlatformRisk,
    ReviewCommand,
    ReviewCommandKind,
    ReviewDecision,
    RuleSet,
    StartSaga,
    UnitsOver,
    Velocity,
)
from schemas.saga import DecisionStatus, OrderDecision, RejectReason

review = Review()
NOW = 2_000_000


def order(version: int = 1, status: OrderStatus = OrderStatus.PAID, **changes: object) -> Order:
    base = Order(
        tenant="acme",
        order_id="jd-s1-1",
        channel=Channel.JD,
        shop_id="s1",
        platform_order_id="1",
        status=status,
        buyer=Buyer(id="b1", phone="13900000000"),
        receiver=Address(name="李四", phone="13900000000", province="北京", city="北京市", street="建国路 88 号"),
        lines=[
            OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=10_000),
            OrderLine(line_no=2, sku="B", quantity=2, unit_price_fen=5_000),
        ],
        created_at=1_000,
        ingested_at=1_001,
        version=version,
    )
    return msgspec.structs.replace(base, **changes)


def rules(*rs: object) -> RuleSet:
    return RuleSet(tenant="acme", version=1, rules=list(rs))


def kinds(step) -> list[type]:
    return [type(o) for o in step.outputs]


BIG = AmountOver(id="big", action=Action.HOLD, reason="amount", threshold_fen=1)


def hold():  # an order held by the amount rule
    return review.on_order(None, order(), rules(BIG), Facts(), NOW)


def test_no_rules_approves_and_starts_the_saga() -> None:
    step = review.on_order(None, order(), None, Facts(), NOW)
    assert step.state.status == APPROVED and kinds(step) == [StartSaga, ReviewDecision]
    assert step.outputs[1].outcome is Outcome.APPROVED and step.outputs[1].fired == []


@pytest.mark.parametrize(
    ("rule", "fires"),
    [
        (AmountOver(id="big", action=Action.HOLD, reason="amount", threshold_fen=19_999), True),
        (AmountOver(id="big", action=Action.HOLD, reason="amount", threshold_fen=20_000), False),
        (UnitsOver(id="units", action=Action.HOLD, reason="units", threshold=2), True),
        (Blacklist(id="bl", action=Action.REJECT, reason="bl", field="receiver.phone", values=["13900000000"]), True),
        (Blacklist(id="bl", action=Action.REJECT, reason="blacklist", field="buyer.id", values=["b2"]), False),
        (AddressKeywords(id="addr", action=Action.HOLD, reason="addr", keywords=["建国路"]), True),
        (MessageKeywords(id="msg", action=Action.HOLD, reason="msg", keywords=["改地址"]), False),
        (PlatformRisk(id="risk", action=Action.HOLD, reason="risk", flags=["jd_locked"]), False),
        (AddressIncomplete(id="inc", action=Action.HOLD, reason="incomplete"), False),
    ],
)
def test_each_rule_kind(rule: object, fires: bool) -> None:
    ev = evaluate(order(), rules(rule), Facts())
    assert bool(ev.fired) is fires
    if fires:
        assert ev.action is rule.action and ev.fired[0].rule_id == rule.id and ev.fired[0].detail


def test_incomplete_address_and_keywords_in_messages() -> None:
    bad = order(receiver=Address(name="x", phone="", province="", city="", street="1"))
    ev = evaluate(bad, rules(AddressIncomplete(id="inc", action=Action.HOLD, reason="incomplete")), Facts())
    assert ev.action is Action.HOLD and "phone" in ev.fired[0].detail and "street" in ev.fired[0].detail
    chatty = order(buyer_message="麻烦改地址到公司")
    assert evaluate(
        chatty, rules(MessageKeywords(id="m", action=Action.HOLD, reason="m", keywords=["改地址"])), Facts()
    ).fired


def test_reject_beats_allow_list_which_beats_hold() -> None:
    allow = Blacklist(id="vip", action=Action.APPROVE, reason="vip", field="buyer.id", values=["b1"])
    hold = AmountOver(id="big", action=Action.HOLD, reason="amount", threshold_fen=1)
    reject = Blacklist(id="bad", action=Action.REJECT, reason="blacklist", field="buyer.id", values=["b1"])
    assert evaluate(order(), rules(hold, allow), Facts()).action is Action.APPROVE
    assert evaluate(order(), rules(hold, allow, reject), Facts()).action is Action.REJECT


def test_channel_scoped_rules_only_apply_to_their_channels() -> None:
    rule = AmountOver(id="big", action=Action.HOLD, reason="amount", threshold_fen=1, channels=[Channel.TMALL])
    assert not evaluate(order(), rules(rule), Facts()).fired


def test_velocity_uses_the_counted_window_and_is_skipped_without_it() -> None:
    rule = Velocity(id="vel", action=Action.HOLD, reason="velocity", max_orders=3, window_s=3600)
    assert velocity_windows(rules(rule)) == [3600]
    assert evaluate(order(), rules(rule), Facts({3600: 4})).action is Action.HOLD
    assert evaluate(order(), rules(rule), Facts({3600: 3})).action is Action.APPROVE
    unknown = evaluate(order(), rules(rule), Facts())
    assert unknown.action is Action.APPROVE and unknown.skipped == ["vel"]


def test_hold_then_operator_release() -> None:
    held = hold()
    assert held.state.status == HELD and kinds(held) == [ReviewDecision] and held.hold["reasons"] == ["amount"]
    cmd = ReviewCommand(
        command_id="c1", tenant="acme", order_id="jd-s1-1", action=ReviewCommandKind.RELEASE, actor="alice", ts=NOW
    )
    released = review.on_command(ReviewState.from_state(held.state.to_state()), cmd, NOW + 1)
    assert released.state.status == APPROVED and kinds(released) == [StartSaga, ReviewDecision]
    assert released.outputs[1].outcome is Outcome.RELEASED and released.outputs[1].actor == "alice"
    assert released.hold is None  # leaves the holds list
    assert review.on_command(released.state, cmd, NOW + 2).note == "not_held"


def test_operator_rejects_a_held_order() -> None:
    held = hold().state
    cmd = ReviewCommand(
        command_id="c2",
        tenant="acme",
        order_id="jd-s1-1",
        action=ReviewCommandKind.REJECT,
        actor="bob",
        note="fraud ring",
        ts=NOW,
    )
    step = review.on_command(held, cmd, NOW)
    assert step.state.status == REJECTED and kinds(step) == [OrderDecision, ReviewDecision]
    assert step.outputs[0].status is DecisionStatus.REJECTED and step.outputs[0].reason is RejectReason.REVIEW


def test_rule_rejection_decides_the_order() -> None:
    reject = Blacklist(id="bad", action=Action.REJECT, reason="blacklist", field="buyer.id", values=["b1"])
    step = review.on_order(None, order(), rules(reject), Facts(), NOW)
    assert (
        step.state.status == REJECTED
        and step.outputs[0].reason is RejectReason.REVIEW
        and "bad" in step.outputs[0].detail
    )


def test_redelivered_or_stale_snapshot_has_no_effect() -> None:
    first = review.on_order(None, order(version=5), None, Facts(), NOW)
    for version in (5, 4):
        again = review.on_order(first.state, order(version=version), None, Facts(), NOW)
        assert again.note == "duplicate" and not again.outputs and not again.changed


def test_unpaid_orders_wait_for_payment() -> None:
    pending = review.on_order(None, order(version=1, status=OrderStatus.PENDING_PAYMENT), None, Facts(), NOW)
    assert pending.state.status == PENDING_PAYMENT and not pending.outputs
    paid = review.on_order(pending.state, order(version=2), None, Facts(), NOW)
    assert kinds(paid) == [StartSaga, ReviewDecision]


def test_platform_hold_and_pending_refunds_hold_even_an_allow_listed_buyer() -> None:
    allow = Blacklist(id="vip", action=Action.APPROVE, reason="vip", field="buyer.id", values=["b1"])
    locked = review.on_order(
        None, order(status=OrderStatus.HOLD_BY_PLATFORM, risk_flags=["jd_locked"]), rules(allow), Facts(), NOW
    )
    assert locked.state.status == HELD and "platform_hold" in locked.hold["reasons"]
    unlocked = review.on_order(locked.state, order(version=2), rules(allow), Facts(), NOW)
    assert unlocked.state.status == APPROVED and unlocked.outputs[1].outcome is Outcome.RELEASED
    refund = order(lines=[OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=1, status=LineState.REFUNDING)])
    assert review.on_order(None, refund, None, Facts(), NOW).state.status == HELD


def test_cancellation_before_the_saga_decides_the_order_here() -> None:
    held = hold().state
    step = review.on_order(held, order(version=2, status=OrderStatus.CANCELLED), None, Facts(), NOW)
    assert step.state.status == CANCELLED and kinds(step) == [OrderDecision, OrderCancellation, ReviewDecision]
    assert step.outputs[0].status is DecisionStatus.CANCELLED and step.hold is None


def test_cancellation_after_approval_goes_to_the_saga() -> None:
    approved = review.on_order(None, order(), None, Facts(), NOW).state
    step = review.on_order(approved, order(version=2, status=OrderStatus.CANCELLED), None, Facts(), NOW)
    assert kinds(step) == [CancelSaga] and step.outputs[0].line_ids == [] and step.hold is KEEP


def test_refunded_line_of_an_approved_order_cancels_that_line() -> None:
    approved = review.on_order(None, order(), None, Facts(), NOW).state
    lines = [
        OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=10_000),
        OrderLine(line_no=2, sku="B", quantity=2, unit_price_fen=5_000, status=LineState.REFUNDING),
    ]
    step = review.on_order(approved, order(version=2, lines=lines), None, Facts(), NOW)
    assert kinds(step) == [CancelSaga] and step.outputs[0].line_ids == ["jd-s1-1#2"]
    again = review.on_order(step.state, order(version=3, lines=lines), None, Facts(), NOW)
    assert not again.outputs  # already cancelled


def test_refund_after_shipment_is_a_return_request() -> None:
    approved = review.on_order(None, order(), None, Facts(), NOW).state
    shipped = review.on_order(approved, order(version=2, status=OrderStatus.SHIPPED), None, Facts(), NOW)
    assert not shipped.outputs
    lines = [
        OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=10_000, status=LineState.REFUNDING),
        OrderLine(line_no=2, sku="B", quantity=2, unit_price_fen=5_000),
    ]
    step = review.on_order(shipped.state, order(version=3, status=OrderStatus.SHIPPED, lines=lines), None, Facts(), NOW)
    assert kinds(step) == [OrderCancellation] and step.outputs[0].kind.value == "return_requested"


def test_saga_only_gets_the_lines_still_active() -> None:
    lines = [
        OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=1),
        OrderLine(line_no=2, sku="B", quantity=1, unit_price_fen=1, status=LineState.CANCELLED),
    ]
    step = review.on_order(None, order(lines=lines), None, Facts(), NOW)
    assert [ln.line_no for ln in step.outputs[0].order.lines] == [1]


def test_state_round_trips() -> None:
    held = hold().state
    assert ReviewState.from_state(held.to_state()) == held
    assert held.snapshot() == order()
