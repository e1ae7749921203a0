"""Inventory commands (the only way stock changes) and the stock events that record each change.

Every command is keyed ``tenant:sku`` so that one partition — one agent — owns each SKU's stock. Every command
carries an idempotency stamp ``(origin, seq)``: ``origin`` names the single upstream stream that issued it (with
the incarnation of the topic it came from) and ``seq`` strictly increases within that origin. The inventory
agent applies commands of an origin in ``seq`` order: a command at or below the highest ``seq`` applied is a
redelivery (no second effect, I3) when it matches what was applied, and is dead-lettered as
``stale_sequence`` when it does not — never silently dropped.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.common import (
    MAX_STOCK_DELTA,
    EpochMs,
    Ident,
    Key,
    Quantity,
    Record,
    Seq,
    Tenant,
    Text,
    UnitPriceFen,
)

WarehouseId = Ident
StockDelta = Annotated[int, Meta(ge=-MAX_STOCK_DELTA, le=MAX_STOCK_DELTA)]
#: Units one stock document moves (a goods receipt of a hot SKU easily exceeds an order line's cap).
DocumentQuantity = Annotated[int, Meta(ge=1, le=MAX_STOCK_DELTA, description="Units, strictly positive")]


class CommandKind(enum.StrEnum):
    RESERVE = "reserve"  # 预占
    RELEASE = "release"  # 释放预占
    ISSUE = "issue"  # 出库 (ship)
    RECEIVE = "receive"  # 入库
    ADJUST = "adjust"  # 盘点调整
    RETURN = "return"  # 退货入库
    SHORT = "short"  # 拣货缺货: units of a reserved line were not in their bin
    QUOTE = "quote"  # 询库存: what is available where (changes nothing)


class _Command(Record, tag_field="kind", kw_only=True):
    v: int = 1
    command_id: Ident
    tenant: Tenant
    sku: Ident
    origin: Ident
    seq: Seq
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.sku(self.tenant, self.sku)

    @property
    def kind(self) -> CommandKind:
        """The tag (msgspec keeps it on the class, not the instance)."""
        return CommandKind(type(self).__struct_config__.tag)


class Reserve(_Command, tag=CommandKind.RESERVE.value, kw_only=True):
    """Reserve ``quantity`` units for one order line, in one warehouse (first of ``warehouses`` that can
    serve it; any warehouse when empty). The answer goes to the order side's inbox under ``reply_to``."""

    order_id: Ident
    line_id: Ident
    quantity: Quantity
    reply_to: Key
    warehouses: list[WarehouseId] = msgspec.field(default_factory=list)
    exclude: list[WarehouseId] = msgspec.field(default_factory=list)  # never these (they came up short)


class Release(_Command, tag=CommandKind.RELEASE.value, kw_only=True):
    """Release the line's reservation, if it still holds one."""

    order_id: Ident
    line_id: Ident
    reason: Text = ""


class Issue(_Command, tag=CommandKind.ISSUE.value, kw_only=True):
    """Goods leave the warehouse for a reserved line: on_hand and reserved both drop."""

    order_id: Ident
    line_id: Ident
    shipment_id: Ident | None = None


class Receive(_Command, tag=CommandKind.RECEIVE.value, kw_only=True):
    """Goods received into a warehouse (入库): on_hand grows."""

    warehouse: WarehouseId
    quantity: DocumentQuantity
    unit_cost_fen: UnitPriceFen | None = None
    document_id: Ident


class Adjust(_Command, tag=CommandKind.ADJUST.value, kw_only=True):
    """Stock-count correction; may be negative but never below what is reserved."""

    warehouse: WarehouseId
    delta: StockDelta
    reason: Text = ""
    document_id: Ident


class Return(_Command, tag=CommandKind.RETURN.value, kw_only=True):
    """Customer return put back into sellable stock."""

    warehouse: WarehouseId
    quantity: Quantity
    order_id: Ident
    line_id: Ident
    document_id: Ident


class ShortPick(_Command, tag=CommandKind.SHORT.value, kw_only=True):
    """A short pick (拣货缺货): ``quantity`` units of a reserved line were not in their bin. They leave the line's
    reservation and the warehouse's count in one step (reserved and on_hand both drop, available stays), so they
    are never available to another line in between — which a release followed by a count adjustment would
    allow, selling units that are not there."""

    order_id: Ident
    line_id: Ident
    quantity: Quantity
    pick_list_id: Ident


class Quote(_Command, tag=CommandKind.QUOTE.value, kw_only=True):
    """Ask the SKU's writer what is available in ``warehouses`` (all of them when empty) for an order being
    allocated (分仓): the answer, a ``StockQuote``, goes to the order side's inbox under ``reply_to``. It changes
    nothing — no stock, no idempotency mark — so a redelivery is simply answered again."""

    order_id: Ident
    reply_to: Key
    warehouses: list[WarehouseId] = msgspec.field(default_factory=list)


InventoryCommand = Reserve | Release | Issue | Receive | Adjust | Return | ShortPick | Quote


class StockEvent(Record, kw_only=True):
    """One applied stock change, with the state after it at that warehouse. Key: ``tenant:sku``.

    ``version`` counts applied changes per SKU from 1 without gaps, so a consumer can apply events in order
    and detect loss; ``event_id`` equals the command id (each command applies at most once).
    """

    v: int = 1
    event_id: Ident
    tenant: Tenant
    sku: Ident
    warehouse: WarehouseId
    kind: CommandKind
    d_on_hand: int
    d_reserved: int
    on_hand: int
    reserved: int
    version: Annotated[int, Meta(ge=1)]
    order_id: Ident | None = None
    line_id: Ident | None = None
    unit_cost_fen: UnitPriceFen | None = None
    # Moving-average valuation at the warehouse (移动加权平均): the change in its inventory value this event made
    # (a receipt's net amount, an issue's cost, a return at the cost it left with) and the value after it.
    d_value_fen: int = 0
    value_fen: int = 0
    origin: Ident
    seq: Seq
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.sku(self.tenant, self.sku)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


# Deterministic command ids: the same business fact always yields the same id.


def reserve_id(tenant: str, line_id: str) -> str:
    return f"reserve.{tenant}.{line_id}"


def release_id(tenant: str, line_id: str) -> str:
    return f"release.{tenant}.{line_id}"


def issue_id(tenant: str, line_id: str) -> str:
    return f"issue.{tenant}.{line_id}"


def quote_id(tenant: str, order_id: str, sku: str) -> str:
    return f"quote.{tenant}.{order_id}.{sku}"


def short_id(tenant: str, line_id: str) -> str:
    """A line is picked once: its short is one fact."""
    return f"short.{tenant}.{line_id}"


def receive_id(tenant: str, sku: str, warehouse: str, document_id: str) -> str:
    return f"receive.{tenant}.{sku}.{warehouse}.{document_id}"


def adjust_id(tenant: str, sku: str, warehouse: str, document_id: str) -> str:
    return f"adjust.{tenant}.{sku}.{warehouse}.{document_id}"


def return_id(tenant: str, line_id: str, document_id: str) -> str:
    return f"return.{tenant}.{line_id}.{document_id}"


#: One line's reservation in the inventory's ``lines`` table (schemas.keys.line_reservation).
reservation_key = keys.line_reservation
