"""The inventory stage: the only writer of stock. Reads inventory commands (key ``tenant:sku``), applies the stock
rules, and emits stock events, line results and stock quotes (to the order side's inbox) and dead letters.

The worker that owns a partition of ``inventory-commands`` is its only writer, and a worker that lost it is fenced
(engine.runtime.runner): each SKU has exactly one writer, even across pauses. Time is the commands' own time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from agents.inventory.core import LineReservation, SkuStock, apply, quote
from engine.app import context
from engine.readmodels.catalog import Catalog
from engine.readmodels.sync import ReadModelSync
from engine.runtime.kit import KeyedLogic, Step
from engine.runtime.stage import Stage
from engine.runtime.work import Input, PartitionWork
from engine.topics import Topics
from schemas import keys, wire
from schemas.inventory import CommandKind, InventoryCommand, Quote, StockEvent
from schemas.ledger import StockMoved
from schemas.saga import LineResult, StockQuote
from schemas.stocksync import AtpChanged

log = logging.getLogger("oms.inventory")

STOCK, LINES = "stock", "lines"


class InventoryLogic(KeyedLogic[SkuStock]):
    """The command's own time (``ts``); a SKU's stock is kept for ever, a closed line a retention after it closed."""

    name = "inventory"
    tables = (STOCK, LINES)
    record_type = InventoryCommand

    def __init__(self, topics: Topics, partitions: int, line_retention_ms: int, catalog: Catalog | None = None) -> None:
        self.inputs = (topics.inventory_commands,)
        self.topics = topics
        self.partitions = partitions
        self.retention_ms = line_retention_ms
        self.routes = {
            StockEvent: (
                topics.stock_events,
                (topics.ledger_inbox, stock_moved),
                (topics.stock_sync_inbox, atp_changed),
            ),
            LineResult: (topics.order_inbox,),
            StockQuote: (topics.order_inbox,),
        }
        self.catalog = catalog
        self.stage: Stage | None = None
        self._pending: set[asyncio.Future] = set()

    def event_time(self, item: InventoryCommand, record: Input) -> int:
        return item.ts

    def handle(self, work: PartitionWork, record: Input, cmd: InventoryCommand) -> Step[SkuStock]:
        stock = work.get_as(STOCK, cmd.key, SkuStock) or SkuStock(tenant=cmd.tenant, sku=cmd.sku)
        if isinstance(cmd, Quote):
            return Step(outputs=[quote(stock, cmd)], note="quotes")
        line_id = getattr(cmd, "line_id", None)
        line_key = keys.line_reservation(cmd.tenant, cmd.sku, line_id) if line_id else None
        line = work.get_as(LINES, line_key, LineReservation) if line_key else None
        out = apply(stock, line, cmd, self.retention_ms)
        if out.stock_changed:
            work.put(STOCK, cmd.key, out.stock)
        if out.line_changed and line_key and out.line is not None:
            work.put(LINES, line_key, out.line, expires_at=out.line.expires_at(self.retention_ms))
        for event in out.events:
            if event.kind is CommandKind.RECEIVE:
                work.side_effects.append((event.tenant, event.sku))  # the SKU joins its tenant's catalog
        return Step(outputs=[*out.events, *out.results], note=out.note, refused=out.refused)

    def expires_at(self, table: str, value: bytes) -> int | None:
        if table != LINES:
            return None
        return wire.decode_state(value, LineReservation).expires_at(self.retention_ms)

    def after_commit(self, partition: int, side_effects: list[Any]) -> None:
        """SKUs that received stock join the tenant's catalog (the HTTP edge refuses SKUs outside it)."""
        if self.catalog is None:
            return
        by_tenant: dict[str, set[str]] = {}
        for tenant, sku in side_effects:
            by_tenant.setdefault(tenant, set()).add(sku)
        for tenant, skus in by_tenant.items():
            future = asyncio.ensure_future(self.catalog.add(tenant, skus))
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)

    async def rebuild_catalog(self, partition: int) -> bool:
        """Every SKU with a stock record in ``partition`` joins its tenant's catalog again."""
        if self.catalog is None or self.stage is None:
            return True
        by_tenant: dict[str, set[str]] = {}
        for _key, value in self.stage.store(STOCK).items(partition):
            stock = wire.decode_state(value, SkuStock)
            if stock.levels:
                by_tenant.setdefault(stock.tenant, set()).add(stock.sku)
        return all([await self.catalog.add(tenant, skus) for tenant, skus in by_tenant.items()])


def stock_moved(event: StockEvent) -> StockMoved | None:
    """Finance books every change of on hand at its value (业财一体化)."""
    return StockMoved(event=event) if event.d_on_hand else None


def atp_changed(event: StockEvent) -> AtpChanged | None:
    """Stock sync hears of every change of available to promise (an issue moves on hand and reserved alike: no)."""
    if event.d_on_hand == event.d_reserved:
        return None
    return AtpChanged(
        tenant=event.tenant, sku=event.sku, warehouse=event.warehouse, on_hand=event.on_hand,
        reserved=event.reserved, version=event.version, ts=event.ts,
    )  # fmt: skip


def install(app: faust.App, catalog: Catalog | None = None, sync: ReadModelSync | None = None) -> Stage:
    ctx = context(app)
    settings = ctx.settings
    logic = InventoryLogic(ctx.topics, settings.partitions, settings.line_retention_s * 1000, catalog)
    stage = logic.stage = Stage(app, logic)
    if sync is not None and catalog is not None:
        sync.register("catalog", stage.owned, logic.rebuild_catalog)
    return stage
