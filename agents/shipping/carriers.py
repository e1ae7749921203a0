"""Carrier choice per parcel (选快递), pure: the tenant's shipping policy over the carriers a warehouse has.

In order, the first that applies wins, and the reason is recorded with the choice:

1. ``shop``: the shop's preferred carriers (例外店铺), the first of them the warehouse has that takes the weight;
2. ``rule:<id>``: the first explicit rule whose region, weight and shop conditions all match;
3. ``cheapest``: the lowest price for the receiver's region and the weight among the warehouse's carriers with a
   rate (ties by the warehouse's carrier order);
4. ``default``: the warehouse's first carrier.

Prices are integer fen: first weight (首重) plus each started step beyond it (续重).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.shipping import CarrierRate, ShippingPolicy


@dataclass(frozen=True)
class CarrierChoice:
    carrier: str
    reason: str  # shop, rule:<id>, cheapest, default
    cost_fen: int | None = None  # by the rate table, when it has one


class NoCarrier(ValueError):
    """The warehouse has no carrier at all (a layout problem: reason code ``no_carrier``)."""


def price(rate: CarrierRate, weight_g: int) -> int:
    """首重 + 续重: the first ``first_g`` for ``first_fen``, then ``step_fen`` per started ``step_g``."""
    extra = max(0, weight_g - rate.first_g)
    steps = -(-extra // rate.step_g)
    return rate.first_fen + steps * rate.step_fen


def rate_for(rates: Sequence[CarrierRate], carrier: str, province: str, city: str) -> CarrierRate | None:
    """The carrier's most specific rate for the receiver: ``province/city``, then ``province``, then ``*``."""
    wanted = [f"{province}/{city}", province, "*"]
    found = {r.region: r for r in rates if r.carrier == carrier}
    return next((found[region] for region in wanted if region in found), None)


def _in_regions(regions: Sequence[str], province: str, city: str) -> bool:
    return not regions or province in regions or f"{province}/{city}" in regions


def choose_carrier(
    policy: ShippingPolicy, carriers: Sequence[str], shop_id: str, province: str, city: str, weight_g: int
) -> CarrierChoice:
    """The carrier for one parcel of ``weight_g`` grams from a warehouse with ``carriers`` (its order = default
    first) to a receiver in ``province``/``city``."""
    if not carriers:
        raise NoCarrier("the warehouse has no carrier")

    def takes(carrier: str) -> bool:
        rate = rate_for(policy.rates, carrier, province, city)
        return rate is None or weight_g <= rate.max_g

    for carrier in policy.shop_carriers.get(shop_id, []):
        if carrier in carriers and takes(carrier):
            return CarrierChoice(carrier, "shop", _cost(policy, carrier, province, city, weight_g))
    for rule in policy.rules:
        if (
            rule.carrier in carriers
            and _in_regions(rule.regions, province, city)
            and weight_g >= rule.min_g
            and (rule.max_g is None or weight_g <= rule.max_g)
            and (not rule.shops or shop_id in rule.shops)
        ):
            return CarrierChoice(
                rule.carrier, f"rule:{rule.rule_id}", _cost(policy, rule.carrier, province, city, weight_g)
            )
    priced = []
    for index, carrier in enumerate(carriers):
        rate = rate_for(policy.rates, carrier, province, city)
        if rate is not None and weight_g <= rate.max_g:
            priced.append((price(rate, weight_g), index, carrier))
    if priced:
        cost, _, carrier = min(priced)
        return CarrierChoice(carrier, "cheapest", cost)
    return CarrierChoice(carriers[0], "default", _cost(policy, carriers[0], province, city, weight_g))


def _cost(policy: ShippingPolicy, carrier: str, province: str, city: str, weight_g: int) -> int | None:
    rate = rate_for(policy.rates, carrier, province, city)
    return None if rate is None else price(rate, weight_g)
