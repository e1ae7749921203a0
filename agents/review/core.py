"""The review stage's rules for one order (pure): which snapshot counts, what review decides, what it sends.

State per order (key ``tenant:order_id``): the last channel version applied and where the order stands:

* ``pending_payment`` — seen, not paid: nothing is reserved until it is (支付减库存);
* ``held`` — a rule (or the platform) says wait; the snapshot is kept so an operator can release it;
* ``approved`` — sent to the reservation saga (``StartSaga``); later line refunds become ``CancelSaga``;
* ``rejected`` / ``cancelled`` — terminal here, with the order's one decision already emitted;
* ``shipped`` — the channel says it shipped: refunds now become return requests, not cancellations.

A snapshot at or below the last applied version is a duplicate (a redelivered webhook, a repeated pull)
and has no effect: this is the in-stream dedupe that still holds when Redis at the edge is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from agents.review.rules import Evaluation, Facts, evaluate
from schemas.order import LineState, Order, OrderStatus, line_id
from schemas.review import (
    Action,
    CancellationKind,
    CancelSaga,
    FiredRule,
    OrderCancellation,
    Outcome,
    ReviewCommand,
    ReviewCommandKind,
    ReviewDecision,
    RuleSet,
    StartSaga,
    cancellation_id,
    review_id,
)
from schemas.saga import DecisionLine, DecisionStatus, OrderDecision, RejectReason, decision_id

PENDING_PAYMENT, HELD, APPROVED, REJECTED, CANCELLED, SHIPPED = (
    "pending_payment",
    "held",
    "approved",
    "rejected",
    "cancelled",
    "shipped",
)
CLOSED_LINE = (LineState.REFUNDING, LineState.CANCELLED)
KEEP = object()  # "no change" for the holds read model


@dataclass
class ReviewState:
    status: str
    version: int
    order: dict[str, Any] | None = None  # the snapshot, while it may still be approved
    lines: dict[str, str] = field(default_factory=dict)  # line_no -> LineState, once approved
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> ReviewState | None:
        if state is None:
            return None
        return cls(state["s"], state["v"], state.get("o"), dict(state.get("l", {})), list(state.get("r", [])))

    def to_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"s": self.status, "v": self.version}
        if self.order is not None:
            out["o"] = self.order
        if self.lines:
            out["l"] = self.lines
        if self.reasons:
            out["r"] = self.reasons
        return out

    def snapshot(self) -> Order:
        return msgspec.convert(self.order, Order)


@dataclass
class Step:
    state: ReviewState | None
    changed: bool = False
    outputs: list[Any] = field(default_factory=list)
    hold: Any = KEEP  # a dict: put in the holds read model; None: remove; KEEP: no change
    note: str = ""


def hold_summary(order: Order, evaluation: Evaluation, now: int) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "channel": order.channel.value,
        "buyer": order.buyer.id,
        "amount_fen": order.goods_fen + order.shipping_fen,
        "currency": order.currency,
        "reasons": evaluation.reasons,
        "rules": [f.rule_id for f in evaluation.fired],
        "held_at": now,
        "version": order.version,
    }


class Review:
    """Review rules around the rule engine: built-in holds, state transitions, outputs."""

    def on_order(self, state: ReviewState | None, order: Order, rules: RuleSet | None, facts: Facts, now: int) -> Step:
        if state is not None and order.version <= state.version:
            return Step(state, note="duplicate")
        status = order.status
        if status is OrderStatus.PENDING_PAYMENT:
            if state is None or state.status == PENDING_PAYMENT:
                return Step(ReviewState(PENDING_PAYMENT, order.version, _dump(order)), True, note="awaiting_payment")
            return Step(replace(state, version=order.version), True, note="ignored_regress")
        if status is OrderStatus.CANCELLED or all(ln.status is LineState.CANCELLED for ln in order.lines):
            return self._cancel(state, order, "channel_cancelled", now)
        if status in (OrderStatus.SHIPPED, OrderStatus.FINISHED):
            return self._after_shipment(state, order, now)
        if state is None or state.status in (PENDING_PAYMENT, HELD):
            return self._review(state, order, rules, facts, now, actor="rules")
        if state.status == APPROVED:
            return self._line_changes(state, order, now)
        return Step(replace(state, version=order.version), True, note="ignored_closed")

    def on_command(self, state: ReviewState | None, cmd: ReviewCommand, now: int) -> Step:
        if state is None or state.status != HELD or state.order is None:
            return Step(state, note="not_held")
        order = state.snapshot()
        if cmd.action is ReviewCommandKind.RELEASE:
            evaluation = Evaluation(Action.APPROVE, [], [])
            return self._approve(order, evaluation, state, now, actor=cmd.actor, released=True)
        evaluation = Evaluation(
            Action.REJECT,
            [
                FiredRule(
                    rule_id="operator",
                    kind="operator",
                    action=Action.REJECT,
                    reason="operator_rejected",
                    detail=cmd.note,
                )
            ],
            [],
        )
        return self._reject(order, evaluation, state, now, actor=cmd.actor)

    # -- transitions ----------------------------------------------------------------------------------
    def _review(
        self, state: ReviewState | None, order: Order, rules: RuleSet | None, facts: Facts, now: int, actor: str
    ) -> Step:
        evaluation = evaluate(order, rules, facts)
        builtin = []
        if order.status is OrderStatus.HOLD_BY_PLATFORM:
            builtin.append(_builtin_hold("platform_hold", "the channel says not to ship yet"))
        refunding = [ln.line_no for ln in order.lines if ln.status is LineState.REFUNDING]
        if refunding:
            builtin.append(_builtin_hold("refund_pending", f"refund requested on lines {refunding}"))
        if builtin and evaluation.action is not Action.REJECT:
            # Built-in holds are not overridden by an allow-list: the channel itself said wait.
            evaluation = Evaluation(Action.HOLD, evaluation.fired + builtin, evaluation.skipped)
        if evaluation.action is Action.REJECT:
            return self._reject(order, evaluation, state, now, actor)
        if evaluation.action is Action.HOLD:
            outcome = Outcome.HELD
            decision = self._review_decision(order, outcome, evaluation, now, actor)
            new = ReviewState(HELD, order.version, _dump(order), reasons=evaluation.reasons)
            return Step(new, True, [decision], hold_summary(order, evaluation, now), note="held")
        return self._approve(order, evaluation, state, now, actor, released=state is not None and state.status == HELD)

    def _approve(
        self, order: Order, evaluation: Evaluation, state: ReviewState | None, now: int, actor: str, released: bool
    ) -> Step:
        active = [ln for ln in order.lines if ln.status not in CLOSED_LINE]
        saga_order = msgspec.structs.replace(order, lines=active)
        outcome = Outcome.RELEASED if released else Outcome.APPROVED
        outputs: list[Any] = [
            StartSaga(order=saga_order),
            self._review_decision(order, outcome, evaluation, now, actor),
        ]
        new = ReviewState(APPROVED, order.version, lines={str(ln.line_no): ln.status.value for ln in order.lines})
        return Step(
            new, True, outputs, None if state is not None and state.status == HELD else KEEP, note=outcome.value
        )

    def _reject(self, order: Order, evaluation: Evaluation, state: ReviewState | None, now: int, actor: str) -> Step:
        detail = "; ".join(f"{f.rule_id}: {f.detail}" for f in evaluation.fired if f.action is Action.REJECT)
        outputs = [
            _decision(order, DecisionStatus.REJECTED, RejectReason.REVIEW, detail, now),
            self._review_decision(order, Outcome.REJECTED, evaluation, now, actor),
        ]
        was_held = state is not None and state.status == HELD
        return Step(
            ReviewState(REJECTED, order.version, reasons=evaluation.reasons),
            True,
            outputs,
            None if was_held else KEEP,
            note="rejected",
        )

    def _cancel(self, state: ReviewState | None, order: Order, reason: str, now: int) -> Step:
        if state is not None and state.status == APPROVED:
            # The saga owns the reservations: it releases them and records the cancellation.
            cancel = CancelSaga(tenant=order.tenant, order_id=order.order_id, reason=reason, ts=now)
            return Step(ReviewState(CANCELLED, order.version), True, [cancel], note="cancel_forwarded")
        if state is not None and state.status in (REJECTED, CANCELLED, SHIPPED):
            return Step(replace(state, version=order.version), True, note="ignored_closed")
        outputs = [
            _decision(order, DecisionStatus.CANCELLED, RejectReason.CANCELLED, reason, now),
            OrderCancellation(
                cancellation_id=cancellation_id(order.tenant, order.order_id, CancellationKind.ORDER, []),
                tenant=order.tenant,
                order_id=order.order_id,
                kind=CancellationKind.ORDER,
                reason=reason,
                stage="review",
                ts=now,
            ),
            self._review_decision(order, Outcome.CANCELLED, Evaluation(Action.REJECT, [], []), now, "channel"),
        ]
        was_held = state is not None and state.status == HELD
        return Step(ReviewState(CANCELLED, order.version), True, outputs, None if was_held else KEEP, note="cancelled")

    def _line_changes(self, state: ReviewState, order: Order, now: int) -> Step:
        """An approved order's update: lines refunded before shipment are cancelled in the saga."""
        closing = [
            line_id(order.order_id, ln.line_no)
            for ln in order.lines
            if ln.status in CLOSED_LINE and state.lines.get(str(ln.line_no)) == LineState.ACTIVE.value
        ]
        lines = dict(state.lines) | {str(ln.line_no): ln.status.value for ln in order.lines}
        new = replace(state, version=order.version, lines=lines)
        if not closing:
            return Step(new, True, note="update")
        cancel = CancelSaga(
            tenant=order.tenant, order_id=order.order_id, line_ids=closing, reason="line_refund", ts=now
        )
        return Step(new, True, [cancel], note="lines_cancel_forwarded")

    def _after_shipment(self, state: ReviewState | None, order: Order, now: int) -> Step:
        known = state.lines if state is not None else {}
        returning = [
            line_id(order.order_id, ln.line_no)
            for ln in order.lines
            if ln.status in CLOSED_LINE and known.get(str(ln.line_no)) not in (s.value for s in CLOSED_LINE)
        ]
        lines = dict(known) | {str(ln.line_no): ln.status.value for ln in order.lines}
        new = ReviewState(SHIPPED, order.version, lines=lines)
        if not returning:
            return Step(new, True, note="shipped")
        request = OrderCancellation(
            cancellation_id=cancellation_id(order.tenant, order.order_id, CancellationKind.RETURN_REQUESTED, returning),
            tenant=order.tenant,
            order_id=order.order_id,
            kind=CancellationKind.RETURN_REQUESTED,
            line_ids=returning,
            reason="refund_after_shipment",
            stage="review",
            ts=now,
        )
        return Step(new, True, [request], note="return_requested")

    @staticmethod
    def _review_decision(
        order: Order, outcome: Outcome, evaluation: Evaluation, now: int, actor: str
    ) -> ReviewDecision:
        return ReviewDecision(
            review_id=review_id(order.tenant, order.order_id, order.version, outcome),
            tenant=order.tenant,
            order_id=order.order_id,
            channel=order.channel,
            outcome=outcome,
            reasons=evaluation.reasons,
            fired=evaluation.fired,
            skipped=evaluation.skipped,
            order_version=order.version,
            actor=actor,
            ts=now,
        )


def _decision(order: Order, status: DecisionStatus, reason: RejectReason, detail: str, now: int) -> OrderDecision:
    return OrderDecision(
        decision_id=decision_id(order.tenant, order.order_id),
        tenant=order.tenant,
        order_id=order.order_id,
        channel=order.channel,
        status=status,
        reason=reason,
        detail=detail[:2000],
        lines=[
            DecisionLine(line_id=line_id(order.order_id, ln.line_no), sku=ln.sku, quantity=ln.quantity)
            for ln in order.lines
        ],
        order_created_at=order.created_at,
        ingested_at=order.ingested_at,
        decided_at=now,
    )


def _builtin_hold(name: str, detail: str) -> FiredRule:
    """A hold every tenant gets, whatever its rule file says."""
    return FiredRule(rule_id=name, kind="builtin", action=Action.HOLD, reason=name, detail=detail)


def _dump(order: Order) -> dict[str, Any]:
    return msgspec.to_builtins(order)
