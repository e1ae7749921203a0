"""Warehouse allocation (分仓) and splitting (拆单): which warehouse ships each line of an accepted order.

Pure rules over the tenant's :class:`~schemas.fulfilment.Layout`, the receiver's address, and the units
available per warehouse for each SKU of the order (the answer of the SKUs' single writers, never a live
lookup). A line is never divided: it ships whole from one warehouse, so no line is reserved twice.

Strategies, after the per-shop override (例外店铺) has narrowed the warehouses:

* ``region``          per line, the nearest warehouse with stock: one serving the receiver's city, then
                      province, then the tenant's ``warehouse_order``.
* ``stock-first``     the first warehouse of ``warehouse_order`` that can ship the whole order; else ``region``.
* ``fewest-parcels``  the smallest set of warehouses that can ship everything (最少包裹), ties broken by region
                      rank and then ``warehouse_order``; each line goes to the best-ranked warehouse of the set
                      that has it.

Purposeful splits: a line of a ``ship_alone_skus`` SKU (oversize, fragile, pre-sale) gets a parcel of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from schemas.fulfilment import Layout, WarehouseSpec
from schemas.order import Address

#: Above this many candidate warehouses, fewest-parcels stops trying every combination and goes greedy.
EXACT_COVER_WAREHOUSES = 12


@dataclass(frozen=True)
class LineRequest:
    line_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class Parcel:
    warehouse: str
    line_ids: tuple[str, ...]
    reason: str | None = None  # why the order has more than one: "warehouse" (no single one), "ship_alone"


@dataclass
class Allocation:
    parcels: list[Parcel] = field(default_factory=list)
    unallocated: list[str] = field(default_factory=list)  # no warehouse has the units

    @property
    def split(self) -> bool:
        return len(self.parcels) > 1


def region_rank(warehouse: WarehouseSpec, receiver: Address) -> int:
    """0 serves the receiver's city, 1 the province, 2 neither."""
    city = f"{receiver.province}/{receiver.city}"
    if receiver.city and city in warehouse.regions:
        return 0
    if receiver.province and receiver.province in warehouse.regions:
        return 1
    return 2


def candidates(layout: Layout, shop_id: str, receiver: Address) -> list[str]:
    """The warehouses that may ship for this shop, best first by region, then by the tenant's order."""
    by_id = {w.warehouse: w for w in layout.warehouses}
    policy = layout.allocation
    override = policy.shop_warehouses.get(shop_id)
    if override:
        return [w for w in override if w in by_id]  # the shop's own order is the ranking
    order = {w: i for i, w in enumerate(policy.warehouse_order)}
    if policy.strategy == "ship-from-store":  # 门店发货: a store in the receiver's city first, then as usual
        return sorted(
            by_id,
            key=lambda w: (
                not (by_id[w].kind == "store" and region_rank(by_id[w], receiver) == 0),
                region_rank(by_id[w], receiver),
                order.get(w, len(order)),
                w,
            ),
        )
    return sorted(
        by_id,
        key=lambda w: (region_rank(by_id[w], receiver), order.get(w, len(order)), w),
    )


def allocate(
    layout: Layout,
    shop_id: str,
    receiver: Address,
    lines: Sequence[LineRequest],
    available: Mapping[str, Mapping[str, int]],
) -> Allocation:
    """``available[sku][warehouse]`` = units free to reserve. Lines of one SKU draw on the same units."""
    return allocate_ranked(layout, candidates(layout, shop_id, receiver), lines, available)


def allocate_ranked(
    layout: Layout,
    ranked: Sequence[str],
    lines: Sequence[LineRequest],
    available: Mapping[str, Mapping[str, int]],
) -> Allocation:
    """:func:`allocate` over warehouses already ranked (:func:`candidates`, as the order stage keeps them)."""
    left = {sku: {w: available.get(sku, {}).get(w, 0) for w in ranked} for sku in sorted({ln.sku for ln in lines})}
    strategy = layout.allocation.strategy
    chosen: dict[str, str] = {}
    if strategy == "stock-first":
        order = [w for w in layout.allocation.warehouse_order if w in ranked] or ranked
        whole = next((w for w in order if _can_ship(left, lines, [w])), None)
        if whole is not None:
            chosen = {ln.line_id: whole for ln in lines}
    elif strategy == "fewest-parcels":
        cover = _fewest_warehouses(left, lines, ranked)
        if cover is not None:
            chosen = _assign(left, lines, cover)
    if not chosen:  # region, or the fallback when no warehouse set ships everything
        chosen = _assign(left, lines, ranked, partial=True)
    return _parcels(layout, lines, chosen)


def _can_ship(left: Mapping[str, Mapping[str, int]], lines: Sequence[LineRequest], warehouses: Sequence[str]) -> bool:
    return bool(_assign(left, lines, warehouses))


def _assign(
    left: Mapping[str, Mapping[str, int]],
    lines: Sequence[LineRequest],
    warehouses: Sequence[str],
    partial: bool = False,
) -> dict[str, str]:
    """Each line to the first of ``warehouses`` with its units (lines in order, drawing down a copy)."""
    pool = {sku: dict(by_wh) for sku, by_wh in left.items()}
    chosen: dict[str, str] = {}
    for line in lines:
        home = next((w for w in warehouses if pool[line.sku].get(w, 0) >= line.quantity), None)
        if home is None:
            if not partial:
                return {}
            continue
        pool[line.sku][home] -= line.quantity
        chosen[line.line_id] = home
    return chosen


def _fewest_warehouses(
    left: Mapping[str, Mapping[str, int]], lines: Sequence[LineRequest], ranked: Sequence[str]
) -> list[str] | None:
    """The smallest warehouse set (in rank order) that ships every line; ``None`` when even all cannot."""
    if not _can_ship(left, lines, ranked):
        return None
    useful = [w for w in ranked if any(left[ln.sku].get(w, 0) >= ln.quantity for ln in lines)]
    if len(useful) <= EXACT_COVER_WAREHOUSES:
        for size in range(1, len(useful) + 1):
            # combinations() keeps rank order, so the first set found is also the best ranked of its size.
            for subset in itertools.combinations(useful, size):
                if _can_ship(left, lines, subset):
                    return list(subset)
    chosen: list[str] = []  # greedy: the warehouse that ships most of what is still unassigned
    todo = list(lines)
    while todo:
        rest = [w for w in useful if w not in chosen]
        best = max(rest, key=lambda w: (len(_assign(left, todo, [*chosen, w], partial=True)), -useful.index(w)))
        chosen.append(best)
        done = _assign(left, todo, chosen, partial=True)
        todo = [ln for ln in todo if ln.line_id not in done]
    return sorted(chosen, key=useful.index)


def _parcels(layout: Layout, lines: Sequence[LineRequest], chosen: Mapping[str, str]) -> Allocation:
    alone = set(layout.allocation.ship_alone_skus)
    out = Allocation()
    grouped: dict[str, list[str]] = {}
    for line in lines:
        home = chosen.get(line.line_id)
        if home is None:
            out.unallocated.append(line.line_id)
        elif line.sku in alone:
            out.parcels.append(Parcel(home, (line.line_id,), "ship_alone"))
        else:
            grouped.setdefault(home, []).append(line.line_id)
    reason = "warehouse" if len(grouped) > 1 else None
    together = [Parcel(w, tuple(ids), reason) for w, ids in grouped.items()]
    out.parcels[:0] = together
    return out
