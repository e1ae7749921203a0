"""Pick paths (拣货路径): in which order a picker visits the bins of one pick list, and how far that walks.

A zone is a single-block warehouse: ``aisles`` parallel aisles, ``pitch_cm`` apart, each ``length_cm`` long,
between a front cross aisle (depth 0, where the depot is) and a back cross aisle (depth ``length_cm``). A bin
is reached from its aisle's centre line, so a stop is ``(aisle, depth)``. Distances are in whole centimetres.

Strategies (Roodbergen & de Koster's names):

* ``s-shape``      every aisle with a pick is traversed whole; the last one is entered and left from the front
                   when the picker arrives there from the front. Simple and what most pickers are told.
* ``largest-gap``  the first and last pick aisles are traversed; every aisle between is entered from the front
                   and from the back up to its largest gap between picks, which is never walked.
* ``combined``     one left-to-right sweep choosing, per aisle, traverse or enter-and-return by dynamic
                   programming: never longer than S-shape.
* ``optimal``      the shortest tour (Held–Karp dynamic programming over the exact aisle distances) when the
                   pick list has at most :data:`EXACT_LIMIT` distinct bins; longer lists take the best heuristic
                   improved by 2-opt (reported as such, never called optimal).

Every function is pure and deterministic: ties break on the stop order ``(aisle, depth, ref)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Distinct bins up to which ``optimal`` solves the tour exactly (Held–Karp is O(2^n · n^2)).
EXACT_LIMIT = 10
#: 2-opt passes over a long list before settling (each pass is O(n^2)).
TWO_OPT_PASSES = 20


@dataclass(frozen=True)
class Zone:
    """The geometry of one single-block zone. The depot sits on the front cross aisle at ``depot_cm``."""

    aisles: int
    pitch_cm: int
    length_cm: int
    depot_cm: int = 0

    def x(self, aisle: int) -> int:
        """Aisles are numbered from 1, the first at x = 0."""
        return (aisle - 1) * self.pitch_cm


@dataclass(frozen=True, order=True)
class Stop:
    aisle: int
    depth_cm: int
    ref: str = ""  # what is picked there (a bin id, a pick line)


@dataclass(frozen=True)
class Route:
    strategy: str
    stops: tuple[Stop, ...]
    length_cm: int
    exact: bool = False  # the length is proven the shortest


def distance(zone: Zone, a: Stop | None, b: Stop | None) -> int:
    """Shortest walk between two stops (``None`` is the depot) through the aisles and the two cross aisles."""
    if a is None and b is None:
        return 0
    if a is None or b is None:
        stop = a if b is None else b
        assert stop is not None
        return abs(zone.depot_cm - zone.x(stop.aisle)) + stop.depth_cm
    if a.aisle == b.aisle:
        return abs(a.depth_cm - b.depth_cm)
    around = min(a.depth_cm + b.depth_cm, 2 * zone.length_cm - a.depth_cm - b.depth_cm)
    return abs(zone.x(a.aisle) - zone.x(b.aisle)) + around


def tour_length(zone: Zone, stops: Sequence[Stop]) -> int:
    """Depot → stops in order → depot, each leg the shortest walk."""
    total, here = 0, None
    for stop in stops:
        total += distance(zone, here, stop)
        here = stop
    return total + distance(zone, here, None)


def _check(zone: Zone, stops: Sequence[Stop]) -> list[Stop]:
    for stop in stops:
        if not 1 <= stop.aisle <= zone.aisles or not 0 <= stop.depth_cm <= zone.length_cm:
            raise ValueError(f"stop {stop} is outside the zone ({zone.aisles} aisles of {zone.length_cm} cm)")
    return sorted(stops)


def _by_aisle(stops: list[Stop]) -> list[tuple[int, list[Stop]]]:
    aisles: dict[int, list[Stop]] = {}
    for stop in stops:
        aisles.setdefault(stop.aisle, []).append(stop)
    return sorted(aisles.items())


def _horizontal(zone: Zone, first: int, last: int) -> int:
    """Depot → first pick aisle → last pick aisle → depot, along the cross aisles."""
    x0, x1 = zone.x(first), zone.x(last)
    return abs(zone.depot_cm - x0) + (x1 - x0) + abs(x1 - zone.depot_cm)


def s_shape(zone: Zone, stops: Sequence[Stop]) -> Route:
    ordered = _check(zone, stops)
    if not ordered:
        return Route("s-shape", (), 0)
    aisles = _by_aisle(ordered)
    path: list[Stop] = []
    vertical, at_front = 0, True
    for i, (_, picks) in enumerate(aisles):
        if at_front and i == len(aisles) - 1:  # the last aisle, from the front: in and back out
            vertical += 2 * picks[-1].depth_cm
            path.extend(picks)
        else:
            vertical += zone.length_cm
            path.extend(picks if at_front else reversed(picks))
            at_front = not at_front
    length = vertical + _horizontal(zone, aisles[0][0], aisles[-1][0])
    return Route("s-shape", tuple(path), length)


def _gap_split(zone: Zone, picks: list[Stop]) -> tuple[list[Stop], list[Stop], int]:
    """Split an aisle's picks at its largest gap: (picked from the front, picked from the back, walk)."""
    depths = [p.depth_cm for p in picks]
    gaps = [depths[0]] + [b - a for a, b in itertools.pairwise(depths)] + [zone.length_cm - depths[-1]]
    widest = max(range(len(gaps)), key=lambda i: (gaps[i], -i))
    front, back = picks[:widest], picks[widest:]
    walk = (2 * front[-1].depth_cm if front else 0) + (2 * (zone.length_cm - back[0].depth_cm) if back else 0)
    return front, back, walk


def largest_gap(zone: Zone, stops: Sequence[Stop]) -> Route:
    ordered = _check(zone, stops)
    if not ordered:
        return Route("largest-gap", (), 0)
    aisles = _by_aisle(ordered)
    if len(aisles) == 1:
        picks = aisles[0][1]
        length = 2 * picks[-1].depth_cm + _horizontal(zone, aisles[0][0], aisles[0][0])
        return Route("largest-gap", tuple(picks), length)
    (first, first_picks), middle, (last, last_picks) = aisles[0], aisles[1:-1], aisles[-1]
    splits = [(aisle, *_gap_split(zone, picks)) for aisle, picks in middle]
    # Front parts left of the depot are picked on the way out to the first aisle, the others on the way home;
    # both legs walk right to left.
    out = [front for aisle, front, _, _ in reversed(splits) if zone.x(aisle) < zone.depot_cm]
    home = [front for aisle, front, _, _ in reversed(splits) if zone.x(aisle) >= zone.depot_cm]
    path = [stop for front in out for stop in front]
    path.extend(first_picks)
    for _, _, back, _ in splits:  # along the back cross aisle, left to right
        path.extend(reversed(back))
    path.extend(reversed(last_picks))
    path.extend(stop for front in home for stop in front)
    length = 2 * zone.length_cm + sum(walk for *_, walk in splits) + _horizontal(zone, first, last)
    return Route("largest-gap", tuple(path), length)


def combined(zone: Zone, stops: Sequence[Stop]) -> Route:
    ordered = _check(zone, stops)
    if not ordered:
        return Route("combined", (), 0)
    aisles = _by_aisle(ordered)
    length_cm = zone.length_cm
    # best[side] = (walk so far in the aisles, stops so far); side 0 = front cross aisle, 1 = back.
    best: dict[int, tuple[int, list[Stop]]] = {0: (0, [])}
    for _, picks in aisles:
        step: dict[int, tuple[int, list[Stop]]] = {}
        for side, (cost, path) in sorted(best.items()):
            from_front = side == 0
            seq = picks if from_front else list(reversed(picks))
            reach = picks[-1].depth_cm if from_front else length_cm - picks[0].depth_cm
            # Traverse to the other cross aisle, or go in as far as needed and back out.
            for new_side, new_cost in ((1 - side, cost + length_cm), (side, cost + 2 * reach)):
                if new_side not in step or new_cost < step[new_side][0]:
                    step[new_side] = (new_cost, path + seq)
        best = step
    finishes = [(cost + (length_cm if side == 1 else 0), path) for side, (cost, path) in sorted(best.items())]
    cost, path = min(finishes, key=lambda f: f[0])
    return Route("combined", tuple(path), cost + _horizontal(zone, aisles[0][0], aisles[-1][0]))


def _held_karp(zone: Zone, points: list[Stop]) -> tuple[list[int], int]:
    n = len(points)
    start = [distance(zone, None, p) for p in points]
    dist = [[distance(zone, a, b) for b in points] for a in points]
    full = (1 << n) - 1
    inf = 1 << 60
    cost = [[inf] * n for _ in range(1 << n)]
    parent = [[-1] * n for _ in range(1 << n)]
    for i in range(n):
        cost[1 << i][i] = start[i]
    for mask in range(1, full + 1):
        row = cost[mask]
        for last in range(n):
            here = row[last]
            if here >= inf or not mask >> last & 1:
                continue
            for nxt in range(n):
                if mask >> nxt & 1:
                    continue
                grown = mask | 1 << nxt
                value = here + dist[last][nxt]
                if value < cost[grown][nxt]:
                    cost[grown][nxt] = value
                    parent[grown][nxt] = last
    end = min(range(n), key=lambda i: (cost[full][i] + start[i], i))
    total = cost[full][end] + start[end]
    order, mask, at = [], full, end
    while at != -1:
        order.append(at)
        mask, at = mask ^ (1 << at), parent[mask][at]
    order.reverse()
    if order[-1] < order[0]:  # the same tour either way round: start with the stop that sorts first
        order.reverse()
    return order, total


def _two_opt(zone: Zone, points: list[Stop]) -> list[Stop]:
    route = list(points)
    for _ in range(TWO_OPT_PASSES):
        improved = False
        for i in range(len(route) - 1):
            before = route[i - 1] if i > 0 else None
            for j in range(i + 1, len(route)):
                after = route[j + 1] if j + 1 < len(route) else None
                old = distance(zone, before, route[i]) + distance(zone, route[j], after)
                new = distance(zone, before, route[j]) + distance(zone, route[i], after)
                if new < old:
                    route[i : j + 1] = reversed(route[i : j + 1])
                    improved = True
        if not improved:
            break
    return route


def optimal(zone: Zone, stops: Sequence[Stop]) -> Route:
    ordered = _check(zone, stops)
    if not ordered:
        return Route("optimal", (), 0, exact=True)
    positions: dict[tuple[int, int], list[Stop]] = {}
    for stop in ordered:
        positions.setdefault((stop.aisle, stop.depth_cm), []).append(stop)
    points = [group[0] for group in positions.values()]
    if len(points) <= EXACT_LIMIT:
        order, length = _held_karp(zone, points)
        visit, exact = [points[i] for i in order], True
    else:
        start = min((s_shape, largest_gap, combined), key=lambda f: tour_length(zone, f(zone, points).stops))
        visit, exact = _two_opt(zone, list(start(zone, points).stops)), False
        length = tour_length(zone, visit)
    path = tuple(s for p in visit for s in positions[(p.aisle, p.depth_cm)])
    return Route("optimal", path, length, exact=exact)


STRATEGIES: dict[str, Callable[[Zone, Sequence[Stop]], Route]] = {
    "s-shape": s_shape,
    "largest-gap": largest_gap,
    "combined": combined,
    "optimal": optimal,
}


def route(strategy: str, zone: Zone, stops: Sequence[Stop]) -> Route:
    try:
        router = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown pick-path strategy {strategy!r}; one of {sorted(STRATEGIES)}") from None
    return router(zone, stops)
