"""The order stage's rules (pure): review (审单), the reservation saga (预占) and the one decision per order.

Review and saga are one stage because they share one key — the buyer — and one inbox: the order's channel
snapshots, the operator's actions, the inventory's answers and the rule versions arrive on one topic in one
order, so a replay sees exactly what the first run saw and decides exactly the same (I7).

Order lifecycle:

* a snapshot not yet paid waits (``awaiting_payment``): nothing is reserved until it is paid (支付减库存);
* a paid snapshot is reviewed: reject, hold for an operator (``held``), or approve;
* approval sends one reserve per line to the inventory (key ``tenant:sku``) and the saga waits for the answers
  (``reserving``). There is no timeout: with one writer per SKU reading a durable log an answer is late, never
  lost, and a slow or failing-over stock partition must not turn into refused sales. When the tenant allocates
  by stock (``fewest-parcels``, ``stock-first``) and a multi-line order has more than one candidate warehouse,
  the saga first asks each SKU's writer what is available where (a quote), allocates on the answers (分仓), and
  then reserves each line in its chosen warehouse first;
* all lines reserved → **accepted**; a line refused → **rejected**, and every line that holds a reservation is
  released (a reservation that arrives later is released when it arrives);
* the channel may cancel the order or some lines before shipment (released), or refund after shipment (a return
  request). A change the engine cannot apply to an approved order (another SKU or quantity, a new line, the
  platform locking it) is held for an operator — never ignored;
* a line short-picked in its warehouse (reported by fulfilment) has its missing units re-reserved in another
  warehouse as a *remainder line* (``<line>/r``) that ships as a parcel of its own, or ships partial — as the
  tenant's layout says (``short_pick``), or when no other warehouse has the units.

Every input is idempotent against the state (a second copy of a snapshot, an answer for a line that already
has one): no second effect. Outputs carry deterministic ids, and their time is the input record's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from agents.fulfilment.allocation import LineRequest, allocate_ranked, candidates
from agents.fulfilment.merge import merge_key
from agents.orders.rules import Evaluation, Facts, evaluate, velocity_windows
from agents.orders.state import (
    APPROVED_PHASES,
    BuyerState,
    Decided,
    Hold,
    HoldKind,
    OrderState,
    Phase,
    SagaLine,
    SagaLineState,
)
from engine.runtime.stamp import Stamp
from schemas.aftersales import OrderOpened, PickupLine, PickupReady, ReturnLine, ReturnRequested, SoldLine
from schemas.deadletter import ReasonCode
from schemas.fulfilment import (
    AllocatedParcel,
    Layout,
    LineShort,
    OrderAllocation,
    OrderWithdrawn,
    ParcelAccepted,
    ShipmentLine,
    ShortPickOutcome,
)
from schemas.inbox import OperatorAction
from schemas.inventory import Quote, Release, Reserve, quote_id, release_id, reserve_id
from schemas.order import REMAINDER, Channel, LineState, Order, OrderStatus, buyer_key, line_id, validate_order
from schemas.review import (
    Action,
    CancellationKind,
    FiredRule,
    OperatorActionKind,
    OrderCancellation,
    Outcome,
    ReviewDecision,
    RuleSet,
    cancellation_id,
    review_id,
)
from schemas.saga import (
    DecisionLine,
    DecisionStatus,
    LineResult,
    LineStatus,
    OrderDecision,
    RejectReason,
    StockQuote,
    decision_id,
)

CLOSED_LINE = (LineState.REFUNDING, LineState.CANCELLED)
STAGE = "orders"
#: A remainder line's id is its line's id and this: the units a short pick left to re-reserve elsewhere.


@dataclass(slots=True)
class HoldEntry:
    """A change of the holds read model (Redis), applied after the transaction commits, only if newer than what
    Redis shows for the order (engine.readmodels.holds)."""

    tenant: str
    order_id: str
    summary: dict[str, Any] | None  # None: no longer held
    #: the offset of the order-inbox record whose processing made the change (set by the stage, which knows it)
    version: int | None = None


@dataclass(slots=True)
class Step:
    """What one input did."""

    order: OrderState | None
    order_changed: bool = False
    buyer: BuyerState | None = None  # set when the buyer's state changed
    outputs: list[Any] = field(default_factory=list)
    holds: list[HoldEntry] = field(default_factory=list)
    note: str = ""
    refused: tuple[ReasonCode, str] | None = None  # a valid input that cannot be applied (dead-lettered, never lost)


class OrderRules:
    """The order stage's rules, parameterised by how long a decided order is remembered (channel time)."""

    def __init__(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms

    # -- channel snapshots ------------------------------------------------------------------------------
    def on_snapshot(
        self,
        state: OrderState | None,
        buyer: BuyerState | None,
        rules: RuleSet | None,
        order: Order,
        stamp: Stamp,
        now: int,
        watermark: int,
        layout: Layout | None = None,
    ) -> Step:
        if state is None and order.created_at + self.retention_ms <= watermark:
            # Decided and forgotten long ago, or a very late sync: either way no decision can be made on it now,
            # and silently dropping it would lose a late refund or a genuinely new order.
            detail = (
                f"order {order.order_id} was created at {order.created_at}, more than the order retention "
                f"({self.retention_ms // 1000} s) before its partition's event time {watermark}: it was decided and "
                "forgotten, or reached the engine too late; not applied"
            )
            return Step(None, note="forgotten_order", refused=(ReasonCode.FORGOTTEN_ORDER, detail))
        if state is not None and order.version <= state.version:
            return Step(state, note="duplicate")
        closed = order.status is OrderStatus.CANCELLED or all(ln.status is LineState.CANCELLED for ln in order.lines)
        shipped = order.status in (OrderStatus.SHIPPED, OrderStatus.FINISHED)
        if state is None or state.phase in (Phase.AWAITING_PAYMENT, Phase.HELD):
            if order.status is OrderStatus.PENDING_PAYMENT:
                return self._awaiting_payment(state, order, now)
            if closed:
                return self._cancel_unapproved(state, order, "channel_cancelled", "channel", now)
            if shipped:
                return self._shipped(state, order, now)
            return self._review(state, buyer, rules, order, stamp, now, layout)
        if state.phase in APPROVED_PHASES:
            if closed:
                return self._cancel_approved(state, order.version, "channel_cancelled", stamp, now)
            if shipped:
                return self._shipped(state, order, now)
            return self._changes_after_approval(state, order, stamp, now)
        if state.phase is Phase.SHIPPED:
            return self._shipped(state, order, now)
        return Step(msgspec.structs.replace(state, version=order.version), True, note="ignored_closed")

    def _awaiting_payment(self, state: OrderState | None, order: Order, now: int) -> Step:
        if state is None:
            new = _new_state(order, Phase.AWAITING_PAYMENT)
            new.snapshot = order
            decision = _review_decision(
                order, Outcome.AWAITING_PAYMENT, Evaluation(Action.HOLD, [], []), now, "channel"
            )
            return Step(new, True, outputs=[decision], note="awaiting_payment")
        if state.phase is Phase.AWAITING_PAYMENT:
            return Step(
                msgspec.structs.replace(state, version=order.version, snapshot=order), True, note="unpaid_update"
            )
        return Step(msgspec.structs.replace(state, version=order.version), True, note="ignored_regress")

    def _review(
        self,
        state: OrderState | None,
        buyer: BuyerState | None,
        rules: RuleSet | None,
        order: Order,
        stamp: Stamp,
        now: int,
        layout: Layout | None,
    ) -> Step:
        new_buyer, facts = _count_velocity(buyer, rules, order)
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
        was_held = state is not None and state.phase is Phase.HELD
        if evaluation.action is Action.REJECT:
            step = self._reject_unapproved(state, order, evaluation, now, "rules")
        elif evaluation.action is Action.HOLD:
            new = state if state is not None else _new_state(order, Phase.HELD)
            new = msgspec.structs.replace(
                new,
                version=order.version,
                phase=Phase.HELD,
                snapshot=order,
                hold=_hold(HoldKind.REVIEW, evaluation, order, now),
            )
            decision = _review_decision(order, Outcome.HELD, evaluation, now, "rules")
            step = Step(new, True, outputs=[decision], note="held")
            step.holds.append(HoldEntry(order.tenant, order.order_id, hold_summary(new)))
        else:
            step = self._approve(state, order, evaluation, Outcome.APPROVED, "rules", stamp, now, layout)
            if was_held:
                step.holds.append(HoldEntry(order.tenant, order.order_id, None))
        step.buyer = new_buyer
        return step

    def _approve(
        self,
        state: OrderState | None,
        order: Order,
        evaluation: Evaluation,
        outcome: Outcome,
        actor: str,
        stamp: Stamp,
        now: int,
        layout: Layout | None,
    ) -> Step:
        base = state if state is not None else _new_state(order, Phase.RESERVING)
        review = _review_decision(order, outcome, evaluation, now, actor)
        active = [ln for ln in order.lines if ln.status not in CLOSED_LINE]
        problems = validate_order(order)
        if problems or not active:
            reason = RejectReason.INVALID_ORDER if problems else RejectReason.CANCELLED
            status = DecisionStatus.REJECTED if problems else DecisionStatus.CANCELLED
            detail = "; ".join(problems) if problems else "no line is left to ship"
            new = self._decide(base, order.version, status, reason, detail, now)
            new.snapshot, new.hold = None, None
            return Step(new, True, outputs=[review, _decision(new, order_lines(order))], note=status.value)
        lines = [
            SagaLine(line_id=line_id(order.order_id, ln.line_no), line_no=ln.line_no, sku=ln.sku, quantity=ln.quantity)
            for ln in active
        ]
        new = msgspec.structs.replace(
            base,
            version=order.version,
            phase=Phase.RESERVING,
            snapshot=None,
            hold=None,
            lines=lines,
            channel_lines={str(ln.line_no): ln.status for ln in order.lines},
            ship_group=merge_key(order.tenant, order.shop_id, buyer_key(order), order.receiver),
            receiver=order.receiver,
            delivery=order.delivery,
            pickup_store=order.pickup_store,
        )
        opened = order_opened(order, now)  # what aftersales needs of it later (write-back, returns, pickup)
        # 分仓: the warehouses that may ship, best first; each line is reserved in the first with its units.
        # A pickup or counter order is reserved in its store only.
        if order.delivery != "ship" and order.pickup_store:
            ranked = [order.pickup_store]
        else:
            ranked = candidates(layout, order.shop_id, order.receiver) if layout is not None else []
        new.ranking = ranked
        new.strategy = layout.allocation.strategy if layout is not None else "fullest"
        if order.delivery == "ship" and _allocates_by_stock(layout, lines, ranked):
            new.quoted = True
            new.quoting = sorted({ln.sku for ln in lines})
            quotes = [
                Quote(
                    command_id=quote_id(order.tenant, order.order_id, sku),
                    tenant=order.tenant,
                    sku=sku,
                    origin=stamp.origin,
                    seq=stamp.seq(i),
                    ts=now,
                    order_id=order.order_id,
                    reply_to=new.inbox_key,
                    warehouses=ranked,
                )
                for i, sku in enumerate(new.quoting)
            ]
            return Step(new, True, outputs=[review, opened, *quotes], note=outcome.value)
        reserves = _reserves(new, lines, {}, stamp, now)
        return Step(new, True, outputs=[review, opened, *reserves], note=outcome.value)

    def _reject_unapproved(
        self, state: OrderState | None, order: Order, evaluation: Evaluation, now: int, actor: str
    ) -> Step:
        detail = "; ".join(f"{f.rule_id}: {f.detail}" for f in evaluation.fired if f.action is Action.REJECT)
        base = state if state is not None else _new_state(order, Phase.REJECTED)
        new = self._decide(base, order.version, DecisionStatus.REJECTED, RejectReason.REVIEW, detail, now)
        new.snapshot, new.hold = None, None
        outputs = [
            _decision(new, order_lines(order)),
            _review_decision(order, Outcome.REJECTED, evaluation, now, actor),
        ]
        step = Step(new, True, outputs=outputs, note="rejected_by_review")
        if state is not None and state.phase is Phase.HELD:
            step.holds.append(HoldEntry(order.tenant, order.order_id, None))
        return step

    def _cancel_unapproved(self, state: OrderState | None, order: Order, reason: str, actor: str, now: int) -> Step:
        base = state if state is not None else _new_state(order, Phase.CANCELLED)
        new = self._decide(base, order.version, DecisionStatus.CANCELLED, RejectReason.CANCELLED, reason, now)
        new.snapshot, new.hold = None, None
        cancellation = _cancellation(new, CancellationKind.ORDER, [], [], reason, now)
        review = _review_decision(order, Outcome.CANCELLED, Evaluation(Action.REJECT, [], []), now, actor)
        step = Step(new, True, outputs=[_decision(new, order_lines(order)), cancellation, review], note="cancelled")
        if state is not None and state.phase is Phase.HELD:
            step.holds.append(HoldEntry(order.tenant, order.order_id, None))
        return step

    def _cancel_approved(self, state: OrderState, version: int, reason: str, stamp: Stamp, now: int) -> Step:
        """The whole order is cancelled after approval: every reservation is given back."""
        new = msgspec.structs.replace(state, version=version, lines=[msgspec.structs.replace(ln) for ln in state.lines])
        commands, released = _cancel_lines(new, {ln.line_id for ln in new.lines}, stamp, now)
        outputs: list[Any] = list(commands)
        if new.phase is Phase.RESERVING:
            new = self._decide(new, version, DecisionStatus.CANCELLED, RejectReason.CANCELLED, reason, now)
            outputs.append(_decision(new, _saga_lines(new, accepted_only=False)))
        else:  # accepted: the decision stands; the cancellation record says what followed
            if state.delivery == "ship":
                outputs += _withdrawals(state, set(), now)  # fulfilment takes it out of what waits to ship
            new.phase = Phase.CANCELLED
            new.expires_at = version + self.retention_ms
        outputs.append(_cancellation(new, CancellationKind.ORDER, [], released, reason, now))
        step = Step(new, True, outputs=outputs, note="cancelled_after_approval")
        if state.hold is not None:
            new.hold = None
            step.holds.append(HoldEntry(state.tenant, state.order_id, None))
        return step

    def _changes_after_approval(self, state: OrderState, order: Order, stamp: Stamp, now: int) -> Step:
        new = msgspec.structs.replace(
            state,
            version=order.version,
            lines=[msgspec.structs.replace(ln) for ln in state.lines],
            channel_lines={str(ln.line_no): ln.status for ln in order.lines},
        )
        outputs: list[Any] = []
        holds: list[HoldEntry] = []
        note = "update"
        closing_nos = {
            ln.line_no
            for ln in order.lines
            if ln.status in CLOSED_LINE and state.channel_lines.get(str(ln.line_no)) == LineState.ACTIVE
        }
        closing = {ln.line_id for ln in new.lines if ln.line_no in closing_nos}  # with its remainder lines
        live = {ln.line_id for ln in new.lines if ln.state is not SagaLineState.CANCELLED}
        if closing & live:
            if live <= closing:
                return self._cancel_approved(state, order.version, "line_refund", stamp, now)
            commands, released = _cancel_lines(new, closing & live, stamp, now)
            outputs += commands
            outputs.append(
                _cancellation(new, CancellationKind.LINES, sorted(closing & live), released, "line_refund", now)
            )
            note = "lines_cancelled"
            if new.phase is Phase.RESERVING and _complete(new):
                new = self._accept(new, now)
                outputs += _accepted(new, now)
            elif new.phase is Phase.ACCEPTED:
                outputs += _withdrawals(state, closing & live, now)
        reasons = _amendments(new, order)
        if order.status is OrderStatus.HOLD_BY_PLATFORM:
            reasons.append("platform_hold")
        if reasons:
            evaluation = Evaluation(Action.HOLD, [_builtin_hold(r, _AMENDMENT_DETAIL[r]) for r in reasons], [])
            new.hold = _hold(HoldKind.AMENDMENT, evaluation, order, now)
            outputs.append(_review_decision(order, Outcome.HELD, evaluation, now, "channel"))
            holds.append(HoldEntry(order.tenant, order.order_id, hold_summary(new)))
            note = "held_after_approval"
        return Step(new, True, outputs=outputs, holds=holds, note=note)

    def _shipped(self, state: OrderState | None, order: Order, now: int) -> Step:
        """The channel says the order left: refunds from now on are return requests (nothing to release)."""
        known = state.channel_lines if state is not None else {}
        returning = [
            line_id(order.order_id, ln.line_no)
            for ln in order.lines
            if ln.status in CLOSED_LINE and known.get(str(ln.line_no)) not in CLOSED_LINE
        ]
        base = state if state is not None else _new_state(order, Phase.SHIPPED)
        new = msgspec.structs.replace(
            base,
            version=order.version,
            phase=Phase.SHIPPED,
            snapshot=None,
            hold=None,
            channel_lines={str(ln.line_no): ln.status for ln in order.lines},
            expires_at=order.version + self.retention_ms,
        )
        step = Step(new, True, note="shipped")
        if state is None or state.phase in (Phase.AWAITING_PAYMENT, Phase.HELD):
            step.outputs.append(
                _review_decision(order, Outcome.SHIPPED, Evaluation(Action.APPROVE, [], []), now, "channel")
            )
        if state is not None and (state.phase is Phase.HELD or state.hold is not None):
            step.holds.append(HoldEntry(order.tenant, order.order_id, None))
        if returning:
            step.outputs.append(
                _cancellation(new, CancellationKind.RETURN_REQUESTED, returning, [], "refund_after_shipment", now)
            )
            quantities = {line_id(order.order_id, ln.line_no): ln.quantity for ln in order.lines}
            step.outputs.append(
                ReturnRequested(  # 退货申请 from the channel: aftersales receives the goods and settles it
                    tenant=order.tenant,
                    order_id=order.order_id,
                    return_id=f"r.{order.order_id}.v{order.version}",
                    lines=[ReturnLine(line_id=line, quantity=quantities[line]) for line in returning],
                    reason="refund_after_shipment",
                    source="channel",
                    ts=now,
                )
            )
            step.note = "return_requested"
        return step

    # -- the inventory's answers ------------------------------------------------------------------------
    def on_result(self, state: OrderState | None, result: LineResult, stamp: Stamp, now: int) -> Step:
        found = _find(state, result.line_id) if state is not None else None
        if state is None or found is None:
            # No saga knows this line (its state was forgotten, or it never existed): give a reservation back.
            if result.status is LineStatus.RESERVED:
                release = _release(
                    result.tenant, result.order_id, result.line_id, result.sku, result.reply_to, stamp, 0, now
                )
                return Step(state, outputs=[release], note="orphan_result")
            return Step(state, note="orphan_result")
        i, line = found
        new = msgspec.structs.replace(state, lines=[msgspec.structs.replace(ln) for ln in state.lines])
        line = new.lines[i]
        if line.state is SagaLineState.CANCELLED:
            if result.status is LineStatus.RESERVED and line.warehouse is None:
                line.warehouse = result.warehouse
                release = _release(new.tenant, new.order_id, line.line_id, line.sku, new.inbox_key, stamp, i, now)
                return Step(new, True, outputs=[release], note="late_reserved_released")
            return Step(state, note="duplicate_result")
        if line.state is not SagaLineState.AWAITING:
            return Step(state, note="duplicate_result")
        if line.remainder_of is not None and new.phase is Phase.ACCEPTED:
            return self._remainder_answered(new, line, result, now)
        if new.phase is Phase.RESERVING:
            if result.status is LineStatus.RESERVED:
                line.state, line.warehouse = SagaLineState.RESERVED, result.warehouse
                if _complete(new):
                    new = self._accept(new, now)
                    return Step(new, True, outputs=_accepted(new, now), note="accepted")
                return Step(new, True, note="line_reserved")
            line.state = SagaLineState.REFUSED
            reason = result.reason or RejectReason.INSUFFICIENT_STOCK
            return self._reject_saga(new, reason, f"line {line.line_id} ({line.sku}): {reason.value}", stamp, now)
        # A late answer: the order was rejected or cancelled while this reserve was in flight.
        if result.status is LineStatus.RESERVED:
            line.state, line.warehouse = SagaLineState.RELEASED, result.warehouse
            release = _release(new.tenant, new.order_id, line.line_id, line.sku, new.inbox_key, stamp, i, now)
            return Step(new, True, outputs=[release], note="late_reserved_released")
        line.state = SagaLineState.REFUSED
        return Step(new, True, note="late_refused")

    # -- stock quotes (分仓 by stock) ----------------------------------------------------------------------
    def on_quote(
        self, state: OrderState | None, answer: StockQuote, stamp: Stamp, now: int, layout: Layout | None
    ) -> Step:
        """One SKU's availability; with the last one, allocate the order and reserve each line where chosen."""
        if state is None or state.phase is not Phase.RESERVING or answer.sku not in state.quoting:
            return Step(state, note="late_quote")  # decided meanwhile (cancelled), or a second copy
        new = msgspec.structs.replace(
            state,
            quoting=[sku for sku in state.quoting if sku != answer.sku],
            quotes={**state.quotes, answer.sku: dict(answer.available)},
        )
        if new.quoting:
            return Step(new, True, note="quoted")
        waiting = [ln for ln in new.lines if ln.state is SagaLineState.AWAITING]
        chosen: dict[str, str] = {}
        if layout is not None:
            requests = [LineRequest(ln.line_id, ln.sku, ln.quantity) for ln in waiting]
            allocation = allocate_ranked(layout, new.ranking, requests, new.quotes)
            chosen = {line: parcel.warehouse for parcel in allocation.parcels for line in parcel.line_ids}
        new.quotes = {}
        return Step(new, True, outputs=_reserves(new, waiting, chosen, stamp, now), note="allocated")

    # -- short picks --------------------------------------------------------------------------------------
    def on_short(
        self, state: OrderState | None, short: LineShort, stamp: Stamp, now: int, layout: Layout | None
    ) -> Step:
        """A line came up short in its warehouse: re-reserve the missing units elsewhere, or ship partial."""
        found = _find(state, short.line_id) if state is not None else None
        if state is None or found is None:
            return Step(state, note="orphan_short")  # forgotten: the stock side has corrected the count already
        i, line = found
        if line.short_by is not None:
            return Step(state, note="duplicate_short")
        new = msgspec.structs.replace(state, lines=[msgspec.structs.replace(ln) for ln in state.lines])
        line = new.lines[i]
        line.short, line.short_by = short.missing, short.pick_list_id
        if new.phase is not Phase.ACCEPTED or line.state is not SagaLineState.RESERVED:
            return Step(
                new,
                True,
                outputs=[_short_outcome(new, line, short.warehouse, "cancelled", None, now)],
                note="short_after_cancel",
            )
        if layout is not None and layout.short_pick == "partial":
            return Step(
                new,
                True,
                outputs=[_short_outcome(new, line, short.warehouse, "policy", None, now)],
                note="short_partial",
            )
        exclude = sorted({*line.exclude, short.warehouse})
        remainder = SagaLine(
            line_id=f"{line.line_id}{REMAINDER}",
            line_no=line.line_no,
            sku=line.sku,
            quantity=short.missing,
            remainder_of=line.line_id,
            exclude=exclude,
        )
        new.lines.append(remainder)
        reserve = _reserves(new, [remainder], {}, stamp, now)
        return Step(new, True, outputs=reserve, note="short_reallocating")

    def _remainder_answered(self, new: OrderState, line: SagaLine, result: LineResult, now: int) -> Step:
        parent = _find(new, line.remainder_of or "")
        short_at = parent[1].warehouse if parent is not None else None
        if result.status is LineStatus.RESERVED:
            line.state, line.warehouse = SagaLineState.RESERVED, result.warehouse
            parcel = ParcelAccepted(
                tenant=new.tenant,
                order_id=new.order_id,
                shop_id=new.shop_id,
                warehouse=result.warehouse or "",
                merge_key=_ship_group(new),
                receiver=new.receiver,
                lines=[ShipmentLine(order_id=new.order_id, line_id=line.line_id, sku=line.sku, quantity=line.quantity)],
                reply_to=new.inbox_key,
                reallocated=True,
                ts=now,
            )
            outcome = _short_outcome(new, parent[1] if parent else line, short_at, "reallocated", line, now)
            return Step(new, True, outputs=[parcel, outcome], note="short_reallocated")
        line.state = SagaLineState.REFUSED
        outcome = _short_outcome(new, parent[1] if parent else line, short_at, "no_stock", None, now)
        return Step(new, True, outputs=[outcome], note="short_partial")

    def _accept(self, state: OrderState, now: int) -> OrderState:
        return self._decide(state, state.version, DecisionStatus.ACCEPTED, None, "", now)

    def _reject_saga(self, state: OrderState, reason: RejectReason, detail: str, stamp: Stamp, now: int) -> Step:
        commands = []
        for i, ln in enumerate(state.lines):
            if ln.state is SagaLineState.RESERVED:
                ln.state = SagaLineState.RELEASED
                commands.append(
                    _release(state.tenant, state.order_id, ln.line_id, ln.sku, state.inbox_key, stamp, i, now)
                )
        new = self._decide(state, state.version, DecisionStatus.REJECTED, reason, detail, now)
        step = Step(
            new, True, outputs=[*commands, _decision(new, _saga_lines(new, accepted_only=False))], note="rejected"
        )
        if state.hold is not None:
            new.hold = None
            step.holds.append(HoldEntry(state.tenant, state.order_id, None))
        return step

    # -- operators ----------------------------------------------------------------------------------------
    def on_operator(
        self, state: OrderState | None, action: OperatorAction, stamp: Stamp, now: int, layout: Layout | None = None
    ) -> Step:
        if action.action is OperatorActionKind.CANCEL:  # an accepted order called off before it left
            if state is None or state.phase not in APPROVED_PHASES:
                return Step(state, note="not_cancellable")
            step = self._cancel_approved(state, state.version, action.note or "operator_cancelled", stamp, now)
            if state.hold is not None:
                step.holds.append(HoldEntry(state.tenant, state.order_id, None))
            return step
        if state is None or (state.phase is not Phase.HELD and state.hold is None):
            return Step(state, note="not_held")
        fired = FiredRule(
            rule_id="operator",
            kind="operator",
            action=Action.APPROVE if action.action is OperatorActionKind.RELEASE else Action.REJECT,
            reason="operator_released" if action.action is OperatorActionKind.RELEASE else "operator_rejected",
            detail=action.note,
        )
        if state.phase is Phase.HELD:
            order = state.snapshot
            if order is None:  # pragma: no cover - a review hold always keeps its snapshot
                return Step(state, note="not_held")
            if action.action is OperatorActionKind.RELEASE:
                evaluation = Evaluation(Action.APPROVE, [fired], [])
                step = self._approve(state, order, evaluation, Outcome.RELEASED, action.actor, stamp, now, layout)
            else:
                step = self._reject_unapproved(state, order, Evaluation(Action.REJECT, [fired], []), now, action.actor)
                step.holds.clear()
            step.holds.append(HoldEntry(state.tenant, state.order_id, None))
            return step
        # Held after approval (an amendment the engine did not apply).
        if action.action is OperatorActionKind.RELEASE:
            new = msgspec.structs.replace(state, hold=None)
            decision = ReviewDecision(
                review_id=review_id(state.tenant, state.order_id, state.version, Outcome.RELEASED),
                tenant=state.tenant,
                order_id=state.order_id,
                channel=Channel(state.channel),
                outcome=Outcome.RELEASED,
                reasons=state.hold.reasons if state.hold else [],
                fired=[fired],
                order_version=state.version,
                actor=action.actor,
                ts=now,
            )
            step = Step(new, True, outputs=[decision], note="amendment_acknowledged")
        else:
            step = self._cancel_approved(state, state.version, "operator_rejected", stamp, now)
            step.holds.clear()
        step.holds.append(HoldEntry(state.tenant, state.order_id, None))
        return step

    # -- helpers that need the retention -----------------------------------------------------------------
    def _decide(
        self,
        state: OrderState,
        version: int,
        status: DecisionStatus,
        reason: RejectReason | None,
        detail: str,
        now: int,
    ) -> OrderState:
        phase = {
            DecisionStatus.ACCEPTED: Phase.ACCEPTED,
            DecisionStatus.REJECTED: Phase.REJECTED,
            DecisionStatus.CANCELLED: Phase.CANCELLED,
        }[status]
        return msgspec.structs.replace(
            state,
            version=version,
            phase=phase,
            decided=Decided(status=status.value, reason=reason, detail=detail[:2000], decided_at=now),
            expires_at=max(version, state.created_at) + self.retention_ms,
        )


# -- pure helpers ------------------------------------------------------------------------------------------
_AMENDMENT_DETAIL = {
    "order_amended": "the channel changed a SKU, a quantity or the lines after approval",
    "platform_hold": "the channel locked the order after approval",
}


def _new_state(order: Order, phase: Phase) -> OrderState:
    return OrderState(
        tenant=order.tenant,
        order_id=order.order_id,
        inbox_key=buyer_key(order),
        channel=order.channel.value,
        shop_id=order.shop_id,
        version=order.version,
        phase=phase,
        created_at=order.created_at,
        ingested_at=order.ingested_at,
        channel_lines={str(ln.line_no): ln.status for ln in order.lines},
    )


def _count_velocity(buyer: BuyerState | None, rules: RuleSet | None, order: Order) -> tuple[BuyerState | None, Facts]:
    """The buyer's orders per velocity window, this one included (keyed state: no outside lookup)."""
    windows = velocity_windows(rules)
    if not windows:
        return None, Facts()
    horizon = order.created_at - max(windows) * 1000
    recent = [(t, oid) for t, oid in (buyer.recent if buyer else []) if t >= horizon]
    if not any(oid == order.order_id for _, oid in recent):
        recent.append((order.created_at, order.order_id))
        recent.sort()
    counts = {w: sum(1 for t, _ in recent if order.created_at - w * 1000 <= t <= order.created_at) for w in windows}
    latest = max(t for t, _ in recent)
    return BuyerState(recent=recent, expires_at=latest + max(windows) * 1000), Facts(counts)


def _find(state: OrderState, line: str) -> tuple[int, SagaLine] | None:
    for i, ln in enumerate(state.lines):
        if ln.line_id == line:
            return i, ln
    return None


def _complete(state: OrderState) -> bool:
    """Every line answered "reserved" (cancelled lines aside), and at least one line is left to ship."""
    live = [ln for ln in state.lines if ln.state is not SagaLineState.CANCELLED]
    return bool(live) and all(ln.state is SagaLineState.RESERVED for ln in live)


def _cancel_lines(state: OrderState, targets: set[str], stamp: Stamp, now: int) -> tuple[list[Release], list[str]]:
    """Cancel ``targets`` in the saga (mutates ``state.lines``): reserved lines are released now, reserves still in
    flight when their answer arrives."""
    commands, released = [], []
    for i, ln in enumerate(state.lines):
        if ln.line_id not in targets or ln.state is SagaLineState.CANCELLED:
            continue
        if ln.state is SagaLineState.RESERVED:
            commands.append(_release(state.tenant, state.order_id, ln.line_id, ln.sku, state.inbox_key, stamp, i, now))
            released.append(ln.line_id)
        if ln.state in (SagaLineState.RESERVED, SagaLineState.AWAITING):
            ln.state = SagaLineState.CANCELLED
    return commands, released


def _amendments(state: OrderState, order: Order) -> list[str]:
    """``["order_amended"]`` when the snapshot's live lines differ from what was approved (SKU, quantity, lines)."""
    approved = {
        ln.line_no: ln for ln in state.lines if ln.state is not SagaLineState.CANCELLED and ln.remainder_of is None
    }
    live = {ln.line_no: ln for ln in order.lines if ln.status not in CLOSED_LINE}
    if set(live) != set(approved):
        return ["order_amended"]
    for no, ln in live.items():
        if ln.sku != approved[no].sku or ln.quantity != approved[no].quantity:
            return ["order_amended"]
    return []


def _release(tenant: str, order_id: str, line: str, sku: str, reply_to: str, stamp: Stamp, i: int, now: int) -> Release:
    return Release(
        command_id=release_id(tenant, line),
        tenant=tenant,
        sku=sku,
        origin=stamp.origin,
        seq=stamp.seq(i),
        ts=now,
        order_id=order_id,
        line_id=line,
    )


def order_lines(order: Order) -> list[DecisionLine]:
    return [
        DecisionLine(line_id=line_id(order.order_id, ln.line_no), sku=ln.sku, quantity=ln.quantity)
        for ln in order.lines
    ]


def _saga_lines(state: OrderState, accepted_only: bool) -> list[DecisionLine]:
    return [
        DecisionLine(line_id=ln.line_id, sku=ln.sku, quantity=ln.quantity, warehouse=ln.warehouse)
        for ln in state.lines
        if not accepted_only or ln.state is not SagaLineState.CANCELLED  # accepted: only what will ship
    ]


def _by_warehouse(state: OrderState, only: set[str] | None = None) -> dict[str, list[SagaLine]]:
    """Reserved lines by the warehouse they were reserved in (``only``: just these lines)."""
    found: dict[str, list[SagaLine]] = {}
    for ln in state.lines:
        if ln.state is SagaLineState.RESERVED and ln.warehouse and (only is None or ln.line_id in only):
            found.setdefault(ln.warehouse, []).append(ln)
    return found


def _ship_group(state: OrderState) -> str:
    return state.ship_group or f"{state.tenant}:{state.order_id}"  # state from before merging: never merges


def order_opened(order: Order, now: int) -> OrderOpened:
    """The approved order as aftersales keeps it: platform ids, what was paid per line, receiver, delivery."""
    return OrderOpened(
        tenant=order.tenant,
        order_id=order.order_id,
        channel=order.channel,
        shop_id=order.shop_id,
        platform_order_id=order.platform_order_id,
        receiver=order.receiver,
        lines=[
            SoldLine(
                line_id=line_id(order.order_id, ln.line_no),
                line_no=ln.line_no,
                sku=ln.sku,
                quantity=ln.quantity,
                paid_fen=ln.paid_fen if ln.paid_fen is not None else ln.unit_price_fen * ln.quantity,
                platform_line_id=ln.platform_line_id,
            )
            for ln in order.lines
            if ln.status not in CLOSED_LINE
        ],
        delivery=order.delivery,
        pickup_store=order.pickup_store,
        ts=now,
    )


def _accepted(state: OrderState, now: int) -> list[Any]:
    """The decision, and for fulfilment the order's lines per warehouse (拆单 follows the reservations); a pickup
    or counter order goes to aftersales instead, reserved in its store."""
    if state.delivery != "ship":
        lines = [ln for ln in state.lines if ln.state is SagaLineState.RESERVED]
        ready = PickupReady(
            tenant=state.tenant,
            order_id=state.order_id,
            store=state.pickup_store or (lines[0].warehouse or ""),
            lines=[PickupLine(line_id=ln.line_id, sku=ln.sku, quantity=ln.quantity) for ln in lines],
            reply_to=state.inbox_key,
            ts=now,
        )
        allocation = OrderAllocation(
            tenant=state.tenant,
            order_id=state.order_id,
            strategy=state.strategy,  # type: ignore[arg-type]
            quoted=False,
            ranking=state.ranking,
            parcels=[AllocatedParcel(warehouse=ready.store, line_ids=[ln.line_id for ln in lines])],
            ts=now,
        )
        return [_decision(state, _saga_lines(state, accepted_only=True)), allocation, ready]
    parcels = [
        ParcelAccepted(
            tenant=state.tenant,
            order_id=state.order_id,
            shop_id=state.shop_id,
            warehouse=warehouse,
            merge_key=_ship_group(state),
            receiver=state.receiver,
            lines=[
                ShipmentLine(order_id=state.order_id, line_id=ln.line_id, sku=ln.sku, quantity=ln.quantity)
                for ln in lines
            ],
            reply_to=state.inbox_key,
            ts=now,
        )
        for warehouse, lines in sorted(_by_warehouse(state).items())
    ]
    allocation = OrderAllocation(
        tenant=state.tenant,
        order_id=state.order_id,
        strategy=state.strategy,  # type: ignore[arg-type]
        quoted=state.quoted,
        ranking=state.ranking,
        parcels=[AllocatedParcel(warehouse=p.warehouse, line_ids=[ln.line_id for ln in p.lines]) for p in parcels],
        ts=now,
    )
    return [_decision(state, _saga_lines(state, accepted_only=True)), allocation, *parcels]


def _allocates_by_stock(layout: Layout | None, lines: list[SagaLine], ranked: list[str]) -> bool:
    """Quote first when the strategy needs every SKU's stock and there is a choice to make: several lines (a
    single line goes to the first ranked warehouse with its units anyway) and several warehouses."""
    if layout is None or layout.allocation.strategy in ("region", "ship-from-store"):
        return False
    return len(lines) > 1 and len(ranked) > 1


def _reserves(
    state: OrderState, lines: list[SagaLine], chosen: dict[str, str], stamp: Stamp, now: int
) -> list[Reserve]:
    """One reserve per line: in its chosen warehouse first, then by the ranking (the units may be gone), never in
    a warehouse the line is excluded from (it came up short there)."""
    return [
        Reserve(
            command_id=reserve_id(state.tenant, ln.line_id),
            tenant=state.tenant,
            sku=ln.sku,
            origin=stamp.origin,
            seq=stamp.seq(i),
            ts=now,
            order_id=state.order_id,
            line_id=ln.line_id,
            quantity=ln.quantity,
            reply_to=state.inbox_key,
            warehouses=_first(chosen.get(ln.line_id), [w for w in state.ranking if w not in ln.exclude]),
            exclude=ln.exclude,
        )
        for i, ln in enumerate(lines)
    ]


def _first(warehouse: str | None, ranked: list[str]) -> list[str]:
    return ranked if warehouse is None else [warehouse, *(w for w in ranked if w != warehouse)]


def _short_outcome(
    state: OrderState, line: SagaLine, warehouse: str | None, reason: str, remainder: SagaLine | None, now: int
) -> ShortPickOutcome:
    return ShortPickOutcome(
        tenant=state.tenant,
        order_id=state.order_id,
        line_id=line.line_id,
        sku=line.sku,
        warehouse=warehouse or line.warehouse or "unknown",
        missing=line.short or line.quantity,
        outcome="reallocated" if remainder is not None else "partial",
        reason=reason,  # type: ignore[arg-type]
        remainder_line_id=remainder.line_id if remainder else None,
        remainder_warehouse=remainder.warehouse if remainder else None,
        ts=now,
    )


def _withdrawals(state: OrderState, lines: set[str], now: int) -> list[OrderWithdrawn]:
    """An accepted order (``lines`` empty) or some of its lines leave fulfilment, per warehouse (``state`` is the
    state before the lines were cancelled)."""
    return [
        OrderWithdrawn(
            tenant=state.tenant,
            order_id=state.order_id,
            warehouse=warehouse,
            merge_key=_ship_group(state),
            line_ids=sorted(ln.line_id for ln in found) if lines else [],
            ts=now,
        )
        for warehouse, found in sorted(_by_warehouse(state, lines or None).items())
    ]


def _decision(state: OrderState, lines: list[DecisionLine]) -> OrderDecision:
    decided = state.decided
    assert decided is not None
    return OrderDecision(
        decision_id=decision_id(state.tenant, state.order_id),
        tenant=state.tenant,
        order_id=state.order_id,
        channel=Channel(state.channel),
        status=DecisionStatus(decided.status),
        reason=decided.reason,
        detail=decided.detail,
        lines=lines,
        order_created_at=state.created_at,
        ingested_at=state.ingested_at,
        decided_at=decided.decided_at,
    )


def _cancellation(
    state: OrderState, kind: CancellationKind, lines: list[str], released: list[str], reason: str, now: int
) -> OrderCancellation:
    return OrderCancellation(
        cancellation_id=cancellation_id(state.tenant, state.order_id, kind, lines),
        tenant=state.tenant,
        order_id=state.order_id,
        kind=kind,
        line_ids=lines,
        released_line_ids=released,
        reason=reason,
        stage=STAGE,
        ts=now,
    )


def _review_decision(order: Order, outcome: Outcome, evaluation: Evaluation, now: int, actor: str) -> ReviewDecision:
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


def _builtin_hold(name: str, detail: str) -> FiredRule:
    """A hold every tenant gets, whatever its rules say."""
    return FiredRule(rule_id=name, kind="builtin", action=Action.HOLD, reason=name, detail=detail)


def _hold(kind: HoldKind, evaluation: Evaluation, order: Order, now: int) -> Hold:
    return Hold(
        kind=kind,
        reasons=evaluation.reasons,
        rules=[f.rule_id for f in evaluation.fired],
        held_at=now,
        version=order.version,
        buyer=order.buyer.id,
        amount_fen=order.goods_fen + order.shipping_fen,
        currency=order.currency,
    )


def hold_summary(state: OrderState) -> dict[str, Any]:
    """The holds-list entry of a held order (from its state alone, so the list can be rebuilt from state)."""
    hold = state.hold
    assert hold is not None
    return {
        "order_id": state.order_id,
        "inbox_key": state.inbox_key,
        "kind": hold.kind.value,
        "channel": state.channel,
        "buyer": hold.buyer,
        "amount_fen": hold.amount_fen,
        "currency": hold.currency,
        "reasons": hold.reasons,
        "rules": hold.rules,
        "held_at": hold.held_at,
        "version": hold.version,
    }
