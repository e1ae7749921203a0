"""Packing (打包): the parcels of one shipment, pure.

What was picked for a shipment goes into as few parcels as the parcel limits allow (weight and volume, from the
tenant's shipping policy: per-SKU sizes from the catalog, a default for SKUs it does not list). First fit,
heaviest units first, so the result depends only on the lines and the sizes: the same shipment always packs the
same way, and parcel ids (``<shipment>/<n>``) are deterministic. A line whose units do not all fit one parcel
is split over several (the parcel records how many of its units it holds). A single unit over the limits ships
alone, flagged ``oversize``; nothing is ever left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from schemas.shipping import ItemSize


@dataclass(frozen=True)
class PackLine:
    """Units of one order line to pack."""

    order_id: str
    line_id: str
    sku: str
    units: int


@dataclass
class Packed:
    """One parcel: its lines (units per line) and its weight and volume."""

    parcel_id: str
    lines: list[PackLine] = field(default_factory=list)
    weight_g: int = 0
    volume_cm3: int = 0
    oversize: bool = False

    def fits(self, unit: ItemSize, units: int, max_g: int, max_cm3: int) -> int:
        """How many of ``units`` more fit."""
        by_weight = (max_g - self.weight_g) // unit.weight_g if unit.weight_g else units
        by_volume = (max_cm3 - self.volume_cm3) // unit.volume_cm3 if unit.volume_cm3 else units
        return max(0, min(units, by_weight, by_volume))

    def add(self, line: PackLine, units: int, unit: ItemSize) -> None:
        for i, held in enumerate(self.lines):
            if held.line_id == line.line_id:
                self.lines[i] = PackLine(line.order_id, line.line_id, line.sku, held.units + units)
                break
        else:
            self.lines.append(PackLine(line.order_id, line.line_id, line.sku, units))
        self.weight_g += units * unit.weight_g
        self.volume_cm3 += units * unit.volume_cm3


def size_of(sizes: Mapping[str, ItemSize], default: ItemSize, sku: str) -> ItemSize:
    return sizes.get(sku, default)


def pack(
    shipment_id: str,
    lines: Sequence[PackLine],
    sizes: Mapping[str, ItemSize],
    default: ItemSize,
    max_g: int,
    max_cm3: int,
) -> list[Packed]:
    """Parcels for ``lines`` (lines with no units are left out: nothing of them was picked)."""
    wanted = [ln for ln in lines if ln.units > 0]

    # Heaviest units first (then bulkiest), ties by line id: first-fit decreasing, deterministic.
    def heaviest_first(ln: PackLine) -> tuple[int, int, str]:
        unit = size_of(sizes, default, ln.sku)
        return (-unit.weight_g, -unit.volume_cm3, ln.line_id)

    wanted.sort(key=heaviest_first)
    parcels: list[Packed] = []
    for line in wanted:
        unit = size_of(sizes, default, line.sku)
        left = line.units
        if unit.weight_g > max_g or unit.volume_cm3 > max_cm3:
            for _ in range(left):  # each unit alone: no parcel can hold it within the limits
                parcel = Packed(f"{shipment_id}/{len(parcels) + 1}", oversize=True)
                parcel.add(line, 1, unit)
                parcels.append(parcel)
            continue
        for parcel in parcels:
            if left == 0:
                break
            if parcel.oversize:
                continue
            n = parcel.fits(unit, left, max_g, max_cm3)
            if n:
                parcel.add(line, n, unit)
                left -= n
        while left:
            parcel = Packed(f"{shipment_id}/{len(parcels) + 1}")
            n = parcel.fits(unit, left, max_g, max_cm3)
            parcel.add(line, n, unit)
            parcels.append(parcel)
            left -= n
    return parcels
