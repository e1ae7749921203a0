"""The order saga: reserve every line, then decide once (pure core of the coordinator agent).

All lines reserved → accepted. Any line rejected, or no answer before the deadline → rejected, with a
release for every line that holds a reservation. A reservation that arrives after the saga was rejected
(a late answer) is released as it arrives, so a rejected order never keeps stock (I4). The decision is
one record with a deterministic id, emitted on the one transition out of ``pending``.

Every input is idempotent against the saga state (a second copy of an order, a result for a line that
already has one, a timeout for a decided saga: no effect), which is what lets the agent run
at-least-once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from schemas.inventory import Release, Reserve, release_id, reserve_id
from schemas.order import Channel, Order, line_id, validate_order
from schemas.review import CancellationKind, CancelSaga, OrderCancellation, cancellation_id
from schemas.saga import (
    DecisionLine,
    DecisionStatus,
    LineResult,
    LineStatus,
    OrderDecision,
    RejectReason,
    SagaTimeout,
    decision_id,
)

#: Commands derived from one input record get ``seq = offset * SEQ_FANOUT + i`` (i < SEQ_FANOUT), so the
#: sequence is strictly increasing per origin and a replayed input reproduces the same stamps.
SEQ_FANOUT = 1024

PENDING, ACCEPTED, REJECTED, CANCELLED = "pending", "accepted", "rejected", "cancelled"
# Line states within a saga.
L_PENDING, L_RESERVED, L_REJECTED, L_RELEASED, L_CANCELLED = "p", "r", "x", "l", "c"


@dataclass(frozen=True, slots=True)
class Stamp:
    """Where the input came from: the idempotency origin of the commands it causes, and its offset."""

    origin: str
    offset: int

    def seq(self, i: int) -> int:
        if not 0 <= i < SEQ_FANOUT:
            raise ValueError(f"sub-index {i} out of range")
        return self.offset * SEQ_FANOUT + i


@dataclass(slots=True)
class SagaLine:
    line_id: str
    sku: str
    quantity: int
    status: str = L_PENDING
    warehouse: str | None = None


@dataclass(slots=True)
class Saga:
    tenant: str
    order_id: str
    channel: str
    status: str
    lines: list[SagaLine]
    deadline: int
    partition: int
    order_created_at: int
    ingested_at: int
    reason: str | None = None
    detail: str = ""
    decided_at: int | None = None

    @property
    def key(self) -> str:
        return f"{self.tenant}:{self.order_id}"

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Saga | None:
        if state is None:
            return None
        return cls(
            tenant=state["t"],
            order_id=state["o"],
            channel=state["c"],
            status=state["s"],
            lines=[SagaLine(*ln) for ln in state["ln"]],
            deadline=state["dl"],
            partition=state["p"],
            order_created_at=state["ca"],
            ingested_at=state["ia"],
            reason=state.get("r"),
            detail=state.get("d", ""),
            decided_at=state.get("da"),
        )

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "t": self.tenant,
            "o": self.order_id,
            "c": self.channel,
            "s": self.status,
            "ln": [[ln.line_id, ln.sku, ln.quantity, ln.status, ln.warehouse] for ln in self.lines],
            "dl": self.deadline,
            "p": self.partition,
            "ca": self.order_created_at,
            "ia": self.ingested_at,
        }
        if self.reason is not None:
            state["r"] = self.reason
        if self.detail:
            state["d"] = self.detail
        if self.decided_at is not None:
            state["da"] = self.decided_at
        return state

    def copy(self) -> Saga:
        return replace(self, lines=[replace(ln) for ln in self.lines])

    def find(self, line_id_: str) -> tuple[int, SagaLine] | None:
        for i, ln in enumerate(self.lines):
            if ln.line_id == line_id_:
                return i, ln
        return None

    def decision(self) -> OrderDecision:
        assert self.status != PENDING and self.decided_at is not None
        return OrderDecision(
            decision_id=decision_id(self.tenant, self.order_id),
            tenant=self.tenant,
            order_id=self.order_id,
            channel=Channel(self.channel),
            status=DecisionStatus(self.status),
            reason=RejectReason(self.reason) if self.reason else None,
            detail=self.detail,
            lines=[
                DecisionLine(line_id=ln.line_id, sku=ln.sku, quantity=ln.quantity, warehouse=ln.warehouse)
                for ln in self.lines
                if self.status != ACCEPTED or ln.status != L_CANCELLED  # accepted: only what will ship
            ],
            order_created_at=self.order_created_at,
            ingested_at=self.ingested_at,
            decided_at=self.decided_at,
        )


@dataclass(slots=True)
class Step:
    saga: Saga | None
    changed: bool = False
    commands: list[Reserve | Release] = field(default_factory=list)
    decision: OrderDecision | None = None
    cancellation: OrderCancellation | None = None
    note: str = ""


class Coordinator:
    """Saga rules, parameterised by the saga timeout."""

    def __init__(self, timeout_ms: int) -> None:
        if timeout_ms <= 0:
            raise ValueError("saga timeout must be positive")
        self.timeout_ms = timeout_ms

    def on_order(self, saga: Saga | None, order: Order, stamp: Stamp, partition: int, now: int) -> Step:
        if saga is not None:
            return Step(saga, note="duplicate_order")
        saga = Saga(
            tenant=order.tenant,
            order_id=order.order_id,
            channel=order.channel.value,
            status=PENDING,
            lines=[SagaLine(line_id(order.order_id, ln.line_no), ln.sku, ln.quantity) for ln in order.lines],
            deadline=now + self.timeout_ms,
            partition=partition,
            order_created_at=order.created_at,
            ingested_at=order.ingested_at,
        )
        problems = validate_order(order)
        if problems:
            saga.status, saga.reason, saga.detail, saga.decided_at = (
                REJECTED,
                RejectReason.INVALID_ORDER.value,
                "; ".join(problems),
                now,
            )
            return Step(saga, True, decision=saga.decision(), note="invalid")
        commands: list[Reserve | Release] = [
            Reserve(
                command_id=reserve_id(order.tenant, ln.line_id),
                tenant=order.tenant,
                sku=ln.sku,
                origin=stamp.origin,
                seq=stamp.seq(i),
                ts=now,
                order_id=order.order_id,
                line_id=ln.line_id,
                quantity=ln.quantity,
            )
            for i, ln in enumerate(saga.lines)
        ]
        return Step(saga, True, commands, note="new")

    def on_result(self, saga: Saga | None, result: LineResult, stamp: Stamp, now: int) -> Step:
        if saga is None:
            # No saga for this order (its state was lost or never existed): give a reservation back.
            if result.status is LineStatus.RESERVED:
                release = _release(result.tenant, result.order_id, result.line_id, result.sku, stamp, 0, now)
                return Step(None, commands=[release], note="orphan_result")
            return Step(None, note="orphan_result")
        found = saga.find(result.line_id)
        if found is None:
            return Step(saga, note="unknown_line")
        i, line = found
        if line.status == L_CANCELLED:
            # The channel cancelled this line while its reserve was in flight: give the stock back.
            if result.status is LineStatus.RESERVED and line.warehouse is None:
                saga = saga.copy()
                saga.lines[i].warehouse = result.warehouse
                release = _release(saga.tenant, saga.order_id, line.line_id, line.sku, stamp, i, now)
                return Step(saga, True, [release], note="late_reserved_released")
            return Step(saga, note="duplicate_result")
        if saga.status == PENDING:
            if line.status != L_PENDING:
                return Step(saga, note="duplicate_result")
            saga = saga.copy()
            line = saga.lines[i]
            if result.status is LineStatus.RESERVED:
                line.status, line.warehouse = L_RESERVED, result.warehouse
                if _complete(saga):
                    saga.status, saga.decided_at = ACCEPTED, now
                    return Step(saga, True, decision=saga.decision(), note="accepted")
                return Step(saga, True, note="line_reserved")
            line.status = L_REJECTED
            reason = result.reason or RejectReason.INSUFFICIENT_STOCK
            return self._reject(saga, reason, f"line {line.line_id} ({line.sku}): {reason.value}", stamp, now)
        if saga.status == REJECTED and line.status == L_PENDING:
            # A late answer after the saga was rejected (typically by timeout).
            saga = saga.copy()
            line = saga.lines[i]
            if result.status is LineStatus.RESERVED:
                line.status, line.warehouse = L_RELEASED, result.warehouse
                release = _release(saga.tenant, saga.order_id, line.line_id, line.sku, stamp, i, now)
                return Step(saga, True, [release], note="late_reserved_released")
            line.status = L_REJECTED
            return Step(saga, True, note="late_rejected")
        return Step(saga, note="duplicate_result")

    def on_timeout(self, saga: Saga | None, tick: SagaTimeout, stamp: Stamp, now: int) -> Step:
        if saga is None or saga.status != PENDING or tick.ts < saga.deadline:
            return Step(saga, note="timeout_ignored")
        waiting = [ln.line_id for ln in saga.lines if ln.status == L_PENDING]
        detail = f"no answer for {len(waiting)} line(s) within {self.timeout_ms} ms"
        return self._reject(saga.copy(), RejectReason.TIMEOUT, detail, stamp, now)

    def on_cancel(self, saga: Saga | None, cmd: CancelSaga, stamp: Stamp, now: int) -> Step:
        """The channel cancelled the order (no line ids) or some lines before shipment."""
        if saga is None:
            return Step(None, note="cancel_without_saga")
        saga = saga.copy()
        targets = set(cmd.line_ids) or {ln.line_id for ln in saga.lines}
        commands: list[Reserve | Release] = []
        released: list[str] = []
        for i, ln in enumerate(saga.lines):
            if ln.line_id not in targets or ln.status == L_CANCELLED:
                continue
            if ln.status == L_RESERVED:
                commands.append(_release(saga.tenant, saga.order_id, ln.line_id, ln.sku, stamp, i, now))
                released.append(ln.line_id)
            ln.status = L_CANCELLED  # a reserve still in flight is released when its result arrives
        whole = all(ln.status == L_CANCELLED for ln in saga.lines)
        decision = None
        if saga.status == PENDING:
            if whole:
                saga.status, saga.reason, saga.detail, saga.decided_at = (
                    CANCELLED,
                    RejectReason.CANCELLED.value,
                    cmd.reason,
                    now,
                )
                decision = saga.decision()
            elif _complete(saga):
                saga.status, saga.decided_at = ACCEPTED, now
                decision = saga.decision()
        elif saga.status == ACCEPTED and whole:
            saga.status = CANCELLED  # the accepted decision stands; the cancellation record says what followed
        kind = CancellationKind.ORDER if whole else CancellationKind.LINES
        lines = sorted(targets)
        cancellation = OrderCancellation(
            cancellation_id=cancellation_id(saga.tenant, saga.order_id, kind, [] if whole else lines),
            tenant=saga.tenant,
            order_id=saga.order_id,
            kind=kind,
            line_ids=lines,
            released_line_ids=released,
            reason=cmd.reason,
            stage="coordinator",
            ts=now,
        )
        return Step(saga, True, commands, decision, cancellation, note="cancelled" if whole else "lines_cancelled")

    def _reject(self, saga: Saga, reason: RejectReason, detail: str, stamp: Stamp, now: int) -> Step:
        saga.status, saga.reason, saga.detail, saga.decided_at = REJECTED, reason.value, detail, now
        commands: list[Reserve | Release] = []
        for i, ln in enumerate(saga.lines):
            if ln.status == L_RESERVED:
                ln.status = L_RELEASED
                commands.append(_release(saga.tenant, saga.order_id, ln.line_id, ln.sku, stamp, i, now))
        return Step(saga, True, commands, saga.decision(), note="rejected")


def _complete(saga: Saga) -> bool:
    """Every line answered "reserved" (cancelled lines aside), and at least one line is left to ship."""
    live = [ln for ln in saga.lines if ln.status != L_CANCELLED]
    return bool(live) and all(ln.status == L_RESERVED for ln in live)


def _release(tenant: str, order_id: str, line: str, sku: str, stamp: Stamp, i: int, now: int) -> Release:
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
