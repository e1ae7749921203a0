"""The voucher sink: the vouchers topic into PostgreSQL, where finance reaches the books with SQL.

Why a sink and not the ledger stage itself: the stage's outputs take effect in Kafka transactions, and a database
cannot join one. So the books in PostgreSQL are a copy of the vouchers topic, kept by this thread (I/O, never a
decision, like the gateways in :mod:`engine.kafka.gateway`): its own consumer group, ``read_committed`` (the topic
is written transactionally, so aborted vouchers never reach the books), auto commit off. It writes each batch in
one database transaction with ``INSERT … ON CONFLICT DO NOTHING`` on the voucher id (derived from the source event,
so the same voucher always has the same id), and commits the batch's offsets only after the database committed.
Delivery is at least once into a table that ignores a second copy: exactly once in effect.

When PostgreSQL is down the sink logs, backs off and writes the same batch again: it never skips a voucher and
never commits an offset past one not written. A record that is not a voucher (or one the database could not
store, e.g. an impossible date) is logged, counted and skipped: retrying it would stop the books for good.
"""

from __future__ import annotations

import logging
import threading
from datetime import date
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.ledger import Voucher

log = logging.getLogger("oms.voucher_sink")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_vouchers (
    voucher_id text PRIMARY KEY,
    tenant text NOT NULL,
    kind text NOT NULL,
    source_id text NOT NULL,
    entity text NOT NULL,
    order_id text,
    channel text,
    book_date date NOT NULL,
    policy_version integer NOT NULL,
    ts_ms bigint NOT NULL,
    debit_fen bigint NOT NULL,
    credit_fen bigint NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_vouchers_tenant_date ON ledger_vouchers (tenant, book_date);
CREATE TABLE IF NOT EXISTS ledger_voucher_lines (
    voucher_id text NOT NULL REFERENCES ledger_vouchers (voucher_id),
    line_no integer NOT NULL,
    account text NOT NULL,
    name text NOT NULL,
    debit_fen bigint NOT NULL,
    credit_fen bigint NOT NULL,
    sub text NOT NULL,
    PRIMARY KEY (voucher_id, line_no)
);
CREATE OR REPLACE VIEW ledger_trial_balance AS
SELECT v.tenant, l.account, max(l.name) AS name, sum(l.debit_fen) AS debit, sum(l.credit_fen) AS credit,
       sum(l.debit_fen - l.credit_fen) AS balance
FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (voucher_id)
GROUP BY v.tenant, l.account;
-- 汇总凭证: the day's vouchers summarised per tenant, date, channel, kind and account (one balanced summary
-- voucher per day × channel × kind), for an accounting system that posts summaries instead of every voucher
CREATE OR REPLACE VIEW ledger_daily_summary AS
SELECT v.tenant, v.book_date, coalesce(v.channel, '') AS channel, v.kind, l.account, max(l.name) AS name,
       sum(l.debit_fen) AS debit, sum(l.credit_fen) AS credit, count(DISTINCT v.voucher_id) AS vouchers
FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (voucher_id)
GROUP BY v.tenant, v.book_date, coalesce(v.channel, ''), v.kind, l.account;
"""
SCHEMA_LOCK = 0x0F5_B00C  # advisory lock: two workers' sinks creating the tables at once would collide

INSERT_VOUCHER = """
INSERT INTO ledger_vouchers (voucher_id, tenant, kind, source_id, entity, order_id, channel, book_date,
    policy_version, ts_ms, debit_fen, credit_fen, topic, partition, "offset")
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (voucher_id) DO NOTHING RETURNING voucher_id
"""
INSERT_LINE = """
INSERT INTO ledger_voucher_lines (voucher_id, line_no, account, name, debit_fen, credit_fen, sub)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""

Rows = tuple[tuple[Any, ...], list[tuple[Any, ...]]]  # a voucher's row and its lines' rows


def ensure_schema(conn: psycopg.Connection) -> None:
    """The tables and the view, created if missing (idempotent; safe from several processes at once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute(SCHEMA)


def to_rows(v: Voucher, topic: str, partition: int, offset: int) -> Rows:
    """A decoded voucher as table rows; ValueError if the database could not store it."""
    texts = [v.voucher_id, v.source_id, v.entity, v.order_id or ""] + [x for ln in v.lines for x in (ln.name, ln.sub)]
    if any("\x00" in t for t in texts):
        raise ValueError("a NUL character in a text field")
    voucher = (
        v.voucher_id,
        v.tenant,
        v.kind.value,
        v.source_id,
        v.entity,
        v.order_id,
        v.channel.value if v.channel else None,
        date.fromisoformat(v.book_date),
        v.policy_version,
        v.ts,
        v.debit_fen,
        v.credit_fen,
        topic,
        partition,
        offset,
    )
    lines = [
        (v.voucher_id, n, ln.account, ln.name, ln.debit_fen, ln.credit_fen, ln.sub) for n, ln in enumerate(v.lines, 1)
    ]
    return voucher, lines


class VoucherSink(threading.Thread):
    """Vouchers topic → PostgreSQL. ``VoucherSink(settings, topics).start()``; ``stopping.set()`` to stop.

    Counters (read them from any thread): ``written`` vouchers inserted, ``duplicates`` vouchers already in the
    books (a redelivery), ``batches`` database transactions committed, ``undecodable`` records skipped,
    ``db_errors`` failed attempts to write a batch (each one retried)."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        *,
        url: str | None = None,
        group: str | None = None,
        batch_max: int = 500,
        max_backoff_s: float = 10.0,
    ) -> None:
        super().__init__(name="voucher-sink", daemon=True)
        self.settings = settings
        self.topic = topics.vouchers
        self.url = url or settings.postgres_url
        self.group = group or f"{settings.app_id}-voucher-sink"
        self.batch_max = batch_max
        self.max_backoff_s = max_backoff_s
        self.stopping = threading.Event()
        self.written = self.duplicates = self.batches = self.undecodable = self.db_errors = 0
        self._conn: psycopg.Connection | None = None

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "duplicates": self.duplicates,
            "batches": self.batches,
            "undecodable": self.undecodable,
            "db_errors": self.db_errors,
        }

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([self.topic])
        try:
            while not self.stopping.is_set():
                messages = consumer.consume(self.batch_max, timeout=0.5)
                if not messages:
                    continue
                batch: dict[str, Rows] = {}  # by voucher id: a copy within the batch is a duplicate too
                ends: dict[int, int] = {}
                for m in messages:
                    if m.error():
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("voucher sink: %s", m.error())
                        continue
                    ends[m.partition()] = max(ends.get(m.partition(), -1), m.offset() + 1)
                    try:
                        rows = to_rows(wire.decode(m.value(), Voucher), m.topic(), m.partition(), m.offset())
                    except (wire.WireError, ValueError) as exc:
                        self.undecodable += 1
                        log.error("voucher sink: skipped %s/%d@%d: %s", m.topic(), m.partition(), m.offset(), exc)
                        continue
                    if rows[0][0] in batch:
                        self.duplicates += 1
                    else:
                        batch[rows[0][0]] = rows
                if batch and not self._write_until_done(list(batch.values())):
                    return  # stopping while the database is down: nothing committed past what was written
                if ends:
                    self._commit(consumer, ends)
        except Exception:
            log.exception("voucher sink stopped")
        finally:
            consumer.close()
            if self._conn is not None:
                self._conn.close()

    def _write_until_done(self, batch: list[Rows]) -> bool:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                inserted = self._write(batch)
            except psycopg.Error as exc:
                self.db_errors += 1
                log.warning("voucher sink: PostgreSQL: %s; writing the batch again in %.1f s", exc, backoff)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.written += inserted
            self.duplicates += len(batch) - inserted
            self.batches += 1
            return True
        return False

    def _write(self, batch: list[Rows]) -> int:
        """One database transaction; returns how many vouchers were new."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, connect_timeout=5)
            ensure_schema(self._conn)
        conn = self._conn
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(INSERT_VOUCHER, [voucher for voucher, _ in batch], returning=True)
            inserted: set[str] = set()
            while True:
                row = cur.fetchone()
                if row:
                    inserted.add(row[0])
                if not cur.nextset():
                    break
            lines = [line for voucher, lines in batch if voucher[0] in inserted for line in lines]
            if lines:
                cur.executemany(INSERT_LINE, lines)
        return len(inserted)

    def _commit(self, consumer: Consumer, ends: dict[int, int]) -> None:
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in ends.items()], asynchronous=False)
        except KafkaException as exc:  # e.g. the partitions moved meanwhile: their next reader writes them again
            log.warning("voucher sink: offsets not committed (%s); the batch will be delivered again", exc)


def clear_books(url: str) -> None:
    """Empty both tables (a fresh run of the main job on a local database that outlives its topics)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        ensure_schema(conn)
        conn.execute("TRUNCATE ledger_voucher_lines, ledger_vouchers")


def read_books(url: str, tenant: str, topic_prefix: str | None = None) -> dict[str, Any]:
    """What the books in PostgreSQL say about ``tenant`` (only the vouchers read from ``topic_prefix``'s vouchers
    topic, if given): ``rows`` and distinct ``vouchers`` (equal unless one is there twice), ``unbalanced`` voucher ids
    (Σ debit ≠ Σ credit over the lines, fewer than two lines, or lines that disagree with the voucher's totals),
    totals, and the trial balance by account (``trial_balance``; ``accounts``: account → balance), in fen."""
    where, args = "v.tenant = %s", [tenant]
    if topic_prefix is not None:
        where, args = where + " AND v.topic = %s", [tenant, Topics(topic_prefix).vouchers]
    with psycopg.connect(url, connect_timeout=5) as conn:
        ensure_schema(conn)
        rows, vouchers, debit, credit = conn.execute(
            "SELECT count(*), count(DISTINCT voucher_id), coalesce(sum(debit_fen), 0), coalesce(sum(credit_fen), 0) "
            f"FROM ledger_vouchers v WHERE {where}",
            args,
        ).fetchone()
        unbalanced = [
            r[0]
            for r in conn.execute(
                f"""SELECT v.voucher_id FROM ledger_vouchers v LEFT JOIN ledger_voucher_lines l USING (voucher_id)
                WHERE {where} GROUP BY v.voucher_id
                HAVING count(l.line_no) < 2 OR sum(l.debit_fen) <> sum(l.credit_fen)
                    OR sum(l.debit_fen) <> max(v.debit_fen) OR sum(l.credit_fen) <> max(v.credit_fen)
                ORDER BY 1""",
                args,
            )
        ]
        trial = {  # the view's query, restricted to the topic when one is given
            account: {"name": name, "lines": n, "debit": int(dr), "credit": int(cr), "balance": int(dr - cr)}
            for account, name, n, dr, cr in conn.execute(
                f"""SELECT l.account, max(l.name), count(*), sum(l.debit_fen), sum(l.credit_fen)
                FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (voucher_id)
                WHERE {where} GROUP BY l.account ORDER BY l.account""",
                args,
            )
        }
    return {
        "rows": rows,
        "vouchers": vouchers,
        "duplicates": rows - vouchers,
        "lines": sum(a["lines"] for a in trial.values()),
        "debit_fen": int(debit),
        "credit_fen": int(credit),
        "unbalanced": unbalanced,
        "trial_balance": trial,
        "accounts": {account: a["balance"] for account, a in trial.items()},
        "balance_fen": sum(a["balance"] for a in trial.values()),
    }
