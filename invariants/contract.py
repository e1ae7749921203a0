"""The engine's rules the invariants judge by, restated here from the contract — never imported from ``agents/``.

An invariant that imported the function or constant of the code it checks would agree with that code's bugs:
a wrong rounding, a retry limit changed by mistake, a merge rule that drifted would pass as correct. So each rule
the checks need is written again below, from what the README (and the records' docstrings in ``schemas/``) say,
on purpose separately from its implementation in ``agents/``. When the engine and a restatement disagree, one of
them is wrong: read the contract, and fix whichever departs from it (and the README, if the contract changes).
``tests/unit/test_layers.py`` fails if a module of ``invariants/`` imports ``agents``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from schemas.shipping import TrackingStatus

if TYPE_CHECKING:
    from schemas.order import Address

# -- I5, the moving average (README, "Costing in the inventory") -------------------------------------------------


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator ÷ denominator`` to the nearest whole fen, a half away from zero — the rounding rule of the
    README's costing (``round_half_up(V × q ÷ Q)``) and of its price/VAT splits, restated on purpose (in exact
    fractions, not the engine's integer arithmetic) so that a bug in the engine's version is caught, not copied."""
    if denominator <= 0:
        raise ValueError("the denominator of a rounding is positive")
    exact = Fraction(numerator, denominator)
    whole = int(abs(exact) + Fraction(1, 2))  # int() truncates: floor for a non-negative number
    return whole if exact >= 0 else -whole


def outflow_value(value_fen: int, units: int, on_hand: int) -> int:
    """What ``units`` leaving a location that holds ``on_hand`` units worth ``value_fen`` take with them, as the
    README states the moving-average rule: ``round_half_up(V × q ÷ Q)``, and the outflow that empties the
    location takes exactly what is left (so no fen appears or vanishes). Nothing on hand: nothing to take."""
    if on_hand == 0:
        return 0
    if units == on_hand:
        return value_fen
    return round_half_up(value_fen * units, on_hand)


# -- A1, tracking (README, "After shipping": per waybill the state only moves forward) ---------------------------

#: The stages a parcel moves forward through, in order (``schemas.shipping.TrackingStatus``: created, 揽收, 运输中,
#: 派送中, 签收). An exception is no stage (it stays open on top of one), and returned-to-sender ends elsewhere;
#: neither has a rank. Restated here so that a wrong order in the engine's table is caught, not copied.
TRACKING_STAGES: tuple[TrackingStatus, ...] = (
    TrackingStatus.CREATED,
    TrackingStatus.PICKED_UP,
    TrackingStatus.IN_TRANSIT,
    TrackingStatus.OUT_FOR_DELIVERY,
    TrackingStatus.DELIVERED,
)
TRACKING_RANK: dict[TrackingStatus, int] = {status: rank for rank, status in enumerate(TRACKING_STAGES)}

# -- A2, write-back (README, "The write-back outbox") -----------------------------------------------------------

#: Requests of one write-back before it may be recorded as failed: "aftersales sends it again on a refusal, up to
#: 5 attempts". Restated, not imported, so that an engine that gives up early is caught.
WRITEBACK_ATTEMPTS = 5

# -- F2, merges stay within a buyer and a receiver (README, "Merge (合单)") --------------------------------------


def receiver_identity(receiver: Address) -> tuple[str, ...]:
    """What two orders' receivers must share to be merged into one shipment, as the README states it: "name,
    phone and the whole address, normalised" — name, phone, country, province, city, district and street, each
    with its runs of whitespace (any Unicode space, such as 全角 U+3000) made one space, trimmed, and lower-cased.
    The postal code is not compared (the merge rule never did; if it should, the README and the engine change
    together). Compared as text, not as the engine's digest, so that a bug in the engine's normalisation or
    digest is caught, not copied."""
    fields = (
        receiver.name,
        receiver.phone,
        receiver.country,
        receiver.province,
        receiver.city,
        receiver.district,
        receiver.street,
    )
    return tuple(" ".join(field.split()).lower() for field in fields)
