"""Merging (合单): parcels of one buyer's accepted orders that can travel together become one shipment.

Orders merge only when tenant, shop, buyer and receiver address (name, phone and the whole address) are the
same — the merge key — and their parcels ship from the same warehouse with the same carrier. A parcel waits in
its merge group for ``merge_window_s`` (record time) from the group's first order, then the group is released
as one :class:`~schemas.fulfilment.Shipment`. A cancelled order leaves its group while it waits; once its
shipment is released (to a wave), the cancellation is refused and has to be intercepted downstream (拦截).

State is per merge key, so the single writer of a buyer's orders owns it whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from schemas.fulfilment import Shipment, ShipmentLine
from schemas.order import Address


def address_digest(receiver: Address) -> str:
    """The receiver, normalised (whitespace and case), as a short digest: keys never carry the address."""
    parts = (
        receiver.name,
        receiver.phone,
        receiver.country,
        receiver.province,
        receiver.city,
        receiver.district,
        receiver.street,
    )
    text = "|".join(" ".join(p.split()).lower() for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def merge_key(tenant: str, shop_id: str, buyer: str, receiver: Address) -> str:
    return f"{tenant}:{shop_id}:{buyer}:{address_digest(receiver)}"


@dataclass
class Waiting:
    """A shipment being formed: the parcels of one or more orders, same warehouse and carrier."""

    shipment_id: str
    warehouse: str
    carrier: str
    opened_ts: int
    lines: list[ShipmentLine] = field(default_factory=list)
    order_ids: list[str] = field(default_factory=list)
    split_reason: str | None = None
    alone: bool = False  # a ship-alone parcel never takes other lines


@dataclass
class MergeGroup:
    """All that waits for one merge key, and which orders were already released (for refusing cancels)."""

    tenant: str
    shop_id: str
    waiting: list[Waiting] = field(default_factory=list)
    released: dict[str, list[str]] = field(default_factory=dict)  # order id -> its shipment ids
    expires_at: int | None = None  # record time after which a group with nothing waiting is forgotten
    reply_to: str | None = None  # the buyer's order inbox key (one buyer per group): where shorts are reported
    receiver: Address | None = None  # one receiver per group (part of the merge key)
    remainders: list[str] = field(default_factory=list)  # re-reserved lines added (after a short pick elsewhere)


@dataclass(frozen=True)
class ParcelPlan:
    warehouse: str
    carrier: str
    lines: tuple[ShipmentLine, ...]
    reason: str | None = None
    alone: bool = False


CancelOutcome = Literal["left", "refused", "unknown"]


def shipment_id(first_order_id: str, warehouse: str, index: int, remainder: str | None = None) -> str:
    """Deterministic: the order that opened the shipment, its warehouse, and its place among that order's (or the
    re-reserved line it opened for)."""
    if remainder is not None:
        return f"shp.{remainder}.{warehouse}"
    return f"shp.{first_order_id}.{warehouse}.{index}"


def add_order(
    group: MergeGroup, order_id: str, parcels: list[ParcelPlan], ts: int, reallocated: bool = False
) -> list[str]:
    """Put an accepted order's parcels into the group: each joins a waiting shipment of its warehouse and
    carrier, or opens one. Returns the shipment ids the order is in. An order already here is not added again;
    a ``reallocated`` parcel (lines re-reserved after a short pick elsewhere) is added once per line."""
    present = [w.shipment_id for w in group.waiting if order_id in w.order_ids] + group.released.get(order_id, [])
    if reallocated:
        fresh = [ln.line_id for p in parcels for ln in p.lines if ln.line_id not in group.remainders]
        if not fresh:
            return present
        group.remainders.extend(fresh)
    elif present:
        return present
    ids: list[str] = []
    for index, parcel in enumerate(parcels):
        home = None
        if not parcel.alone:
            home = next(
                (
                    w
                    for w in group.waiting
                    if not w.alone and w.warehouse == parcel.warehouse and w.carrier == parcel.carrier
                ),
                None,
            )
        if home is None:
            home = Waiting(
                shipment_id(order_id, parcel.warehouse, index, parcel.lines[0].line_id if reallocated else None),
                parcel.warehouse,
                parcel.carrier,
                ts,
                split_reason=parcel.reason,
                alone=parcel.alone,
            )
            group.waiting.append(home)
        home.lines.extend(parcel.lines)
        if order_id not in home.order_ids:
            home.order_ids.append(order_id)
        ids.append(home.shipment_id)
    return ids


def cancel_order(group: MergeGroup, order_id: str, line_ids: set[str] | None = None) -> CancelOutcome:
    """A cancelled order (or some of its lines, ``line_ids``) leaves the shipments it waits in (an emptied one
    disappears); too late once released."""
    if order_id in group.released:
        return "refused"
    found = False
    for waiting in group.waiting:
        if order_id in waiting.order_ids:
            found = True
            waiting.lines = [
                ln
                for ln in waiting.lines
                if ln.order_id != order_id or (line_ids is not None and ln.line_id not in line_ids)
            ]
            if not any(ln.order_id == order_id for ln in waiting.lines):
                waiting.order_ids.remove(order_id)
    group.waiting = [w for w in group.waiting if w.order_ids]
    return "left" if found else "unknown"


def release_due(group: MergeGroup, ts: int, window_s: int) -> list[Shipment]:
    """Every waiting shipment whose window has passed at record time ``ts``, oldest first."""
    due = [w for w in group.waiting if ts - w.opened_ts >= window_s * 1000]
    group.waiting = [w for w in group.waiting if w not in due]
    shipments = []
    for waiting in sorted(due, key=lambda w: (w.opened_ts, w.shipment_id)):
        for order_id in waiting.order_ids:
            group.released.setdefault(order_id, []).append(waiting.shipment_id)
        shipments.append(
            Shipment(
                shipment_id=waiting.shipment_id,
                tenant=group.tenant,
                shop_id=group.shop_id,
                warehouse=waiting.warehouse,
                carrier=waiting.carrier,
                lines=list(waiting.lines),
                order_ids=list(waiting.order_ids),
                split_reason=waiting.split_reason,
                reply_to=group.reply_to,
                receiver=group.receiver,
                ts=ts,
            )
        )
    return shipments


def next_due(group: MergeGroup, window_s: int) -> int | None:
    """Record time at which the next waiting shipment is due (for the stage's timer index)."""
    return min((w.opened_ts + window_s * 1000 for w in group.waiting), default=None)
