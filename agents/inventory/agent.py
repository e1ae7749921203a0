"""The inventory agent: reads inventory commands (key ``tenant:sku``), applies the stock rules, writes the
stock and reservation tables, and emits stock events, line results and dead letters.

``concurrency=1``: the partition is the lock, and with more than one actor per partition Faust can commit
past a command still in flight (DESIGN.md §5).
"""

from __future__ import annotations

import faust
from faust.types import EventT, StreamT

from agents.inventory.core import Reservation, SkuStock, apply
from engine.app import context, state_table
from engine.catalog import Catalog
from engine.stage import PartitionWork, Stage
from schemas.inventory import CommandKind, InventoryCommand, reservation_key


def install(app: faust.App, catalog: Catalog | None = None) -> Stage:
    ctx = context(app)
    topics, partitions = ctx.topics, ctx.settings.partitions
    stock = state_table(
        app, "stock", "tenant:sku -> per-warehouse [on_hand, reserved], per-origin high-water seq, version"
    )
    reservations = state_table(
        app, "reservations", "tenant:sku:line_id -> open reservation [order_id, warehouse, quantity]"
    )
    commands = app.topic(topics.inventory_commands, key_type=bytes, value_type=bytes, partitions=partitions)
    stage = Stage(app, "inventory")

    def handle(work: PartitionWork, event: EventT) -> None:
        cmd = stage.decode(work, event, InventoryCommand)
        if cmd is None:
            return
        line = getattr(cmd, "line_id", None)
        rkey = reservation_key(cmd.tenant, cmd.sku, line) if line else None
        current = SkuStock.from_state(cmd.tenant, cmd.sku, work.get(stock, cmd.key))
        held = Reservation.from_state(work.get(reservations, rkey)) if rkey else None
        out = apply(current, held, cmd)
        if out.duplicate:
            stage.stats.note("duplicate")
        else:
            work.put(stock, cmd.key, out.stock.to_state())
        if out.reservation_changed and rkey:
            if out.reservation is None:
                work.delete(reservations, rkey)
            else:
                work.put(reservations, rkey, out.reservation.to_state())
        for ev in out.events:
            work.emit(topics.stock_events, ev)
            if ev.kind is CommandKind.RECEIVE:
                work.side_effects.append((ev.tenant, ev.sku))
        for result in out.results:
            work.emit(topics.line_results, result)
        if out.refused:
            stage.dead_letter(work, event, out.refused[0], out.refused[1], cmd.tenant)

    async def publish_catalog(work: PartitionWork) -> None:
        """SKUs that received stock join the tenant's catalog (the edge refuses SKUs outside it)."""
        if catalog is None or not work.side_effects:
            return
        by_tenant: dict[str, set[str]] = {}
        for tenant, sku in work.side_effects:
            by_tenant.setdefault(tenant, set()).add(sku)
        for tenant, skus in by_tenant.items():
            await catalog.add(tenant, skus)

    @app.agent(commands, name="inventory", concurrency=1)
    async def inventory(stream: StreamT) -> None:
        await stage.run(stream, handle, after_commit=publish_catalog)

    return stage
