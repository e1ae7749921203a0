"""The voucher sink on the real broker and the real PostgreSQL: every voucher sent lands in the books once — through
copies on the topic, an aborted transaction, records that are not vouchers, a second reading of the whole topic by
a fresh consumer group, and PostgreSQL stopped while vouchers flow. The vouchers sent are the truth the books are
checked against: row counts, balance per voucher, totals and the trial balance by account."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import msgspec
import psycopg
import pytest

from agents.ledger.sink import VoucherSink, read_books
from deploy.local.servers import PostgresServer
from engine.kafka.clients import producer
from schemas import wire
from schemas.ledger import Voucher, VoucherKind, VoucherLine, voucher_id
from schemas.order import Channel
from tests.pipeline.harness import Pipeline, wait_for
from workload.generator import DAY_START_MS

pytestmark = pytest.mark.pipeline

ACCOUNTS = {"1002": "银行存款", "1122": "应收账款", "1405": "库存商品", "2202": "应付账款", "6001": "主营业务收入"}


def make_vouchers(tenant: str, n: int, seed: int, first: int = 0) -> list[Voucher]:
    """``n`` balanced vouchers of 2–5 lines with random amounts (fen) on a few accounts."""
    rng = random.Random(seed)
    out = []
    for i in range(first, first + n):
        debits = [rng.randint(1, 900_000) for _ in range(rng.randint(1, 3))]
        total = sum(debits)
        cut = rng.randint(1, total - 1) if total > 1 and rng.random() < 0.5 else total
        credits = [c for c in (cut, total - cut) if c]
        codes = list(ACCOUNTS)
        lines = [VoucherLine(account=(a := rng.choice(codes)), name=ACCOUNTS[a], debit_fen=d) for d in debits]
        lines += [
            VoucherLine(account=(a := rng.choice(codes)), name=ACCOUNTS[a], credit_fen=c, sub="天猫") for c in credits
        ]
        kind = rng.choice(list(VoucherKind))
        out.append(
            Voucher(
                voucher_id=voucher_id(kind, tenant, f"src-{i}"),
                tenant=tenant,
                kind=kind,
                source_id=f"src-{i}",
                entity=f"ORD-{i}",
                order_id=f"ORD-{i}" if i % 3 else None,
                channel=Channel.TMALL if i % 2 else None,
                book_date="2026-11-11",
                policy_version=1,
                lines=lines,
                ts=DAY_START_MS + i,
            )
        )
    return out


def send_in_transaction(pipeline: Pipeline, vouchers: list[Voucher], commit: bool) -> None:
    """As the ledger stage writes them: in a Kafka transaction, committed or aborted."""
    out = producer(pipeline.bootstrap, **{"transactional.id": f"test-vouchers-{uuid.uuid4().hex[:8]}"})
    out.init_transactions(30)
    out.begin_transaction()
    for v in vouchers:
        out.produce(pipeline.topics.vouchers, key=v.key.encode(), value=wire.encode(v))
    if commit:
        out.commit_transaction(30)
    else:
        out.abort_transaction(30)


def assert_books(pipeline: Pipeline, tenant: str, sent: list[Voucher]) -> dict:
    """The books of ``tenant`` (this test's topic) are exactly the distinct vouchers ``sent``."""
    truth = {v.voucher_id: v for v in sent if v.tenant == tenant}
    books = read_books(pipeline.settings.postgres_url, tenant, pipeline.settings.topic_prefix)
    assert books["rows"] == books["vouchers"] == len(truth), books
    assert books["duplicates"] == 0 and books["unbalanced"] == []
    assert books["lines"] == sum(len(v.lines) for v in truth.values())
    assert books["debit_fen"] == books["credit_fen"] == sum(v.debit_fen for v in truth.values())
    balance: Counter[str] = Counter()
    for v in truth.values():
        for line in v.lines:
            balance[line.account] += line.debit_fen - line.credit_fen
    assert books["accounts"] == dict(balance)
    assert books["balance_fen"] == 0
    return books


def landed(pipeline: Pipeline, tenants: list[str], sent: list[Voucher]):
    want = {t: len({v.voucher_id for v in sent if v.tenant == t}) for t in tenants}

    def check() -> bool:
        url, prefix = pipeline.settings.postgres_url, pipeline.settings.topic_prefix
        return all(read_books(url, t, prefix)["vouchers"] >= n for t, n in want.items())

    return check


def trial_balance_view(url: str, tenants: list[str]) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tenant, sum(debit), sum(credit), sum(balance) FROM ledger_trial_balance "
            "WHERE tenant = ANY(%s) GROUP BY tenant",
            (tenants,),
        ).fetchall()
    return {t: (int(d), int(c), int(b)) for t, d, c, b in rows}


def test_every_voucher_is_booked_once_through_copies_bad_records_and_a_second_reading(pipeline: Pipeline) -> None:
    prefix = pipeline.settings.topic_prefix
    tenants = [f"{prefix}-a", f"{prefix}-b"]
    sent = make_vouchers(tenants[0], 150, 1) + make_vouchers(tenants[1], 150, 2)
    rng = random.Random(3)
    copies = rng.sample(sent, 40)  # a producer that sent some twice: the books must not see it
    aborted = make_vouchers(tenants[0], 5, 4, first=1000)  # never committed: never booked
    # passes the wire pattern, but is not a date: skipped, not retried forever
    bad_date = msgspec.structs.replace(make_vouchers(tenants[1], 1, 5, first=2000)[0], book_date="2026-02-30")

    send_in_transaction(pipeline, sent[:100], commit=True)
    send_in_transaction(pipeline, aborted, commit=False)
    pipeline.send(pipeline.topics.vouchers, sent[100:] + copies)
    pipeline.send(pipeline.topics.vouchers, [b"{not json", wire.encode(bad_date)], key=f"{tenants[1]}:bad")
    records = len(sent) + len(copies) + 2

    sink = VoucherSink(pipeline.settings, pipeline.topics, max_backoff_s=1.0)
    sink.start()
    try:
        wait_for(landed(pipeline, tenants, sent), 90, "every voucher in PostgreSQL")
        wait_for(lambda: sink.written + sink.duplicates + sink.undecodable >= records, 30, "the sink to read all")
    finally:
        sink.stop()
    assert sink.stats() | {"batches": 0} == {
        "written": len(sent),
        "duplicates": len(copies),
        "undecodable": 2,
        "db_errors": 0,
        "batches": 0,
    }
    before = {t: assert_books(pipeline, t, sent) for t in tenants}

    # the whole topic again, to a fresh consumer group: every voucher is a duplicate, the books do not change
    again = VoucherSink(pipeline.settings, pipeline.topics, group=f"{pipeline.settings.app_id}-voucher-sink-again")
    again.start()
    try:
        wait_for(lambda: again.duplicates + again.undecodable >= records, 90, "the second reading")
    finally:
        again.stop()
    assert again.written == 0 and again.duplicates == len(sent) + len(copies) and again.undecodable == 2
    assert {t: assert_books(pipeline, t, sent) for t in tenants} == before

    view = trial_balance_view(pipeline.settings.postgres_url, tenants)
    for t in tenants:
        total = sum(v.debit_fen for v in sent if v.tenant == t)
        assert view[t] == (total, total, 0)
    # 汇总凭证: each day × channel × kind summary balances, and the summaries add up to the vouchers sent
    with psycopg.connect(pipeline.settings.postgres_url) as conn:
        summaries = conn.execute(
            "SELECT tenant, book_date, channel, kind, sum(debit), sum(credit) FROM ledger_daily_summary "
            "WHERE tenant = ANY(%s) GROUP BY 1, 2, 3, 4",
            (tenants,),
        ).fetchall()
    assert summaries and all(debit == credit for *_, debit, credit in summaries)
    for t in tenants:
        assert sum(d for tenant, *_, d, _c in summaries if tenant == t) == sum(
            v.debit_fen for v in sent if v.tenant == t
        )


def test_postgres_stopped_while_vouchers_flow_every_voucher_lands_once(pipeline: Pipeline) -> None:
    server = PostgresServer(pipeline.settings)
    if not server.status().managed:
        pytest.skip("the PostgreSQL on the test port was not started by this test session: not ours to stop")
    tenant = f"{pipeline.settings.topic_prefix}-pg"
    sent = make_vouchers(tenant, 400, 7)

    sink = VoucherSink(pipeline.settings, pipeline.topics, max_backoff_s=1.0)
    sink.start()
    try:
        send_in_transaction(pipeline, sent[:200], commit=True)
        wait_for(landed(pipeline, [tenant], sent[:200]), 60, "the first half in PostgreSQL")
        assert server.stop()
        try:
            for start in range(200, 400, 50):  # the second half arrives while the books are down
                send_in_transaction(pipeline, sent[start : start + 50], commit=True)
            wait_for(lambda: sink.db_errors >= 2, 30, "the sink to fail writing (and retry)")
            assert sink.written == 200, "nothing can have been written while PostgreSQL was down"
        finally:
            server.start()
        wait_for(landed(pipeline, [tenant], sent), 60, "every voucher in PostgreSQL after the restart")
    finally:
        sink.stop()
    assert sink.written == len(sent) and sink.undecodable == 0
    assert_books(pipeline, tenant, sent)
    total = sum(v.debit_fen for v in sent)
    assert trial_balance_view(pipeline.settings.postgres_url, [tenant]) == {tenant: (total, total, 0)}
