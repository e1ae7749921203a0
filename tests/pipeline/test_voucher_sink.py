"""The voucher sink on the real broker and the real PostgreSQL: every voucher sent lands in the books once — through
copies on the topic, an aborted transaction, records that are not vouchers, a second reading of the whole topic by
a fresh consumer group, and PostgreSQL stopped while vouchers flow. The vouchers sent are the truth the books are
checked against: row counts, balance per voucher, totals and the trial balance by account.

Never a voucher dropped silently: a voucher id that arrives again with the same contents (whatever bytes carry
it) is a duplicate, with other contents a conflict that stops the sink at that record, offset uncommitted; two
runs with the same voucher ids (two topic prefixes: two namespaces) each book into their own clean ledger; books
created before namespaces are brought to them."""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from urllib.parse import quote

import msgspec
import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from agents.ledger.sink import VoucherSink, book_digests, read_books, voucher_digest
from engine.kafka.clients import producer, read_topics
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


def assert_books(
    pipeline: Pipeline, tenant: str, sent: list[Voucher], url: str | None = None, conflicts: int = 0
) -> dict:
    """The books of ``tenant`` (in this test's namespace, its topic prefix) are exactly the distinct vouchers
    ``sent``: the same ids with the same contents, balanced, and the same trial balance; ``conflicts`` recorded."""
    truth = {v.voucher_id: v for v in sent if v.tenant == tenant}
    url = url or pipeline.settings.postgres_url
    books = read_books(url, tenant, pipeline.settings.topic_prefix)
    assert books["rows"] == books["vouchers"] == len(truth), books
    assert books["duplicates"] == 0 and books["unbalanced"] == [] and len(books["conflicts"]) == conflicts
    digests = book_digests(url, pipeline.settings.topic_prefix)
    assert {i: digests.get(i) for i in truth} == {i: voucher_digest(v) for i, v in truth.items()}
    assert books["lines"] == sum(len(v.lines) for v in truth.values())
    assert books["debit_fen"] == books["credit_fen"] == sum(v.debit_fen for v in truth.values())
    balance: Counter[str] = Counter()
    for v in truth.values():
        for line in v.lines:
            balance[line.account] += line.debit_fen - line.credit_fen
    assert books["accounts"] == dict(balance)
    assert books["balance_fen"] == 0
    return books


def landed(pipeline: Pipeline, tenants: list[str], sent: list[Voucher], url: str | None = None):
    want = {t: len({v.voucher_id for v in sent if v.tenant == t}) for t in tenants}

    def check() -> bool:
        prefix = pipeline.settings.topic_prefix
        return all(
            read_books(url or pipeline.settings.postgres_url, t, prefix)["vouchers"] >= n for t, n in want.items()
        )

    return check


def trial_balance_view(url: str, tenants: list[str], namespace: str | None = None) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tenant, sum(debit), sum(credit), sum(balance) FROM ledger_trial_balance "
            "WHERE tenant = ANY(%s) AND namespace = coalesce(%s, namespace) GROUP BY tenant",
            (tenants, namespace),
        ).fetchall()
    return {t: (int(d), int(c), int(b)) for t, d, c, b in rows}


def altered(v: Voucher) -> Voucher:
    """The same voucher id with other contents: every amount doubled (still balanced)."""
    lines = [msgspec.structs.replace(ln, debit_fen=2 * ln.debit_fen, credit_fen=2 * ln.credit_fen) for ln in v.lines]
    return msgspec.structs.replace(v, lines=lines)


def position(pipeline: Pipeline, raw: bytes) -> tuple[int, int]:
    """(partition, offset) of the one record on the vouchers topic with these bytes."""
    found = [
        (m.partition, m.offset) for m in read_topics(pipeline.bootstrap, [pipeline.topics.vouchers]) if m.value == raw
    ]
    assert len(found) == 1, found
    return found[0]


def committed(pipeline: Pipeline, group: str, partition: int) -> int:
    """The offset consumer group ``group`` committed on that partition of the vouchers topic (< 0: none)."""
    c = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [tp] = c.committed([TopicPartition(pipeline.topics.vouchers, partition)], timeout=10)
        return tp.offset
    finally:
        c.close()


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
        "conflicts": 0,
        "conflict": None,
        "stopped": None,
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
    assert again.conflicts == 0 and again.is_alive() is False and again.stopped is None
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


@pytest.mark.own_servers("postgres")  # it stops PostgreSQL: one of its own, not the one the tests beside it use
def test_postgres_stopped_while_vouchers_flow_every_voucher_lands_once(pipeline: Pipeline) -> None:
    server = pipeline.own_servers["postgres"]
    assert server.status().managed, "the test's own PostgreSQL"
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


@pytest.mark.parametrize("booked_first", [True, False], ids=["against-the-books", "within-the-batch"])
def test_a_voucher_id_with_other_contents_stops_the_sink_at_that_record(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture, booked_first: bool
) -> None:
    from workload.day import RunFailed, check_voucher_sink, postgres_books

    tenant = f"{pipeline.settings.topic_prefix}-c"
    sent = make_vouchers(tenant, 30, 11)
    other = altered(sent[7])  # the id of the 8th voucher, with other amounts
    topic, key = pipeline.topics.vouchers, f"{tenant}:one-partition"  # one partition: records in the order sent
    sink = VoucherSink(pipeline.settings, pipeline.topics, max_backoff_s=1.0)
    with caplog.at_level(logging.CRITICAL, logger="oms.voucher_sink"):
        try:
            if booked_first:  # the first 20 are in the books when the other contents arrive
                pipeline.send(topic, sent[:20], key=key)
                sink.start()
                wait_for(landed(pipeline, [tenant], sent[:20]), 60, "the first 20 vouchers in PostgreSQL")
                pipeline.send(topic, [other, *sent[20:]], key=key)
            else:  # all there before the sink reads: the two contents of one id come in one read
                pipeline.send(topic, [*sent[:20], other, *sent[20:]], key=key)
                sink.start()
            wait_for(lambda: not sink.is_alive(), 90, "the sink to stop at the conflict")
        finally:
            sink.stop()
    partition, offset = position(pipeline, wire.encode(other))
    _, booked_at = position(pipeline, wire.encode(sent[7]))

    stats = sink.stats()
    assert (stats["stopped"], stats["conflicts"], stats["written"], stats["duplicates"]) == ("conflict", 1, 20, 0)
    conflict = stats["conflict"]
    assert (conflict["voucher_id"], conflict["topic"], conflict["partition"], conflict["offset"]) == (
        other.voucher_id,
        topic,
        partition,
        offset,
    )
    assert conflict["booked_from"] == f"{topic}/{partition}@{booked_at}"
    assert (conflict["booked_digest"], conflict["arrived_digest"]) == (voucher_digest(sent[7]), voucher_digest(other))
    assert f"debit_fen: {sent[7].debit_fen} booked, {other.debit_fen} arrived" in conflict["differences"]
    first = sent[7].lines[0]
    assert f"line 1 debit_fen: {first.debit_fen} booked, {2 * first.debit_fen} arrived" in conflict["differences"]
    loud = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert any(other.voucher_id in m and "debit_fen" in m and f"@{offset}" in m for m in loud), loud

    # the conflicting record's offset is not committed, nothing after it is booked, the first copy stays as booked
    assert committed(pipeline, sink.group, partition) == offset
    assert_books(pipeline, tenant, sent[:20], conflicts=1)
    db = read_books(pipeline.settings.postgres_url, tenant, pipeline.settings.topic_prefix)
    assert db["conflicts"] == [
        {"voucher_id": other.voucher_id, "at": f"{topic}/{partition}@{offset}", "differences": conflict["differences"]}
    ]

    # a restarted worker's sink (the same group) stops at the same record: the books stay as they are
    again = VoucherSink(pipeline.settings, pipeline.topics, max_backoff_s=1.0)
    again.start()
    try:
        wait_for(lambda: not again.is_alive(), 60, "the restarted sink to stop at the conflict")
    finally:
        again.stop()
    assert again.stopped == "conflict" and again.conflict is not None and again.conflict.offset == offset
    assert again.written == 0 and committed(pipeline, sink.group, partition) == offset
    assert_books(pipeline, tenant, sent[:20], conflicts=1)

    # the main job fails, saying why, instead of reporting books that miss vouchers
    with pytest.raises(RunFailed, match=other.voucher_id.replace(".", r"\.")):
        check_voucher_sink(pipeline.settings)
    from types import SimpleNamespace

    pg = postgres_books(pipeline.settings, SimpleNamespace(vouchers=sent))
    assert (
        pg["agrees"] is False
        and pg["missing"] == 10
        and pg["conflicts"] == [f"{other.voucher_id} at {topic}/{partition}@{offset}"]
    )


def test_the_same_voucher_again_is_a_duplicate_whatever_bytes_carry_it(pipeline: Pipeline) -> None:
    tenant = f"{pipeline.settings.topic_prefix}-d"
    sent = make_vouchers(tenant, 10, 21)
    v = sent[3]
    # the same contents in other bytes: fields in reverse order, indented
    reordered = orjson.dumps(dict(reversed(list(wire.to_builtins(v).items()))), option=orjson.OPT_INDENT_2)
    assert reordered != wire.encode(v) and wire.decode(reordered, Voucher) == v
    topic, key = pipeline.topics.vouchers, f"{tenant}:one-partition"
    sink = VoucherSink(pipeline.settings, pipeline.topics, max_backoff_s=1.0)
    pipeline.send(topic, [*sent, reordered], key=key)  # a copy right behind the first
    sink.start()
    try:
        wait_for(lambda: sink.written + sink.duplicates >= 11, 60, "the sink to read the first 11")
        pipeline.send(topic, [wire.encode(v), reordered], key=key)  # and copies once it is in the books
        wait_for(lambda: sink.duplicates >= 3, 60, "the copies read")
        last = max(m.offset for m in read_topics(pipeline.bootstrap, [topic]))
        partition = position(pipeline, wire.encode(sent[0]))[0]
        wait_for(lambda: committed(pipeline, sink.group, partition) == last + 1, 30, "every offset committed")
    finally:
        sink.stop()
    assert sink.stats() | {"batches": 0} == {
        "written": 10,
        "duplicates": 3,
        "batches": 0,
        "undecodable": 0,
        "db_errors": 0,
        "conflicts": 0,
        "conflict": None,
        "stopped": None,
    }
    assert_books(pipeline, tenant, sent)
    with psycopg.connect(pipeline.settings.postgres_url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM ledger_vouchers WHERE namespace = %s AND voucher_id = %s",
            (pipeline.settings.topic_prefix, v.voucher_id),
        ).fetchone()
    assert rows == (1,)


def test_two_runs_with_the_same_voucher_ids_each_book_into_a_clean_ledger(pipeline: Pipeline) -> None:
    """A rerun of the same day (the same seed: the same voucher ids) under a new topic prefix: its own namespace,
    every voucher booked, the first run's books untouched; the views per namespace."""
    from types import SimpleNamespace

    from workload.day import postgres_books

    s = pipeline.settings
    rerun = Pipeline(s.with_(topic_prefix=f"{s.topic_prefix}r2", app_id=f"{s.app_id}-r2"))
    tenant = f"{s.topic_prefix}-runs"  # one tenant, the same in both runs
    first = make_vouchers(tenant, 80, 31)
    same = make_vouchers(tenant, 80, 31)
    assert [wire.encode(v) for v in same] == [wire.encode(v) for v in first]
    # the rerun: the same day, a tenth of it with other amounts (no conflict: another namespace), and 20 more
    second = [altered(v) if i % 10 == 0 else v for i, v in enumerate(same)] + make_vouchers(tenant, 20, 32, first=80)
    sinks = [VoucherSink(p.settings, p.topics, max_backoff_s=1.0) for p in (pipeline, rerun)]
    try:
        pipeline.send(pipeline.topics.vouchers, first)
        rerun.send(rerun.topics.vouchers, second)
        for sink in sinks:
            sink.start()
        wait_for(landed(pipeline, [tenant], first), 90, "the first run's vouchers in PostgreSQL")
        wait_for(landed(rerun, [tenant], second), 90, "the rerun's vouchers in PostgreSQL")
    finally:
        for sink in sinks:
            sink.stop()
        rerun.close()
    assert [(k.written, k.duplicates, k.conflicts) for k in sinks] == [(80, 0, 0), (100, 0, 0)]
    assert_books(pipeline, tenant, first)
    assert_books(rerun, tenant, second)
    for p, sent in ((pipeline, first), (rerun, second)):
        pg = postgres_books(p.settings, SimpleNamespace(vouchers=sent))
        assert pg["agrees"] and pg["rows"] == len(sent), pg
        total = sum(v.debit_fen for v in sent)
        assert trial_balance_view(s.postgres_url, [tenant], p.settings.topic_prefix) == {tenant: (total, total, 0)}
        with psycopg.connect(s.postgres_url) as conn:
            summaries = conn.execute(
                "SELECT sum(debit), sum(credit), sum(vouchers) FROM ledger_daily_summary "
                "WHERE namespace = %s AND tenant = %s",
                (p.settings.topic_prefix, tenant),
            ).fetchone()
        lines_per_account = sum(len({ln.account for ln in v.lines}) for v in sent)
        assert summaries == (total, total, lines_per_account)
    assert sum(v.debit_fen for v in second) != sum(v.debit_fen for v in first)


# The tables and views as the sink made them before namespaces (key: the voucher id alone).
BEFORE_NAMESPACES = """
CREATE TABLE ledger_vouchers (
    voucher_id text PRIMARY KEY, tenant text NOT NULL, kind text NOT NULL, source_id text NOT NULL,
    entity text NOT NULL, order_id text, channel text, book_date date NOT NULL, policy_version integer NOT NULL,
    ts_ms bigint NOT NULL, debit_fen bigint NOT NULL, credit_fen bigint NOT NULL, topic text NOT NULL,
    partition integer NOT NULL, "offset" bigint NOT NULL
);
CREATE INDEX ledger_vouchers_tenant_date ON ledger_vouchers (tenant, book_date);
CREATE TABLE ledger_voucher_lines (
    voucher_id text NOT NULL REFERENCES ledger_vouchers (voucher_id), line_no integer NOT NULL,
    account text NOT NULL, name text NOT NULL, debit_fen bigint NOT NULL, credit_fen bigint NOT NULL,
    sub text NOT NULL, PRIMARY KEY (voucher_id, line_no)
);
CREATE VIEW ledger_trial_balance AS
SELECT v.tenant, l.account, max(l.name) AS name, sum(l.debit_fen) AS debit, sum(l.credit_fen) AS credit,
       sum(l.debit_fen - l.credit_fen) AS balance
FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (voucher_id) GROUP BY v.tenant, l.account;
CREATE VIEW ledger_daily_summary AS
SELECT v.tenant, v.book_date, coalesce(v.channel, '') AS channel, v.kind, l.account, max(l.name) AS name,
       sum(l.debit_fen) AS debit, sum(l.credit_fen) AS credit, count(DISTINCT v.voucher_id) AS vouchers
FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (voucher_id)
GROUP BY v.tenant, v.book_date, coalesce(v.channel, ''), v.kind, l.account;
"""


def test_books_from_before_namespaces_are_brought_to_them(pipeline: Pipeline) -> None:
    """Books a sink wrote before namespaces (a state directory from an older version): each row gets its topic's
    prefix as namespace; a voucher arriving again is told duplicate or conflict by its columns."""
    from agents.ledger.sink import to_booked

    s = pipeline.settings
    schema = f"before_{s.topic_prefix}"  # a schema of the test's own: the shared books are not touched
    url = s.postgres_url + ("&" if "?" in s.postgres_url else "?") + "options=" + quote(f"-csearch_path={schema}")
    tenant, topic = f"{s.topic_prefix}-old", pipeline.topics.vouchers
    sent = make_vouchers(tenant, 12, 41)
    elsewhere = make_vouchers(tenant, 1, 42, first=100)[0]  # booked from another prefix's topic
    with psycopg.connect(s.postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            cur.execute(BEFORE_NAMESPACES)
            for b in [
                *(to_booked(v, topic, 0, i) for i, v in enumerate(sent[:5])),
                to_booked(elsewhere, "x.vouchers", 0, 0),
            ]:
                cur.execute(
                    "INSERT INTO ledger_vouchers VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (b.voucher_id, *b.content, b.topic, b.partition, b.offset),
                )
                cur.executemany(
                    "INSERT INTO ledger_voucher_lines VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(b.voucher_id, n, *ln) for n, ln in enumerate(b.lines, 1)],
                )
        # the old rows come again (but the third), then the third's id with other amounts, then the rest
        other = altered(sent[2])
        pipeline.send(topic, [*sent[:2], *sent[3:10], other, *sent[10:]], key=f"{tenant}:one-partition")
        sink = VoucherSink(s, pipeline.topics, url=url, max_backoff_s=1.0)
        sink.start()
        try:
            wait_for(lambda: not sink.is_alive(), 90, "the sink to stop at the conflict")
        finally:
            sink.stop()
        # 4 old rows again: duplicates by their columns (given their digests now); 5 booked; then the other
        # contents of an old row's id: a conflict, told column by column
        assert (sink.written, sink.duplicates, sink.stopped) == (5, 4, "conflict")
        c = sink.conflict
        assert c is not None and (c.voucher_id, c.booked_from, c.booked_digest) == (
            other.voucher_id,
            f"{topic}/0@2",
            None,
        )
        assert f"debit_fen: {sent[2].debit_fen} booked, {other.debit_fen} arrived" in c.differences
        books = read_books(url, tenant, s.topic_prefix)
        assert books["rows"] == 10 and books["unbalanced"] == [] and len(books["conflicts"]) == 1
        assert book_digests(url, s.topic_prefix) == {
            v.voucher_id: None if v is sent[2] else voucher_digest(v) for v in sent[:10]
        }
        total = sum(v.debit_fen for v in sent[:10])
        assert books["debit_fen"] == books["credit_fen"] == total
        assert trial_balance_view(url, [tenant], s.topic_prefix) == {tenant: (total, total, 0)}
        assert read_books(url, tenant, "x")["rows"] == 1 and book_digests(url, "x") == {elsewhere.voucher_id: None}
    finally:
        with psycopg.connect(s.postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
