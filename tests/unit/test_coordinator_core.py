"""The reservation saga: one decision per order, releases for everything reserved when rejected."""

from __future__ import annotations

import pytest

from agents.coordinator.core import (
    ACCEPTED,
    L_RELEASED,
    PENDING,
    REJECTED,
    SEQ_FANOUT,
    Coordinator,
    Saga,
    Stamp,
)
from schemas.inventory import Release, Reserve
from schemas.order import Address, Buyer, Channel, Order, OrderLine, line_id
from schemas.review import CancelSaga
from schemas.saga import DecisionStatus, LineResult, LineStatus, RejectReason, SagaTimeout, result_id

T = "t1"
coord = Coordinator(timeout_ms=30_000)


def make_order(n_lines: int = 2, oid: str = "tmall-s1-100", dup_line_no: bool = False) -> Order:
    return Order(
        tenant=T,
        order_id=oid,
        channel=Channel.TMALL,
        shop_id="s1",
        platform_order_id="100",
        buyer=Buyer(id="b1"),
        receiver=Address(name="张三", province="浙江省", city="杭州市", street="文三路1号"),
        lines=[
            OrderLine(line_no=1 if dup_line_no else i + 1, sku=f"SKU-{i}", quantity=i + 1, unit_price_fen=990)
            for i in range(n_lines)
        ],
        created_at=1_000,
        ingested_at=2_000,
    )


def answer(order: Order, i: int, status: LineStatus, wh: str | None = "WH-A") -> LineResult:
    lid = line_id(order.order_id, i + 1)
    return LineResult(
        result_id=result_id(T, lid, status),
        tenant=T,
        order_id=order.order_id,
        line_id=lid,
        sku=f"SKU-{i}",
        status=status,
        reason=None if status is LineStatus.RESERVED else RejectReason.INSUFFICIENT_STOCK,
        warehouse=wh if status is LineStatus.RESERVED else None,
        quantity=i + 1,
        ts=5,
    )


def start(order: Order) -> Saga:
    step = coord.on_order(None, order, Stamp("coord.o0", 10), partition=0, now=100)
    assert step.changed and step.saga.status == PENDING
    return step.saga


def test_new_order_sends_one_reserve_per_line_with_stamps_from_the_offset() -> None:
    order = make_order(3)
    step = coord.on_order(None, order, Stamp("coord.o2", 7), partition=2, now=100)
    assert [type(c) for c in step.commands] == [Reserve] * 3
    assert [c.seq for c in step.commands] == [7 * SEQ_FANOUT + i for i in range(3)]
    assert {c.origin for c in step.commands} == {"coord.o2"}
    assert [c.key for c in step.commands] == [f"{T}:SKU-{i}" for i in range(3)]
    assert step.saga.deadline == 100 + 30_000 and step.saga.partition == 2
    assert step.decision is None


def test_all_lines_reserved_accepts_once() -> None:
    order = make_order(2)
    saga = start(order)
    s1 = coord.on_result(saga, answer(order, 0, LineStatus.RESERVED), Stamp("coord.r0", 1), now=200)
    assert s1.decision is None and s1.saga.status == PENDING
    s2 = coord.on_result(s1.saga, answer(order, 1, LineStatus.RESERVED, "WH-B"), Stamp("coord.r0", 2), now=300)
    assert s2.decision.status is DecisionStatus.ACCEPTED and s2.saga.status == ACCEPTED
    assert [ln.warehouse for ln in s2.decision.lines] == ["WH-A", "WH-B"]
    assert s2.decision.decided_at == 300 and s2.decision.ingested_at == 2_000
    again = coord.on_result(s2.saga, answer(order, 1, LineStatus.RESERVED), Stamp("coord.r0", 3), now=400)
    assert not again.changed and again.decision is None and not again.commands


def test_one_rejected_line_rejects_and_releases_what_was_reserved() -> None:
    order = make_order(3)
    saga = start(order)
    saga = coord.on_result(saga, answer(order, 0, LineStatus.RESERVED), Stamp("coord.r0", 1), now=200).saga
    step = coord.on_result(saga, answer(order, 1, LineStatus.REJECTED), Stamp("coord.r0", 2), now=300)
    assert step.decision.status is DecisionStatus.REJECTED
    assert step.decision.reason is RejectReason.INSUFFICIENT_STOCK
    assert [(type(c), c.line_id) for c in step.commands] == [(Release, line_id(order.order_id, 1))]
    # the third line answers "reserved" late: it is released at once, and no second decision is made
    late = coord.on_result(step.saga, answer(order, 2, LineStatus.RESERVED), Stamp("coord.r0", 3), now=400)
    assert late.decision is None and [c.line_id for c in late.commands] == [line_id(order.order_id, 3)]
    assert late.saga.lines[2].status == L_RELEASED
    # and the same late answer again does nothing
    dup = coord.on_result(late.saga, answer(order, 2, LineStatus.RESERVED), Stamp("coord.r0", 4), now=500)
    assert not dup.changed and not dup.commands


def test_timeout_rejects_a_pending_saga_and_releases_reserved_lines() -> None:
    order = make_order(2)
    saga = start(order)
    saga = coord.on_result(saga, answer(order, 0, LineStatus.RESERVED), Stamp("coord.r0", 1), now=200).saga
    early = SagaTimeout(tenant=T, order_id=order.order_id, deadline=saga.deadline, ts=saga.deadline - 1)
    assert not coord.on_timeout(saga, early, Stamp("coord.t0", 1), now=saga.deadline - 1).changed
    tick = SagaTimeout(tenant=T, order_id=order.order_id, deadline=saga.deadline, ts=saga.deadline)
    step = coord.on_timeout(saga, tick, Stamp("coord.t0", 2), now=saga.deadline)
    assert step.decision.status is DecisionStatus.REJECTED and step.decision.reason is RejectReason.TIMEOUT
    assert [c.line_id for c in step.commands] == [line_id(order.order_id, 1)]
    assert not coord.on_timeout(step.saga, tick, Stamp("coord.t0", 3), now=saga.deadline + 5).changed


def test_duplicate_order_has_no_effect() -> None:
    order = make_order(2)
    saga = start(order)
    step = coord.on_order(saga, order, Stamp("coord.o0", 11), partition=0, now=150)
    assert not step.changed and not step.commands and step.decision is None


def test_result_without_saga_gives_the_reservation_back() -> None:
    order = make_order(1)
    step = coord.on_result(None, answer(order, 0, LineStatus.RESERVED), Stamp("coord.r1", 5), now=10)
    assert [type(c) for c in step.commands] == [Release] and step.saga is None
    assert not coord.on_result(None, answer(order, 0, LineStatus.REJECTED), Stamp("coord.r1", 6), now=10).commands


def test_invalid_order_is_rejected_immediately() -> None:
    step = coord.on_order(None, make_order(2, dup_line_no=True), Stamp("coord.o0", 1), partition=0, now=5)
    assert step.decision.status is DecisionStatus.REJECTED
    assert step.decision.reason is RejectReason.INVALID_ORDER and not step.commands
    assert step.saga.status == REJECTED


def test_saga_state_round_trips() -> None:
    order = make_order(2)
    saga = start(order)
    saga = coord.on_result(saga, answer(order, 0, LineStatus.RESERVED), Stamp("coord.r0", 1), now=200).saga
    assert Saga.from_state(saga.to_state()) == saga


def test_core_does_not_mutate_the_saga_it_is_given() -> None:
    order = make_order(2)
    saga = start(order)
    before = saga.to_state()
    coord.on_result(saga, answer(order, 0, LineStatus.REJECTED), Stamp("coord.r0", 1), now=200)
    assert saga.to_state() == before


def test_stamp_sub_index_is_bounded() -> None:
    with pytest.raises(ValueError):
        Stamp("x", 1).seq(SEQ_FANOUT)


def cancel(order: Order, *lines: int) -> CancelSaga:
    return CancelSaga(
        tenant=T,
        order_id=order.order_id,
        line_ids=[line_id(order.order_id, n) for n in lines],
        reason="channel_cancelled",
        ts=1,
    )


def test_cancel_of_a_pending_saga_is_its_decision_and_releases_what_is_reserved() -> None:
    order = make_order(3)
    saga = start(order)
    saga = coord.on_result(saga, answer(order, 0, LineStatus.RESERVED), Stamp("coord.r0", 1), now=200).saga
    step = coord.on_cancel(saga, cancel(order), Stamp("coord.o0", 12), now=300)
    assert step.decision.status is DecisionStatus.CANCELLED and step.decision.reason is RejectReason.CANCELLED
    assert [c.line_id for c in step.commands] == [line_id(order.order_id, 1)]
    assert step.cancellation.kind.value == "order" and step.cancellation.released_line_ids == [
        line_id(order.order_id, 1)
    ]
    late = coord.on_result(step.saga, answer(order, 1, LineStatus.RESERVED), Stamp("coord.r0", 2), now=400)
    assert [c.line_id for c in late.commands] == [line_id(order.order_id, 2)] and late.decision is None
    assert not coord.on_result(late.saga, answer(order, 1, LineStatus.RESERVED), Stamp("coord.r0", 3), now=500).commands


def test_cancel_after_acceptance_releases_without_a_second_decision() -> None:
    order = make_order(2)
    saga = start(order)
    for i in range(2):
        saga = coord.on_result(saga, answer(order, i, LineStatus.RESERVED), Stamp("coord.r0", i), now=200).saga
    assert saga.status == ACCEPTED
    step = coord.on_cancel(saga, cancel(order), Stamp("coord.o0", 12), now=300)
    assert step.decision is None and len(step.commands) == 2 and step.saga.status == "cancelled"


def test_cancelling_the_missing_line_lets_a_pending_saga_accept() -> None:
    order = make_order(2)
    saga = start(order)
    saga = coord.on_result(saga, answer(order, 0, LineStatus.RESERVED), Stamp("coord.r0", 1), now=200).saga
    step = coord.on_cancel(saga, cancel(order, 2), Stamp("coord.o0", 12), now=300)
    assert step.decision.status is DecisionStatus.ACCEPTED and [ln.line_id for ln in step.decision.lines] == [
        line_id(order.order_id, 1)
    ]
    assert step.cancellation.kind.value == "lines" and not step.commands


def test_cancel_without_a_saga_does_nothing() -> None:
    assert not coord.on_cancel(None, cancel(make_order(1)), Stamp("coord.o0", 1), now=1).commands
