"""Stock rules for one SKU: the pure core of the inventory agent.

State per SKU (key ``tenant:sku``) is small and bounded:

* ``levels``: per warehouse ``[on_hand, reserved]``; available = on_hand − reserved is never negative (I1);
* ``high_water``: per command origin, the highest ``seq`` applied. A command at or below it is a
  redelivery and has no effect (I3). This is the idempotency memory; it holds one integer per origin
  (a coordinator input partition, a stock loader, a WMS dock), like Kafka's idempotent producer keeps
  one sequence per producer id, so it does not grow with the number of commands;
* ``version``: applied changes so far, stamped on every stock event so consumers detect gaps.

Open reservations are kept per order line in a second table (key ``tenant:sku:line_id``): they are
needed to release or ship exactly what was reserved, and they are deleted when released or shipped,
so that table is bounded by the orders in flight, not by history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.deadletter import ReasonCode
from schemas.inventory import (
    Adjust,
    InventoryCommand,
    Issue,
    Receive,
    Release,
    Reserve,
    Return,
    StockEvent,
)
from schemas.saga import LineResult, LineStatus, RejectReason, result_id


@dataclass(slots=True)
class SkuStock:
    tenant: str
    sku: str
    levels: dict[str, list[int]] = field(default_factory=dict)  # warehouse -> [on_hand, reserved]
    high_water: dict[str, int] = field(default_factory=dict)  # origin -> last applied seq
    version: int = 0

    @classmethod
    def from_state(cls, tenant: str, sku: str, state: dict[str, Any] | None) -> SkuStock:
        if not state:
            return cls(tenant, sku)
        return cls(
            tenant,
            sku,
            {wh: [int(v[0]), int(v[1])] for wh, v in state["l"].items()},
            dict(state["hw"]),
            int(state["v"]),
        )

    def to_state(self) -> dict[str, Any]:
        return {"l": self.levels, "hw": self.high_water, "v": self.version}

    def copy(self) -> SkuStock:
        return SkuStock(
            self.tenant,
            self.sku,
            {wh: list(v) for wh, v in self.levels.items()},
            dict(self.high_water),
            self.version,
        )

    def available(self, warehouse: str) -> int:
        on_hand, reserved = self.levels.get(warehouse, (0, 0))
        return on_hand - reserved


@dataclass(slots=True, frozen=True)
class Reservation:
    """An open reservation of one order line (预占记录)."""

    order_id: str
    warehouse: str
    quantity: int

    @classmethod
    def from_state(cls, state: list[Any] | None) -> Reservation | None:
        return None if state is None else cls(state[0], state[1], int(state[2]))

    def to_state(self) -> list[Any]:
        return [self.order_id, self.warehouse, self.quantity]


@dataclass(slots=True)
class Outcome:
    """What one command did. ``stock`` is a new object whenever anything changed."""

    stock: SkuStock
    reservation: Reservation | None  # the line's reservation after the command
    reservation_changed: bool = False
    events: list[StockEvent] = field(default_factory=list)
    results: list[LineResult] = field(default_factory=list)
    refused: tuple[ReasonCode, str] | None = None  # an external command that cannot apply
    duplicate: bool = False

    @property
    def stock_changed(self) -> bool:
        return not self.duplicate


def choose_warehouse(stock: SkuStock, quantity: int, preferred: list[str]) -> str | None:
    """分仓 for a single line: the first preferred warehouse that can serve the whole quantity, or, with no
    preference, the one with the most available stock (ties broken by name so the choice is deterministic)."""
    if preferred:
        candidates = [wh for wh in preferred if wh in stock.levels]
    else:
        candidates = sorted(stock.levels, key=lambda wh: (-stock.available(wh), wh))
    for wh in candidates:
        if stock.available(wh) >= quantity:
            return wh
    return None


def apply(stock: SkuStock, reservation: Reservation | None, cmd: InventoryCommand) -> Outcome:
    """Apply one command to one SKU's stock. Pure: the inputs are not modified."""
    if cmd.seq <= stock.high_water.get(cmd.origin, -1):
        # A redelivery (replay after a crash, or an upstream retry): no effect. A reserve is answered
        # again from the current state so a waiting saga still hears back.
        results = [_status_result(cmd, reservation)] if isinstance(cmd, Reserve) else []
        return Outcome(stock, reservation, results=results, duplicate=True)

    new = stock.copy()
    new.high_water[cmd.origin] = cmd.seq
    out = Outcome(new, reservation)
    if isinstance(cmd, Reserve):
        _reserve(new, reservation, cmd, out)
    elif isinstance(cmd, Release):
        if reservation is not None:
            _change(new, reservation.warehouse, 0, -reservation.quantity, cmd, out, reservation)
            out.reservation, out.reservation_changed = None, True
    elif isinstance(cmd, Issue):
        if reservation is None:
            out.refused = (ReasonCode.NOT_RESERVED, f"line {cmd.line_id} holds no reservation")
        else:
            q = reservation.quantity
            _change(new, reservation.warehouse, -q, -q, cmd, out, reservation)
            out.reservation, out.reservation_changed = None, True
    elif isinstance(cmd, Receive | Return):
        _change(new, cmd.warehouse, cmd.quantity, 0, cmd, out, None)
    elif isinstance(cmd, Adjust):
        _adjust(new, cmd, out)
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown command {type(cmd).__name__}")
    return out


def _reserve(new: SkuStock, reservation: Reservation | None, cmd: Reserve, out: Outcome) -> None:
    if reservation is not None:  # this line already holds a reservation (re-sent under another stamp)
        out.results.append(_status_result(cmd, reservation))
        return
    warehouse = choose_warehouse(new, cmd.quantity, cmd.warehouses)
    if warehouse is None:
        reason = RejectReason.INSUFFICIENT_STOCK if new.levels else RejectReason.UNKNOWN_SKU
        out.results.append(_result(cmd, LineStatus.REJECTED, reason, None, cmd.quantity))
        return
    held = Reservation(cmd.order_id, warehouse, cmd.quantity)
    _change(new, warehouse, 0, cmd.quantity, cmd, out, held)
    out.reservation, out.reservation_changed = held, True
    out.results.append(_result(cmd, LineStatus.RESERVED, None, warehouse, cmd.quantity))


def _adjust(new: SkuStock, cmd: Adjust, out: Outcome) -> None:
    if cmd.warehouse not in new.levels and cmd.delta < 0:
        out.refused = (ReasonCode.UNKNOWN_WAREHOUSE, f"no stock of {cmd.sku} at {cmd.warehouse}")
        return
    on_hand, reserved = new.levels.get(cmd.warehouse, (0, 0))
    if on_hand + cmd.delta < reserved:
        out.refused = (
            ReasonCode.WOULD_OVERSELL,
            f"on_hand {on_hand}{cmd.delta:+d} would fall below reserved {reserved}",
        )
        return
    if cmd.delta:
        _change(new, cmd.warehouse, cmd.delta, 0, cmd, out, None)


def _change(
    new: SkuStock,
    warehouse: str,
    d_on_hand: int,
    d_reserved: int,
    cmd: InventoryCommand,
    out: Outcome,
    reservation: Reservation | None,
) -> None:
    level = new.levels.setdefault(warehouse, [0, 0])
    level[0] += d_on_hand
    level[1] += d_reserved
    if level[1] < 0 or level[0] < level[1]:  # unreachable by the rules above; a guard, not a rule
        raise AssertionError(f"stock invariant broken at {new.tenant}:{new.sku}@{warehouse}: {level}")
    new.version += 1
    out.events.append(
        StockEvent(
            event_id=cmd.command_id,
            tenant=cmd.tenant,
            sku=cmd.sku,
            warehouse=warehouse,
            kind=cmd.kind,
            d_on_hand=d_on_hand,
            d_reserved=d_reserved,
            on_hand=level[0],
            reserved=level[1],
            version=new.version,
            order_id=getattr(cmd, "order_id", None) or (reservation.order_id if reservation else None),
            line_id=getattr(cmd, "line_id", None),
            unit_cost_fen=getattr(cmd, "unit_cost_fen", None),
            origin=cmd.origin,
            seq=cmd.seq,
            ts=cmd.ts,
        )
    )


def _status_result(cmd: Reserve, reservation: Reservation | None) -> LineResult:
    if reservation is not None:
        return _result(cmd, LineStatus.RESERVED, None, reservation.warehouse, reservation.quantity)
    return _result(cmd, LineStatus.REJECTED, RejectReason.NOT_RESERVABLE, None, cmd.quantity)


def _result(
    cmd: Reserve, status: LineStatus, reason: RejectReason | None, warehouse: str | None, quantity: int
) -> LineResult:
    return LineResult(
        result_id=result_id(cmd.tenant, cmd.line_id, status),
        tenant=cmd.tenant,
        order_id=cmd.order_id,
        line_id=cmd.line_id,
        sku=cmd.sku,
        status=status,
        reason=reason,
        warehouse=warehouse,
        quantity=quantity,
        ts=cmd.ts,
    )
