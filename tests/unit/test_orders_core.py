"""The order stage's rules — review (审单), the reservation saga (预占), one decision per order — without servers."""

from __future__ import annotations

import msgspec
import pytest

from agents.fulfilment.merge import merge_key
from agents.orders.core import OrderRules
from agents.orders.rules import Facts, evaluate, velocity_windows
from agents.orders.state import HoldKind, OrderState, Phase, SagaLineState
from engine.runtime.stamp import SEQ_FANOUT, Stamp
from schemas.aftersales import OrderOpened, PickupReady, ReturnRequested
from schemas.deadletter import ReasonCode
from schemas.fulfilment import (
    AllocationPolicy,
    Layout,
    LineShort,
    OrderAllocation,
    OrderWithdrawn,
    ParcelAccepted,
    ShortPickOutcome,
    WarehouseSpec,
)
from schemas.inbox import OperatorAction
from schemas.inventory import Quote, Release, Reserve
from schemas.order import Address, Buyer, Channel, LineState, Order, OrderLine, OrderStatus, buyer_key
from schemas.review import (
    Action,
    AddressIncomplete,
    AddressKeywords,
    AmountOver,
    Blacklist,
    CancellationKind,
    MessageKeywords,
    OperatorActionKind,
    OrderCancellation,
    Outcome,
    PlatformRisk,
    ReviewDecision,
    RuleSet,
    UnitsOver,
    Velocity,
)
from schemas.saga import DecisionStatus, LineResult, LineStatus, OrderDecision, RejectReason, StockQuote

RETENTION = 7 * 86_400_000
core = OrderRules(RETENTION)
NOW = 2_000_000
STAMP = Stamp("orders.test.p0", 10)


def order(version: int = 1_000, status: OrderStatus = OrderStatus.PAID, **changes: object) -> Order:
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


def kinds(step: object) -> list[type]:
    return [type(o) for o in step.outputs]


def snap(state: OrderState | None, o: Order, rs: RuleSet | None = None, buyer: object = None, stamp: Stamp = STAMP):
    return core.on_snapshot(state, buyer, rs, o, stamp, NOW, watermark=o.version)


def answer(state: OrderState, line_no: int, ok: bool = True, stamp: Stamp = STAMP, **changes: object):
    line = state.lines[[ln.line_no for ln in state.lines].index(line_no)]
    result = LineResult(
        result_id=f"r{line_no}",
        tenant="acme",
        order_id=state.order_id,
        line_id=line.line_id,
        sku=line.sku,
        status=LineStatus.RESERVED if ok else LineStatus.REJECTED,
        reason=None if ok else RejectReason.INSUFFICIENT_STOCK,
        warehouse="WH-A" if ok else None,
        quantity=line.quantity,
        reply_to=state.inbox_key,
        ts=NOW,
    )
    return core.on_result(state, msgspec.structs.replace(result, **changes), stamp, NOW + 1)


def operator(state: OrderState, action: OperatorActionKind, note: str = "") -> object:
    cmd = OperatorAction(
        action_id="a1",
        tenant="acme",
        order_id=state.order_id,
        inbox_key=state.inbox_key,
        action=action,
        actor="alice",
        note=note,
        ts=NOW,
    )
    return core.on_operator(state, cmd, STAMP, NOW + 2)


BIG = AmountOver(id="big", action=Action.HOLD, reason="amount", threshold_fen=1)


def accepted() -> OrderState:
    state = snap(None, order()).order
    state = answer(state, 1).order
    return answer(state, 2).order


# -- review --------------------------------------------------------------------------------------------------
def test_no_rules_approves_and_sends_one_reserve_per_line_with_stamps_from_the_offset() -> None:
    step = snap(None, order())
    assert step.order.phase is Phase.RESERVING and kinds(step) == [ReviewDecision, OrderOpened, Reserve, Reserve]
    assert step.outputs[0].outcome is Outcome.APPROVED and step.outputs[0].fired == []
    opened, reserves = step.outputs[1], step.outputs[2:]
    assert [r.seq for r in reserves] == [10 * SEQ_FANOUT, 10 * SEQ_FANOUT + 1]
    # aftersales keeps what it needs later: the platform's ids, what was paid per line, how it is delivered
    assert (opened.platform_order_id, opened.delivery) == (step.order.order_id.split("-")[-1], "ship")
    assert [(ln.line_id, ln.paid_fen) for ln in opened.lines] == [("jd-s1-1#1", 10_000), ("jd-s1-1#2", 10_000)]
    assert {r.origin for r in reserves} == {"orders.test.p0"}
    assert {r.reply_to for r in reserves} == {buyer_key(order())} == {"acme:s1:b-b1"}
    assert [(r.sku, r.quantity) for r in reserves] == [("A", 1), ("B", 2)]


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
    reject = Blacklist(id="bad", action=Action.REJECT, reason="blacklist", field="buyer.id", values=["b1"])
    assert evaluate(order(), rules(BIG, allow), Facts()).action is Action.APPROVE
    assert evaluate(order(), rules(BIG, allow, reject), Facts()).action is Action.REJECT


def test_channel_scoped_rules_only_apply_to_their_channels() -> None:
    rule = AmountOver(id="big", action=Action.HOLD, reason="amount", threshold_fen=1, channels=[Channel.TMALL])
    assert not evaluate(order(), rules(rule), Facts()).fired


def test_velocity_is_counted_from_the_buyers_own_state_by_channel_time() -> None:
    rule = Velocity(id="vel", action=Action.HOLD, reason="velocity", max_orders=2, window_s=3600)
    assert velocity_windows(rules(rule)) == [3600]
    buyer = None
    outcomes = []
    for n, created in enumerate((1_000, 2_000, 3_000, 3_000 + 3_600_000 + 1)):
        o = order(order_id=f"jd-s1-{n}", platform_order_id=str(n), created_at=created, version=created)
        step = snap(None, o, rules(rule), buyer)
        buyer = step.buyer
        outcomes.append(step.outputs[0].outcome)
    assert outcomes == [Outcome.APPROVED, Outcome.APPROVED, Outcome.HELD, Outcome.APPROVED]
    assert [oid for _, oid in buyer.recent] == ["jd-s1-3"], "orders outside the window are forgotten"
    again = snap(None, order(order_id="jd-s1-3", platform_order_id="3", created_at=3_603_001), rules(rule), buyer)
    assert len(again.buyer.recent) == 1, "the same order is counted once"


def test_hold_then_operator_release() -> None:
    held = snap(None, order(), rules(BIG))
    assert held.order.phase is Phase.HELD and kinds(held) == [ReviewDecision]
    assert held.order.hold.kind is HoldKind.REVIEW and held.order.hold.reasons == ["amount"]
    [entry] = held.holds
    assert entry.summary["inbox_key"] == "acme:s1:b-b1" and entry.summary["reasons"] == ["amount"]
    released = operator(held.order, OperatorActionKind.RELEASE)
    assert released.order.phase is Phase.RESERVING and kinds(released) == [
        ReviewDecision,
        OrderOpened,
        Reserve,
        Reserve,
    ]
    assert released.outputs[0].outcome is Outcome.RELEASED and released.outputs[0].actor == "alice"
    assert [e.summary for e in released.holds] == [None]  # leaves the holds list
    assert operator(released.order, OperatorActionKind.RELEASE).note == "not_held"


def test_operator_rejects_a_held_order() -> None:
    held = snap(None, order(), rules(BIG)).order
    step = operator(held, OperatorActionKind.REJECT, "fraud ring")
    assert step.order.phase is Phase.REJECTED and kinds(step) == [OrderDecision, ReviewDecision]
    assert step.outputs[0].status is DecisionStatus.REJECTED and step.outputs[0].reason is RejectReason.REVIEW
    assert [e.summary for e in step.holds] == [None]


def test_rule_rejection_decides_the_order() -> None:
    reject = Blacklist(id="bad", action=Action.REJECT, reason="blacklist", field="buyer.id", values=["b1"])
    step = snap(None, order(), rules(reject))
    assert step.order.phase is Phase.REJECTED
    assert step.outputs[0].reason is RejectReason.REVIEW and "bad" in step.outputs[0].detail


def test_redelivered_or_stale_snapshot_has_no_effect() -> None:
    first = snap(None, order(version=5_000))
    for version in (5_000, 4_000):
        again = snap(first.order, order(version=version))
        assert again.note == "duplicate" and not again.outputs and not again.order_changed


def test_unpaid_orders_wait_for_payment_in_a_listed_open_state() -> None:
    pending = snap(None, order(status=OrderStatus.PENDING_PAYMENT))
    assert pending.order.phase is Phase.AWAITING_PAYMENT and kinds(pending) == [ReviewDecision]
    assert pending.outputs[0].outcome is Outcome.AWAITING_PAYMENT
    paid = snap(pending.order, order(version=2_000))
    assert kinds(paid) == [ReviewDecision, OrderOpened, Reserve, Reserve]


def test_platform_hold_and_pending_refunds_hold_even_an_allow_listed_buyer() -> None:
    allow = Blacklist(id="vip", action=Action.APPROVE, reason="vip", field="buyer.id", values=["b1"])
    locked = snap(None, order(status=OrderStatus.HOLD_BY_PLATFORM, risk_flags=["jd_locked"]), rules(allow))
    assert locked.order.phase is Phase.HELD and "platform_hold" in locked.order.hold.reasons
    unlocked = snap(locked.order, order(version=2_000), rules(allow))
    assert unlocked.order.phase is Phase.RESERVING and [e.summary for e in unlocked.holds] == [None]
    refund = order(lines=[OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=1, status=LineState.REFUNDING)])
    assert snap(None, refund).order.phase is Phase.HELD


def test_only_the_lines_still_active_are_reserved() -> None:
    lines = [
        OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=1),
        OrderLine(line_no=2, sku="B", quantity=1, unit_price_fen=1, status=LineState.CANCELLED),
    ]
    step = snap(None, order(lines=lines))
    assert [r.sku for r in step.outputs if isinstance(r, Reserve)] == ["A"]


def test_invalid_order_is_rejected_at_once() -> None:
    twins = [OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=1)] * 2
    step = snap(None, order(lines=twins))
    decision = next(o for o in step.outputs if isinstance(o, OrderDecision))
    assert decision.status is DecisionStatus.REJECTED and decision.reason is RejectReason.INVALID_ORDER


# -- the saga ------------------------------------------------------------------------------------------------
def test_all_lines_reserved_accepts_once_with_the_time_of_the_last_answer() -> None:
    state = snap(None, order()).order
    one = answer(state, 1)
    assert one.order.phase is Phase.RESERVING and not one.outputs
    both = answer(one.order, 2)
    decision, allocation, parcel = both.outputs
    assert decision.status is DecisionStatus.ACCEPTED and decision.decided_at == NOW + 1
    assert (allocation.strategy, allocation.quoted, allocation.ranking) == ("fullest", False, [])
    assert [(p.warehouse, p.line_ids) for p in allocation.parcels] == [("WH-A", ["jd-s1-1#1", "jd-s1-1#2"])]
    assert [(d.line_id, d.warehouse) for d in decision.lines] == [("jd-s1-1#1", "WH-A"), ("jd-s1-1#2", "WH-A")]
    # Fulfilment gets the lines of the warehouse they were reserved in, with what a merge must match.
    assert isinstance(parcel, ParcelAccepted) and parcel.key == "acme:WH-A" and parcel.ts == NOW + 1
    assert [ln.line_id for ln in parcel.lines] == ["jd-s1-1#1", "jd-s1-1#2"]
    assert parcel.merge_key == merge_key("acme", "s1", buyer_key(order()), order().receiver)
    assert parcel.receiver == order().receiver  # shipping packs and labels for it
    assert answer(both.order, 2).note == "duplicate_result"


def test_lines_reserved_in_two_warehouses_go_to_fulfilment_as_two_parcels() -> None:
    state = answer(snap(None, order()).order, 1, warehouse="WH-B").order
    step = answer(state, 2)
    parcels = [o for o in step.outputs if isinstance(o, ParcelAccepted)]
    assert [(p.warehouse, [ln.line_id for ln in p.lines]) for p in parcels] == [
        ("WH-A", ["jd-s1-1#2"]),
        ("WH-B", ["jd-s1-1#1"]),
    ]


def test_a_layout_ranks_the_warehouses_each_line_may_be_reserved_in() -> None:
    layout = Layout(
        tenant="acme",
        version=1,
        warehouses=[
            WarehouseSpec(warehouse="WH-SH", regions=["上海市"], carriers=["sf"]),
            WarehouseSpec(warehouse="WH-BJ", regions=["北京"], carriers=["sf"]),
        ],
        allocation=AllocationPolicy(strategy="region", warehouse_order=["WH-SH", "WH-BJ"]),
    )
    step = core.on_snapshot(None, None, None, order(), STAMP, NOW, watermark=1_000, layout=layout)
    reserves = [o for o in step.outputs if isinstance(o, Reserve)]
    assert [r.warehouses for r in reserves] == [["WH-BJ", "WH-SH"]] * 2  # the receiver is in Beijing
    assert all(r.warehouses == [] for r in snap(None, order()).outputs if isinstance(r, Reserve))


def test_one_refused_line_rejects_and_releases_what_was_reserved() -> None:
    state = answer(snap(None, order()).order, 1).order
    step = answer(state, 2, ok=False)
    assert step.order.phase is Phase.REJECTED
    releases = [o for o in step.outputs if isinstance(o, Release)]
    assert [r.line_id for r in releases] == ["jd-s1-1#1"]
    decision = next(o for o in step.outputs if isinstance(o, OrderDecision))
    assert decision.reason is RejectReason.INSUFFICIENT_STOCK


def test_a_late_reservation_after_the_rejection_is_given_back() -> None:
    state = snap(None, order()).order
    rejected = answer(state, 1, ok=False).order  # line 2 still in flight
    late = answer(rejected, 2)
    assert [type(o) for o in late.outputs] == [Release] and late.note == "late_reserved_released"


def test_there_is_no_timeout_a_saga_waits_for_its_answers() -> None:
    """A slow or failing-over stock partition must not become refused sales: nothing but an answer decides."""
    state = snap(None, order()).order
    much_later = snap(state, order(version=10**12))  # a later snapshot, long after, changes nothing of the saga
    assert much_later.order.phase is Phase.RESERVING and not [
        o for o in much_later.outputs if isinstance(o, OrderDecision)
    ]


def test_result_without_state_gives_the_reservation_back() -> None:
    state = snap(None, order()).order
    step = answer(state, 1)
    orphan = core.on_result(
        None, LineResult(**{**_fields(_result_of(state, 1)), "status": LineStatus.RESERVED}), STAMP, NOW
    )
    assert [type(o) for o in orphan.outputs] == [Release] and orphan.note == "orphan_result"
    assert step.order.lines[0].state is SagaLineState.RESERVED


# -- cancellations and amendments ----------------------------------------------------------------------------
def test_cancel_before_approval_decides_the_order() -> None:
    held = snap(None, order(), rules(BIG)).order
    step = snap(held, order(version=2_000, status=OrderStatus.CANCELLED))
    assert step.order.phase is Phase.CANCELLED and kinds(step) == [OrderDecision, OrderCancellation, ReviewDecision]
    assert step.outputs[0].status is DecisionStatus.CANCELLED and [e.summary for e in step.holds] == [None]


def test_cancel_of_a_pending_saga_is_its_decision_and_releases_what_is_reserved() -> None:
    state = answer(snap(None, order()).order, 1).order
    step = snap(state, order(version=2_000, status=OrderStatus.CANCELLED))
    assert [type(o) for o in step.outputs] == [Release, OrderDecision, OrderCancellation]
    assert step.outputs[1].status is DecisionStatus.CANCELLED
    late = answer(step.order, 2)  # the reserve of line 2 was in flight
    assert [type(o) for o in late.outputs] == [Release]


def test_cancel_after_acceptance_releases_without_a_second_decision() -> None:
    step = snap(accepted(), order(version=2_000, status=OrderStatus.CANCELLED))
    assert [type(o) for o in step.outputs] == [Release, Release, OrderWithdrawn, OrderCancellation]
    assert step.outputs[3].kind is CancellationKind.ORDER and step.order.phase is Phase.CANCELLED
    withdrawn = step.outputs[2]
    assert withdrawn.key == "acme:WH-A" and withdrawn.line_ids == []  # the whole order leaves fulfilment


def test_refunded_line_of_an_approved_order_is_released() -> None:
    lines = [
        OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=10_000),
        OrderLine(line_no=2, sku="B", quantity=2, unit_price_fen=5_000, status=LineState.REFUNDING),
    ]
    step = snap(accepted(), order(version=2_000, lines=lines))
    assert [type(o) for o in step.outputs] == [Release, OrderCancellation, OrderWithdrawn]
    assert step.outputs[1].kind is CancellationKind.LINES and step.outputs[1].line_ids == ["jd-s1-1#2"]
    assert step.outputs[2].line_ids == ["jd-s1-1#2"]  # only that line leaves fulfilment
    again = snap(step.order, order(version=3_000, lines=lines))
    assert not again.outputs


def test_refunding_the_only_missing_line_lets_a_pending_saga_accept() -> None:
    state = answer(snap(None, order()).order, 1).order
    lines = [
        OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=10_000),
        OrderLine(line_no=2, sku="B", quantity=2, unit_price_fen=5_000, status=LineState.CANCELLED),
    ]
    step = snap(state, order(version=2_000, lines=lines))
    decision = next(o for o in step.outputs if isinstance(o, OrderDecision))
    assert decision.status is DecisionStatus.ACCEPTED and [d.line_id for d in decision.lines] == ["jd-s1-1#1"]


def test_a_changed_sku_or_quantity_after_approval_is_held_never_ignored() -> None:
    other = [
        OrderLine(line_no=1, sku="A", quantity=3, unit_price_fen=10_000),
        OrderLine(line_no=2, sku="B", quantity=2, unit_price_fen=5_000),
    ]
    step = snap(accepted(), order(version=2_000, lines=other))
    assert step.note == "held_after_approval" and kinds(step) == [ReviewDecision]
    assert step.outputs[0].outcome is Outcome.HELD and step.outputs[0].reasons == ["order_amended"]
    assert step.order.hold.kind is HoldKind.AMENDMENT and step.order.phase is Phase.ACCEPTED
    assert step.holds and step.holds[0].summary["kind"] == "amendment"
    kept = operator(step.order, OperatorActionKind.RELEASE)  # the operator keeps the order as approved
    assert kinds(kept) == [ReviewDecision] and kept.outputs[0].outcome is Outcome.RELEASED and kept.order.hold is None
    dropped = operator(step.order, OperatorActionKind.REJECT)  # or cancels it: everything is released
    assert [type(o) for o in dropped.outputs] == [Release, Release, OrderWithdrawn, OrderCancellation]


def test_a_pickup_order_is_reserved_in_its_store_handed_to_aftersales_and_an_expiry_releases_it() -> None:
    step = snap(None, order(delivery="pickup", pickup_store="STORE-1"))
    assert step.order.ranking == ["STORE-1"] and {r.warehouses[0] for r in step.outputs if isinstance(r, Reserve)} == {
        "STORE-1"
    }
    state = answer(answer(step.order, 1).order, 2)
    assert kinds(state) == [OrderDecision, OrderAllocation, PickupReady]  # no parcel: the store hands it over
    ready = state.outputs[2]
    assert (ready.store, [ln.line_id for ln in ready.lines]) == ("STORE-1", ["jd-s1-1#1", "jd-s1-1#2"])
    cancelled = operator(state.order, OperatorActionKind.CANCEL, "pickup_expired")
    assert kinds(cancelled) == [Release, Release, OrderCancellation]  # nothing for fulfilment to withdraw
    assert cancelled.order.phase is Phase.CANCELLED
    assert operator(cancelled.order, OperatorActionKind.CANCEL).note == "not_cancellable"
    no_store = snap(None, order(delivery="pickup"))
    assert no_store.order.decided is not None and "pickup_store" in no_store.order.decided.detail


def test_refund_after_shipment_is_a_return_request() -> None:
    shipped = snap(accepted(), order(version=2_000, status=OrderStatus.SHIPPED))
    assert not shipped.outputs and shipped.order.phase is Phase.SHIPPED
    lines = [
        OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=10_000, status=LineState.REFUNDING),
        OrderLine(line_no=2, sku="B", quantity=2, unit_price_fen=5_000),
    ]
    step = snap(shipped.order, order(version=3_000, status=OrderStatus.SHIPPED, lines=lines))
    assert kinds(step) == [OrderCancellation, ReturnRequested]
    assert step.outputs[0].kind is CancellationKind.RETURN_REQUESTED
    request = step.outputs[1]  # aftersales receives the goods back and settles the return
    assert (request.source, [(ln.line_id, ln.quantity) for ln in request.lines]) == ("channel", [("jd-s1-1#1", 1)])


# -- memory --------------------------------------------------------------------------------------------------
def test_a_decided_order_is_forgotten_after_the_retention_and_its_late_update_is_no_new_order() -> None:
    done = accepted()
    assert done.expires_at == done.version + RETENTION
    late = core.on_snapshot(
        None,
        None,
        None,
        order(version=done.version + RETENTION + 5),
        STAMP,
        NOW,
        watermark=done.version + RETENTION + 5,
    )
    assert late.note == "forgotten_order" and not late.outputs and late.order is None
    assert late.refused is not None and late.refused[0] is ReasonCode.FORGOTTEN_ORDER  # dead-lettered, not lost


def test_state_round_trips_and_the_core_does_not_mutate_its_input() -> None:
    held = snap(None, order(), rules(BIG)).order
    assert msgspec.json.decode(msgspec.json.encode(held), type=OrderState) == held
    state = snap(None, order()).order
    before = msgspec.json.encode(state)
    answer(state, 1)
    snap(state, order(version=2_000, status=OrderStatus.CANCELLED))
    assert msgspec.json.encode(state) == before


def test_stamp_sub_index_is_bounded() -> None:
    with pytest.raises(ValueError):
        STAMP.seq(SEQ_FANOUT)


def _result_of(state: OrderState, line_no: int) -> LineResult:
    line = state.lines[line_no - 1]
    return LineResult(
        result_id="x",
        tenant="acme",
        order_id=state.order_id,
        line_id=line.line_id,
        sku=line.sku,
        status=LineStatus.RESERVED,
        warehouse="WH-A",
        quantity=line.quantity,
        reply_to=state.inbox_key,
        ts=NOW,
    )


def _fields(record: object) -> dict:
    return {f: getattr(record, f) for f in record.__struct_fields__}


# -- short picks ---------------------------------------------------------------------------------------------
TWO_WAREHOUSES = Layout(
    tenant="acme",
    version=1,
    warehouses=[
        WarehouseSpec(warehouse="WH-A", regions=["北京"], carriers=["sf"]),
        WarehouseSpec(warehouse="WH-B", regions=["上海市"], carriers=["sf"]),
    ],
    allocation=AllocationPolicy(strategy="region", warehouse_order=["WH-A", "WH-B"]),
)


def ranked_and_accepted() -> OrderState:
    state = core.on_snapshot(None, None, None, order(), STAMP, NOW, watermark=1_000, layout=TWO_WAREHOUSES).order
    return answer(answer(state, 1).order, 2).order


def short_of(state: OrderState, line_no: int, missing: int, picked: int, layout: Layout | None = TWO_WAREHOUSES):
    line = next(ln for ln in state.lines if ln.line_no == line_no and ln.remainder_of is None)
    report = LineShort(
        tenant="acme",
        order_id=state.order_id,
        line_id=line.line_id,
        sku=line.sku,
        warehouse=line.warehouse or "WH-A",
        missing=missing,
        picked=picked,
        pick_list_id="wave.acme.WH-A.1.Z1.1",
        reply_to=state.inbox_key,
        ts=NOW,
    )
    return core.on_short(state, report, Stamp("orders.test.p0", 20), NOW + 5, layout)


def test_a_short_line_is_re_reserved_away_from_the_warehouse_it_came_up_short_in() -> None:
    state = ranked_and_accepted()
    assert state.ranking == ["WH-A", "WH-B"]
    step = short_of(state, 2, missing=1, picked=1)
    (reserve,) = step.outputs
    assert isinstance(reserve, Reserve) and step.note == "short_reallocating"
    assert (reserve.line_id, reserve.quantity, reserve.warehouses, reserve.exclude) == (
        "jd-s1-1#2/r",
        1,
        ["WH-B"],
        ["WH-A"],
    )
    assert reserve.seq == 20 * SEQ_FANOUT and step.order.phase is Phase.ACCEPTED
    assert short_of(step.order, 2, missing=1, picked=1).note == "duplicate_short"
    placed = answer(step.order, 2, line_id="jd-s1-1#2/r", warehouse="WH-B", quantity=1)
    parcel, outcome = placed.outputs
    assert isinstance(parcel, ParcelAccepted) and parcel.reallocated and parcel.warehouse == "WH-B"
    assert parcel.receiver == order().receiver
    assert [(ln.line_id, ln.quantity) for ln in parcel.lines] == [("jd-s1-1#2/r", 1)]
    assert parcel.reply_to == state.inbox_key and parcel.merge_key == state.ship_group
    assert isinstance(outcome, ShortPickOutcome)
    assert (outcome.outcome, outcome.reason, outcome.missing, outcome.warehouse, outcome.remainder_warehouse) == (
        "reallocated",
        "reallocated",
        1,
        "WH-A",
        "WH-B",
    )
    # the re-reserved line goes with the order: a cancellation releases it and withdraws its parcel
    cancelled = snap(placed.order, order(version=2_000, status=OrderStatus.CANCELLED))
    released = sorted(o.line_id for o in cancelled.outputs if isinstance(o, Release))
    assert released == ["jd-s1-1#1", "jd-s1-1#2", "jd-s1-1#2/r"]
    assert sorted(o.warehouse for o in cancelled.outputs if isinstance(o, OrderWithdrawn)) == ["WH-A", "WH-B"]


def test_a_short_line_ships_partial_when_no_other_warehouse_has_it_or_the_policy_says_so() -> None:
    state = ranked_and_accepted()
    step = short_of(state, 1, missing=1, picked=0)
    refused = answer(step.order, 1, ok=False, line_id="jd-s1-1#1/r")
    (outcome,) = refused.outputs
    assert (outcome.outcome, outcome.reason, outcome.remainder_line_id) == ("partial", "no_stock", None)
    partial = msgspec.structs.replace(TWO_WAREHOUSES, short_pick="partial")
    by_policy = short_of(state, 1, missing=1, picked=0, layout=partial)
    assert [(o.outcome, o.reason) for o in by_policy.outputs] == [("partial", "policy")]
    assert not any(isinstance(o, Reserve) for o in by_policy.outputs)


def test_a_refund_of_a_short_line_closes_its_remainder_and_an_amendment_check_ignores_it() -> None:
    state = short_of(ranked_and_accepted(), 2, missing=1, picked=1).order
    state = answer(state, 2, line_id="jd-s1-1#2/r", warehouse="WH-B", quantity=1).order
    same = snap(state, order(version=1_500))
    assert same.note == "update" and not same.outputs  # the remainder line is no amendment
    lines = [order().lines[0], msgspec.structs.replace(order().lines[1], status=LineState.REFUNDING)]
    refund = snap(state, order(version=2_000, lines=lines))
    assert sorted(o.line_id for o in refund.outputs if isinstance(o, Release)) == ["jd-s1-1#2", "jd-s1-1#2/r"]


def test_a_short_after_the_order_was_cancelled_is_answered_partial() -> None:
    state = ranked_and_accepted()
    cancelled = snap(state, order(version=2_000, status=OrderStatus.CANCELLED)).order
    step = short_of(cancelled, 1, missing=1, picked=0)
    assert [(o.outcome, o.reason) for o in step.outputs] == [("partial", "cancelled")]


# -- allocation by stock (quotes) ----------------------------------------------------------------------------
def quoted(state: OrderState, sku: str, available: dict[str, int], layout: Layout, offset: int = 30):
    answer = StockQuote(
        quote_id=f"quote.acme.{state.order_id}.{sku}",
        tenant="acme",
        order_id=state.order_id,
        sku=sku,
        available=available,
        reply_to=state.inbox_key,
        ts=NOW,
    )
    return core.on_quote(state, answer, Stamp("orders.test.p0", offset), NOW + 3, layout)


def test_fewest_parcels_quotes_every_sku_then_reserves_the_whole_order_where_one_warehouse_can_ship_it() -> None:
    layout = msgspec.structs.replace(TWO_WAREHOUSES, allocation=AllocationPolicy(warehouse_order=["WH-A", "WH-B"]))
    step = core.on_snapshot(None, None, None, order(), STAMP, NOW, watermark=1_000, layout=layout)
    quotes = [o for o in step.outputs if isinstance(o, Quote)]
    assert [(q.sku, q.warehouses) for q in quotes] == [("A", ["WH-A", "WH-B"]), ("B", ["WH-A", "WH-B"])]
    assert not any(isinstance(o, Reserve) for o in step.outputs) and step.order.quoting == ["A", "B"]
    # WH-A (first by region) has A but not enough B; WH-B has both: one parcel instead of two.
    first = quoted(step.order, "A", {"WH-A": 5, "WH-B": 1}, layout)
    assert first.note == "quoted" and first.outputs == []
    assert quoted(first.order, "A", {"WH-A": 5, "WH-B": 1}, layout).note == "late_quote"  # a second copy
    last = quoted(first.order, "B", {"WH-A": 1, "WH-B": 9}, layout)
    assert last.note == "allocated" and last.order.quoting == [] and last.order.quotes == {}
    assert [(r.line_id, r.warehouses) for r in last.outputs] == [
        ("jd-s1-1#1", ["WH-B", "WH-A"]),
        ("jd-s1-1#2", ["WH-B", "WH-A"]),
    ]
    assert [r.seq for r in last.outputs] == [30 * SEQ_FANOUT, 30 * SEQ_FANOUT + 1]
    done = answer(answer(last.order, 1, warehouse="WH-B").order, 2, warehouse="WH-B")
    (allocation,) = [o for o in done.outputs if isinstance(o, OrderAllocation)]
    assert (allocation.strategy, allocation.quoted) == ("fewest-parcels", True)
    assert [(p.warehouse, p.line_ids) for p in allocation.parcels] == [("WH-B", ["jd-s1-1#1", "jd-s1-1#2"])]


def test_a_quote_after_the_order_was_cancelled_reserves_nothing_and_one_line_never_quotes() -> None:
    layout = msgspec.structs.replace(TWO_WAREHOUSES, allocation=AllocationPolicy(warehouse_order=["WH-A", "WH-B"]))
    step = core.on_snapshot(None, None, None, order(), STAMP, NOW, watermark=1_000, layout=layout)
    cancelled = snap(step.order, order(version=2_000, status=OrderStatus.CANCELLED))
    assert cancelled.order.phase is Phase.CANCELLED and not any(isinstance(o, Release) for o in cancelled.outputs)
    assert quoted(cancelled.order, "A", {"WH-A": 5}, layout).note == "late_quote"
    single = order(lines=[OrderLine(line_no=1, sku="A", quantity=1, unit_price_fen=100)])
    alone = core.on_snapshot(None, None, None, single, STAMP, NOW, watermark=1_000, layout=layout)
    assert [type(o) for o in alone.outputs] == [ReviewDecision, OrderOpened, Reserve]
