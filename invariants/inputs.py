"""What was sent into the engine: the truth the invariants are checked against."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.aftersales import ReturnReceived
from schemas.deadletter import ReasonCode
from schemas.fulfilment import PickConfirmation
from schemas.inventory import InventoryCommand
from schemas.order import LineState, Order, OrderStatus, line_id
from schemas.review import OperatorActionKind
from schemas.shipping import CarrierEvent
from schemas.stocksync import SyncRules

CLOSED_LINE = (LineState.REFUNDING, LineState.CANCELLED)


@dataclass
class SentOrder:
    """Every valid snapshot of one order as its channel sent it (in sending order), and operators' actions."""

    key: str
    snapshots: list[Order] = field(default_factory=list)
    operator: list[OperatorActionKind] = field(default_factory=list)

    @property
    def tenant(self) -> str:
        return self.snapshots[0].tenant

    @property
    def order_id(self) -> str:
        return self.snapshots[0].order_id

    def latest(self) -> Order:
        return max(self.snapshots, key=lambda o: o.version)

    def ever_paid(self) -> bool:
        return any(o.status is not OrderStatus.PENDING_PAYMENT for o in self.snapshots)

    def cancelled(self) -> bool:
        """The channel cancelled the whole order at some point (all lines cancelled counts)."""
        return any(
            o.status is OrderStatus.CANCELLED or all(ln.status is LineState.CANCELLED for ln in o.lines)
            for o in self.snapshots
        )

    def lines(self) -> dict[str, tuple[str, int]]:
        """Every line as sent: line id → (SKU, quantity), from the first snapshot that has it."""
        out: dict[str, tuple[str, int]] = {}
        for o in self.snapshots:
            for ln in o.lines:
                out.setdefault(line_id(o.order_id, ln.line_no), (ln.sku, ln.quantity))
        return out

    def closed_lines(self) -> set[str]:
        """Lines the channel refunded or cancelled in any snapshot (before or after approval)."""
        return {line_id(o.order_id, ln.line_no) for o in self.snapshots for ln in o.lines if ln.status in CLOSED_LINE}

    def amended(self) -> bool:
        """Did a later snapshot change a line's SKU or quantity (the engine must hold, not apply, that)?"""
        seen: dict[int, tuple[str, int]] = {}
        for o in sorted(self.snapshots, key=lambda s: s.version):
            for ln in o.lines:
                if ln.status in CLOSED_LINE:
                    continue
                if seen.setdefault(ln.line_no, (ln.sku, ln.quantity)) != (ln.sku, ln.quantity):
                    return True
        return False


@dataclass
class Inputs:
    orders: dict[str, SentOrder] = field(default_factory=dict)
    #: stock commands sent by loaders and tests (not the engine's own reserves and releases)
    stock: list[InventoryCommand] = field(default_factory=list)
    #: command id → the reason it must be dead-lettered (a sender that meant it to be refused)
    refused_commands: dict[str, ReasonCode] = field(default_factory=dict)
    #: records crafted to be bad (malformed, wrong schema, misrouted …), by their exact bytes (a dead letter is
    #: matched to one by the SHA-256 of its whole value: it holds only a prefix of a large record)
    bad_records: set[bytes] = field(default_factory=set)
    #: whether the engine's review rules may hold or reject orders (without rules every paid order is reviewed
    #: through; with them the checker accepts the engine's explicit "held" as an open state)
    rules: bool = False
    #: every merge window and wave timer has passed: every accepted line must be shipped and every shipment
    #: waved (until then only the safety half of the fulfilment invariants is checked)
    fulfilment_complete: bool = False
    #: pick confirmations sent that match their pick lists: what a picker reported picked is the truth
    picks: list[PickConfirmation] = field(default_factory=list)
    #: the engine's order retention (OMS_ORDER_RETENTION_S, in ms): a snapshot of an order created longer than this
    #: before the latest channel time sent may be dead-lettered as forgotten instead of decided
    order_retention_ms: int | None = None
    #: carriers' tracking events sent (topic or webhook), duplicates and all: where each parcel really is
    carrier_events: list[CarrierEvent] = field(default_factory=list)
    #: return receipts sent that must take effect (their request was sent and covers them)
    return_receipts: list[ReturnReceived] = field(default_factory=list)
    #: pickup orders (keys) whose buyer came with the right code before the deadline
    pickup_claims: set[str] = field(default_factory=set)
    #: every pickup deadline has passed: an unclaimed pickup must have been cancelled by now
    pickups_due: bool = False
    #: aftersales has settled: every write-back was answered for good (acknowledged, or failed for good)
    aftersales_settled: bool = False
    #: (record kind, order id) → the reason an aftersales request sent must be refused for (a return asking too
    #: much, a pickup claim with a wrong code)
    refused_requests: dict[tuple[str, str], ReasonCode] = field(default_factory=dict)
    #: a tenant books revenue at delivery: a goods issue may have no revenue voucher yet (its cost is in 发出商品)
    revenue_deferred: bool = False
    #: stock-sync rules as published, every version (the checker applies the latest of each tenant, and the version
    #: an update names to that update)
    sync_rules: list[SyncRules] = field(default_factory=list)
    #: stock sync has settled: every shop's last accepted quantity must be its rule applied to the final ATP
    stock_sync_complete: bool = False

    def forgotten_before(self) -> int | None:
        """Orders created at or before this time may have been forgotten by the engine (the retention before the
        newest time any sent order carries — an upper bound of every partition's event time); None: none may."""
        if self.order_retention_ms is None or not self.orders:
            return None
        newest = max(max(o.version, o.created_at) for sent in self.orders.values() for o in sent.snapshots)
        return newest - self.order_retention_ms

    def add_orders(self, orders: Iterable[Order]) -> None:
        for order in orders:
            self.orders.setdefault(order.key, SentOrder(order.key)).snapshots.append(order)

    def add_operator(self, order_key: str, action: OperatorActionKind) -> None:
        if order_key in self.orders:
            self.orders[order_key].operator.append(action)

    def add_stock(self, commands: Iterable[InventoryCommand]) -> None:
        self.stock.extend(commands)
