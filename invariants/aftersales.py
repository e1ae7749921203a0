"""Aftersales invariants (A1–A4), pure, from the result topics with the inputs as the truth.

The carriers' events, the return receipts and the pickup claims the test (or the job) sent are the truth about
where parcels are, what came back and who came for their goods.

* **A1 Tracking only moves forward, to where the carriers said.** Per waybill the published states never go
  back (nothing after a final one); the last is what the events sent imply, whatever order and however many
  times they came. An order is delivered once, and only when every waybill it left with was delivered and all of
  it shipped.
* **A2 Every write-back ends, once.** The requests of one idempotency key carry the same payload, attempts
  1, 2, … without gaps; when aftersales has settled, each key ended in exactly one acknowledgement or (after
  the last attempt) one failure.
* **A3 Returns take effect as received.** Each receipt sent puts each line's units back once — to the warehouse
  when sellable, to its quarantine when damaged — as the SKU of the line as sent; nothing else is returned, and
  nothing comes back anywhere but where its line was issued from (or that place's quarantine); one settled
  record per receipt, its refund the line's paid amount pro rata.
* **A4 Pickups hand over only what was claimed.** A pickup order's lines are issued once, from its store, when
  its buyer came with the code (a counter sale: at once) — a claim sent several times (a client's retries) is
  one claim, handed over once and picked up once; once the deadlines passed, an unclaimed pickup was cancelled;
  the engine cancelled no other order by itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from invariants.contract import TRACKING_RANK, WRITEBACK_ATTEMPTS
from schemas.aftersales import ProgressEvent, quarantine
from schemas.inventory import CommandKind, StockEvent, return_id
from schemas.order import root_line
from schemas.review import CancellationKind
from schemas.saga import DecisionStatus
from schemas.shipping import TrackingStatus

FINAL = (TrackingStatus.DELIVERED, TrackingStatus.RETURNED)


def expected_returns(inputs: Any) -> dict[str, tuple[str, str, str, int]]:
    """Return command id → (tenant, sku, location, units), for every receipt sent that must take effect."""
    found = {}
    for receipt in inputs.return_receipts:
        sent = inputs.orders.get(f"{receipt.tenant}:{receipt.order_id}")
        lines = sent.lines() if sent is not None else {}
        for i, ln in enumerate(receipt.lines):
            sku = lines.get(root_line(ln.line_id), ("?", 0))[0]  # a remainder line is its order line's SKU
            where = receipt.warehouse if ln.disposition == "sellable" else quarantine(receipt.warehouse)
            command = return_id(receipt.tenant, ln.line_id, f"{receipt.return_id}.{i}")
            found[command] = (receipt.tenant, sku, where, ln.quantity)
    return found


def handed_over(inputs: Any, decided: dict[str, Any]) -> dict[tuple[str, str], tuple[str, int]]:
    """(tenant, line) → (store, units) of the accepted pickup orders claimed and of the accepted counter sales."""
    found = {}
    for key, sent in inputs.orders.items():
        order = sent.latest()
        decision = decided.get(key)
        if order.delivery == "ship" or decision is None or decision.status is not DecisionStatus.ACCEPTED:
            continue
        if order.delivery == "counter" or key in inputs.pickup_claims:
            for line, (_, units) in sent.lines().items():
                if line not in sent.closed_lines():
                    found[(sent.tenant, line)] = (order.pickup_store or "", units)
    return found


def check_aftersales(
    inputs: Any,
    out: Any,
    applied: dict[str, StockEvent],
    decided: dict[str, Any],
    handed: dict[tuple[str, str], tuple[str, int]],
    v: Any,
) -> None:
    """``handed``: :func:`handed_over` of these inputs and decisions (the caller computes it once)."""
    _tracking(inputs, out, v)
    _writebacks(inputs, out, v)
    _returns(inputs, out, applied, v)
    _pickups(inputs, out, applied, decided, handed, v)


def _tracking(inputs: Any, out: Any, v: Any) -> None:
    seen: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for update in out.tracking_updates:
        seen[(update.tenant, update.waybill)].append(update)
    for (_, waybill), updates in seen.items():
        rank = -1
        for i, update in enumerate(updates):
            if i and updates[i - 1].final and update != updates[i - 1]:
                v.fail(
                    "A1", f"{waybill} moved after it was final ({updates[i - 1].status.value} → {update.status.value})"
                )
            here = TRACKING_RANK.get(update.status, rank)
            if here < rank:
                v.fail("A1", f"{waybill} went back from rank {rank} to {update.status.value}")
            rank = max(rank, here)
    sent: dict[tuple[str, str], set[TrackingStatus]] = defaultdict(set)
    for event in inputs.carrier_events:
        sent[(event.tenant, event.waybill)].add(event.status)
    for ref, statuses in sent.items():
        if TrackingStatus.DELIVERED in statuses and TrackingStatus.RETURNED in statuses:
            continue  # the first of the two stands: the test does not send both
        if TrackingStatus.DELIVERED in statuses or TrackingStatus.RETURNED in statuses:
            want = TrackingStatus.DELIVERED if TrackingStatus.DELIVERED in statuses else TrackingStatus.RETURNED
        else:
            progress = [s for s in statuses if s in TRACKING_RANK and s is not TrackingStatus.CREATED]
            want = max(progress, key=TRACKING_RANK.__getitem__) if progress else None
        last = seen[ref][-1].status if seen.get(ref) else None
        if want is not None and last is not want:
            v.fail("A1", f"{ref[1]}: carriers said {want.value}, tracking ended at {last.value if last else 'nothing'}")
    delivered_bills = {ref for ref, statuses in sent.items() if TrackingStatus.DELIVERED in statuses}
    bills: dict[str, set[tuple[str, str]]] = defaultdict(set)
    shipped_units: dict[str, Counter] = defaultdict(Counter)
    for goods in out.goods_issued:
        key = f"{goods.tenant}:{goods.order_id}"
        bills[key].update((goods.tenant, w) for w in goods.waybills)
    for goods in {g.issue_id: g for g in out.goods_issued}.values():
        for ln in goods.lines:
            shipped_units[f"{goods.tenant}:{goods.order_id}"][ln.line_id] += ln.units
    delivered = Counter(p.key for p in out.order_progress if p.event is ProgressEvent.DELIVERED)
    for key, count in delivered.items():
        sent_order = inputs.orders.get(key)
        if count > 1:  # committed output: a second copy is a second decision
            v.fail("A1", f"{key} was delivered {count} times")
        if not bills[key] or not bills[key] <= delivered_bills:
            v.fail("A1", f"{key} is delivered, but not every waybill of it was: {sorted(w for _, w in bills[key])}")
        if sent_order is not None:
            wanted = {
                line: units for line, (_, units) in sent_order.lines().items() if line not in sent_order.closed_lines()
            }
            if any(shipped_units[key][line] < units for line, units in wanted.items()):
                v.fail("A1", f"{key} is delivered, but not all of it shipped")
    v.counts.update(
        waybills_tracked=len(seen),
        orders_delivered=len(delivered),
        tracking_exceptions=sum(1 for p in out.order_progress if p.event is ProgressEvent.EXCEPTION),
    )


def _writebacks(inputs: Any, out: Any, v: Any) -> None:
    by_key: dict[str, dict[int, Any]] = defaultdict(dict)
    for request in out.writebacks:
        held = by_key[request.idempotency_key].setdefault(request.attempt, request)
        if held.request != request.request:
            v.fail("A2", f"{request.idempotency_key} attempt {request.attempt} was sent with two payloads")
    ended: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for p in out.order_progress:
        if p.event in (ProgressEvent.WRITTEN_BACK, ProgressEvent.WRITEBACK_FAILED):
            ended[p.progress_id.split(f".{p.event.value}.", 1)[1]].add((p.progress_id, p.event.value))
    for key, attempts in by_key.items():
        numbers = sorted(attempts)
        if numbers != list(range(1, len(numbers) + 1)):
            v.fail("A2", f"{key} was attempted as {numbers}")
        if len({a.request_id for a in attempts.values()}) != len(attempts):
            v.fail("A2", f"{key}: two attempts share a request id")
        payloads = {repr(sorted(a.request.items())) for a in attempts.values()}
        if len(payloads) != 1:
            v.fail("A2", f"{key}: its attempts carry different payloads")
        outcome = ended.get(key, set())
        if len(outcome) > 1:
            v.fail("A2", f"{key} ended more than once: {sorted(outcome)}")
        if (
            any(kind == ProgressEvent.WRITEBACK_FAILED.value for _, kind in outcome)
            and len(numbers) < WRITEBACK_ATTEMPTS
        ):
            v.fail("A2", f"{key} failed after {len(numbers)} attempt(s), fewer than {WRITEBACK_ATTEMPTS}")
        if inputs.aftersales_settled and not outcome:
            v.fail("A2", f"{key} never ended (sent {len(numbers)}x, neither acknowledged nor failed)")
    for key in ended.keys() - by_key.keys():
        v.fail("A2", f"{key} ended without ever being sent")
    v.counts.update(
        writebacks=len(by_key),
        writebacks_acknowledged=sum(1 for o in ended.values() for _, k in o if k == ProgressEvent.WRITTEN_BACK.value),
        writebacks_failed=sum(1 for o in ended.values() for _, k in o if k == ProgressEvent.WRITEBACK_FAILED.value),
        writeback_attempts=sum(len(a) for a in by_key.values()),
    )


def _returns(inputs: Any, out: Any, applied: dict[str, StockEvent], v: Any) -> None:
    wanted = expected_returns(inputs)
    sent_by_loaders = {cmd.command_id for cmd in inputs.stock}
    for command, (tenant, sku, where, units) in wanted.items():
        ev = applied.get(command)
        if ev is None:
            v.fail("A3", f"return {command} was received and never took effect")
        elif (ev.tenant, ev.sku, ev.warehouse, ev.d_on_hand, ev.d_reserved) != (tenant, sku, where, units, 0):
            v.fail(
                "A3",
                f"return {command} put {ev.d_on_hand} of {ev.sku} in {ev.warehouse}, "
                f"received {units} of {sku} for {where}",
            )
    issued_from: dict[tuple[str, str], set[str]] = defaultdict(set)
    for ev in applied.values():
        if ev.kind is CommandKind.ISSUE and ev.line_id:
            issued_from[(ev.tenant, ev.line_id)].add(ev.warehouse)
    for ev in applied.values():
        if ev.kind is not CommandKind.RETURN or ev.event_id in sent_by_loaders:
            continue
        if ev.event_id not in wanted:
            v.fail("A3", f"{ev.event_id} returned {ev.d_on_hand} of {ev.sku} that nobody received")
        left_from = issued_from.get((ev.tenant, ev.line_id or ""), set())
        if ev.warehouse not in left_from | {quarantine(w) for w in left_from}:
            v.fail("A3", f"{ev.event_id} put {ev.sku} in {ev.warehouse}; its line left from {sorted(left_from)}")
    settled = Counter(
        (s.tenant, s.return_id) for s in {(s.tenant, s.return_id, s.ts): s for s in out.returns_settled}.values()
    )
    for receipt in inputs.return_receipts:
        ref = (receipt.tenant, receipt.return_id)
        copies = [s for s in out.returns_settled if (s.tenant, s.return_id) == ref]
        if not copies:
            v.fail("A3", f"return {receipt.return_id} was received and never settled")
            continue
        if settled[ref] > 1:
            v.fail("A3", f"return {receipt.return_id} was settled {settled[ref]} times")
        sent = inputs.orders.get(f"{receipt.tenant}:{receipt.order_id}")
        if sent is None:
            continue
        paid = {
            f"{sent.order_id}#{ln.line_no}": (
                ln.paid_fen if ln.paid_fen is not None else ln.unit_price_fen * ln.quantity,
                ln.quantity,
            )
            for ln in sent.latest().lines
        }
        roots = [(root_line(ln.line_id), ln.quantity) for ln in receipt.lines]  # a remainder is paid as its line
        want = sum(paid[line][0] * units // paid[line][1] for line, units in roots if line in paid)
        if copies[0].refund_fen != want:
            v.fail(
                "A3", f"return {receipt.return_id} refunds {copies[0].refund_fen} fen, the lines as paid give {want}"
            )
    v.counts.update(
        returns_settled=len(settled),
        units_returned=sum(
            ev.d_on_hand for ev in applied.values() if ev.kind is CommandKind.RETURN and ev.event_id in wanted
        ),
        units_quarantined=sum(u for _, _, where, u in wanted.values() if where.endswith("/quarantine")),
    )


def _pickups(
    inputs: Any,
    out: Any,
    applied: dict[str, StockEvent],
    decided: dict[str, Any],
    handed: dict[tuple[str, str], tuple[str, int]],
    v: Any,
) -> None:
    issued: dict[tuple[str, str], list[StockEvent]] = defaultdict(list)
    for ev in applied.values():
        if ev.kind is CommandKind.ISSUE and ev.line_id:
            issued[(ev.tenant, ev.line_id)].append(ev)
    for ref, (store, units) in handed.items():
        events = issued.get(ref, [])
        if len(events) != 1 or events[0].warehouse != store or events[0].d_on_hand != -units:
            got = [(e.warehouse, -e.d_on_hand) for e in events]
            v.fail("A4", f"{ref[1]} was handed over in {store} ({units}), issued as {got}")
    picked_up = Counter(
        p.key
        for p in out.order_progress
        if p.event is ProgressEvent.PICKED_UP and p.progress_id == f"{p.order_id}.picked_up.claimed"  # in a store
    )
    for key, count in picked_up.items():
        if count > 1:  # committed output: a second copy is a second hand-over
            v.fail("A4", f"{key} was picked up {count} times")
    engine_cancelled = {
        c.key for c in out.cancellations if c.kind is CancellationKind.ORDER and c.reason == "pickup_expired"
    }
    pickups = {k: s for k, s in inputs.orders.items() if s.latest().delivery == "pickup"}
    for key in engine_cancelled:
        if key not in pickups or key in inputs.pickup_claims:
            v.fail(
                "A4",
                f"{key} was cancelled as an expired pickup, but it was {'claimed' if key in pickups else 'no pickup'}",
            )
    for key, sent in pickups.items():
        decision = decided.get(key)
        if decision is None or decision.status is not DecisionStatus.ACCEPTED or sent.cancelled():
            continue
        claimed = key in inputs.pickup_claims
        if not claimed:
            for line in sent.lines():
                if issued.get((sent.tenant, line)):
                    v.fail("A4", f"{line} was issued, but nobody claimed the pickup of {key}")
            if inputs.pickups_due and key not in engine_cancelled:
                v.fail("A4", f"{key} was never claimed and its deadline passed, yet it was not cancelled")
    v.counts.update(
        pickups=len(pickups),
        pickups_claimed=len(inputs.pickup_claims & pickups.keys()),
        pickups_expired=len(engine_cancelled),
        counter_sales=sum(1 for s in inputs.orders.values() if s.latest().delivery == "counter"),
    )
