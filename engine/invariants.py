"""I1–I4 (and I6's structure) checked from what is on the result topics, never from an agent's memory.

``check(records)`` is pure; ``collect(bootstrap, topics)`` reads the topics back. Stock events carry the
state after each change, so I1 is checked at every step, not only at the end; a redelivered copy of an
event has the same ``event_id`` and ``version``, while a second *application* of the same command shows
up as the same ``event_id`` with a new version — that is what makes I3 checkable from the outside.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.kafka import read_topics
from engine.topics import Topics
from schemas import wire
from schemas.deadletter import DeadLetter, ReasonCode
from schemas.inventory import Adjust, CommandKind, InventoryCommand, Receive, Return, StockEvent
from schemas.order import Order, line_id
from schemas.review import CancellationKind, OrderCancellation, Outcome, ReviewDecision
from schemas.saga import DecisionStatus, OrderDecision

MAX_LISTED = 40  # violations listed in full; the rest are counted


@dataclass
class RunRecords:
    orders: list[Order] = field(default_factory=list)
    commands: list[InventoryCommand] = field(default_factory=list)
    stock_events: list[StockEvent] = field(default_factory=list)
    decisions: list[OrderDecision] = field(default_factory=list)
    reviews: list[ReviewDecision] = field(default_factory=list)
    cancellations: list[OrderCancellation] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    undecodable: Counter = field(default_factory=Counter)  # topic -> records that fail their schema


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    suppressed: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    oversold_units: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def fail(self, rule: str, message: str) -> None:
        if len(self.violations) < MAX_LISTED:
            self.violations.append(f"{rule}: {message}")
        else:
            self.suppressed += 1

    def summary(self) -> str | list[str]:
        if self.ok:
            return "ok"
        more = [f"... and {self.suppressed} more"] if self.suppressed else []
        return self.violations + more


def check(rec: RunRecords) -> Verdict:
    v = Verdict()
    for topic, n in rec.undecodable.items():
        v.fail("I6", f"{n} record(s) on {topic} do not match their schema")
    applied = _check_stock_events(rec, v)
    _check_conservation(rec, applied, v)
    _check_lines_and_decisions(rec, applied, v)
    v.counts["dead_letters"] = dict(Counter(d.reason.value for d in rec.dead_letters))
    return v


def _check_stock_events(rec: RunRecords, v: Verdict) -> dict[str, StockEvent]:
    """I1 at every step, gap-free versions, and no command applied twice (I3). Returns event_id → event."""
    by_id: dict[str, StockEvent] = {}
    per_sku: dict[tuple[str, str], dict[int, StockEvent]] = defaultdict(dict)
    for ev in rec.stock_events:
        first = by_id.get(ev.event_id)
        if first is None:
            by_id[ev.event_id] = ev
        elif first.version != ev.version:
            v.fail("I3", f"command {ev.event_id} applied twice (versions {first.version} and {ev.version})")
            continue
        elif _effect(first) != _effect(ev):
            v.fail("I3", f"event {ev.event_id} has two different contents")
            continue
        else:
            continue  # a redelivered copy
        sku_events = per_sku[(ev.tenant, ev.sku)]
        if ev.version in sku_events:
            v.fail("I1", f"{ev.tenant}:{ev.sku} version {ev.version} used by two events")
        sku_events[ev.version] = ev
    oversold = 0
    for (tenant, sku), events in per_sku.items():
        versions = sorted(events)
        if versions != list(range(1, len(versions) + 1)):
            missing = sorted(set(range(1, versions[-1] + 1)) - set(versions))[:5]
            v.fail("I1", f"{tenant}:{sku} stock events missing versions {missing}: a change was lost")
        level: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        worst: dict[str, int] = {}
        for version in versions:
            ev = events[version]
            cur = level[ev.warehouse]
            cur[0] += ev.d_on_hand
            cur[1] += ev.d_reserved
            if cur != [ev.on_hand, ev.reserved]:
                v.fail(
                    "I1",
                    f"{tenant}:{sku}@{ev.warehouse} v{version}: deltas give {cur}, event says "
                    f"{[ev.on_hand, ev.reserved]}",
                )
                cur[:] = [ev.on_hand, ev.reserved]
            available = ev.on_hand - ev.reserved
            worst[ev.warehouse] = min(worst.get(ev.warehouse, 0), available, ev.on_hand, ev.reserved)
            if available < 0 or ev.reserved < 0 or ev.on_hand < 0:
                v.fail(
                    "I1",
                    f"{tenant}:{sku}@{ev.warehouse} v{version}: on_hand {ev.on_hand}, reserved "
                    f"{ev.reserved} (available {available})",
                )
        oversold += sum(-w for w in worst.values() if w < 0)
        v.counts.setdefault("final_levels", {})[f"{tenant}:{sku}"] = {wh: list(x) for wh, x in level.items()}
    v.oversold_units = oversold
    v.counts["stock_events"] = len(by_id)
    v.counts["stock_event_copies"] = len(rec.stock_events)
    return by_id


def _effect(ev: StockEvent) -> tuple:
    return (ev.version, ev.warehouse, ev.kind, ev.d_on_hand, ev.d_reserved, ev.on_hand, ev.reserved)


def _check_conservation(rec: RunRecords, applied: dict[str, StockEvent], v: Verdict) -> None:
    """I2: on_hand at the end = received + returned − issued ± adjusted, with receipts, returns and
    adjustments counted from the unique commands sent (minus any that were dead-lettered)."""
    refused = set()
    for letter in rec.dead_letters:
        with contextlib.suppress(wire.WireError):
            refused.add(wire.decode(letter.original_value, InventoryCommand).command_id)
    expected: dict[tuple[str, str, str], int] = defaultdict(int)
    seen: set[str] = set()
    for cmd in rec.commands:
        if cmd.command_id in seen or cmd.command_id in refused:
            continue
        seen.add(cmd.command_id)
        if isinstance(cmd, Receive | Return):
            expected[(cmd.tenant, cmd.sku, cmd.warehouse)] += cmd.quantity
        elif isinstance(cmd, Adjust):
            expected[(cmd.tenant, cmd.sku, cmd.warehouse)] += cmd.delta
    for ev in applied.values():
        if ev.kind is CommandKind.ISSUE:
            expected[(ev.tenant, ev.sku, ev.warehouse)] += ev.d_on_hand
    final = v.counts.get("final_levels", {})
    for (tenant, sku, wh), units in expected.items():
        actual = final.get(f"{tenant}:{sku}", {}).get(wh, [0, 0])[0]
        if actual != units:
            v.fail("I2", f"{tenant}:{sku}@{wh}: on_hand {actual}, receipts/returns/issues/adjustments: {units}")
    for key, levels in final.items():
        tenant, sku = key.split(":", 1)
        for wh, (on_hand, _) in levels.items():
            if (tenant, sku, wh) not in expected and on_hand != 0:
                v.fail("I2", f"{key}@{wh}: on_hand {on_hand} with no receipt behind it")


def _check_lines_and_decisions(rec: RunRecords, applied: dict[str, StockEvent], v: Verdict) -> None:
    """I3 per line (reserved at most once, closed at most once) and I4 (one decision per order; a rejected
    order holds no reservation; an accepted one holds all of them)."""
    effects: dict[tuple[str, str], Counter] = defaultdict(Counter)  # (tenant, line) -> kind -> count
    for ev in applied.values():
        if ev.line_id:
            effects[(ev.tenant, ev.line_id)][ev.kind] += 1
    for (tenant, line), kinds in effects.items():
        closes = kinds[CommandKind.RELEASE] + kinds[CommandKind.ISSUE]
        if kinds[CommandKind.RESERVE] > 1 or closes > 1 or closes > kinds[CommandKind.RESERVE]:
            v.fail(
                "I3",
                f"{tenant}:{line}: reserved {kinds[CommandKind.RESERVE]}x, released "
                f"{kinds[CommandKind.RELEASE]}x, issued {kinds[CommandKind.ISSUE]}x",
            )

    orders: dict[str, Order] = {}
    for order in rec.orders:  # the latest snapshot of each order
        if order.key not in orders or order.version >= orders[order.key].version:
            orders[order.key] = order
    last_review: dict[str, ReviewDecision] = {}
    for r in rec.reviews:
        if r.key not in last_review or (r.order_version, r.ts) >= (
            last_review[r.key].order_version,
            last_review[r.key].ts,
        ):
            last_review[r.key] = r
    cancelled: dict[str, set[str] | None] = {}  # order -> cancelled line ids (None: the whole order)
    for c in rec.cancellations:
        if c.kind is CancellationKind.ORDER:
            cancelled[c.key] = None
        elif c.kind is CancellationKind.LINES and cancelled.get(c.key, set()) is not None:
            cancelled.setdefault(c.key, set()).update(c.line_ids)
    decisions: dict[str, set[DecisionStatus]] = defaultdict(set)
    reasons: Counter = Counter()
    final_status: dict[str, OrderDecision] = {}
    for d in rec.decisions:
        decisions[d.key].add(d.status)
        final_status.setdefault(d.key, d)
    for key, statuses in decisions.items():
        if len(statuses) > 1:
            v.fail("I4", f"{key}: more than one decision ({sorted(s.value for s in statuses)})")
        if key not in orders:
            v.fail("I4", f"{key}: a decision for an order that was never placed")
    # An order needs its decision once review let it through (or refused it); a held or unpaid one does not.
    waiting = {k for k, r in last_review.items() if r.outcome is Outcome.HELD}
    reviewed = rec.reviews or rec.decisions  # runs without a review stage decide every order
    needed = (
        [k for k in orders if k not in waiting and (k in last_review or not rec.reviews)] if reviewed else list(orders)
    )
    missing = [k for k in needed if k not in decisions]
    if missing:
        v.fail("I4", f"{len(missing)} order(s) without a decision, e.g. {missing[:3]}")

    def held_lines(order: Order, lines: list[str]) -> list[str]:
        """The lines that hold a reservation at the end (reserved more often than released or issued)."""
        held = []
        for lid in lines:
            k = effects.get((order.tenant, lid))
            if k is not None and k[CommandKind.RESERVE] > k[CommandKind.RELEASE] + k[CommandKind.ISSUE]:
                held.append(lid)
        return held

    accepted = rejected = cancelled_n = 0
    for key, order in orders.items():
        all_lines = [line_id(order.order_id, ln.line_no) for ln in order.lines]
        d = final_status.get(key)
        gone = cancelled.get(key, set())
        if d is None:
            if held_lines(order, all_lines):
                v.fail("I4", f"{key} has no decision (held or unpaid) but holds reservations")
            continue
        if d.status is DecisionStatus.ACCEPTED:
            accepted += 1
            expected = [dl.line_id for dl in d.lines if gone is not None and dl.line_id not in gone]
            holding = held_lines(order, all_lines)
            if sorted(holding) != sorted(expected):
                v.fail("I4", f"{key} was accepted: holds {sorted(holding)}, should hold {sorted(expected)}")
        else:
            if d.status is DecisionStatus.CANCELLED:
                cancelled_n += 1
            else:
                rejected += 1
            reasons[d.reason.value if d.reason else "unknown"] += 1
            holding = held_lines(order, all_lines)
            if holding:
                v.fail("I4", f"{key} was {d.status.value} but still holds reservations for {holding}")
    v.counts.update(
        orders=len(orders),
        orders_sent=len(rec.orders),
        accepted=accepted,
        rejected=rejected,
        cancelled=cancelled_n,
        held=sum(1 for k in waiting if k not in decisions),
        rejected_by_reason=dict(reasons),
        lines=sum(len(o.lines) for o in orders.values()),
        decisions=len(decisions),
        decision_copies=len(rec.decisions),
        review_outcomes=dict(Counter(r.outcome.value for r in last_review.values())),
        fired_rules=dict(Counter(f.rule_id for r in rec.reviews for f in r.fired)),
    )


def collect(bootstrap: str, topics: Topics, timeout_s: float = 120.0) -> RunRecords:
    """Read every result topic of a run back from the broker."""
    rec = RunRecords()
    decoders: dict[str, tuple[Any, list]] = {
        topics.orders: (Order, rec.orders),
        topics.inventory_commands: (InventoryCommand, rec.commands),
        topics.stock_events: (StockEvent, rec.stock_events),
        topics.order_decisions: (OrderDecision, rec.decisions),
        topics.review_decisions: (ReviewDecision, rec.reviews),
        topics.order_cancellations: (OrderCancellation, rec.cancellations),
        topics.dead_letters: (DeadLetter, rec.dead_letters),
    }
    for msg in read_topics(bootstrap, list(decoders), timeout_s=timeout_s):
        typ, sink = decoders[msg.topic]
        try:
            sink.append(wire.decode(msg.value or b"", typ))
        except wire.WireError:
            if msg.topic not in (topics.orders, topics.inventory_commands):  # inputs may hold bad records
                rec.undecodable[msg.topic] += 1
    return rec


def latency_ms(decisions: Iterable[OrderDecision]) -> dict[str, float]:
    """Order in (ingested_at, set by the producer) → decision, percentiles over first copies."""
    first: dict[str, int] = {}
    for d in decisions:
        first.setdefault(d.key, d.decided_at - d.ingested_at)
    values = sorted(first.values())
    if not values:
        return {}

    def pct(p: float) -> float:
        return float(values[min(len(values) - 1, int(p * len(values)))])

    return {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": float(values[-1])}


__all__ = ["ReasonCode", "RunRecords", "Verdict", "check", "collect", "latency_ms"]
