"""Pick-path rules on hand-worked layouts, and their bounds against a brute-force optimum."""

from __future__ import annotations

import itertools
import random

import pytest

from agents.fulfilment.paths import (
    EXACT_LIMIT,
    Stop,
    Zone,
    combined,
    distance,
    largest_gap,
    optimal,
    route,
    s_shape,
    tour_length,
)

# Three aisles 1 m apart, 10 m long, depot at the front of aisle 1.
SMALL = Zone(aisles=3, pitch_cm=100, length_cm=1000)
FOUR = Zone(aisles=4, pitch_cm=100, length_cm=1000)


def test_distances_go_round_the_shorter_cross_aisle() -> None:
    assert distance(SMALL, None, Stop(1, 200)) == 200
    assert distance(SMALL, Stop(1, 200), Stop(1, 700)) == 500
    # From 2 m deep in aisle 1 to 9 m deep in aisle 3: out the back (8 + 1 m) beats out the front (2 + 9 m).
    assert distance(SMALL, Stop(1, 200), Stop(3, 900)) == 200 + 900
    assert distance(SMALL, Stop(3, 900), None) == 200 + 900


def test_a_far_corner_worked_by_hand() -> None:
    stops = [Stop(1, 200, "a"), Stop(3, 900, "b")]
    # S-shape: traverse aisle 1 (10 m), cross 2 m at the back, traverse aisle 3 (10 m), 2 m home: 24 m.
    assert s_shape(SMALL, stops).length_cm == 2400
    assert largest_gap(SMALL, stops).length_cm == 2400
    assert combined(SMALL, stops).length_cm == 2400
    best = optimal(SMALL, stops)
    assert best.length_cm == 2400 and best.exact


def test_shallow_picks_in_every_aisle_worked_by_hand() -> None:
    """One pick 1 m deep in each of four aisles: S-shape walks every aisle whole; largest gap traverses only
    the first and last; the combined sweep dips into each from the front, which is also the optimum."""
    stops = [Stop(a, 100, f"p{a}") for a in range(1, 5)]
    assert s_shape(FOUR, stops).length_cm == 4 * 1000 + 2 * 300
    assert largest_gap(FOUR, stops).length_cm == 2 * 1000 + 2 * 200 + 2 * 300
    assert combined(FOUR, stops).length_cm == 4 * 200 + 2 * 300
    assert optimal(FOUR, stops).length_cm == 4 * 200 + 2 * 300


def test_largest_gap_skips_the_widest_empty_stretch() -> None:
    # Aisle 2 has picks at 1 m and 9 m: the 8 m between them is never walked.
    stops = [Stop(1, 500), Stop(2, 100, "near"), Stop(2, 900, "far"), Stop(3, 500)]
    found = largest_gap(SMALL, stops)
    assert found.length_cm == 2 * 1000 + (2 * 100 + 2 * 100) + 2 * 200
    # The far pick is taken on the way along the back, the near one on the way home along the front.
    refs = [s.ref for s in found.stops]
    assert refs.index("far") < refs.index("near")


def test_s_shape_order_follows_the_walking_direction() -> None:
    stops = [Stop(2, 300, "up1"), Stop(2, 700, "up2"), Stop(3, 800, "down1"), Stop(3, 200, "down2")]
    assert [s.ref for s in s_shape(SMALL, stops).stops] == ["up1", "up2", "down1", "down2"]


def test_every_stop_is_visited_once_and_the_walk_covers_the_tour() -> None:
    rng = random.Random(7)
    zone = Zone(aisles=12, pitch_cm=250, length_cm=1800, depot_cm=1375)
    for _ in range(200):
        stops = [Stop(rng.randint(1, 12), rng.randint(0, 1800), str(i)) for i in range(rng.randint(1, 14))]
        found = {name: route(name, zone, stops) for name in ("s-shape", "largest-gap", "combined", "optimal")}
        for name, r in found.items():
            assert sorted(r.stops) == sorted(stops), name
            # A strategy's walking length can never beat the shortest walk between its own stops.
            assert r.length_cm >= tour_length(zone, r.stops), name
            assert r.length_cm >= found["optimal"].length_cm or not found["optimal"].exact, name
        assert found["combined"].length_cm <= found["s-shape"].length_cm


@pytest.mark.parametrize("seed", range(25))
def test_optimal_matches_brute_force_on_small_lists(seed: int) -> None:
    rng = random.Random(seed)
    zone = Zone(aisles=6, pitch_cm=300, length_cm=1500, depot_cm=rng.choice([0, 750, 1500]))
    points = {(rng.randint(1, 6), rng.randint(0, 1500)) for _ in range(rng.randint(1, 7))}
    stops = [Stop(a, d) for a, d in sorted(points)]
    brute = min(tour_length(zone, p) for p in itertools.permutations(stops))
    found = optimal(zone, stops)
    assert found.exact and found.length_cm == brute == tour_length(zone, found.stops)


def test_long_lists_are_improved_but_not_called_optimal() -> None:
    rng = random.Random(3)
    zone = Zone(aisles=20, pitch_cm=300, length_cm=3000)
    stops = [Stop(rng.randint(1, 20), rng.randint(0, 3000), str(i)) for i in range(EXACT_LIMIT + 15)]
    found = optimal(zone, stops)
    assert not found.exact
    assert found.length_cm == tour_length(zone, found.stops)
    assert found.length_cm <= min(r(zone, stops).length_cm for r in (s_shape, largest_gap, combined))


def test_bins_sharing_a_position_are_picked_together() -> None:
    stops = [Stop(2, 400, "a"), Stop(2, 400, "b"), Stop(1, 100, "c")]
    refs = [s.ref for s in optimal(SMALL, stops).stops]
    assert abs(refs.index("a") - refs.index("b")) == 1


def test_bad_stops_and_strategies_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="outside the zone"):
        s_shape(SMALL, [Stop(4, 0)])
    with pytest.raises(ValueError, match="unknown pick-path strategy"):
        route("zigzag", SMALL, [])
    assert optimal(SMALL, []).length_cm == 0
