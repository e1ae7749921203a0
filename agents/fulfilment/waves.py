"""Waves (波次) and pick lists (拣货单) for one warehouse.

Released shipments wait in groups — by carrier, by shape (单品单件 single-unit vs multi-unit), by the zones
they touch, as the tenant's :class:`~schemas.fulfilment.WavePolicy` says. A group becomes a wave when it
reaches ``release_count`` shipments or a line, unit or shipment cap (单量触发), or when its oldest shipment has
waited ``release_after_s`` of record time (定时触发); waves released together go in carrier cut-off order.

A wave yields pick lists: per zone, per cart (a cart never holds more than ``cart_units``; a shipment's
lines stay in one cart when they fit), each with its stops in walking order (agents.fulfilment.paths) and
the walk's length next to the S-shape length of the same stops.

State is per warehouse (key ``tenant:warehouse``): its single writer builds every wave of that warehouse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agents.fulfilment import paths
from schemas.fulfilment import (
    BinSpec,
    Layout,
    PickList,
    PickStop,
    Shipment,
    WarehouseSpec,
    Wave,
    WavePolicy,
)


@dataclass
class Pending:
    shipment: Shipment
    arrived_ts: int


@dataclass
class WaveBook:
    tenant: str
    warehouse: str
    groups: dict[str, list[Pending]] = field(default_factory=dict)
    waves: int = 0  # waves released so far: the next wave's number


class LayoutError(ValueError):
    """A shipment asks for a SKU that has no bin in its warehouse (reason code ``unknown_bin``)."""


_BINS: dict[int, tuple[WarehouseSpec, dict[str, BinSpec]]] = {}


def bins_by_sku(warehouse: WarehouseSpec) -> dict[str, BinSpec]:
    """The bin each SKU is picked from: the one nearest the front of the lowest aisle (then by bin id).
    Cached per warehouse object (layouts are immutable; the cache holds the object, so its id is not reused)."""
    cached = _BINS.get(id(warehouse))
    if cached is not None and cached[0] is warehouse:
        return cached[1]
    found: dict[str, BinSpec] = {}
    for spec in sorted(warehouse.bins, key=lambda b: (b.zone, b.aisle, b.depth_cm, b.level, b.bin)):
        found.setdefault(spec.sku, spec)
    if len(_BINS) >= 64:
        _BINS.clear()
    _BINS[id(warehouse)] = (warehouse, found)
    return found


def group_of(shipment: Shipment, policy: WavePolicy, bins: dict[str, BinSpec]) -> str:
    parts = []
    for grouping in policy.group_by:
        if grouping == "carrier":
            parts.append(f"carrier={shipment.carrier}")
        elif grouping == "shape":
            single = len(shipment.lines) == 1 and shipment.lines[0].quantity == 1
            parts.append("shape=single" if single else "shape=multi")
        elif grouping == "zone":
            zones = sorted({bins[ln.sku].zone for ln in shipment.lines if ln.sku in bins})
            parts.append("zone=" + "+".join(zones))
    return ",".join(parts) or "all"


def _size(items: list[Pending]) -> tuple[int, int, int]:
    lines = sum(len(p.shipment.lines) for p in items)
    units = sum(ln.quantity for p in items for ln in p.shipment.lines)
    return len(items), lines, units


def _full(items: list[Pending], policy: WavePolicy) -> bool:
    count, lines, units = _size(items)
    return (
        count >= min(policy.release_count, policy.max_shipments)
        or lines >= policy.max_lines
        or units >= policy.max_units
    )


def add_shipment(book: WaveBook, layout: Layout, shipment: Shipment, ts: int) -> list[tuple[Wave, list[PickList]]]:
    """Queue a released shipment; returns the wave it completes, if any (count or cap trigger)."""
    warehouse = _warehouse(layout, book.warehouse)
    bins = bins_by_sku(warehouse)
    missing = sorted({ln.sku for ln in shipment.lines if ln.sku not in bins})
    if missing:
        raise LayoutError(f"no bin in {book.warehouse} for {', '.join(missing)}")
    if any(shipment.shipment_id == p.shipment.shipment_id for group in book.groups.values() for p in group):
        return []  # a redelivery
    group = group_of(shipment, layout.waves, bins)
    items = book.groups.setdefault(group, [])
    items.append(Pending(shipment, ts))
    if not _full(items, layout.waves):
        return []
    del book.groups[group]
    return [_release(book, layout, warehouse, group, items, "count", ts)]


def release_due(book: WaveBook, layout: Layout, ts: int, flush: bool = False) -> list[tuple[Wave, list[PickList]]]:
    """Every group whose oldest shipment has waited long enough at record time ``ts`` (all of them when
    ``flush``), in carrier cut-off order."""
    if not book.groups:
        return []
    warehouse = _warehouse(layout, book.warehouse)
    wait_ms = layout.waves.release_after_s * 1000
    due = [g for g, items in book.groups.items() if flush or ts - items[0].arrived_ts >= wait_ms]
    cutoff = {c.carrier: c.cutoff_minute for c in layout.carriers}
    due.sort(key=lambda g: (min(cutoff.get(p.shipment.carrier, 1440) for p in book.groups[g]), g))
    return [_release(book, layout, warehouse, g, book.groups.pop(g), "flush" if flush else "time", ts) for g in due]


def _warehouse(layout: Layout, warehouse_id: str) -> WarehouseSpec:
    for spec in layout.warehouses:
        if spec.warehouse == warehouse_id:
            return spec
    raise LayoutError(f"warehouse {warehouse_id} is not in layout version {layout.version} of {layout.tenant}")


def _release(
    book: WaveBook,
    layout: Layout,
    warehouse: WarehouseSpec,
    group: str,
    items: list[Pending],
    trigger: Literal["count", "time", "flush"],
    ts: int,
) -> tuple[Wave, list[PickList]]:
    book.waves += 1
    wave_id = f"wave.{book.tenant}.{book.warehouse}.{book.waves}"  # ids are unique across tenants too
    picks = pick_lists(wave_id, book.tenant, warehouse, [p.shipment for p in items], layout.waves.path)
    _, lines, units = _size(items)
    wave = Wave(
        wave_id=wave_id,
        tenant=book.tenant,
        warehouse=book.warehouse,
        group=group,
        trigger=trigger,
        shipment_ids=[p.shipment.shipment_id for p in items],
        pick_list_ids=[p.pick_list_id for p in picks],
        lines=lines,
        units=units,
        ts=ts,
    )
    return wave, picks


def pick_lists(
    wave_id: str, tenant: str, warehouse: WarehouseSpec, shipments: list[Shipment], strategy: str
) -> list[PickList]:
    """Per zone, shipments' lines into carts (first fit in shipment order, a shipment whole when it fits),
    each cart's stops routed with ``strategy``."""
    bins = bins_by_sku(warehouse)
    zones = {z.zone: paths.Zone(z.aisles, z.pitch_cm, z.length_cm, z.depot_cm) for z in warehouse.zones}
    stops_by_zone: dict[str, list[list[PickStop]]] = {}
    for shipment in shipments:
        per_zone: dict[str, list[PickStop]] = {}
        for line in shipment.lines:
            spec = bins[line.sku]
            per_zone.setdefault(spec.zone, []).append(
                PickStop(
                    bin=spec.bin,
                    sku=line.sku,
                    quantity=line.quantity,
                    aisle=spec.aisle,
                    depth_cm=spec.depth_cm,
                    shipment_id=shipment.shipment_id,
                    line_id=line.line_id,
                )
            )
        for zone, stops in per_zone.items():
            stops_by_zone.setdefault(zone, []).append(stops)
    out: list[PickList] = []
    for zone in sorted(stops_by_zone):
        if zone not in zones:
            raise LayoutError(f"bin zone {zone} is not a zone of {warehouse.warehouse}")
        for cart in _carts(stops_by_zone[zone], warehouse.cart_units):
            out.append(
                _routed(
                    f"{wave_id}.{zone}.{len(out) + 1}", wave_id, tenant, warehouse, zone, zones[zone], cart, strategy
                )
            )
    return out


def _carts(shipments: list[list[PickStop]], capacity: int) -> list[list[PickStop]]:
    carts: list[list[PickStop]] = []
    loads: list[int] = []

    def place(stop: PickStop) -> None:
        for i, load in enumerate(loads):
            if load + stop.quantity <= capacity:
                carts[i].append(stop)
                loads[i] += stop.quantity
                return
        carts.append([stop])
        loads.append(stop.quantity)

    for stops in shipments:
        units = sum(s.quantity for s in stops)
        home = next((i for i, load in enumerate(loads) if load + units <= capacity), None)
        if home is not None:
            carts[home].extend(stops)
            loads[home] += units
        else:  # larger than what any cart has left: line by line (a line over capacity gets a cart of its own)
            for stop in stops:
                place(stop)
    return carts


def _routed(
    pick_list_id: str,
    wave_id: str,
    tenant: str,
    warehouse: WarehouseSpec,
    zone: str,
    geometry: paths.Zone,
    cart: list[PickStop],
    strategy: str,
) -> PickList:
    refs = {f"{s.shipment_id}|{s.line_id}": s for s in cart}
    points = [paths.Stop(s.aisle, s.depth_cm, ref) for ref, s in refs.items()]
    walk = paths.route(strategy, geometry, points)
    baseline = paths.s_shape(geometry, points)
    return PickList(
        pick_list_id=pick_list_id,
        wave_id=wave_id,
        tenant=tenant,
        warehouse=warehouse.warehouse,
        zone=zone,
        stops=[refs[p.ref] for p in walk.stops],
        path=strategy,  # type: ignore[arg-type]
        length_cm=walk.length_cm,
        s_shape_cm=baseline.length_cm,
        exact=walk.exact,
    )
