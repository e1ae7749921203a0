"""Picking invariants (F6–F8) and the truth about picked lines that the other checks share (pure).

The pickers' confirmations are inputs: what a picker reported picked is the truth, as the orders' lines are. So
every line's units follow from the inputs alone: a line of an order has the units its channel sent; a remainder
line (``<line>/r``, the units a short pick left to re-reserve) has its line's units minus what was picked of it.

* **F6 Picked never exceeds reserved.** Every confirmation that was sent was applied once, as sent: one
  ``confirmed`` pick outcome with the same picked units per stop, each at most the units the line holds (by the
  inputs) and at most what the engine reserved for it; nothing was confirmed that nobody sent.
* **F7 Short picks.** Every short stop took exactly its missing units out of the line's reservation and out of
  the count of the warehouse it was reserved in (one ``short`` stock event), and nothing else was ever shorted;
  its order side answered once: ``reallocated`` — the remainder line reserved exactly the missing units in
  another warehouse — or ``partial``, with no remainder holding stock. (I1 still holds: a short never oversells.)
* **F8 Picked shipments.** A shipment is reported picked exactly once, as soon as every one of its lines was
  confirmed, and then with exactly the units the pickers reported per line, for the receiver and shop its orders
  were sent with (province and city, what carriers are chosen by).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from invariants.inputs import Inputs
from schemas.inventory import CommandKind, StockEvent
from schemas.order import REMAINDER


@dataclass
class LineTruth:
    """What the inputs say of one line: its SKU, its units and, once a picker confirmed it, the units picked."""

    sku: str
    units: int
    picked: int | None = None

    @property
    def missing(self) -> int:
        return 0 if self.picked is None else self.units - self.picked

    @property
    def kept(self) -> int:
        """Units the line still holds once picked (all of them while unpicked)."""
        return self.units if self.picked is None else self.picked


class Truth:
    """Every line's units by the inputs, remainder lines included (``line`` → None: nobody could have made it)."""

    def __init__(self, inputs: Inputs) -> None:
        self.sent: dict[tuple[str, str], tuple[str, int]] = {}
        for order in inputs.orders.values():
            for line_id, (sku, units) in order.lines().items():
                self.sent[(order.tenant, line_id)] = (sku, units)
        self.picked: dict[tuple[str, str], int] = {}
        self.confirmations: dict[tuple[str, str], Any] = {}
        for confirmation in inputs.picks:
            ref = (confirmation.tenant, confirmation.pick_list_id)
            if ref in self.confirmations:
                continue  # sent twice: applied once
            self.confirmations[ref] = confirmation
            for line in confirmation.lines:
                self.picked[(confirmation.tenant, line.line_id)] = line.picked

    def line(self, tenant: str, line_id: str) -> LineTruth | None:
        sent = self.sent.get((tenant, line_id))
        if sent is not None:
            return LineTruth(sent[0], sent[1], self.picked.get((tenant, line_id)))
        if not line_id.endswith(REMAINDER):
            return None
        parent = self.line(tenant, line_id[: -len(REMAINDER)])
        if parent is None or parent.missing <= 0:
            return None
        return LineTruth(parent.sku, parent.missing, self.picked.get((tenant, line_id)))


def check_picking(inputs: Inputs, out: Any, truth: Truth, applied: dict[str, StockEvent], v: Any) -> None:
    reserved: dict[tuple[str, str], StockEvent] = {}
    shorts: dict[tuple[str, str], list[StockEvent]] = defaultdict(list)
    for ev in applied.values():
        if ev.line_id and ev.kind is CommandKind.RESERVE:
            reserved[(ev.tenant, ev.line_id)] = ev
        elif ev.line_id and ev.kind is CommandKind.SHORT:
            shorts[(ev.tenant, ev.line_id)].append(ev)

    confirmed = defaultdict(list)
    for outcome in out.pick_outcomes:
        if outcome.status == "confirmed":
            confirmed[(outcome.tenant, outcome.pick_list_id)].append(outcome)
    for ref, outcomes in confirmed.items():
        sent = truth.confirmations.get(ref)
        if sent is None:
            v.fail("F6", f"pick list {ref[1]} was confirmed, but nobody sent a confirmation for it")
            continue
        if len(outcomes) > 1:
            v.fail("F6", f"pick list {ref[1]} was confirmed {len(outcomes)} times")
        reported = {(line.shipment_id, line.line_id): line.picked for line in sent.lines}
        applied_picks = {(s.shipment_id, s.line_id): s.picked for s in outcomes[0].stops}
        if reported != applied_picks:
            v.fail("F6", f"pick list {ref[1]} was applied as {applied_picks}, the picker reported {reported}")
    short_lines: dict[tuple[str, str], LineTruth] = {}
    for ref, confirmation in truth.confirmations.items():
        if ref not in confirmed:
            v.fail("F6", f"the confirmation of pick list {ref[1]} was sent and never applied")
        for line in confirmation.lines:
            key = (confirmation.tenant, line.line_id)
            want = truth.line(*key)
            if want is None:
                v.fail("F6", f"{ref[1]} confirms {line.line_id}, a line nobody sent")
                continue
            if line.picked > want.units:
                v.fail("F6", f"{line.line_id}: picked {line.picked}, the line has {want.units}")
            got = reserved.get(key)
            if got is None or line.picked > got.d_reserved:
                v.fail("F6", f"{line.line_id}: picked {line.picked}, reserved {got.d_reserved if got else 0}")
            if want.missing > 0:
                short_lines[key] = want

    answers: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for answer in out.short_picks:
        answers[(answer.tenant, answer.line_id)].append(answer)
    for key, events in shorts.items():
        want = short_lines.get(key)
        if want is None:
            v.fail("F7", f"{key[1]} was shorted by {[-e.d_on_hand for e in events]}, but nobody reported it short")
            continue
        if len(events) > 1:
            v.fail("F7", f"{key[1]} was shorted {len(events)} times")
        event, home = events[0], reserved.get(key)
        if (event.d_on_hand, event.d_reserved) != (-want.missing, -want.missing):
            v.fail(
                "F7",
                f"{key[1]}: short of {want.missing}, applied as on_hand {event.d_on_hand:+d}, "
                f"reserved {event.d_reserved:+d}",
            )
        if home is not None and event.warehouse != home.warehouse:
            v.fail("F7", f"{key[1]} was reserved in {home.warehouse}, shorted in {event.warehouse}")
    outcomes: Counter = Counter()
    for key, want in short_lines.items():
        if key not in shorts:
            v.fail("F7", f"{key[1]} was picked {want.missing} short, and its stock never corrected")
        found = answers.get(key, [])
        if len(found) != 1:
            v.fail("F7", f"{key[1]} was picked short; the order side answered {len(found)} times")
            continue
        answer = found[0]
        outcomes[answer.outcome] += 1
        remainder = reserved.get((key[0], key[1] + REMAINDER))
        if answer.outcome == "reallocated":
            if remainder is None or remainder.d_reserved != want.missing:
                v.fail("F7", f"{key[1]} was reallocated, but {key[1]}{REMAINDER} does not hold {want.missing}")
            elif remainder.warehouse == answer.warehouse or remainder.warehouse != answer.remainder_warehouse:
                v.fail("F7", f"{key[1]} short in {answer.warehouse} was re-reserved in {remainder.warehouse}")
        elif remainder is not None and answer.reason != "cancelled":
            v.fail("F7", f"{key[1]} ships partial, yet {key[1]}{REMAINDER} reserved stock")
    for key in answers.keys() - short_lines.keys():
        v.fail("F7", f"{key[1]}: the order side answered a short pick nobody reported")
    shipments = {(s.tenant, s.shipment_id): s for s in out.shipments}
    reported = Counter((p.tenant, p.shipment_id) for p in out.picked_shipments)
    for done in out.picked_shipments:
        ref = (done.tenant, done.shipment_id)
        shipment = shipments.get(ref)
        if shipment is None:
            v.fail("F8", f"{done.shipment_id} was reported picked, but never released")
            continue
        want = {(ln.line_id, ln.quantity, truth.picked.get((done.tenant, ln.line_id))) for ln in shipment.lines}
        got = {(ln.line_id, ln.asked, ln.picked) for ln in done.lines}
        if got != want:
            v.fail("F8", f"{done.shipment_id} was reported picked as {sorted(got)}, the pickers said {sorted(want)}")
        # Where it goes (province and city: what carrier choice and rates go by; a channel's adapter may reshape
        # names, phones and streets) and for which shop, as its orders were sent.
        sent = [inputs.orders.get(f"{done.tenant}:{order_id}") for order_id in done.order_ids]
        region = (done.receiver.province, done.receiver.city) if done.receiver else None
        if any(
            o is not None
            and not any(
                (x.receiver.province, x.receiver.city) == region and x.shop_id == done.shop_id for x in o.snapshots
            )
            for o in sent
        ):
            v.fail("F8", f"{done.shipment_id} goes to {region} for shop {done.shop_id}, not where its orders go")
    for ref, n in reported.items():
        if n > 1:
            v.fail("F8", f"{ref[1]} was reported picked {n} times")
    for ref, shipment in shipments.items():
        if ref not in reported and all((ref[0], ln.line_id) in truth.picked for ln in shipment.lines):
            v.fail("F8", f"every line of {ref[1]} was confirmed, yet it was never reported picked")
    v.counts.update(
        shipments_picked=len(reported),
        picks_confirmed=len(confirmed),
        short_lines=len(short_lines),
        short_outcomes=dict(outcomes),
    )
