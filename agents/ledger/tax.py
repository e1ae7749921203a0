"""VAT and amount splits in integer fen (增值税价税分离), pure. Every split adds back to its total.

* ``split_gross(gross, rate)``: a tax-inclusive amount into net and VAT — ``net = round_half_up(gross ÷ (1 +
  rate))``, ``vat = gross − net`` (so the two always add back to the gross). Rates are in basis points: 13 % is
  1300, 9 % is 900, 6 % is 600.
* ``allocate(total, weights)``: a total (an order-level discount, freight, a platform fee) over lines in
  proportion to their weights, by the largest remainder — the pieces add up to the total exactly, and equal
  weights never differ by more than a fen.
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.ledger.costing import round_half_up

BASIS = 10_000


def split_gross(gross_fen: int, rate_bp: int) -> tuple[int, int]:
    """(net, VAT) of a tax-inclusive amount at ``rate_bp`` basis points."""
    if rate_bp < 0:
        raise ValueError("a VAT rate is not negative")
    net = round_half_up(gross_fen * BASIS, BASIS + rate_bp)
    return net, gross_fen - net


def vat_on_net(net_fen: int, rate_bp: int) -> int:
    """The VAT on a tax-exclusive amount (an input-VAT line of a supplier invoice)."""
    return round_half_up(net_fen * rate_bp, BASIS)


def allocate(total_fen: int, weights: Sequence[int]) -> list[int]:
    """``total_fen`` in proportion to ``weights`` (non-negative, not all zero), pieces adding up exactly."""
    if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise ValueError("weights must be non-negative and not all zero")
    whole = sum(weights)
    sign = -1 if total_fen < 0 else 1
    amount = abs(total_fen)
    shares = [divmod(amount * w, whole) for w in weights]
    pieces = [q for q, _ in shares]
    left = amount - sum(pieces)
    # the largest remainders get the fen left over; ties to the earlier line (deterministic)
    for i in sorted(range(len(weights)), key=lambda i: (-shares[i][1], i))[:left]:
        pieces[i] += 1
    return [sign * p for p in pieces]
