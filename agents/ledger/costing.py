"""Moving-average cost (移动加权平均) per (tenant, SKU, warehouse), pure and exact to the fen.

A pool holds the units on hand and their total value in fen. A receipt adds its units and value: the unit cost
becomes ``value / quantity``. An issue takes units out at the current unit cost and does **not** change it. A
customer return comes back at the cost its units left with (the shipment's), which moves the average.

Rounding rule (never loses a fen): an issue of ``q`` of ``Q`` units costs ``round_half_up(V × q / Q)`` and the
pool keeps the rest of the value; the issue that empties the pool takes exactly what is left. So the costs of
everything issued plus the value still in the pool always equal the value of everything received and returned.
"""

from __future__ import annotations

from dataclasses import dataclass


class NegativeStock(ValueError):
    """More units issued than the pool holds (the inventory never allows it: oversell is refused upstream)."""


@dataclass(frozen=True)
class CostPool:
    quantity: int = 0
    value_fen: int = 0

    @property
    def unit_cost_fen(self) -> int:
        """The average unit cost, rounded half up (for display and for a receipt at the current cost)."""
        return 0 if self.quantity == 0 else round_half_up(self.value_fen, self.quantity)


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, halves away from zero (denominator > 0)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), denominator)
    return sign * (quotient + (1 if 2 * remainder >= denominator else 0))


def receive(pool: CostPool, quantity: int, value_fen: int) -> CostPool:
    """Units in at ``value_fen`` for all of them (a receipt's net amount, or a return at its original cost)."""
    if quantity <= 0 or value_fen < 0:
        raise ValueError("a receipt brings a positive quantity at a non-negative value")
    return CostPool(pool.quantity + quantity, pool.value_fen + value_fen)


def issue(pool: CostPool, quantity: int) -> tuple[CostPool, int]:
    """Units out at the current average: (the pool after, their cost in fen)."""
    if quantity <= 0:
        raise ValueError("an issue takes a positive quantity")
    if quantity > pool.quantity:
        raise NegativeStock(f"issue of {quantity} from a pool of {pool.quantity}")
    if quantity == pool.quantity:
        return CostPool(0, 0), pool.value_fen  # the last units take exactly what is left
    cost = round_half_up(pool.value_fen * quantity, pool.quantity)
    return CostPool(pool.quantity - quantity, pool.value_fen - cost), cost
