"""The verdict: I1–I4 and I6 from the engine's outputs, judged against the inputs as they were sent (pure).

* **I1 No oversell.** Stock events carry the state after each change: replayed in version order per SKU, the
  deltas must give that state, available never goes below zero, versions run 1, 2, 3 … without a gap, and no
  version is written twice with different contents (two writers).
* **I2 Conservation.** The final on-hand per SKU and warehouse equals what the *sent* receipts, returns and
  adjustments add up to (minus what shipped, and what pickers reported missing: F7 checks each short against
  its confirmation); each sent stock command took effect exactly once, or was refused because its sender meant
  it to be.
* **I3 Effects once.** No command applied twice; per line at most one reservation and one close.
* **I4 One decision per order.** Every order that was sent has exactly one decision — every copy of it
  byte-identical — or is in an open state the engine lists (awaiting payment, held); no decision for an order
  nobody sent; no rejection the engine caused itself. An accepted order reserved exactly the lines that were
  sent (SKU and quantity), and still holds exactly the ones the channel did not cancel (with the units left after
  a short pick, and the remainder lines re-reserved for them); a rejected or cancelled order holds nothing.
  The reserved quantity per SKU and warehouse equals the open lines of accepted orders.
* **I6 Bad input.** Every dead letter is justified by its own bytes (they do not decode, or are misrouted) or by
  the sender's intent; every record crafted to be bad was dead-lettered (recognised by the SHA-256 of its whole
  value: a letter keeps only a bounded prefix of a large record, whose full bytes are read back from the source
  topic and must match the letter's size and digest).

Then the fulfilment invariants F1–F5 (invariants.fulfilment), the picking invariants F6–F8
(invariants.picking), shipping S1–S4, aftersales A1–A4, the books I5 (invariants.ledger) and stock sync Y1–Y3
(invariants.stocksync).
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from engine.kafka.clients import partition_for
from invariants.aftersales import check_aftersales, expected_returns, handed_over
from invariants.collect import Outputs
from invariants.fulfilment import check_fulfilment
from invariants.inputs import Inputs, SentOrder
from invariants.ledger import check_ledger
from invariants.picking import Truth, check_picking
from invariants.shipping import check_shipping, shipped_lines
from invariants.stocksync import check_stock_sync
from schemas import wire
from schemas.aftersales import AftersalesRecord
from schemas.deadletter import MAX_VALUE_PREFIX, DeadLetter, ReasonCode, sha256
from schemas.inbox import InboxRecord, OrderSnapshot
from schemas.inventory import Adjust, CommandKind, InventoryCommand, Receive, Return, StockEvent
from schemas.order import LineState, OrderStatus, root_line
from schemas.review import CancellationKind, Outcome, ReviewDecision
from schemas.saga import ENGINE_REASONS, DecisionStatus, OrderDecision

MAX_LISTED = 40  # violations listed in full; the rest are counted
ENGINE_DEAD_LETTERS = {ReasonCode.PROCESSING_ERROR, ReasonCode.STALE_SEQUENCE}


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


def check(inputs: Inputs, out: Outputs, partitions: int | None = None) -> Verdict:
    v = Verdict()
    for topic, n in out.undecodable.items():
        v.fail("I6", f"{n} record(s) on {topic} do not match their schema")
    applied = _stock_events(out, v)
    _stock_inputs(inputs, out, applied, v)
    effects = _line_effects(applied, v)
    truth = Truth(inputs)
    decided = _first_decisions(out)
    handed = handed_over(inputs, decided)  # lines handed over in a store: issued, never shipped
    _orders(inputs, out, effects, truth, v, handed)
    _dead_letters(inputs, out, v, partitions, inputs.forgotten_before())
    check_fulfilment(inputs, out, v, truth, applied)
    check_picking(inputs, out, truth, applied, v)
    check_shipping(out, truth, applied, v, set(handed))
    check_aftersales(inputs, out, applied, decided, handed, v)
    check_ledger(inputs, out, applied, v)
    check_stock_sync(inputs, out, applied, v)
    return v


def _first_decisions(out: Outputs) -> dict[str, OrderDecision]:
    decisions: dict[str, OrderDecision] = {}
    for d in out.decisions:
        decisions.setdefault(d.key, d)
    return decisions


# -- stock ---------------------------------------------------------------------------------------------------
def _stock_events(out: Outputs, v: Verdict) -> dict[str, StockEvent]:
    """I1 at every step, gap-free versions, one writer per version; I3 per command. Returns id → event."""
    by_id: dict[str, StockEvent] = {}
    per_sku: dict[tuple[str, str], dict[int, StockEvent]] = defaultdict(dict)
    copies = 0
    for ev in out.stock_events:
        first = by_id.get(ev.event_id)
        if first is not None:
            if first.version != ev.version:
                v.fail("I3", f"command {ev.event_id} applied twice (versions {first.version} and {ev.version})")
            elif first != ev:
                v.fail("I3", f"stock event {ev.event_id} has two different contents")
            copies += 1
            continue
        by_id[ev.event_id] = ev
        versions = per_sku[(ev.tenant, ev.sku)]
        other = versions.get(ev.version)
        if other is not None:
            v.fail(
                "I1",
                f"{ev.tenant}:{ev.sku} version {ev.version} written by two events ({other.event_id}, "
                f"{ev.event_id}): two writers",
            )
            continue
        versions[ev.version] = ev
    oversold = 0
    final: dict[str, dict[str, list[int]]] = {}
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
                    f"{tenant}:{sku}@{ev.warehouse} v{version}: deltas give {cur}, the event says "
                    f"{[ev.on_hand, ev.reserved]}",
                )
                cur[:] = [ev.on_hand, ev.reserved]
            available = ev.on_hand - ev.reserved
            worst[ev.warehouse] = min(worst.get(ev.warehouse, 0), available, ev.on_hand, ev.reserved)
            if available < 0 or ev.reserved < 0 or ev.on_hand < 0:
                v.fail(
                    "I1",
                    f"{tenant}:{sku}@{ev.warehouse} v{version}: on_hand {ev.on_hand}, reserved {ev.reserved} "
                    f"(available {available})",
                )
        oversold += sum(-w for w in worst.values() if w < 0)
        final[f"{tenant}:{sku}"] = {wh: list(x) for wh, x in level.items()}
    v.oversold_units = oversold
    v.counts["final_levels"] = final
    v.counts["stock_events"] = len(by_id)
    v.counts["stock_event_copies"] = copies
    return by_id


def _stock_inputs(inputs: Inputs, out: Outputs, applied: dict[str, StockEvent], v: Verdict) -> None:
    """I2 from the commands as sent: each took effect once (or was refused on purpose), and on-hand adds up."""
    refused_ids: dict[str, ReasonCode] = {}
    for letter in out.dead_letters:
        raw = _letter_value(out, letter)
        if raw is None:
            continue
        with contextlib.suppress(wire.WireError):
            refused_ids[wire.decode(raw, InventoryCommand).command_id] = letter.reason
    expected: dict[tuple[str, str, str], int] = defaultdict(int)
    seen: set[str] = set()
    for cmd in inputs.stock:
        if cmd.command_id in seen:
            continue
        seen.add(cmd.command_id)
        if not isinstance(cmd, Receive | Return | Adjust):
            continue  # line commands sent by tests: judged with the lines
        meant = inputs.refused_commands.get(cmd.command_id)
        if meant is not None:
            if refused_ids.get(cmd.command_id) != meant:
                v.fail(
                    "I2",
                    f"{cmd.command_id} was meant to be refused as {meant.value}, got {refused_ids.get(cmd.command_id)}",
                )
            if cmd.command_id in applied:
                v.fail("I2", f"{cmd.command_id} was meant to be refused but took effect")
            continue
        if cmd.command_id not in applied and not (isinstance(cmd, Adjust) and cmd.delta == 0):
            v.fail("I2", f"{cmd.command_id} was sent and never took effect")
        delta = cmd.delta if isinstance(cmd, Adjust) else cmd.quantity
        expected[(cmd.tenant, cmd.sku, cmd.warehouse)] += delta
    returns = expected_returns(inputs)  # received returns: their units come back (A3 checks each)
    for ev in applied.values():
        if ev.kind in (CommandKind.ISSUE, CommandKind.SHORT):
            expected[(ev.tenant, ev.sku, ev.warehouse)] += ev.d_on_hand
        elif ev.kind is CommandKind.RETURN and ev.event_id in returns and ev.event_id not in seen:
            tenant, sku, where, units = returns[ev.event_id]
            expected[(tenant, sku, where)] += units
        elif ev.kind in (CommandKind.RECEIVE, CommandKind.RETURN, CommandKind.ADJUST) and ev.event_id not in seen:
            v.fail("I2", f"{ev.event_id} changed on-hand but nobody sent it")
    final = v.counts.get("final_levels", {})
    for (tenant, sku, wh), units in expected.items():
        actual = final.get(f"{tenant}:{sku}", {}).get(wh, [0, 0])[0]
        if actual != units:
            v.fail("I2", f"{tenant}:{sku}@{wh}: on_hand {actual}, the commands sent add up to {units}")
    for key, levels in final.items():
        tenant, sku = key.split(":", 1)
        for wh, (on_hand, _) in levels.items():
            if (tenant, sku, wh) not in expected and on_hand != 0:
                v.fail("I2", f"{key}@{wh}: on_hand {on_hand} with no receipt behind it")


@dataclass
class LineEffects:
    reserved: int = 0
    released: int = 0
    issued: int = 0
    issued_after_release: int = 0
    shorted: int = 0  # units a short pick took out
    sku: str = ""
    quantity: int = 0
    warehouse: str = ""
    order_id: str | None = None
    line_id: str = ""

    @property
    def holding(self) -> bool:
        return self.reserved > self.released + self.issued and self.quantity > self.shorted


def _line_effects(applied: dict[str, StockEvent], v: Verdict) -> dict[tuple[str, str], LineEffects]:
    """I3 per line: reserved at most once, closed at most once, never closed before reserved."""
    effects: dict[tuple[str, str], LineEffects] = defaultdict(LineEffects)
    for ev in applied.values():
        if not ev.line_id:
            continue
        e = effects[(ev.tenant, ev.line_id)]
        if ev.kind is CommandKind.RESERVE:
            e.reserved += 1
            e.sku, e.quantity, e.warehouse, e.order_id = ev.sku, ev.d_reserved, ev.warehouse, ev.order_id
        elif ev.kind is CommandKind.RELEASE:
            e.released += 1
        elif ev.kind is CommandKind.ISSUE and ev.d_reserved == 0:
            e.issued_after_release += 1  # the goods left after a too-late cancellation: the count follows them
        elif ev.kind is CommandKind.ISSUE:
            e.issued += 1
        elif ev.kind is CommandKind.SHORT:
            e.shorted -= ev.d_reserved
    for (tenant, line), e in effects.items():
        if e.issued_after_release and not (e.released == 1 and e.issued == 0 and e.issued_after_release == 1):
            v.fail("I3", f"{tenant}:{line}: issued {e.issued_after_release}x after release, released {e.released}x")
        if e.reserved > 1 or e.released + e.issued > 1 or e.released + e.issued > e.reserved:
            v.fail("I3", f"{tenant}:{line}: reserved {e.reserved}x, released {e.released}x, issued {e.issued}x")
    return effects


# -- orders --------------------------------------------------------------------------------------------------
def _orders(
    inputs: Inputs,
    out: Outputs,
    effects: dict[tuple[str, str], LineEffects],
    truth: Truth,
    v: Verdict,
    handed: dict[tuple[str, str], tuple[str, int]],
) -> None:
    decisions: dict[str, OrderDecision] = {}
    for d in out.decisions:
        first = decisions.setdefault(d.key, d)
        if first.decision_id != d.decision_id:
            v.fail("I4", f"{d.key}: two decision ids ({first.decision_id}, {d.decision_id})")
    for decision_id, copies in out.decision_bytes.items():
        if len(copies) > 1:
            v.fail("I4", f"decision {decision_id} carries {len(copies)} different contents")
    last_review: dict[str, ReviewDecision] = {}
    for r in out.reviews:
        last_review[r.key] = r  # one partition per order key: topic order is the order they were made in
    cancelled_by_record: dict[str, set[str] | None] = {}  # order -> lines cancelled (None: the whole order)
    for c in out.cancellations:
        if c.kind is CancellationKind.ORDER:
            cancelled_by_record[c.key] = None
        elif c.kind is CancellationKind.LINES and cancelled_by_record.get(c.key, set()) is not None:
            cancelled_by_record.setdefault(c.key, set()).update(c.line_ids)
    for key in decisions:
        if key not in inputs.orders:
            v.fail("I4", f"{key}: a decision for an order nobody sent")
    by_order: dict[str, list[LineEffects]] = defaultdict(list)
    for (tenant, line), e in effects.items():
        e.line_id = line
        if e.order_id:
            by_order[f"{tenant}:{e.order_id}"].append(e)
    forgotten_before = inputs.forgotten_before()
    shipped = shipped_lines(out)  # issued: they hold nothing any more (S3 checks them against the pickers)
    for ref, (_, units) in handed.items():  # handed over in a store (A4)
        shipped[ref] = units
    forgotten = set()  # orders whose snapshot the engine dead-lettered as forgotten
    for letter in out.dead_letters:
        raw = _letter_value(out, letter)
        if letter.reason is ReasonCode.FORGOTTEN_ORDER and raw is not None:
            with contextlib.suppress(wire.WireError):
                record = wire.decode(raw, InboxRecord)
                if isinstance(record, OrderSnapshot):
                    forgotten.add(record.order.key)
    counts: Counter = Counter()
    reasons: Counter = Counter()
    open_states: Counter = Counter()
    engine_failures = 0
    held_units: dict[tuple[str, str, str], int] = defaultdict(int)
    for key, sent in inputs.orders.items():
        d = decisions.get(key)
        holding = {e.line_id: e for e in by_order.get(key, [])}
        if d is None:
            state = _open_state(inputs, sent, last_review.get(key), forgotten_before)
            if state is None:
                last = last_review.get(key)
                v.fail(
                    "I4", f"{key} was sent and has no decision (last review: {last.outcome.value if last else 'none'})"
                )
            elif state == "forgotten" and key not in forgotten:
                v.fail("I4", f"{key} is older than the retention, yet was neither decided nor dead-lettered")
            else:
                open_states[state] += 1
            if any(e.holding for e in holding.values()):
                v.fail("I4", f"{key} has no decision but holds reservations")
            continue
        counts[d.status.value] += 1
        if d.reason is not None and d.status is DecisionStatus.REJECTED:
            reasons[d.reason.value] += 1
        if d.reason in ENGINE_REASONS:
            engine_failures += 1
            v.fail("I4", f"{key} was rejected by the engine itself ({d.reason.value}): {d.detail[:120]}")
        if d.status is DecisionStatus.ACCEPTED:
            _accepted(sent, d, holding, cancelled_by_record.get(key, set()), held_units, truth, shipped, v)
        else:
            still = sorted(line for line, e in holding.items() if e.holding)
            if still:
                v.fail("I4", f"{key} was {d.status.value} but still holds reservations for {still}")
            if d.status is DecisionStatus.CANCELLED and not (sent.cancelled() or _all_closed(sent)):
                v.fail("I4", f"{key} was cancelled but its channel never cancelled it")
    _reserved_totals(v, held_units)
    v.counts.update(
        orders=len(inputs.orders),
        accepted=counts[DecisionStatus.ACCEPTED.value],
        rejected=counts[DecisionStatus.REJECTED.value],
        cancelled=counts[DecisionStatus.CANCELLED.value],
        open=dict(open_states),
        rejected_by_reason=dict(reasons),
        engine_failures=engine_failures,
        decisions=len(decisions),
        decision_copies=len(out.decisions),
        lines=sum(len(s.lines()) for s in inputs.orders.values()),
        review_outcomes=dict(Counter(r.outcome.value for r in last_review.values())),
    )


def _open_state(
    inputs: Inputs, sent: SentOrder, review: ReviewDecision | None, forgotten_before: int | None
) -> str | None:
    """The open state an undecided order may be in, if the inputs allow it and the engine lists it."""
    if review is None:
        # Every snapshot older than the retention: dead-lettered as forgotten (I6 checks each letter).
        old = forgotten_before is not None and all(o.created_at <= forgotten_before for o in sent.snapshots)
        return "forgotten" if old else None
    if review.outcome is Outcome.AWAITING_PAYMENT and not sent.ever_paid():
        return "awaiting_payment"
    if review.outcome is Outcome.SHIPPED and any(
        o.status in (OrderStatus.SHIPPED, OrderStatus.FINISHED) for o in sent.snapshots
    ):
        return "shipped_before_review"
    if review.outcome is Outcome.HELD:
        latest = sent.latest()
        channel_hold = latest.status is OrderStatus.HOLD_BY_PLATFORM or any(
            ln.status is LineState.REFUNDING for ln in latest.lines
        )
        if inputs.rules or channel_hold:
            return "held"
    return None


def _all_closed(sent: SentOrder) -> bool:
    return all(ln.status is not LineState.ACTIVE for ln in sent.latest().lines)


def _accepted(
    sent: SentOrder,
    d: OrderDecision,
    holding: dict[str, LineEffects],
    cancelled_lines: set[str] | None,
    held_units: dict[tuple[str, str, str], int],
    truth: Truth,
    shipped: dict[tuple[str, str], int],
    v: Verdict,
) -> None:
    key = sent.key
    lines = sent.lines()
    closed = sent.closed_lines()
    reserved = {line: e for line, e in holding.items() if e.reserved}
    for line, e in reserved.items():
        want = truth.line(sent.tenant, line)
        if want is None:
            v.fail("I4", f"{key} reserved {line}, which was never sent (nor short-picked)")
        elif (e.sku, e.quantity) != (want.sku, want.units):
            source = "the channel sent" if line in lines else "the short pick left"
            v.fail("I4", f"{key} reserved {line} as {e.sku} x{e.quantity}, {source} {want.sku} x{want.units}")
    for dl in d.lines:
        want = lines.get(dl.line_id)
        if want is not None and (dl.sku, dl.quantity) != want:
            v.fail("I4", f"{key}: the decision says {dl.line_id} is {dl.sku} x{dl.quantity}, it was sent as {want}")
    missing = sorted(line for line in lines if line not in closed and line not in reserved)
    if missing:
        v.fail("I4", f"{key} was accepted without reserving {missing}")
    whole_cancelled = sent.cancelled() or cancelled_lines is None
    kept: dict[str, int] = {}  # line -> units it should still hold
    if not whole_cancelled:
        for line in reserved:
            want = truth.line(sent.tenant, line)
            shipping = (sent.tenant, line) in shipped
            if (
                want is not None
                and root_line(line) in lines
                and root_line(line) not in closed
                and want.kept > 0
                and not shipping
            ):
                kept[line] = want.kept
    still = {line for line, e in holding.items() if e.holding}
    if still != set(kept):
        v.fail("I4", f"{key} was accepted: holds {sorted(still)}, should hold {sorted(kept)}")
    if sent.cancelled() and cancelled_lines is not None:
        v.fail("I4", f"{key} was cancelled by its channel after acceptance, but no cancellation was recorded")
    for line in still & set(kept):
        e = holding[line]
        held_units[(sent.tenant, e.sku, e.warehouse)] += kept[line]


def _reserved_totals(v: Verdict, held_units: dict[tuple[str, str, str], int]) -> None:
    """The final reserved quantity per SKU and warehouse equals the open lines of accepted orders."""
    final = v.counts.get("final_levels", {})
    seen = set()
    for (tenant, sku, wh), units in held_units.items():
        seen.add((tenant, sku, wh))
        actual = final.get(f"{tenant}:{sku}", {}).get(wh, [0, 0])[1]
        if actual != units:
            v.fail("I4", f"{tenant}:{sku}@{wh}: reserved {actual}, the open lines of accepted orders need {units}")
    for key, levels in final.items():
        tenant, sku = key.split(":", 1)
        for wh, (_, reserved) in levels.items():
            if reserved and (tenant, sku, wh) not in seen:
                v.fail("I4", f"{key}@{wh}: {reserved} reserved that no accepted order holds")


# -- dead letters --------------------------------------------------------------------------------------------
def _dead_letters(
    inputs: Inputs, out: Outputs, v: Verdict, partitions: int | None, forgotten_before: int | None
) -> None:
    bad = {sha256(raw): raw for raw in inputs.bad_records}
    bad_digests = set(bad)
    lettered = set()
    for letter in out.dead_letters:
        lettered.add(letter.digest)
        name = f"dead letter {letter.dead_letter_id} ({letter.reason.value}, stage {letter.stage})"
        broken = _unfaithful(out, letter)
        if broken is not None:
            v.fail("I6", f"{name} {broken}")
            continue
        why = _justified(inputs, letter, _letter_value(out, letter), bad_digests, partitions, forgotten_before)
        if why is not None:
            v.fail("I6", f"{name} {why}")
    for digest, raw in bad.items():
        if digest not in lettered:
            v.fail("I6", f"a bad record was never dead-lettered: {raw[:80]!r} ({len(raw)} bytes)")
    v.counts["dead_letters"] = dict(Counter(d.reason.value for d in out.dead_letters))


def _letter_value(out: Outputs, letter: DeadLetter) -> bytes | None:
    """The whole value a dead letter stands for: held in the letter, or read back from its source (only when it
    is the record the letter describes); None when neither is at hand."""
    whole = letter.original_value
    if whole is not None:
        return whole
    source = out.originals.get(letter.dead_letter_id)
    return source if source is not None and letter.matches(source) else None


def _unfaithful(out: Outputs, letter: DeadLetter) -> str | None:
    """Why the letter misdescribes its record (more than the bounded prefix, or a size or digest that is not
    the record's); None when it is faithful."""
    prefix = letter.value_prefix
    if letter.v >= 2 and len(prefix) > MAX_VALUE_PREFIX:
        return f"holds {len(prefix)} bytes of its record, more than the bound of {MAX_VALUE_PREFIX}"
    if not letter.value_truncated and not letter.matches(prefix):
        return "holds a value whose size or digest is not the one it states"
    source = out.originals.get(letter.dead_letter_id)
    if not letter.value_truncated or source is None:
        return None
    if not letter.matches(source):
        return (
            f"states {letter.original_size} bytes with sha256 {letter.digest[:16]}…, its source record has "
            f"{len(source)} bytes with sha256 {sha256(source)[:16]}…"
        )
    if not source.startswith(prefix):
        return "holds a prefix that is not the start of its source record"
    return None


def _justified(
    inputs: Inputs,
    letter: DeadLetter,
    raw: bytes | None,
    bad: set[str],
    partitions: int | None,
    forgotten_before: int | None,
) -> str | None:
    """None when the dead letter is justified by its input (``raw``, its whole value when at hand; ``bad``, the
    digests of the records crafted to be bad); otherwise why not."""
    if letter.reason in ENGINE_DEAD_LETTERS:
        return "is the engine's own failure, not bad input"
    if letter.digest in bad:
        return None
    if raw is None:
        return (
            f"holds {len(letter.value_prefix)} of its record's {letter.original_size} bytes, and the record could "
            f"not be read back from {letter.source_topic}/{letter.source_partition}@{letter.source_offset}"
        )
    if letter.reason is ReasonCode.FORGOTTEN_ORDER:
        try:
            snapshot = wire.decode(raw, InboxRecord)
        except wire.WireError:
            return "says forgotten_order, but holds no order snapshot"
        old = forgotten_before is not None and isinstance(snapshot, OrderSnapshot)
        if old and snapshot.order.created_at <= forgotten_before:
            return None
        return "says forgotten_order, but the order is within the retention of what was sent"
    if letter.stage == "ingest":
        return "holds a channel payload that was not among the bad ones sent"
    if letter.reason is ReasonCode.MISROUTED:
        key = _record_key(raw)
        if key is not None and partitions and partition_for(key, partitions) != letter.source_partition:
            return None
        return "says misrouted, but the record is on its key's partition"
    with contextlib.suppress(wire.WireError):
        request = wire.decode(raw, AftersalesRecord)
        ref = (type(request).__struct_config__.tag, getattr(request, "order_id", ""))
        if inputs.refused_requests.get(ref) is letter.reason:
            return None
        return f"holds a valid {type(request).__name__} of {ref[1]} that nobody meant to be refused"
    for typ in (InventoryCommand, InboxRecord):
        try:
            record = wire.decode(raw, typ)
        except wire.WireError:
            continue
        cid = getattr(record, "command_id", None)
        if cid is not None and inputs.refused_commands.get(cid) is letter.reason:
            return None
        return f"holds a valid {type(record).__name__} that nobody meant to be refused"
    if letter.reason in (ReasonCode.MALFORMED_JSON, ReasonCode.SCHEMA_VIOLATION):
        return None  # its bytes are not a record of the topic it was on
    return "was not among the bad records sent"


def _record_key(raw: bytes) -> str | None:
    for typ in (InventoryCommand, InboxRecord):
        with contextlib.suppress(wire.WireError):
            return str(wire.decode(raw, typ).key)
    return None
