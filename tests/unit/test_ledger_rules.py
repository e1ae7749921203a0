"""Ledger groundwork without servers: moving-average cost on the worked numbers (two receipts, a sale, a cheaper
receipt, a return at the sale's cost) and the rounding rules — no fen is ever lost by costing, a VAT split adds
back to its gross, an allocation adds up to its total."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ledger.costing import CostPool, NegativeStock, issue, receive, round_half_up
from agents.ledger.tax import allocate, split_gross, vat_on_net


def test_moving_average_on_the_worked_numbers() -> None:
    pool = receive(receive(CostPool(), 100, 100 * 1_000), 100, 100 * 1_200)  # 100 @ ¥10, 100 @ ¥12
    assert (pool.quantity, pool.value_fen, pool.unit_cost_fen) == (200, 220_000, 1_100)
    pool, cost = issue(pool, 150)  # an outflow leaves the average alone
    assert (cost, pool.value_fen, pool.unit_cost_fen) == (165_000, 55_000, 1_100)
    pool = receive(pool, 50, 50 * 900)  # 50 @ ¥9
    assert (pool.quantity, pool.value_fen, pool.unit_cost_fen) == (100, 100_000, 1_000)
    pool = receive(pool, 10, 10 * 1_100)  # a return of 10 from the sale, at the cost it left with
    assert (pool.quantity, pool.value_fen, pool.unit_cost_fen) == (110, 111_000, 1_009)  # ¥10.09


def test_an_uneven_average_rounds_half_up_and_the_last_unit_takes_what_is_left() -> None:
    pool = receive(CostPool(), 3, 1_000)  # 333.33… fen a unit
    pool, first = issue(pool, 1)
    pool, second = issue(pool, 1)
    pool, last = issue(pool, 1)
    assert (first, second, last) == (333, 334, 333) and first + second + last == 1_000
    assert pool == CostPool()
    with pytest.raises(NegativeStock):
        issue(receive(CostPool(), 1, 5), 2)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 50), st.integers(0, 100_000)), min_size=1, max_size=60))
def test_costing_never_loses_or_makes_a_fen(steps: list[tuple[bool, int, int]]) -> None:
    pool, received, issued = CostPool(), 0, 0
    for is_receipt, quantity, unit_fen in steps:
        if is_receipt or pool.quantity == 0:
            pool = receive(pool, quantity, quantity * unit_fen)
            received += quantity * unit_fen
        else:
            pool, cost = issue(pool, min(quantity, pool.quantity))
            issued += cost
            assert cost >= 0 and pool.value_fen >= 0
        assert issued + pool.value_fen == received


def test_vat_split_on_worked_numbers_and_rates() -> None:
    assert split_gross(11_300, 1_300) == (10_000, 1_300)  # ¥113 at 13 %: ¥100 + ¥13
    assert split_gross(10_900, 900) == (10_000, 900)
    assert split_gross(9_900, 1_300) == (8_761, 1_139)  # 8 761.06… rounds to 8 761
    assert vat_on_net(10_000, 600) == 600
    assert split_gross(0, 1_300) == (0, 0) and split_gross(-11_300, 1_300) == (-10_000, -1_300)  # a reversal


@given(st.integers(-(10**9), 10**9), st.sampled_from([0, 300, 600, 900, 1_300]))
def test_a_vat_split_always_adds_back_to_the_gross(gross: int, rate: int) -> None:
    net, vat = split_gross(gross, rate)
    assert net + vat == gross and abs(vat) <= abs(gross)


def test_allocation_by_largest_remainder() -> None:
    assert allocate(1_000, [1, 1, 1]) == [334, 333, 333]
    assert allocate(-500, [2, 1, 1]) == [-250, -125, -125]
    assert allocate(7, [0, 5]) == [0, 7]
    with pytest.raises(ValueError):
        allocate(10, [0, 0])


@given(st.integers(-(10**8), 10**8), st.lists(st.integers(0, 10_000), min_size=1, max_size=30).filter(any))
def test_an_allocation_adds_up_and_is_proportional_within_a_fen(total: int, weights: list[int]) -> None:
    pieces = allocate(total, weights)
    assert sum(pieces) == total
    whole = sum(weights)
    for piece, weight in zip(pieces, weights, strict=True):
        assert abs(piece * whole - total * weight) < whole  # off the exact share by less than one fen


def test_round_half_up_goes_away_from_zero_on_halves() -> None:
    assert (round_half_up(5, 2), round_half_up(-5, 2), round_half_up(4, 3), round_half_up(-4, 3)) == (3, -3, 1, -1)
