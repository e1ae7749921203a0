"""The ledger stage (总账): what booking a day's business events costs, whether it replays byte for byte, and
whether its vouchers keep up with the shipments.

    python -m bench ledger [--orders 20000] [--reps 3] [--stage-orders N (default: --orders)] [--seed 7]

A day of the ledger's business events is generated from the seeded workload's orders: per order its approval
(``OrderOpened``, what was paid per line), one goods issue (``GoodsIssued``, one shipment from one warehouse,
with a waybill) and one ``StockMoved`` issue per line at the SKU's unit cost; before them one receipt per SKU and
warehouse that ships; 1.5 % of the orders come back (``ReturnBooked`` and a ``StockMoved`` return). Keys are the
records' own, partitions the project's murmur2 over the ledger inbox's partitions, record times increase.

* **Core, in-process**: the records through ``Replay(LedgerLogic)`` (decode, book, post, encode — the code the
  stage runs), against a baseline measured in the same run: the same records only decoded and encoded again.
  Repetitions alternate; medians. Every replay's outputs, and one cut at each partition's middle and resumed from
  a snapshot, must be byte-identical (sha256 over every output in each output partition's order).
* **Stage on the broker**: two engine workers with the full pipeline app (the other stages idle), the whole day
  of ledger inbox records sent at once; vouchers per second from the first voucher to the last, goods issues
  booked per second, and each voucher's lag (its Kafka timestamp minus its source record's) — queueing, since the
  day is sent at once. Then I5 on what the stage wrote (invariants.ledger: every voucher balances, one revenue
  voucher per goods issue, one cost voucher per issue event at its cost, the moving average, the trial balance),
  and the vouchers on the topic must be the in-process replay's, byte for byte. A violation is a failure (exit 1),
  never a number.

Prints one JSON line per measurement and a summary, and rewrites its section of BENCHMARKS.md. A run that cannot
complete (the core raised, a stage run's workers died) is a failure row with its error and the tail of the
workers' logs: the other stage runs still run, the medians are over the valid runs and say how many failed, and
the exit code is 1.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import random
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agents.ledger.agent import LedgerLogic
from agents.ledger.costing import round_half_up
from bench.report import (
    BENCHMARKS,
    RunError,
    attempt,
    cleanup_quietly,
    emit,
    exit_code,
    failed,
    failure_lines,
    failure_row,
    log_tails,
    measured_on,
    median,
    save_result,
    setup_failed,
    short_error,
    table,
    write_section,
)
from engine.kafka.clients import Message, Sender, partition_for, read_topics, tail
from engine.runtime.replay import Replay
from engine.runtime.work import Input, Output
from engine.settings import Settings
from engine.topics import Topics
from invariants import Inputs
from invariants.check import Verdict
from invariants.ledger import check_ledger
from schemas import wire
from schemas.aftersales import OrderOpened, ReturnSettled, SettledLine, SoldLine
from schemas.inventory import CommandKind, Receive, StockEvent, issue_id, receive_id, return_id
from schemas.ledger import (
    LedgerRecord,
    ReturnBooked,
    StockMoved,
    Voucher,
    VoucherKind,
    check_balanced,
)
from schemas.order import Order
from schemas.shipping import GoodsIssued, PackedLine
from workload.generator import DAY_START_MS, Workload, WorkloadSpec

TITLE = "Ledger stage"
RETURN_SHARE = 0.015
ORIGIN = "bench-ledger"
#: 100,000 orders a day is 1.16 a second on average; 11.11 peaks at about 50 times that.
TARGET_DAY_ORDERS = 100_000
TARGET_AVG_PER_S = TARGET_DAY_ORDERS / 86_400
TARGET_PEAK_PER_S = 50 * TARGET_AVG_PER_S
FULFILMENT_TITLE = "Fulfilment stage in the pipeline"


# -- the day ------------------------------------------------------------------------------------------------
@dataclass
class Day:
    """The ledger inbox of a day, in send order, and what I5 needs to judge it."""

    records: list[Any] = field(default_factory=list)  # LedgerRecord instances, record time increasing
    orders: list[Order] = field(default_factory=list)
    receipts: list[Receive] = field(default_factory=list)  # what the receipts would have been sent as
    counts: Counter = field(default_factory=Counter)

    def encoded(self, partitions: int) -> list[tuple[int, bytes, bytes, int]]:
        """(partition, key, value, record time) per record."""
        out = []
        for rec in self.records:
            key = rec.key
            ts = (
                rec.event.ts
                if isinstance(rec, StockMoved)
                else rec.settled.ts
                if isinstance(rec, ReturnBooked)
                else rec.ts
            )
            out.append((partition_for(key, partitions), key.encode(), wire.encode(rec), ts))
        return out


def generate_day(orders_n: int, seed: int) -> Day:
    """Deterministic from ``seed``: the workload's orders (duplicates once) and their goods issues and returns."""
    workload = Workload(WorkloadSpec(orders=orders_n, seed=seed))
    rng = random.Random(seed * 6_700_417 + 1)
    whs = workload.spec.warehouses
    orders: dict[str, Order] = {}
    for order in workload.orders():
        orders.setdefault(order.key, order)
    # plan: (ts, seq, what, payload); built in order, sorted by record time, then materialised in that order so
    # that each SKU's stock versions and values chain in record time
    plan: list[tuple[int, int, str, tuple]] = []
    issued: Counter = Counter()  # (tenant, sku, warehouse) -> units issued
    for n, order in enumerate(orders.values()):
        wh = rng.choice(whs)
        opened = order.paid_at or order.created_at
        shipped = opened + rng.randint(1_800, 8 * 3_600) * 1000
        plan.append((opened, len(plan), "opened", (order,)))
        shipment = f"SHP-{wh}-{n:07d}"
        waybill = f"ZT{77_000_000_000 + n}"
        plan.append((shipped, len(plan), "issued", (order, wh, shipment, waybill)))
        for line in order.lines:
            plan.append((shipped, len(plan), "issue_line", (order, line, wh)))
            issued[(order.tenant, line.sku, wh)] += line.quantity
        if rng.random() < RETURN_SHARE:
            line = order.lines[0]
            units = rng.randint(1, line.quantity)
            back = shipped + rng.randint(2 * 3_600, 20 * 3_600) * 1000
            plan.append((back, len(plan), "return", (order, line, units, wh, f"RMA-{n:07d}")))
    receipt_ts = DAY_START_MS - 3_600_000
    for i, (tenant, sku, wh) in enumerate(sorted(issued)):
        units = issued[(tenant, sku, wh)] + rng.randint(1, 20)
        plan.append((receipt_ts + i, -1, "receipt", (tenant, sku, wh, units)))
    plan.sort(key=lambda p: (p[0], p[1]))

    day = Day(orders=list(orders.values()))
    stock: dict[tuple[str, str, str], list[int]] = {}  # (tenant, sku, warehouse) -> [on hand, value]
    versions: Counter = Counter()  # (tenant, sku) -> stock events so far
    seq = [0]

    def moved(tenant: str, sku: str, wh: str, kind: CommandKind, units: int, ts: int, event_id: str, **ids) -> None:
        cost = workload.unit_cost(sku)
        at = stock.setdefault((tenant, sku, wh), [0, 0])
        at[0] += units
        at[1] += units * cost
        versions[(tenant, sku)] += 1
        seq[0] += 1
        event = StockEvent(
            event_id=event_id,
            tenant=tenant,
            sku=sku,
            warehouse=wh,
            kind=kind,
            d_on_hand=units,
            d_reserved=0,
            on_hand=at[0],
            reserved=0,
            version=versions[(tenant, sku)],
            unit_cost_fen=cost,
            d_value_fen=units * cost,
            value_fen=at[1],
            origin=ORIGIN,
            seq=seq[0],
            ts=ts,
            **ids,
        )
        day.records.append(StockMoved(event=event))
        day.counts[f"stock_{kind.value}"] += 1

    for ts, _, what, payload in plan:
        if what == "receipt":
            tenant, sku, wh, units = payload
            document = f"po-{DAY_START_MS // 1000}"
            event_id = receive_id(tenant, sku, wh, document)
            moved(tenant, sku, wh, CommandKind.RECEIVE, units, ts, event_id)
            day.receipts.append(
                Receive(
                    command_id=event_id,
                    tenant=tenant,
                    sku=sku,
                    origin=ORIGIN,
                    seq=seq[0],
                    ts=ts,
                    warehouse=wh,
                    quantity=units,
                    unit_cost_fen=workload.unit_cost(sku),
                    document_id=document,
                )
            )
        elif what == "opened":
            (order,) = payload
            day.records.append(
                OrderOpened(
                    tenant=order.tenant,
                    order_id=order.order_id,
                    channel=order.channel,
                    shop_id=order.shop_id,
                    platform_order_id=order.platform_order_id,
                    receiver=order.receiver,
                    lines=[
                        SoldLine(
                            line_id=order.line_id(ln),
                            line_no=ln.line_no,
                            sku=ln.sku,
                            quantity=ln.quantity,
                            paid_fen=ln.unit_price_fen * ln.quantity,
                        )
                        for ln in order.lines
                    ],
                    delivery="ship",
                    ts=ts,
                )
            )
            day.counts["orders_opened"] += 1
        elif what == "issued":
            order, wh, shipment, waybill = payload
            day.records.append(
                GoodsIssued(
                    issue_id=f"{shipment}.{order.order_id}",
                    tenant=order.tenant,
                    order_id=order.order_id,
                    shipment_id=shipment,
                    warehouse=wh,
                    lines=[
                        PackedLine(order_id=order.order_id, line_id=order.line_id(ln), sku=ln.sku, units=ln.quantity)
                        for ln in order.lines
                    ],
                    waybills=[waybill],
                    carriers={waybill: "zto"},
                    ts=ts,
                )
            )
            day.counts["goods_issued"] += 1
        elif what == "issue_line":
            order, line, wh = payload
            lid = order.line_id(line)
            moved(
                order.tenant,
                line.sku,
                wh,
                CommandKind.ISSUE,
                -line.quantity,
                ts,
                issue_id(order.tenant, lid),
                order_id=order.order_id,
                line_id=lid,
            )
        else:  # a return: the refund, then the units back on the shelf at the cost they left with
            order, line, units, wh, rma = payload
            lid = order.line_id(line)
            refund = round_half_up(line.unit_price_fen * line.quantity * units, line.quantity)
            settled = ReturnSettled(
                return_id=rma,
                tenant=order.tenant,
                order_id=order.order_id,
                warehouse=wh,
                lines=[
                    SettledLine(
                        line_id=lid,
                        sku=line.sku,
                        quantity=units,
                        disposition="sellable",
                        location=wh,
                        refund_fen=refund,
                    )
                ],
                refund_fen=refund,
                ts=ts,
            )
            day.records.append(ReturnBooked(settled=settled))
            day.counts["returns"] += 1
            moved(
                order.tenant,
                line.sku,
                wh,
                CommandKind.RETURN,
                units,
                ts,
                return_id(order.tenant, lid, rma),
                order_id=order.order_id,
                line_id=lid,
            )
    day.counts["records"] = len(day.records)
    return day


def as_inputs(rows: list[tuple[int, bytes, bytes, int]], topic: str) -> list[Input]:
    """The records as the stage would read them: per partition, offsets from 0."""
    offsets: Counter = Counter()
    out = []
    for partition, key, value, ts in rows:
        out.append(Input(topic, partition, offsets[partition], key, value, ts))
        offsets[partition] += 1
    return out


# -- core, in-process ---------------------------------------------------------------------------------------
def digest(outputs: list[Output], partitions: int) -> str:
    """sha256 over every output (topic, key, value) in the order each output partition gets them."""
    h = hashlib.sha256()
    placed = sorted(
        enumerate(outputs),
        key=lambda io: (
            io[1].topic,
            io[1].partition if io[1].partition is not None else partition_for(io[1].key or b"", partitions),
            io[0],
        ),
    )
    for _, o in placed:
        for part in (o.topic.encode(), o.key or b"", o.value or b""):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.hexdigest()


def logic(prefix: str, partitions: int) -> LedgerLogic:
    return LedgerLogic(Topics(prefix), partitions)


BATCH = 250  # about what one transaction of a partition holds on the broker (batches of 2000 over 8 partitions)


def replay(records: list[Input], partitions: int, prefix: str = "bench.ledger") -> tuple[Replay, list[Output], float]:
    r = Replay(logic(prefix, partitions), Topics(prefix).dead_letters)
    started = time.perf_counter()
    outputs = r.run(records, batch=BATCH)
    return r, outputs, time.perf_counter() - started


def baseline(records: list[Input]) -> float:
    """Only decode and encode again: what any stage reading the ledger inbox pays."""
    started = time.perf_counter()
    for record in records:
        wire.encode(wire.decode(record.value, LedgerRecord))
    return time.perf_counter() - started


def resumed_digest(records: list[Input], partitions: int) -> tuple[str, dict]:
    """The log cut at each partition's middle (small batches), then resumed from a snapshot and handed the whole
    log again, as after a restart (tests/pipeline/test_determinism.py)."""
    prefix = "bench.ledger"
    size: Counter = Counter(r.partition for r in records)
    seen: Counter = Counter()
    head = []
    for r in records:
        seen[r.partition] += 1
        if seen[r.partition] <= size[r.partition] // 2:
            head.append(r)
    first = Replay(logic(prefix, partitions), Topics(prefix).dead_letters)
    outputs = first.run(head, batch=7)
    resumed = Replay(logic(prefix, partitions), Topics(prefix).dead_letters, first.state.snapshot())
    outputs += resumed.run(records, batch=500)
    return digest(outputs, partitions), resumed.state.tables()


def run_core(day: Day, partitions: int, reps: int) -> dict:
    rows = day.encoded(partitions)
    records = as_inputs(rows, Topics("bench.ledger").ledger_inbox)
    vouchers_topic = Topics("bench.ledger").vouchers
    results: list[dict] = []
    digests: list[str] = []
    final_tables: dict | None = None
    for rep in range(reps):
        order = ("baseline", "core") if rep % 2 == 0 else ("core", "baseline")  # alternate: drift hits both
        row: dict[str, Any] = {"bench": "ledger", "what": "core", "rep": rep, "events": len(records)}
        for what in order:
            if what == "baseline":
                spent = baseline(records)
                row["baseline_events_per_s"] = round(len(records) / spent, 1)
            else:
                r, outputs, spent = replay(records, partitions)
                vouchers = sum(1 for o in outputs if o.topic == vouchers_topic)
                row.update(
                    core_s=round(spent, 3),
                    events_per_s=round(len(records) / spent, 1),
                    vouchers=vouchers,
                    vouchers_per_s=round(vouchers / spent, 1),
                    dead_letters=sum(1 for o in outputs if o.topic == Topics("bench.ledger").dead_letters),
                )
                digests.append(digest(outputs, partitions))
                final_tables = r.state.tables()
                del r, outputs
        row["core_vs_baseline"] = round(row["events_per_s"] / row["baseline_events_per_s"], 4)
        emit(row)
        results.append(row)
    if len(digests) < 2:  # the determinism check always compares two whole replays
        r, outputs, _ = replay(records, partitions)
        digests.append(digest(outputs, partitions))
        final_tables = r.state.tables()
    split, split_tables = resumed_digest(records, partitions)
    identical = len(set(digests)) == 1 and split == digests[0] and split_tables == final_tables
    summary = {
        "events": len(records),
        "vouchers": results[0]["vouchers"],
        "dead_letters": results[0]["dead_letters"],
        "events_per_s": median([r["events_per_s"] for r in results]),
        "vouchers_per_s": median([r["vouchers_per_s"] for r in results]),
        "baseline_events_per_s": median([r["baseline_events_per_s"] for r in results]),
        "core_vs_baseline": median([r["core_vs_baseline"] for r in results]),
        "runs_events_per_s": [r["events_per_s"] for r in results],
        "byte_identical": identical,
        "replays_compared": len(digests) + 1,
        "sha256": digests[0],
    }
    emit({"bench": "ledger", "what": "core_summary", **summary})
    return summary


def profile_core(day: Day, partitions: int, limit: int = 25_000, top_n: int = 10) -> list[tuple[str, float, float]]:
    """One replay of (at most) ``limit`` records under cProfile: (function, self %, inclusive %) of the top ones."""
    records = as_inputs(day.encoded(partitions)[:limit], Topics("bench.ledger").ledger_inbox)
    prof = cProfile.Profile()
    prof.enable()
    replay(records, partitions)
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    root = Path(__file__).resolve().parent.parent

    def name(func: tuple[str, int, str]) -> str:
        file, _line, fn = func
        try:
            file = str(Path(file).resolve().relative_to(root))
        except ValueError:
            file = Path(file).name if file.startswith("/") else file
        return f"{fn} ({file})"

    inclusive = {f: v[3] for f, v in stats.stats.items()}  # type: ignore[attr-defined]
    ranked = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top_n]  # type: ignore[attr-defined]
    return [(name(f), round(100 * v[2] / total, 1), round(100 * inclusive[f] / total, 1)) for f, v in ranked]


# -- the stage on the broker --------------------------------------------------------------------------------
def source_of(record: Any) -> list[str]:
    """The source ids a record's vouchers name."""
    if isinstance(record, GoodsIssued):
        return [record.issue_id]
    if isinstance(record, StockMoved):
        return [record.event.event_id]
    if isinstance(record, ReturnBooked):
        return [record.settled.return_id]
    return []


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def replayed_vouchers(day: Day, partitions: int) -> Counter:
    """What the stage must write to the vouchers topic: the in-process replay of the same records, (key, value)."""
    topics = Topics("bench.ledger")
    _, outputs, _ = replay(as_inputs(day.encoded(partitions), topics.ledger_inbox), partitions)
    return Counter((o.key, o.value) for o in outputs if o.topic == topics.vouchers)


def measure_stage(base: Settings, day: Day, workers: int, want: Counter) -> dict:
    from bench.profile import CpuMeter, broker_pids
    from engine.kafka.admin import create_topics, delete_topics
    from engine.supervisor import WorkerPool
    from workload.day import wait_idle

    run = uuid.uuid4().hex[:8]
    empty_rules = Path(base.state_dir) / "bench-no-rules.toml"
    empty_rules.parent.mkdir(parents=True, exist_ok=True)
    empty_rules.write_text("")
    settings = base.with_(topic_prefix=f"bench.{run}", app_id=f"oms-bench-{run}", rules_file=str(empty_rules))
    topics = Topics(settings.topic_prefix)
    partitions = settings.partitions
    rows = day.encoded(partitions)
    expected = sum(want.values())
    pool = WorkerPool(settings, workers)
    try:
        create_topics(settings.bootstrap, topics.all(), partitions, configs=topics.configs())
        pool.start()
        pool.wait_ready([topics.ledger_inbox])
        cpu = CpuMeter({"workers": [pool.pid(i) or 0 for i in range(workers)], "broker": broker_pids(settings)})
        cpu.start()
        seen = [0, time.monotonic()]

        def on_voucher(_msg: Message) -> None:
            seen[0] += 1
            seen[1] = time.monotonic()

        sent_at = time.time()
        sender = Sender(settings.bootstrap)
        for partition, key, value, _ts in rows:
            sender.send(topics.ledger_inbox, key, value, partition=partition)
        sender.flush()
        sent_s = time.time() - sent_at
        tail(
            settings.bootstrap,
            [topics.vouchers],
            on_voucher,
            lambda: seen[0] >= expected or time.monotonic() - seen[1] > 90,
        )
        used = cpu.stop()
        wait_idle(settings, [topics.ledger_inbox], pool)
        stats = [pool.stats(i) or {} for i in range(workers)]
        restarts = len(pool.restarts)
        pool.stop()
        inbox = list(read_topics(settings.bootstrap, [topics.ledger_inbox]))
        written = list(read_topics(settings.bootstrap, [topics.vouchers]))
        letters = list(read_topics(settings.bootstrap, [topics.dead_letters]))
    except Exception as exc:
        raise RunError(exc, log_tails(pool)) from exc
    finally:
        cleanup_quietly(
            lambda: pool.stop(timeout_s=20),
            lambda: delete_topics(settings.bootstrap, settings.topic_prefix + "."),
            lambda: delete_topics(settings.bootstrap, settings.app_id + "-"),
        )

    # lag: each voucher's Kafka timestamp minus its source record's
    source_ts: dict[str, int] = {}
    for m in inbox:
        for sid in source_of(wire.decode(m.value or b"", LedgerRecord)):
            source_ts.setdefault(sid, m.timestamp_ms)
    vouchers = [wire.decode(m.value or b"", Voucher) for m in written]
    lags = [
        m.timestamp_ms - source_ts[v.source_id]
        for m, v in zip(written, vouchers, strict=True)
        if v.source_id in source_ts
    ]
    times = [m.timestamp_ms for m in written]
    first_in = min((m.timestamp_ms for m in inbox), default=0)
    span_s = (max(times) - min(times)) / 1000 if len(times) > 1 else 0.0
    end_to_end_s = (max(times) - first_in) / 1000 if times else 0.0

    # I5 on what it wrote
    v = Verdict()
    got = Counter((m.key, m.value) for m in written)
    if got != want:
        v.fail(
            "I5",
            f"the vouchers topic is not the replay's: {sum((got - want).values())} written that the replay has not, "
            f"{sum((want - got).values())} the replay has that were not written",
        )
    for voucher in vouchers:
        why = check_balanced(voucher)
        if why:
            v.fail("I5", why)
    kinds = Counter(x.kind for x in vouchers)
    per_source = Counter((x.kind, x.source_id) for x in vouchers)
    issues = [r.issue_id for r in day.records if isinstance(r, GoodsIssued)]
    issue_events = [
        r.event.event_id for r in day.records if isinstance(r, StockMoved) and r.event.kind is CommandKind.ISSUE
    ]
    for sid in issues:
        if per_source[(VoucherKind.REVENUE, sid)] != 1:
            v.fail("I5", f"goods issue {sid}: {per_source[(VoucherKind.REVENUE, sid)]} revenue vouchers, not 1")
    for sid in issue_events:
        if per_source[(VoucherKind.COST, sid)] != 1:
            v.fail("I5", f"issue {sid}: {per_source[(VoucherKind.COST, sid)]} cost vouchers, not 1")
    if kinds[VoucherKind.REVENUE] != len(issues) or kinds[VoucherKind.COST] != len(issue_events):
        v.fail(
            "I5",
            f"{kinds[VoucherKind.REVENUE]} revenue and {kinds[VoucherKind.COST]} cost vouchers for "
            f"{len(issues)} goods issues and {len(issue_events)} issue events",
        )
    if letters:
        v.fail("I5", f"{len(letters)} dead letters: the day has no bad record")
    # and the project's own I5 (moving average chain, trial balance = stock value, revenue = what was paid)
    inputs = Inputs()
    inputs.add_orders(day.orders)
    inputs.add_stock(day.receipts)
    out = SimpleNamespace(
        vouchers=vouchers,
        voucher_bytes={},
        goods_issued=[r for r in day.records if isinstance(r, GoodsIssued)],
        returns_settled=[r.settled for r in day.records if isinstance(r, ReturnBooked)],
    )
    for m, x in zip(written, vouchers, strict=True):
        out.voucher_bytes.setdefault(x.voucher_id, set()).add(bytes(m.value or b""))
    applied = {r.event.event_id: r.event for r in day.records if isinstance(r, StockMoved)}
    check_ledger(inputs, out, applied, v)

    stages = [st for w in stats for name, st in w.get("stages", {}).items() if "ledger" in name]
    transactions = sum(st.get("transactions", 0) for st in stages)
    goods = len(issues)
    return {
        "bench": "ledger",
        "what": "stage",
        "workers": workers,
        "partitions": partitions,
        "events": len(rows),
        "goods_issued": goods,
        "vouchers_expected": expected,
        "vouchers": len(written),
        "send_s": round(sent_s, 2),
        "span_s": round(span_s, 2),
        "end_to_end_s": round(end_to_end_s, 2),
        "vouchers_per_s": round(len(written) / span_s, 1) if span_s else None,
        "events_per_s": round(len(rows) / end_to_end_s, 1) if end_to_end_s else None,
        "goods_issued_per_s": round(goods / span_s, 1) if span_s else None,
        "lag_ms": {
            "p50": percentile(lags, 0.50),
            "p95": percentile(lags, 0.95),
            "max": max(lags) if lags else None,
            "matched": len(lags),
        },
        "transactions": transactions,
        "cpu_ms_per_event": {k: round(1000 * s / max(1, len(rows)), 3) for k, s in used.items()},
        "restarts": restarts,
        "invariants": v.summary(),
        "valid": v.ok and len(lags) == len(written),
    }


def stage_verdict(row: dict) -> str | None:
    """None when a stage run counts: I5 held and every voucher's lag was measured."""
    if row["invariants"] != "ok":
        return f"invariants: {row['invariants']}"
    if row["lag_ms"]["matched"] != row["vouchers"]:
        return f"lag measured for {row['lag_ms']['matched']} of {row['vouchers']} vouchers"
    return None


def combine(runs: list[dict]) -> dict:
    """The stage's runs as one row: medians of the rates and lags over the valid runs only, with how many runs
    failed and why; valid only if every run was."""
    bad = failed(runs)
    good = [r for r in runs if r not in bad]
    errors = [f"rep {r.get('rep')}: {short_error(r, 300)}" for r in bad]
    if not good:
        first_error = errors[0] if errors else "no run"
        return {
            "bench": "ledger",
            "what": "stage_summary",
            "valid": False,
            "error": first_error,
            "errors": errors,
            "runs": len(runs),
            "failed_runs": len(bad),
        }
    first = good[0]

    def med(key: str) -> float | None:
        return median([r[key] for r in good if r.get(key) is not None])

    return {
        **{k: v for k, v in first.items() if k != "rep"},
        "what": "stage_summary",
        "runs": len(runs),
        "failed_runs": len(bad),
        "errors": errors,
        "valid": not bad,
        "invariants": next((r["invariants"] for r in bad if r.get("invariants") not in (None, "ok")), "ok"),
        "send_s": med("send_s"),
        "vouchers_per_s": med("vouchers_per_s"),
        "events_per_s": med("events_per_s"),
        "goods_issued_per_s": med("goods_issued_per_s"),
        "runs_vouchers_per_s": [r.get("vouchers_per_s") if r in good else None for r in runs],
        "lag_ms": {
            q: median([r["lag_ms"][q] for r in good if r["lag_ms"][q] is not None]) for q in ("p50", "p95", "max")
        },
        "cpu_ms_per_event": {
            side: median([r["cpu_ms_per_event"].get(side, 0.0) for r in good]) for side in first["cpu_ms_per_event"]
        },
        "transactions": med("transactions"),
        "restarts": sum(r.get("restarts", 0) for r in runs),
    }


# -- the report ---------------------------------------------------------------------------------------------
def fulfilment_shipments_per_s(path: Path = BENCHMARKS) -> tuple[float, str] | None:
    """The latest ``shipments released per second`` (allocation ``region``) of the fulfilment section, with its
    date, or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    marker = f"## {FULFILMENT_TITLE}\n"
    if marker not in text:
        return None
    section = text.split(marker, 1)[1].split("\n## ", 1)[0]
    date = re.search(r"Measured (\d{4}-\d{2}-\d{2})", section)
    for line in section.splitlines():
        if line.startswith("| shipments released per second"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            try:
                return float(cells[1].replace(",", "")), date.group(1) if date else "?"
            except (IndexError, ValueError):
                return None
    return None


def _n(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _core_lines(core: dict) -> list[str]:
    """The in-process part: its table and the determinism verdict — or that it failed, and why."""
    if core.get("error"):
        return [f"**Core, in-process**: **failed**, the replay could not complete — {short_error(core, 400)}"]
    return [
        "**Core, in-process** (`Replay(LedgerLogic)`: decode, book, post to the trial balance, encode — what the "
        f"stage runs per record, batches of {BATCH} per partition):",
        "",
        *table(
            ["Figure", "Median", "Runs"],
            [
                [
                    "ledger core, events per second",
                    _n(core["events_per_s"]),
                    ", ".join(_n(x) for x in core["runs_events_per_s"]),
                ],
                ["vouchers per second", _n(core["vouchers_per_s"]), f"{core['vouchers']:,} vouchers per day"],
                ["baseline: decode + encode only, events per second", _n(core["baseline_events_per_s"]), ""],
                ["core ÷ baseline", f"{core['core_vs_baseline']:.3f}" if core["core_vs_baseline"] else "—", ""],
            ],
            ["l", "r", "l"],
        ),
        "",
        f"Determinism: {core['replays_compared']} replays (whole log each time, and one cut at every partition's "
        "middle in batches of 7 and resumed from `ReplayState.snapshot()` in batches of 500) — byte-identical: "
        f"**{'yes' if core['byte_identical'] else 'no'}** (sha256 over every output in each output partition's "
        f"order, `{core['sha256'][:16]}…`; final tables equal too).",
    ]


def write(
    settings: Settings,
    day: Day,
    core: dict,
    stage: dict | None,
    stage_day: Day | None,
    profile: list[tuple[str, float, float]],
    args: argparse.Namespace,
    failures: list[str] | None = None,
) -> None:
    """The section; a core that failed, or stage runs that did, are said so (``failures``: their lines)."""
    command = (
        f"python -m bench ledger --orders {args.orders} --reps {args.reps} --stage-orders {args.stage_orders} "
        f"--stage-reps {args.stage_reps}"
    )
    lines = [
        measured_on(settings.kafka_version),
        f"A day of the ledger's business events from {args.orders:,} seeded orders (seed {args.seed}): "
        f"{day.counts['orders_opened']:,} approvals, {day.counts['goods_issued']:,} goods issues, "
        f"{day.counts['stock_issue']:,} stock issues, {day.counts['stock_receive']:,} receipts and "
        f"{day.counts['returns']:,} returns (1.5 %, each with its stock return) — {day.counts['records']:,} records "
        f"over {settings.partitions} partitions. Command: `{command}`; medians of {args.reps} repetitions, "
        "alternating with the baseline.",
        "",
        *_core_lines(core),
    ]
    if profile:
        lines += [
            "",
            "Where the core's time goes (cProfile of one replay, self time; inclusive in brackets):",
            "",
            *[f"* {share:.1f} % ({incl:.1f} %) — `{fn}`" for fn, share, incl in profile[:8]],
        ]
    if stage is not None and "lag_ms" not in stage:  # no run completed
        lines += ["", f"**Stage on the broker**: **failed**, no run could complete — {stage.get('error')}"]
    elif stage is not None and stage_day is not None:
        lag = stage["lag_ms"]
        ok = stage["valid"]
        verdict = (
            "held"
            if ok
            else f"**failed** ({stage['failed_runs']} of {stage['runs']} runs): " + "; ".join(stage["errors"])[:400]
        )
        rows = [
            ["events sent (whole day at once)", _n(stage["events"]), f"sent in {stage['send_s']:.1f} s"],
            ["vouchers written", _n(stage["vouchers"]), f"{stage['vouchers_expected']:,} expected"],
            [
                "vouchers per second (first → last voucher)",
                _n(stage["vouchers_per_s"]),
                ", ".join("failed" if x is None else _n(x) for x in stage["runs_vouchers_per_s"]),
            ],
            ["goods issues booked per second", _n(stage["goods_issued_per_s"], 1), ""],
            ["events per second (first record sent → last voucher)", _n(stage["events_per_s"]), ""],
            [
                "lag per voucher p50 · p95 · max (ms)",
                f"{_n(lag['p50'])} · {_n(lag['p95'])} · {_n(lag['max'])}",
                "queueing: the day is sent at once",
            ],
            [
                "CPU per event, workers · broker (ms)",
                f"{stage['cpu_ms_per_event'].get('workers', 0):.3f} · {stage['cpu_ms_per_event'].get('broker', 0):.3f}",
                "",
            ],
            ["ledger transactions per run", _n(stage["transactions"]), f"{stage['restarts']} worker restarts in all"],
        ]
        lines += [
            "",
            f"**Stage on the broker**: {stage_day.counts['records']:,} records of a {args.stage_orders:,}-order day "
            f"({stage['goods_issued']:,} goods issues), {stage['workers']} workers with the full pipeline app (the "
            f"other stages idle), {stage['partitions']} partitions, medians of the "
            f"{stage['runs'] - stage['failed_runs']} valid runs of {stage['runs']} (a fresh "
            "prefix and workers each). I5 on the vouchers topic of every run (every voucher "
            "balances, one revenue voucher per goods issue and one cost voucher per issue event, the moving-average "
            "chain, the trial balance equal to the stock's value, and every voucher byte-identical to the "
            f"in-process replay's): {verdict}.",
            "",
            *table(["Figure", "Value", "Note"], rows, ["l", "r", "l"]),
        ]
        if stage["goods_issued_per_s"]:
            gi = stage["goods_issued_per_s"]
            keep = [
                ["100,000 orders a day, average", f"{TARGET_AVG_PER_S:.2f}", f"{gi / TARGET_AVG_PER_S:,.0f}×"],
                ["11.11 peak (about 50× the average)", f"{TARGET_PEAK_PER_S:.1f}", f"{gi / TARGET_PEAK_PER_S:,.1f}×"],
            ]
            found = fulfilment_shipments_per_s()
            if found is not None:
                rate, date = found
                keep.append(
                    [
                        f"fulfilment's shipments per second (`{FULFILMENT_TITLE}`, `region`, {date})",
                        f"{rate:,.1f}",
                        f"{gi / rate:,.1f}×",
                    ]
                )
            lines += [
                "",
                f"Vouchers keep up with shipments: the stage books {gi:,.1f} goods issues a second (one per order "
                "and shipment here, each with its cost vouchers).",
                "",
                *table(["Rate it must keep up with", "per second", "ledger headroom"], keep, ["l", "r", "r"]),
                "",
                "The fulfilment figure is that part's shipments released per second, with review, reservation, "
                "merge and waves in front of it; each shipment becomes one goods issue per order it carries, so the "
                "ledger must book at least that many goods issues a second to keep up. The ledger's rate here is "
                "the stage alone on the same two cores, draining a day sent at once.",
            ]
    elif stage is None:
        lines += ["", "Stage on the broker: not run (`--no-stage`)."]
    if failures:
        lines += ["", *failures]
    write_section(TITLE, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ledger", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20_000, help="orders of the in-process day")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--stage-orders", type=int, default=None, help="orders of the day sent to the broker (default: --orders)"
    )
    parser.add_argument("--stage-reps", type=int, default=3, help="runs of the stage on the broker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-stage", action="store_true", help="only the in-process figures")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    if args.stage_orders is None:
        args.stage_orders = args.orders
    settings = Settings.from_env()
    partitions = settings.partitions

    started = time.monotonic()
    day = generate_day(args.orders, args.seed)
    emit(
        {
            "bench": "ledger",
            "what": "day",
            "orders": args.orders,
            "seed": args.seed,
            **day.counts,
            "generated_s": round(time.monotonic() - started, 1),
        }
    )
    core = attempt(lambda: run_core(day, partitions, max(1, args.reps)), {"bench": "ledger", "what": "core_summary"})
    if "error" in core:
        emit(core)
    profile: list[tuple[str, float, float]] = []
    if not args.no_profile and "error" not in core:
        try:
            profile = profile_core(day, partitions)
        except Exception as exc:  # the profile is a courtesy: reported, never a crash
            emit(failure_row({"bench": "ledger", "what": "profile"}, exc))
    if profile:
        emit({"bench": "ledger", "what": "profile", "top": profile})

    stage = stage_day = None
    runs: list[dict] = []
    if not args.no_stage:
        from deploy.local.servers import LocalServers

        stage_day = day if args.stage_orders == args.orders else generate_day(args.stage_orders, args.seed)
        servers = LocalServers(settings)
        try:
            servers.start(echo=lambda m: print(m, file=sys.stderr))
        except Exception as exc:
            return setup_failed("ledger", exc)
        want = replayed_vouchers(stage_day, partitions)
        try:
            for rep in range(max(1, args.stage_reps)):
                # a run that could not complete is a failure row, never a number; the next runs still run
                context = {"bench": "ledger", "what": "stage", "rep": rep}
                row = attempt(lambda: measure_stage(settings, stage_day, args.workers, want), context, stage_verdict)
                emit(row)
                runs.append(row)
        finally:
            servers.stop(only_started=True)
        stage = combine(runs)
        emit(stage)
    ok = bool(core.get("byte_identical")) and (stage is None or bool(stage.get("valid")))
    has_stage = stage is not None and "lag_ms" in stage  # medians over the valid runs, when one was
    summary = {
        "bench": "ledger",
        "summary": True,
        "ok": ok,
        "core_error": core.get("error"),
        "core_events_per_s": core.get("events_per_s"),
        "core_vouchers_per_s": core.get("vouchers_per_s"),
        "core_vs_baseline": core.get("core_vs_baseline"),
        "byte_identical": core.get("byte_identical"),
        "stage_failed_runs": stage.get("failed_runs") if stage else None,
        "stage_errors": stage.get("errors") if stage else None,
        "stage_vouchers_per_s": stage.get("vouchers_per_s") if has_stage else None,
        "stage_goods_issued_per_s": stage.get("goods_issued_per_s") if has_stage else None,
        "stage_lag_ms": stage.get("lag_ms") if has_stage else None,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    emit(summary)
    save_result("ledger", summary)
    every = [core, *runs]
    write(settings, day, core, stage, stage_day, profile, args, failure_lines(every, _label))
    return exit_code(every, ok)


def _label(row: dict) -> str:
    return "core (in-process)" if row.get("what") == "core_summary" else "stage on the broker"


if __name__ == "__main__":
    raise SystemExit(main())
