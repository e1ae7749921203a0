"""Pick confirmation (拣货确认) and short picks (缺货): what a picker reports against the pick list it was given.

A confirmation names each stop (shipment, line, bin) and the units picked. Picking more than the list asked is
impossible by construction (the list asks for exactly the reserved units), so it is refused with a reason, as
is a stop that is not on the list. Fewer units is a short pick: the missing units' reservation is released,
the bin's count is corrected (the units are not there), and the line is either re-allocated to another
warehouse or shipped partial, as the tenant's layout says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.fulfilment import PickConfirmation, PickedLine, PickList


@dataclass(frozen=True)
class Short:
    shipment_id: str
    line_id: str
    sku: str
    bin: str
    missing: int
    picked: int


@dataclass
class Outcome:
    picked: dict[tuple[str, str], int] = field(default_factory=dict)  # (shipment, line) -> units picked
    shorts: list[Short] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # why the confirmation is refused (nothing applied)

    @property
    def ok(self) -> bool:
        return not self.errors


def confirm(pick_list: PickList, confirmation: PickConfirmation) -> Outcome:
    """Check a confirmation against its pick list. Either every stop is accounted for and the outcome says
    what was picked and what is short, or ``errors`` says why nothing is applied."""
    out = Outcome()
    if confirmation.pick_list_id != pick_list.pick_list_id or confirmation.tenant != pick_list.tenant:
        out.errors.append(f"confirmation is for {confirmation.pick_list_id}, not {pick_list.pick_list_id}")
        return out
    asked = {(s.shipment_id, s.line_id): s for s in pick_list.stops}
    seen: set[tuple[str, str]] = set()
    for line in confirmation.lines:
        ref = (line.shipment_id, line.line_id)
        stop = asked.get(ref)
        if stop is None:
            out.errors.append(f"{line.shipment_id}/{line.line_id} is not on pick list {pick_list.pick_list_id}")
            continue
        if ref in seen:
            out.errors.append(f"{line.shipment_id}/{line.line_id} is confirmed twice")
            continue
        seen.add(ref)
        if line.bin != stop.bin:
            out.errors.append(f"{line.line_id} was to be picked from {stop.bin}, not {line.bin}")
        if line.picked > stop.quantity:
            out.errors.append(f"{line.line_id}: picked {line.picked} of {stop.quantity} asked (over-pick)")
    for ref in asked.keys() - seen:
        out.errors.append(f"{ref[0]}/{ref[1]} is not confirmed")
    if out.errors:
        out.errors.sort()
        return out
    for line in confirmation.lines:
        stop = asked[(line.shipment_id, line.line_id)]
        out.picked[(line.shipment_id, line.line_id)] = line.picked
        if line.picked < stop.quantity:
            out.shorts.append(
                Short(stop.shipment_id, stop.line_id, stop.sku, stop.bin, stop.quantity - line.picked, line.picked)
            )
    return out


def report(
    pick_list: PickList, ts: int, picked: Mapping[str, int] | None = None, picker: str = "unknown"
) -> PickConfirmation:
    """A picker's report of ``pick_list``: every stop picked as asked, except the lines in ``picked`` (line id →
    units picked). What a scanner sends; the tests and load generators use it too."""
    short = picked or {}
    return PickConfirmation(
        tenant=pick_list.tenant,
        warehouse=pick_list.warehouse,
        pick_list_id=pick_list.pick_list_id,
        lines=[
            PickedLine(
                shipment_id=stop.shipment_id,
                line_id=stop.line_id,
                bin=stop.bin,
                picked=short.get(stop.line_id, stop.quantity),
            )
            for stop in pick_list.stops
        ],
        picker=picker,
        ts=ts,
    )
