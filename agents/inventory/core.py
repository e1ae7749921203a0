"""Stock rules for one SKU: the pure core of the inventory stage (库存).

State per SKU (key ``tenant:sku``), small and bounded:

* ``levels``: per warehouse ``on_hand`` and ``reserved``; available = on_hand − reserved is never negative (I1);
* ``origins``: per command origin, the highest ``seq`` applied (its high-water mark) and when; the last few
  document commands (receipts, adjustments, returns) of the origin are remembered by id;
* ``version``: changes applied so far, stamped on every stock event so consumers can detect a gap;
* ``values``: per warehouse the value of its units in fen, at moving-average cost (移动加权平均, rules in
  agents.ledger.costing): a receipt adds its net amount, an issue, short pick or count loss takes units out at the
  current average (which an outflow never changes), a customer return comes back at the cost its line left
  with (kept on the line's record). Every stock event carries the value it moved and the value after it, so the
  books (the ledger stage) and the warehouse never disagree (账实相符).

Each order line has its own record (key ``tenant:sku:line_id``): open while it holds a reservation (预占),
then released or issued (shipped); or refused, when there was no stock for it. A short pick (拣货缺货) takes the
missing units out of the line and out of the count at once; a line left with nothing is closed as released.
An issue for a line released meanwhile (its order cancelled too late to stop the parcel) takes the goods off the
count all the same. A closed line is kept ``line_retention`` (command time) so that a replayed reserve for it is
answered as the first time instead of reserving again, then forgotten.

Commands of one origin apply in ``seq`` order. A command at or below its origin's high-water mark is a
redelivery when it matches what was applied (the line's record, or a remembered document id): it has no
second effect and a reserve is answered again. When it does not match — it was never applied, so applying
it now would reorder the origin's commands — it is refused as ``stale_sequence`` (a dead letter, and for a
reserve a rejected answer): never silently dropped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import msgspec

from agents.ledger import costing
from schemas.aftersales import is_quarantine
from schemas.deadletter import ReasonCode
from schemas.inventory import (
    Adjust,
    InventoryCommand,
    Issue,
    Quote,
    Receive,
    Release,
    Reserve,
    Return,
    ShortPick,
    StockEvent,
)
from schemas.saga import LineResult, LineStatus, RejectReason, StockQuote, result_id

#: Document commands remembered per origin (for telling a redelivery from a reordered command).
RECENT_DOCUMENTS = 16


class Level(msgspec.Struct, array_like=True):
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class OriginMark(msgspec.Struct, kw_only=True):
    """How far one command origin got on this SKU."""

    seq: int
    ts: int  # command time of its last applied command
    recent: list[tuple[int, str]] = msgspec.field(default_factory=list)  # (seq, command id) of document commands


class SkuStock(msgspec.Struct, kw_only=True):
    tenant: str
    sku: str
    levels: dict[str, Level] = msgspec.field(default_factory=dict)  # warehouse -> level
    origins: dict[str, OriginMark] = msgspec.field(default_factory=dict)
    version: int = 0
    values: dict[str, int] = msgspec.field(default_factory=dict)  # warehouse -> value of its on-hand units (fen)
    last_costs: dict[str, int] = msgspec.field(default_factory=dict)  # warehouse -> last unit cost (empty pool)

    def copy(self) -> SkuStock:
        return SkuStock(
            tenant=self.tenant,
            sku=self.sku,
            levels={wh: Level(v.on_hand, v.reserved) for wh, v in self.levels.items()},
            origins={o: OriginMark(seq=m.seq, ts=m.ts, recent=list(m.recent)) for o, m in self.origins.items()},
            version=self.version,
            values=dict(self.values),
            last_costs=dict(self.last_costs),
        )

    def unit_cost(self, warehouse: str) -> int:
        """The moving-average unit cost at ``warehouse`` (the last one known when it holds nothing)."""
        level = self.levels.get(warehouse)
        if level is not None and level.on_hand > 0:
            return costing.round_half_up(self.values.get(warehouse, 0), level.on_hand)
        return self.last_costs.get(warehouse, 0)

    def available(self, warehouse: str) -> int:
        level = self.levels.get(warehouse)
        return 0 if level is None else level.available


class LineState(enum.StrEnum):
    OPEN = "open"  # holds a reservation
    REFUSED = "refused"  # its reserve was refused (no stock): remembered so a redelivery is answered the same
    RELEASED = "released"  # given back (or released before any reserve arrived)
    ISSUED = "issued"  # shipped: left the warehouse


class LineReservation(msgspec.Struct, kw_only=True):
    """One order line's reservation record (预占记录)."""

    order_id: str
    warehouse: str | None
    quantity: int
    state: LineState
    closed_at: int | None = None  # command time it was refused, released or issued
    refusal: RejectReason | None = None
    cost_fen: int = 0  # issued: what its units cost when they left (returns come back at it)
    returned: int = 0  # issued: units returned so far, and the cost they came back at
    returned_cost_fen: int = 0

    def expires_at(self, retention_ms: int) -> int | None:
        return None if self.closed_at is None else self.closed_at + retention_ms


@dataclass(slots=True)
class Outcome:
    """What one command did. ``stock`` is a new object whenever anything of it changed."""

    stock: SkuStock
    line: LineReservation | None  # the line's record after the command
    stock_changed: bool = False
    line_changed: bool = False
    events: list[StockEvent] = field(default_factory=list)
    results: list[LineResult] = field(default_factory=list)
    refused: tuple[ReasonCode, str] | None = None  # a command that cannot apply (dead-lettered)
    note: str = ""


def choose_warehouse(
    stock: SkuStock, quantity: int, preferred: list[str], exclude: list[str] | None = None
) -> str | None:
    """分仓 for a single line: the first preferred warehouse that can serve the whole quantity, or, with no
    preference, the one with the most available stock (ties broken by name so the choice is deterministic).
    ``exclude``d warehouses are never chosen (a line re-reserved after a short pick there), and neither is a
    quarantine location (damaged returns: counted, never sold)."""
    if preferred:
        candidates = [wh for wh in preferred if wh in stock.levels and not is_quarantine(wh)]
    else:
        sellable = [wh for wh in stock.levels if not is_quarantine(wh)]
        candidates = sorted(sellable, key=lambda wh: (-stock.available(wh), wh))
    for wh in candidates:
        if exclude and wh in exclude:
            continue
        if stock.available(wh) >= quantity:
            return wh
    return None


def quote(stock: SkuStock, cmd: Quote) -> StockQuote:
    """What is available where, for allocating an order: no effect, answered from the state as it is."""
    warehouses = cmd.warehouses or sorted(wh for wh in stock.levels if not is_quarantine(wh))
    return StockQuote(
        quote_id=cmd.command_id,
        tenant=cmd.tenant,
        order_id=cmd.order_id,
        sku=cmd.sku,
        available={wh: max(0, stock.available(wh)) for wh in warehouses},
        reply_to=cmd.reply_to,
        ts=cmd.ts,
    )


def is_document(cmd: InventoryCommand) -> bool:
    """Commands remembered by id per origin (a line's record cannot tell a redelivery of them)."""
    return isinstance(cmd, Receive | Adjust | Return | ShortPick)


def apply(stock: SkuStock, line: LineReservation | None, cmd: InventoryCommand, retention_ms: int) -> Outcome:
    """Apply one command to one SKU's stock. Pure: the inputs are not modified. (A ``Quote`` is answered by
    :func:`quote`: it is not applied.)"""
    if isinstance(cmd, Quote):
        raise TypeError("a quote is answered by quote(), it changes nothing")
    mark = stock.origins.get(cmd.origin)
    if mark is not None and cmd.seq <= mark.seq:
        return _redelivered(stock, line, cmd, mark)

    new = stock.copy()
    recent = list(mark.recent) if mark is not None else []
    if is_document(cmd):
        recent = [*recent, (cmd.seq, cmd.command_id)][-RECENT_DOCUMENTS:]
    new.origins[cmd.origin] = OriginMark(seq=cmd.seq, ts=cmd.ts, recent=recent)
    for origin in [o for o, m in new.origins.items() if o != cmd.origin and m.ts + retention_ms <= cmd.ts]:
        del new.origins[origin]  # idle past retention (an old topic incarnation, a retired loader)
    out = Outcome(new, line, stock_changed=True)
    if isinstance(cmd, Reserve):
        _reserve(new, line, cmd, out)
    elif isinstance(cmd, Release):
        _release(new, line, cmd, out)
    elif isinstance(cmd, Issue):
        if line is not None and line.state is LineState.RELEASED and line.warehouse and line.quantity:
            _issue_after_release(new, line, cmd, out)
        elif line is None or line.state is not LineState.OPEN:
            out.refused = (ReasonCode.NOT_RESERVED, f"line {cmd.line_id} holds no reservation")
        else:
            q = line.quantity
            cost = -_change(new, line.warehouse or "", -q, -q, cmd, out, line.order_id)
            out.line = LineReservation(
                order_id=line.order_id,
                warehouse=line.warehouse,
                quantity=q,
                state=LineState.ISSUED,
                closed_at=cmd.ts,
                cost_fen=cost,
            )
            out.line_changed = True
    elif isinstance(cmd, Receive):
        unit_cost = cmd.unit_cost_fen if cmd.unit_cost_fen is not None else new.unit_cost(cmd.warehouse)
        _change(new, cmd.warehouse, cmd.quantity, 0, cmd, out, None, value_in=cmd.quantity * unit_cost)
    elif isinstance(cmd, Return):
        _return(new, line, cmd, out)
    elif isinstance(cmd, Adjust):
        _adjust(new, cmd, out)
    elif isinstance(cmd, ShortPick):
        _short(new, line, cmd, out)
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown command {type(cmd).__name__}")
    return out


def _redelivered(stock: SkuStock, line: LineReservation | None, cmd: InventoryCommand, mark: OriginMark) -> Outcome:
    """A command at or below its origin's high-water mark: a redelivery, or a command that was skipped."""
    out = Outcome(stock, line, note="duplicate")
    if isinstance(cmd, Reserve):
        if line is not None and line.order_id == cmd.order_id:
            out.results.append(_answer(cmd, line))
            return out
    elif isinstance(cmd, Release | Issue):
        if line is None or line.state is not LineState.OPEN:
            return out  # closed already (or nothing to close): applying it again changes nothing
    elif any(seq == cmd.seq and cid == cmd.command_id for seq, cid in mark.recent):
        return out
    out.note = "stale_sequence"
    out.refused = (
        ReasonCode.STALE_SEQUENCE,
        f"{cmd.command_id}: seq {cmd.seq} of origin {cmd.origin} is at or below its high-water mark {mark.seq} "
        "but was never applied (a reordered or very old command)",
    )
    if isinstance(cmd, Reserve):
        out.results.append(_result(cmd, LineStatus.REJECTED, RejectReason.ENGINE_ERROR, None, cmd.quantity))
    return out


def _answer(cmd: Reserve, line: LineReservation) -> LineResult:
    """A reserve for a line that already has a record: answered from it, with no effect."""
    if line.state is LineState.OPEN:
        return _result(cmd, LineStatus.RESERVED, None, line.warehouse, line.quantity)
    if line.state is LineState.REFUSED:
        return _result(cmd, LineStatus.REJECTED, line.refusal, None, cmd.quantity)
    return _result(cmd, LineStatus.REJECTED, RejectReason.NOT_RESERVABLE, None, cmd.quantity)


def _reserve(new: SkuStock, line: LineReservation | None, cmd: Reserve, out: Outcome) -> None:
    if line is not None:  # this line already has a record (re-sent under another stamp)
        out.note = "reserve_again"
        out.results.append(_answer(cmd, line))
        return
    warehouse = choose_warehouse(new, cmd.quantity, cmd.warehouses, cmd.exclude)
    if warehouse is None:
        reason = RejectReason.INSUFFICIENT_STOCK if new.levels else RejectReason.UNKNOWN_SKU
        out.results.append(_result(cmd, LineStatus.REJECTED, reason, None, cmd.quantity))
        out.line = LineReservation(
            order_id=cmd.order_id, warehouse=None, quantity=0, state=LineState.REFUSED, closed_at=cmd.ts, refusal=reason
        )
        out.line_changed = True
        return
    _change(new, warehouse, 0, cmd.quantity, cmd, out, cmd.order_id)
    out.line = LineReservation(order_id=cmd.order_id, warehouse=warehouse, quantity=cmd.quantity, state=LineState.OPEN)
    out.line_changed = True
    out.results.append(_result(cmd, LineStatus.RESERVED, None, warehouse, cmd.quantity))


def _release(new: SkuStock, line: LineReservation | None, cmd: Release, out: Outcome) -> None:
    if line is not None and line.state is not LineState.OPEN:
        return  # closed already
    if line is not None:
        _change(new, line.warehouse or "", 0, -line.quantity, cmd, out, line.order_id)
        warehouse, quantity = line.warehouse, line.quantity
    else:
        warehouse, quantity = None, 0  # released before any reserve: a later reserve for it is refused
    out.line = LineReservation(
        order_id=cmd.order_id, warehouse=warehouse, quantity=quantity, state=LineState.RELEASED, closed_at=cmd.ts
    )
    out.line_changed = True


def _short(new: SkuStock, line: LineReservation | None, cmd: ShortPick, out: Outcome) -> None:
    if line is None or line.warehouse is None:
        out.refused = (ReasonCode.NOT_RESERVED, f"line {cmd.line_id} was never reserved: no bin was picked for it")
        return
    if line.state is not LineState.OPEN:
        # Released (cancelled) or shipped meanwhile: the units are still missing from the shelf, so the count is
        # corrected all the same — unless that would leave less on hand than is reserved for others.
        level = new.levels.get(line.warehouse)
        if level is None or level.on_hand - cmd.quantity < level.reserved:
            out.refused = (
                ReasonCode.WOULD_OVERSELL,
                f"short of {cmd.quantity} at {line.warehouse} after the line closed",
            )
            return
        out.note = "short_after_close"
        _change(new, line.warehouse, -cmd.quantity, 0, cmd, out, line.order_id)
        return
    if cmd.quantity > line.quantity:
        out.refused = (
            ReasonCode.NOT_RESERVED,
            f"short of {cmd.quantity} on line {cmd.line_id}, which holds {line.quantity}",
        )
        return
    _change(new, line.warehouse, -cmd.quantity, -cmd.quantity, cmd, out, line.order_id)
    left = line.quantity - cmd.quantity
    out.line = LineReservation(
        order_id=line.order_id,
        warehouse=line.warehouse,
        quantity=left,
        state=LineState.OPEN if left else LineState.RELEASED,
        closed_at=None if left else cmd.ts,
    )
    out.line_changed = True


def _issue_after_release(new: SkuStock, line: LineReservation, cmd: Issue, out: Outcome) -> None:
    """The line was released (its order cancelled too late to stop the parcel, 拦截失败) and its goods left all the
    same: the count follows the goods, unless that would leave less on hand than is reserved for others."""
    warehouse = line.warehouse or ""
    level = new.levels.get(warehouse)
    if level is None or level.on_hand - line.quantity < level.reserved:
        out.refused = (ReasonCode.WOULD_OVERSELL, f"{cmd.line_id} shipped {line.quantity} after it was released")
        return
    out.note = "issue_after_release"
    cost = -_change(new, warehouse, -line.quantity, 0, cmd, out, line.order_id)
    out.line = msgspec.structs.replace(line, state=LineState.ISSUED, closed_at=cmd.ts, cost_fen=cost)
    out.line_changed = True


def _adjust(new: SkuStock, cmd: Adjust, out: Outcome) -> None:
    level = new.levels.get(cmd.warehouse)
    if level is None and cmd.delta < 0:
        out.refused = (ReasonCode.UNKNOWN_WAREHOUSE, f"no stock of {cmd.sku} at {cmd.warehouse}")
        return
    on_hand, reserved = (level.on_hand, level.reserved) if level else (0, 0)
    if on_hand + cmd.delta < reserved:
        out.refused = (
            ReasonCode.WOULD_OVERSELL,
            f"on_hand {on_hand}{cmd.delta:+d} would fall below reserved {reserved}",
        )
        return
    if cmd.delta:
        gain = cmd.delta * new.unit_cost(cmd.warehouse) if cmd.delta > 0 else None  # 盘盈 at the current cost
        _change(new, cmd.warehouse, cmd.delta, 0, cmd, out, None, value_in=gain)


def _return(new: SkuStock, line: LineReservation | None, cmd: Return, out: Outcome) -> None:
    """A customer return comes back at the cost its line left with (pro rata of the units; the last units
    returned take exactly what is left of it). A line forgotten (returned after the retention) or never issued
    here comes back at the location's current cost, and says so."""
    if line is not None and line.state is LineState.ISSUED and line.quantity > 0:
        returned = min(line.returned + cmd.quantity, line.quantity)
        if returned == line.quantity:
            value = line.cost_fen - line.returned_cost_fen
        else:
            value = costing.round_half_up(line.cost_fen * cmd.quantity, line.quantity)
        value = max(0, value)
        out.line = msgspec.structs.replace(line, returned=returned, returned_cost_fen=line.returned_cost_fen + value)
        out.line_changed = True
    else:
        out.note = "return_at_current_cost"
        value = cmd.quantity * new.unit_cost(cmd.warehouse)
    _change(new, cmd.warehouse, cmd.quantity, 0, cmd, out, cmd.order_id, value_in=value)


def _change(
    new: SkuStock,
    warehouse: str,
    d_on_hand: int,
    d_reserved: int,
    cmd: InventoryCommand,
    out: Outcome,
    order_id: str | None,
    value_in: int | None = None,
) -> int:
    """Apply a change at one warehouse and record it as a stock event; returns the change in inventory value
    (units in add ``value_in``; units out take their moving-average cost, agents.ledger.costing)."""
    level = new.levels.setdefault(warehouse, Level(0, 0))
    d_value = 0
    if d_on_hand > 0:
        d_value = value_in or 0
    elif d_on_hand < 0:
        pool = costing.CostPool(level.on_hand, new.values.get(warehouse, 0))
        _, cost = costing.issue(pool, -d_on_hand)
        d_value = -cost
    if d_on_hand:
        value = new.values.get(warehouse, 0) + d_value
        new.values[warehouse] = value
        if d_on_hand > 0 and level.on_hand + d_on_hand > 0:
            new.last_costs[warehouse] = costing.round_half_up(value, level.on_hand + d_on_hand)
    level.on_hand += d_on_hand
    level.reserved += d_reserved
    if level.reserved < 0 or level.on_hand < level.reserved:  # unreachable by the rules above; a guard
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
            on_hand=level.on_hand,
            reserved=level.reserved,
            version=new.version,
            order_id=order_id,
            line_id=getattr(cmd, "line_id", None),
            unit_cost_fen=costing.round_half_up(abs(d_value), abs(d_on_hand)) if d_on_hand else None,
            d_value_fen=d_value,
            value_fen=new.values.get(warehouse, 0),
            origin=cmd.origin,
            seq=cmd.seq,
            ts=cmd.ts,
        )
    )
    return d_value


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
        reply_to=cmd.reply_to,
        ts=cmd.ts,
    )
