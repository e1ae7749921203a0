"""Shipping invariants (S1–S4), pure, from the result topics with the inputs as the truth.

The pickers' confirmations say what each line has in the carts (agents' outputs aside); the carrier's answers
on the shipping inbox are the carrier's word (an input, like a channel's order).

* **S1 Waybills.** Every waybill number is on one parcel only, and is a number the carrier gave for that parcel.
* **S2 Every picked shipment leaves or fails, once.** A picked shipment with anything picked ships exactly once
  or fails exactly once (never both); one with nothing picked does neither; a failure follows carrier errors
  for the parcel that failed.
* **S3 What ships is what was picked.** The units per line over a shipment's parcels are the units the pickers
  reported; no parcel holds a line of another shipment.
* **S4 Issued once, as shipped.** Every shipped line was issued exactly once from the shipment's warehouse, its
  on-hand down by the units shipped; nothing that did not ship was issued; goods issued per order and shipment
  name exactly the lines and waybills that shipped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from invariants.picking import Truth
from schemas.inventory import CommandKind, StockEvent


def shipped_lines(out: Any) -> dict[tuple[str, str], int]:
    """(tenant, line) → units shipped, over every shipment that shipped (its first copy)."""
    units: dict[tuple[str, str], int] = defaultdict(int)
    seen: set[tuple[str, str]] = set()
    for shipped in out.shipped:
        ref = (shipped.tenant, shipped.shipment_id)
        if ref in seen:
            continue
        seen.add(ref)
        for parcel in shipped.parcels:
            for ln in parcel.lines:
                units[(shipped.tenant, ln.line_id)] += ln.units
    return dict(units)


def check_shipping(
    out: Any, truth: Truth, applied: dict[str, StockEvent], v: Any, handed_over: set[tuple[str, str]] | None = None
) -> None:
    """``handed_over``: lines issued in a store (pickups, counter sales), not shipped (A4 checks them)."""
    given: dict[tuple[str, str], set[str]] = defaultdict(set)  # (tenant, parcel) -> numbers the carrier gave
    errors: Counter = Counter()
    for answer in out.waybill_answers:
        if answer.waybill:
            given[(answer.tenant, answer.parcel_id)].add(answer.waybill)
        else:
            errors[(answer.tenant, answer.parcel_id)] += 1
    shipped_count = Counter((s.tenant, s.shipment_id) for s in out.shipped)
    failed_count = Counter((f.tenant, f.shipment_id) for f in out.shipping_failures)
    shipped_by_ref = {(s.tenant, s.shipment_id): s for s in out.shipped}  # one pass: a day has 100k of them
    failure_by_ref = {(f.tenant, f.shipment_id): f for f in out.shipping_failures}
    # S1
    owner: dict[tuple[str, str], str] = {}
    for shipped in {(s.tenant, s.shipment_id): s for s in out.shipped}.values():
        for parcel in shipped.parcels:
            ref = (shipped.tenant, parcel.waybill)
            if ref in owner and owner[ref] != parcel.parcel_id:
                v.fail("S1", f"waybill {parcel.waybill} is on {owner[ref]} and {parcel.parcel_id}")
            owner[ref] = parcel.parcel_id
            if parcel.waybill not in given.get((shipped.tenant, parcel.parcel_id), set()):
                v.fail("S1", f"{parcel.parcel_id} shipped with {parcel.waybill}, which the carrier never gave it")
    # S2, S3
    picked_refs = {}
    for done in out.picked_shipments:
        picked_refs.setdefault((done.tenant, done.shipment_id), done)
    for ref, done in picked_refs.items():
        want = {ln.line_id: truth.picked.get((done.tenant, ln.line_id), ln.picked) for ln in done.lines}
        want = {line: n for line, n in want.items() if n > 0}
        ships, fails = shipped_count[ref], failed_count[ref]
        if not want:
            if ships or fails:
                v.fail("S2", f"{ref[1]}: nothing was picked, yet it shipped {ships}x, failed {fails}x")
            continue
        if ships + fails != 1:
            v.fail("S2", f"{ref[1]} was picked; it shipped {ships}x and failed {fails}x (once, one of them)")
            continue
        if fails:
            failure = failure_by_ref[ref]
            if not errors[(failure.tenant, failure.parcel_id)]:
                v.fail("S2", f"{ref[1]} failed on {failure.parcel_id}, for which no carrier ever answered an error")
            continue
        shipped = shipped_by_ref[ref]
        got: dict[str, int] = defaultdict(int)
        for parcel in shipped.parcels:
            for ln in parcel.lines:
                got[ln.line_id] += ln.units
        if dict(got) != want:
            v.fail("S3", f"{ref[1]} shipped {sorted(got.items())}, the pickers picked {sorted(want.items())}")
    for ref in shipped_count.keys() - picked_refs.keys():
        v.fail("S2", f"{ref[1]} shipped but was never picked")
    # S4
    units = shipped_lines(out)
    warehouse_of = {(s.tenant, ln.line_id): s.warehouse for s in out.shipped for p in s.parcels for ln in p.lines}
    issued: dict[tuple[str, str], list[StockEvent]] = defaultdict(list)
    for ev in applied.values():
        if ev.kind is CommandKind.ISSUE and ev.line_id:
            issued[(ev.tenant, ev.line_id)].append(ev)
    for ref, n in units.items():
        events = issued.get(ref, [])
        if len(events) != 1:
            v.fail("S4", f"{ref[1]} shipped {n} unit(s) and was issued {len(events)}x")
        elif events[0].d_on_hand != -n or events[0].warehouse != warehouse_of[ref]:
            ev = events[0]
            v.fail("S4", f"{ref[1]} shipped {n} from {warehouse_of[ref]}, issued {-ev.d_on_hand} from {ev.warehouse}")
    for ref in issued.keys() - units.keys() - (handed_over or set()):
        v.fail("S4", f"{ref[1]} was issued but never shipped")
    goods: dict[tuple[str, str, str], Any] = {}
    for g in out.goods_issued:
        if g.waybills:  # handed over in a store: no shipment behind it
            goods.setdefault((g.tenant, g.shipment_id, g.order_id), g)
    for shipped in {(s.tenant, s.shipment_id): s for s in out.shipped}.values():
        per_order: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        bills: dict[str, set[str]] = defaultdict(set)
        for parcel in shipped.parcels:
            for ln in parcel.lines:
                per_order[ln.order_id][ln.line_id] += ln.units
                bills[ln.order_id].add(parcel.waybill)
        for order_id, lines in per_order.items():
            g = goods.get((shipped.tenant, shipped.shipment_id, order_id))
            if g is None:
                v.fail("S4", f"{order_id} shipped in {shipped.shipment_id} with no goods-issued record")
            elif {ln.line_id: ln.units for ln in g.lines} != dict(lines) or set(g.waybills) != bills[order_id]:
                v.fail("S4", f"goods issued for {order_id} in {shipped.shipment_id} do not match what shipped")
    v.counts.update(
        shipments_shipped=len(shipped_count),
        shipments_failed=len(failed_count),
        parcels=sum(len(s.parcels) for s in {(s.tenant, s.shipment_id): s for s in out.shipped}.values()),
        waybills_by_carrier=dict(
            Counter(p.carrier for s in {(s.tenant, s.shipment_id): s for s in out.shipped}.values() for p in s.parcels)
        ),
    )
