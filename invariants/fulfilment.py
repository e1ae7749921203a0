"""Fulfilment invariants (F1–F4) from the result topics, judged against the orders as they were sent (pure).

* **F1 One shipment per line.** No line is in two shipments, and every shipped line is a line that was sent
  (same SKU and quantity) of an order the engine accepted — or the remainder of a line a picker reported short,
  with the missing units. When the run is *complete* (every merge window passed), every accepted line still
  wanted — not cancelled by the channel, not withdrawn in time — and every reallocated remainder is in exactly
  one shipment.
* **F2 Merges stay within a buyer.** The orders of one shipment share tenant, shop, buyer and receiver address
  (as sent), and those are the shipment's tenant and shop.
* **F3 One warehouse per shipment.** Every line of a shipment was reserved in the shipment's warehouse, and
  every accepted order has one allocation record that names exactly its accepted lines, each in the warehouse
  it was reserved in.
  (F6 and F7, picking, are in invariants.picking.)
* **F4 Waves and pick lists.** No shipment is in two waves; a wave's pick lists pick exactly its shipments'
  lines (SKU and units), each once. When complete, every shipment is in a wave.
* **F5 Withdrawals.** An order that ``left`` fulfilment has none of its lines shipped (or only lines the
  withdrawal did not name); a ``too_late`` one is in a shipment released before.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from invariants.contract import receiver_identity
from invariants.inputs import Inputs
from invariants.picking import Truth
from schemas import wire
from schemas.inventory import CommandKind, StockEvent
from schemas.order import REMAINDER, buyer_key, root_line
from schemas.saga import DecisionStatus


def check_fulfilment(
    inputs: Inputs, out: Any, v: Any, truth: Truth | None = None, applied: dict[str, StockEvent] | None = None
) -> None:
    """``out``: invariants.collect.Outputs; ``v``: the Verdict to add failures and counts to; ``applied``: the
    stock events by id (where each line was reserved)."""
    truth = truth or Truth(inputs)
    reserved_in = {
        (ev.tenant, ev.line_id): ev.warehouse
        for ev in (applied or {}).values()
        if ev.kind is CommandKind.RESERVE and ev.line_id
    }
    sent = {(o.tenant, o.order_id): o for o in inputs.orders.values()}
    accepted = {
        (d.tenant, d.order_id): {ln.line_id: ln for ln in d.lines}
        for d in out.decisions
        if d.status is DecisionStatus.ACCEPTED
    }
    shipped: dict[tuple[str, str], str] = {}  # (tenant, line id) -> shipment id
    line_order: dict[tuple[str, str], str] = {}
    for shipment in out.shipments:
        orders = set()
        for line in shipment.lines:
            ref = (shipment.tenant, line.line_id)
            if ref in shipped and shipped[ref] != shipment.shipment_id:
                v.fail("F1", f"line {line.line_id} is in shipments {shipped[ref]} and {shipment.shipment_id}")
            shipped[ref] = shipment.shipment_id
            line_order[ref] = line.order_id
            orders.add(line.order_id)
            order_sent = sent.get((shipment.tenant, line.order_id))
            decided = accepted.get((shipment.tenant, line.order_id), {})
            if line.line_id.endswith(REMAINDER):
                want = truth.line(shipment.tenant, line.line_id)
                if want is None or (shipment.tenant, line.order_id) not in accepted:
                    v.fail("F1", f"{shipment.shipment_id} ships {line.line_id}, a remainder no short pick left")
                elif (want.sku, want.units) != (line.sku, line.quantity):
                    v.fail(
                        "F1",
                        f"{shipment.shipment_id}: {line.line_id} is {line.sku}×{line.quantity}, not "
                        f"{want.sku}×{want.units}",
                    )
                elif reserved_in and reserved_in.get(ref) != shipment.warehouse:
                    v.fail(
                        "F3",
                        f"{line.line_id} was reserved in {reserved_in.get(ref)}, shipped from {shipment.warehouse}",
                    )
                continue
            if order_sent is None or decided.get(line.line_id) is None:
                v.fail("F1", f"{shipment.shipment_id} ships {line.line_id}, not a line of an accepted order")
                continue
            if order_sent.lines().get(line.line_id) != (line.sku, line.quantity):
                v.fail("F1", f"{shipment.shipment_id}: {line.line_id} is {line.sku}×{line.quantity}, not as sent")
            warehouse = decided[line.line_id].warehouse
            if warehouse != shipment.warehouse:
                v.fail("F3", f"{line.line_id} was reserved in {warehouse}, shipped from {shipment.warehouse}")
        if set(shipment.order_ids) != orders:
            v.fail("F1", f"{shipment.shipment_id} lists orders {shipment.order_ids}, its lines are of {sorted(orders)}")
        groups = set()
        for order_id in orders:
            order_sent = sent.get((shipment.tenant, order_id))
            if order_sent is None:
                continue
            order = order_sent.latest()
            groups.add((order.tenant, order.shop_id, buyer_key(order), receiver_identity(order.receiver)))
            if order.shop_id != shipment.shop_id:
                v.fail(
                    "F2", f"{shipment.shipment_id} is for shop {shipment.shop_id}, order {order_id} of {order.shop_id}"
                )
        if len(groups) > 1:
            v.fail("F2", f"{shipment.shipment_id} merges orders of different buyers or addresses: {sorted(orders)}")

    allocated: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for allocation in out.allocations:
        allocated[(allocation.tenant, allocation.order_id)].append(allocation)
    for ref, lines in accepted.items():
        found = allocated.pop(ref, [])
        if len({wire.encode(a) for a in found}) != 1:
            v.fail("F3", f"{ref[1]} was accepted with {len(found)} different allocation record(s)")
            continue
        homes = {line: parcel.warehouse for parcel in found[0].parcels for line in parcel.line_ids}
        want = {line_id: line.warehouse for line_id, line in lines.items()}
        if homes != want:
            v.fail("F3", f"{ref[1]}: allocated {homes}, reserved {want}")
    for ref in allocated:
        v.fail("F3", f"{ref[1]} has an allocation but no accepted decision")

    withdrawn_in_time: dict[tuple[str, str], list[str]] = defaultdict(list)
    for outcome in out.withdrawals:
        ref = (outcome.tenant, outcome.order_id)
        if outcome.outcome == "too_late" and not outcome.shipment_ids:
            v.fail("F5", f"{outcome.order_id}: withdrawn too late, yet in no shipment")
        if outcome.outcome == "left":
            withdrawn_in_time[ref].append(outcome.warehouse)
    cancelled_lines = {
        (c.tenant, line) for c in out.cancellations for line in (c.line_ids or accepted.get((c.tenant, c.order_id), {}))
    }
    if inputs.fulfilment_complete:
        for (tenant, order_id), lines in accepted.items():
            order = sent.get((tenant, order_id))
            if order is not None and order.latest().delivery != "ship":
                continue  # handed over in a store, not shipped (A4)
            for line_id, line in lines.items():
                ref = (tenant, line_id)
                if ref in cancelled_lines:
                    continue  # cancelled after acceptance: shipped only if withdrawn too late (checked above)
                if ref not in shipped:
                    v.fail("F1", f"accepted line {line_id} ({line.sku}) is in no shipment")
        for answer in out.short_picks:
            ref = (answer.tenant, answer.remainder_line_id or "")
            cancelled = (answer.tenant, root_line(answer.line_id)) in cancelled_lines
            if answer.outcome == "reallocated" and ref not in shipped and not cancelled:
                v.fail("F1", f"{answer.remainder_line_id}, reallocated after a short pick, is in no shipment")
    for tenant, order_id in withdrawn_in_time:
        for ref, order in line_order.items():
            if ref[0] == tenant and order == order_id and ref in cancelled_lines:
                v.fail("F5", f"{order_id} left its merge, yet its cancelled line {ref[1]} was shipped")

    waved: dict[tuple[str, str], str] = {}
    by_shipment = {(s.tenant, s.shipment_id): s for s in out.shipments}
    lists = {(p.tenant, p.pick_list_id): p for p in out.pick_lists}
    waves = {(w.tenant, w.wave_id) for w in out.waves}
    if len(waves) < len(out.waves):
        v.fail("F4", f"{len(out.waves) - len(waves)} wave id(s) written twice")
    for wave in out.waves:
        want: Counter = Counter()
        for shipment_id in wave.shipment_ids:
            if (wave.tenant, shipment_id) in waved:
                v.fail(
                    "F4", f"shipment {shipment_id} is in waves {waved[(wave.tenant, shipment_id)]} and {wave.wave_id}"
                )
            waved[(wave.tenant, shipment_id)] = wave.wave_id
            shipment = by_shipment.get((wave.tenant, shipment_id))
            if shipment is None:
                v.fail("F4", f"{wave.wave_id} holds {shipment_id}, which was never released")
                continue
            want.update({(shipment_id, ln.line_id, ln.sku): ln.quantity for ln in shipment.lines})
        got: Counter = Counter()
        for list_id in wave.pick_list_ids:
            pick_list = lists.get((wave.tenant, list_id))
            if pick_list is None:
                v.fail("F4", f"{wave.wave_id}: pick list {list_id} was never written")
                continue
            got.update({(s.shipment_id, s.line_id, s.sku): s.quantity for s in pick_list.stops})
        if got != want:
            v.fail("F4", f"{wave.wave_id}: pick lists pick {dict(got - want)} too much, {dict(want - got)} too little")
    if inputs.fulfilment_complete:
        for _tenant, shipment_id in sorted(by_shipment.keys() - waved.keys()):
            v.fail("F4", f"shipment {shipment_id} is in no wave")
    merged = sum(1 for s in out.shipments if len(s.order_ids) > 1)
    orders_shipped: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in out.shipments:
        for o in s.order_ids:
            orders_shipped[(s.tenant, o)].add(s.shipment_id)
    v.counts.update(
        shipments=len(out.shipments),
        merged_shipments=merged,
        split_orders=sum(1 for ids in orders_shipped.values() if len(ids) > 1),
        waves=len(out.waves),
        pick_lists=len(out.pick_lists),
        withdrawals=Counter(w.outcome for w in out.withdrawals),
        allocations=Counter(a.strategy + (" (quoted)" if a.quoted else "") for a in out.allocations),
    )
