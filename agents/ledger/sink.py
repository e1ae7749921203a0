"""The voucher sink: the vouchers topic into PostgreSQL, where finance reaches the books with SQL.

Why a sink and not the ledger stage itself: the stage's outputs take effect in Kafka transactions, and a database
cannot join one. So the books in PostgreSQL are a copy of the vouchers topic, kept by this thread (I/O, never a
decision, like the gateways in :mod:`engine.kafka.gateway`): its own consumer group, ``read_committed`` (the topic
is written transactionally, so aborted vouchers never reach the books), auto commit off. It writes each batch in
one database transaction and commits the batch's offsets only after the database committed.

**Namespaces.** The books are kept per *namespace*, the topic prefix whose vouchers topic they copy (a
deployment's ``oms``, or one run of the main job, ``oms.r20261111093000``): the key is (namespace, voucher id).
Voucher ids are derived from the source event, so another run of the same day (same seed) has the same ids; in
its own namespace it books into a clean ledger instead of colliding with the last run's rows.

**Duplicates and conflicts.** Each row keeps the sha256 of the voucher's canonical encoding (decoded, then encoded
again by :mod:`schemas.wire`: fields in definition order, integer fen, no floats). A voucher whose id is already
in the namespace's books is

* a *duplicate* when its digest is the one booked (a redelivery, a copy, a second reading): counted, skipped;
* a *conflict* when it is not: the sink books everything the batch held before that record, commits the
  conflicting record's partition only up to that record (other partitions up to what was booked), writes the
  conflict to ``ledger_conflicts`` (what differs, column by column), logs it as CRITICAL, shows it in
  :meth:`VoucherSink.stats` and **stops**. Its partitions go to the sinks of the other workers, which stop at the
  same record: nothing at or after it is booked until the books or the topic are put right, and the main job
  fails instead of reporting books that silently miss a voucher. Two copies inside one batch are compared the
  same way.

When PostgreSQL is down the sink logs, backs off and writes the same batch again: it never skips a voucher and
never commits an offset past one not written. A record that is not a voucher (or one the database could not
store, e.g. an impossible date) is logged, counted and skipped: retrying it would stop the books for good.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import asdict, dataclass, field
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
    namespace text NOT NULL,  -- the topic prefix of the vouchers topic the row was read from
    voucher_id text NOT NULL,
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
    digest text,  -- sha256 of the canonical encoding (NULL only on rows booked before digests were kept)
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    PRIMARY KEY (namespace, voucher_id)
);
CREATE INDEX IF NOT EXISTS ledger_vouchers_ns_tenant_date ON ledger_vouchers (namespace, tenant, book_date);
CREATE TABLE IF NOT EXISTS ledger_voucher_lines (
    namespace text NOT NULL,
    voucher_id text NOT NULL,
    line_no integer NOT NULL,
    account text NOT NULL,
    name text NOT NULL,
    debit_fen bigint NOT NULL,
    credit_fen bigint NOT NULL,
    sub text NOT NULL,
    PRIMARY KEY (namespace, voucher_id, line_no),
    FOREIGN KEY (namespace, voucher_id) REFERENCES ledger_vouchers (namespace, voucher_id)
);
-- a voucher id that arrived again with other contents than booked: the sink stopped at that record
CREATE TABLE IF NOT EXISTS ledger_conflicts (
    namespace text NOT NULL,
    voucher_id text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    booked_from text NOT NULL,
    booked_digest text,
    arrived_digest text NOT NULL,
    differences text NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, topic, partition, "offset")
);
CREATE OR REPLACE VIEW ledger_trial_balance AS
SELECT v.namespace, v.tenant, l.account, max(l.name) AS name, sum(l.debit_fen) AS debit,
       sum(l.credit_fen) AS credit, sum(l.debit_fen - l.credit_fen) AS balance
FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (namespace, voucher_id)
GROUP BY v.namespace, v.tenant, l.account;
-- 汇总凭证: the day's vouchers summarised per tenant, date, channel, kind and account (one balanced summary
-- voucher per day × channel × kind), for an accounting system that posts summaries instead of every voucher
CREATE OR REPLACE VIEW ledger_daily_summary AS
SELECT v.namespace, v.tenant, v.book_date, coalesce(v.channel, '') AS channel, v.kind, l.account,
       max(l.name) AS name, sum(l.debit_fen) AS debit, sum(l.credit_fen) AS credit,
       count(DISTINCT v.voucher_id) AS vouchers
FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (namespace, voucher_id)
GROUP BY v.namespace, v.tenant, v.book_date, coalesce(v.channel, ''), v.kind, l.account;
"""
# Books created before namespaces (key: the voucher id alone) get the namespace from the topic each row was read
# from, keys and views over (namespace, voucher id), and no digest (compared column by column instead).
MIGRATE_TO_NAMESPACES = r"""
DROP VIEW IF EXISTS ledger_trial_balance, ledger_daily_summary;
ALTER TABLE ledger_voucher_lines DROP CONSTRAINT IF EXISTS ledger_voucher_lines_voucher_id_fkey;
ALTER TABLE ledger_voucher_lines DROP CONSTRAINT IF EXISTS ledger_voucher_lines_pkey;
ALTER TABLE ledger_vouchers DROP CONSTRAINT IF EXISTS ledger_vouchers_pkey;
DROP INDEX IF EXISTS ledger_vouchers_tenant_date;
ALTER TABLE ledger_vouchers ADD COLUMN namespace text, ADD COLUMN digest text;
UPDATE ledger_vouchers SET namespace = regexp_replace(topic, '\.vouchers$', '');
ALTER TABLE ledger_vouchers ALTER COLUMN namespace SET NOT NULL, ADD PRIMARY KEY (namespace, voucher_id);
ALTER TABLE ledger_voucher_lines ADD COLUMN namespace text;
UPDATE ledger_voucher_lines l SET namespace = v.namespace FROM ledger_vouchers v WHERE v.voucher_id = l.voucher_id;
ALTER TABLE ledger_voucher_lines ALTER COLUMN namespace SET NOT NULL,
    ADD PRIMARY KEY (namespace, voucher_id, line_no),
    ADD FOREIGN KEY (namespace, voucher_id) REFERENCES ledger_vouchers (namespace, voucher_id);
"""
BEFORE_NAMESPACES = """
SELECT to_regclass('ledger_vouchers') IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('ledger_vouchers') AND attname = 'namespace'
        AND NOT attisdropped)
"""
SCHEMA_LOCK = 0x0F5_B00C  # advisory lock: two workers' sinks creating the tables at once would collide

#: The columns that are the voucher's contents (besides its lines): what a conflict is told by, column by column.
CONTENT = (
    "tenant",
    "kind",
    "source_id",
    "entity",
    "order_id",
    "channel",
    "book_date",
    "policy_version",
    "ts_ms",
    "debit_fen",
    "credit_fen",
)
LINE_CONTENT = ("account", "name", "debit_fen", "credit_fen", "sub")

INSERT_VOUCHER = f"""
INSERT INTO ledger_vouchers (namespace, voucher_id, {", ".join(CONTENT)}, digest, topic, partition, "offset")
VALUES ({", ".join(["%s"] * (len(CONTENT) + 6))})
ON CONFLICT (namespace, voucher_id) DO NOTHING RETURNING voucher_id
"""
INSERT_LINE = """
INSERT INTO ledger_voucher_lines (namespace, voucher_id, line_no, account, name, debit_fen, credit_fen, sub)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""
SELECT_BOOKED = f"""
SELECT voucher_id, digest, topic, partition, "offset", {", ".join(CONTENT)}
FROM ledger_vouchers WHERE namespace = %s AND voucher_id = ANY(%s)
"""
SELECT_LINES = f"""
SELECT {", ".join(LINE_CONTENT)} FROM ledger_voucher_lines WHERE namespace = %s AND voucher_id = %s ORDER BY line_no
"""
INSERT_CONFLICT = """
INSERT INTO ledger_conflicts (namespace, voucher_id, topic, partition, "offset", booked_from, booked_digest,
    arrived_digest, differences)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    """The tables and the views, created if missing and brought to namespaces if older (idempotent; safe from
    several processes at once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        row = conn.execute(BEFORE_NAMESPACES).fetchone()
        if row and row[0]:
            log.warning("voucher sink: bringing the books in PostgreSQL to namespaces (the topic prefix of each row)")
            conn.execute(MIGRATE_TO_NAMESPACES)
        conn.execute(SCHEMA)


def voucher_digest(v: Voucher) -> str:
    """sha256 of the voucher's canonical encoding: equal exactly when the contents are (whatever bytes carried it)."""
    return hashlib.sha256(wire.encode(v)).hexdigest()


@dataclass(frozen=True)
class Booked:
    """A voucher as the books hold it: its content columns, its lines' and where it was read from."""

    voucher_id: str
    digest: str | None
    content: tuple[Any, ...]  # CONTENT's columns
    lines: tuple[tuple[Any, ...], ...]  # LINE_CONTENT's columns, line 1 first
    topic: str
    partition: int
    offset: int

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


def to_booked(v: Voucher, topic: str, partition: int, offset: int) -> Booked:
    """A decoded voucher as the books would hold it; ValueError if the database could not store it."""
    texts = [v.voucher_id, v.source_id, v.entity, v.order_id or ""] + [x for ln in v.lines for x in (ln.name, ln.sub)]
    if any("\x00" in t for t in texts):
        raise ValueError("a NUL character in a text field")
    content = (
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
    )
    lines = tuple((ln.account, ln.name, ln.debit_fen, ln.credit_fen, ln.sub) for ln in v.lines)
    return Booked(v.voucher_id, voucher_digest(v), content, lines, topic, partition, offset)


def differences(booked: Booked, arrived: Booked) -> list[str]:
    """What the columns say differs between two vouchers of one id (empty: the same as far as the books keep)."""
    out = [
        f"{name}: {a!r} booked, {b!r} arrived"
        for name, a, b in zip(CONTENT, booked.content, arrived.content, strict=True)
        if a != b
    ]
    if len(booked.lines) != len(arrived.lines):
        out.append(f"lines: {len(booked.lines)} booked, {len(arrived.lines)} arrived")
    for n, (x, y) in enumerate(zip(booked.lines, arrived.lines, strict=False), 1):
        out += [
            f"line {n} {name}: {a!r} booked, {b!r} arrived"
            for name, a, b in zip(LINE_CONTENT, x, y, strict=True)
            if a != b
        ]
    return out


@dataclass(frozen=True)
class Conflict:
    """A voucher id that arrived with other contents than the books hold for it (in ``namespace``)."""

    namespace: str
    voucher_id: str
    topic: str
    partition: int
    offset: int
    booked_from: str  # topic/partition@offset of the voucher in the books (or earlier in the same batch)
    booked_digest: str | None
    arrived_digest: str
    differences: list[str] = field(default_factory=list)

    @classmethod
    def between(cls, namespace: str, booked: Booked, arrived: Booked) -> Conflict:
        diffs = differences(booked, arrived)
        if not diffs:  # the contents differ where the books keep no column (e.g. schema_version)
            diffs = [f"the encodings: digest {booked.digest} booked, {arrived.digest} arrived"]
        return cls(
            namespace,
            arrived.voucher_id,
            arrived.topic,
            arrived.partition,
            arrived.offset,
            booked.source,
            booked.digest,
            arrived.digest or "",
            diffs,
        )

    def describe(self) -> str:
        shown = "; ".join(self.differences[:12]) + (" …" if len(self.differences) > 12 else "")
        return (
            f"voucher {self.voucher_id} (books {self.namespace!r}) arrived at {self.topic}/{self.partition}"
            f"@{self.offset} with other contents than booked from {self.booked_from}: {shown}"
        )


class _Shorter(Exception):
    """A conflict found inside the write's transaction: roll back and book only the records before it."""


@dataclass
class _Entry:
    """One record of a batch, in the order read; ``booked`` is None for a record that is not a voucher."""

    partition: int
    offset: int
    booked: Booked | None


@dataclass
class _Written:
    kept: int  # how many of the batch's records were dealt with (all of them, or those before the conflict)
    inserted: int
    conflict: Conflict | None
    transaction: bool = True  # False: nothing for the database (records that are not vouchers)


class VoucherSink(threading.Thread):
    """Vouchers topic → PostgreSQL. ``VoucherSink(settings, topics).start()``; ``stopping.set()`` to stop.

    :meth:`stats` (read it from any thread): ``written`` vouchers inserted, ``duplicates`` vouchers already in the
    books with the same contents (a redelivery), ``batches`` database transactions committed, ``undecodable``
    records skipped, ``db_errors`` failed attempts to write a batch (each one retried), ``conflicts`` (0 or 1) and
    ``conflict``: the voucher id that arrived with other contents than booked, where, and what differs — the sink
    stopped there (``stopped`` says why it is no longer running: ``"conflict"``, or None)."""

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
        self.namespace = topics.prefix
        self.url = url or settings.postgres_url
        self.group = group or f"{settings.app_id}-voucher-sink"
        self.batch_max = batch_max
        self.max_backoff_s = max_backoff_s
        self.stopping = threading.Event()
        self.written = self.duplicates = self.batches = self.undecodable = self.db_errors = self.conflicts = 0
        self.conflict: Conflict | None = None
        self.stopped: str | None = None
        self._conn: psycopg.Connection | None = None

    def stats(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "duplicates": self.duplicates,
            "batches": self.batches,
            "undecodable": self.undecodable,
            "db_errors": self.db_errors,
            "conflicts": self.conflicts,
            "conflict": asdict(self.conflict) if self.conflict else None,
            "stopped": self.stopped,
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
                entries = self._read(messages)
                done = self._write_until_done(entries)
                if done is None:
                    return  # stopping while the database is down: nothing committed past what was written
                kept = entries[: done.kept]
                ends: dict[int, int] = {}
                for e in kept:
                    ends[e.partition] = max(ends.get(e.partition, -1), e.offset + 1)
                vouchers = sum(1 for e in kept if e.booked is not None)
                self.written += done.inserted
                self.duplicates += vouchers - done.inserted
                self.undecodable += len(kept) - vouchers
                if done.conflict is not None:  # its partition up to the conflicting record, not past it
                    ends[done.conflict.partition] = done.conflict.offset
                if ends:
                    self._commit(consumer, ends)
                if done.conflict is not None:
                    self._stop_at(done.conflict)
                    return
        except Exception:
            self.stopped = "error"
            log.exception("voucher sink stopped")
        finally:
            consumer.close()
            if self._conn is not None:
                self._conn.close()

    def _read(self, messages: list[Any]) -> list[_Entry]:
        entries: list[_Entry] = []
        for m in messages:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("voucher sink: %s", m.error())
                continue
            try:
                booked = to_booked(wire.decode(m.value(), Voucher), m.topic(), m.partition(), m.offset())
            except (wire.WireError, ValueError) as exc:
                log.error("voucher sink: skipped %s/%d@%d: %s", m.topic(), m.partition(), m.offset(), exc)
                booked = None
            entries.append(_Entry(m.partition(), m.offset(), booked))
        return entries

    def _stop_at(self, conflict: Conflict) -> None:
        self.conflict = conflict
        self.conflicts += 1
        self.stopped = "conflict"
        log.critical(
            "voucher sink STOPPED on a conflict: %s. Nothing at or after that record is booked or committed "
            "(table ledger_conflicts); put the books or the topic right, then restart the workers",
            conflict.describe(),
        )

    def _write_until_done(self, entries: list[_Entry]) -> _Written | None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                done = self._write(entries)
            except psycopg.Error as exc:
                self.db_errors += 1
                log.warning("voucher sink: PostgreSQL: %s; writing the batch again in %.1f s", exc, backoff)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.batches += done.transaction
            return done
        return None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, connect_timeout=5)
            ensure_schema(self._conn)
        return self._conn

    def _write(self, entries: list[_Entry]) -> _Written:
        """One database transaction: the vouchers of ``entries`` up to the first conflict (in the batch, or with
        the books), and the conflict if there is one."""
        end, conflict = len(entries), None
        first: dict[str, Booked] = {}
        for i, e in enumerate(entries):  # a copy inside the batch is a duplicate, or a conflict
            if e.booked is None:
                continue
            seen = first.setdefault(e.booked.voucher_id, e.booked)
            if seen.digest != e.booked.digest:
                end, conflict = i, Conflict.between(self.namespace, seen, e.booked)
                break
        if not any(e.booked for e in entries[:end]) and conflict is None:
            return _Written(end, 0, None, transaction=False)
        conn = self._connection()
        while True:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    inserted, found = self._insert(cur, entries[:end])
                    if found is not None:
                        end, conflict = found
                        raise _Shorter
                    if conflict is not None:
                        c = conflict
                        cur.execute(
                            INSERT_CONFLICT,
                            (
                                c.namespace,
                                c.voucher_id,
                                c.topic,
                                c.partition,
                                c.offset,
                                c.booked_from,
                                c.booked_digest,
                                c.arrived_digest,
                                "\n".join(c.differences),
                            ),
                        )
                return _Written(end, inserted, conflict)
            except _Shorter:
                continue

    def _insert(self, cur: psycopg.Cursor, entries: list[_Entry]) -> tuple[int, tuple[int, Conflict] | None]:
        """The vouchers of ``entries`` (first copies) inserted: (how many were new, None), or (0, (the index of
        the first record whose id the books hold with other contents, that conflict)) — then roll back."""
        firsts: dict[str, Booked] = {}
        for e in entries:
            if e.booked is not None:
                firsts.setdefault(e.booked.voucher_id, e.booked)
        if not firsts:
            return 0, None
        ns = self.namespace
        cur.executemany(
            INSERT_VOUCHER,
            [(ns, b.voucher_id, *b.content, b.digest, b.topic, b.partition, b.offset) for b in firsts.values()],
            returning=True,
        )
        inserted: set[str] = set()
        while True:
            row = cur.fetchone()
            if row:
                inserted.add(row[0])
            if not cur.nextset():
                break
        again = [b for i, b in firsts.items() if i not in inserted]
        differ = self._against_books(cur, again)
        if differ:
            for i, e in enumerate(entries):
                if e.booked is not None and e.booked.voucher_id in differ:
                    return 0, (i, Conflict.between(ns, differ[e.booked.voucher_id], e.booked))
        lines = [
            (ns, b.voucher_id, n, *ln)
            for b in firsts.values()
            if b.voucher_id in inserted
            for n, ln in enumerate(b.lines, 1)
        ]
        if lines:
            cur.executemany(INSERT_LINE, lines)
        return len(inserted), None

    def _against_books(self, cur: psycopg.Cursor, arrived: list[Booked]) -> dict[str, Booked]:
        """Of vouchers whose id the books hold already: those booked with other contents (id → as booked)."""
        if not arrived:
            return {}
        booked = {row[0]: row for row in cur.execute(SELECT_BOOKED, (self.namespace, [b.voucher_id for b in arrived]))}
        out: dict[str, Booked] = {}
        for b in arrived:
            row = booked.get(b.voucher_id)
            if row is None:  # not inserted, yet not there: removed meanwhile (clear_books): write the batch again
                raise psycopg.errors.SerializationFailure(f"voucher {b.voucher_id} vanished from the books")
            if row[1] == b.digest:
                continue  # the same voucher again: a duplicate
            lines = tuple(tuple(ln) for ln in cur.execute(SELECT_LINES, (self.namespace, b.voucher_id)))
            held = Booked(row[0], row[1], tuple(row[5:]), lines, row[2], row[3], row[4])
            if row[1] is None and not differences(held, b):  # booked before digests were kept: the columns agree
                cur.execute(
                    "UPDATE ledger_vouchers SET digest = %s WHERE namespace = %s AND voucher_id = %s",
                    (b.digest, self.namespace, b.voucher_id),
                )
                continue
            out[b.voucher_id] = held
        return out

    def _commit(self, consumer: Consumer, ends: dict[int, int]) -> None:
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in ends.items()], asynchronous=False)
        except KafkaException as exc:  # e.g. the partitions moved meanwhile: their next reader writes them again
            log.warning("voucher sink: offsets not committed (%s); the batch will be delivered again", exc)


def clear_books(url: str, namespace: str | None = None) -> None:
    """Empty the books of ``namespace`` (its vouchers, lines and conflicts), or of every namespace if None."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        ensure_schema(conn)
        if namespace is None:
            conn.execute("TRUNCATE ledger_voucher_lines, ledger_vouchers, ledger_conflicts")
            return
        with conn.transaction():
            for table in ("ledger_voucher_lines", "ledger_vouchers", "ledger_conflicts"):
                conn.execute(f"DELETE FROM {table} WHERE namespace = %s", (namespace,))


def conflicts(url: str, namespace: str, connect_timeout: int = 5) -> list[dict[str, Any]]:
    """The conflicts the sinks of ``namespace`` stopped at (``ledger_conflicts``), oldest first. Reads only (cheap
    enough to poll): no table yet means no sink has written, so no conflict."""
    with psycopg.connect(url, connect_timeout=connect_timeout) as conn:
        if conn.execute("SELECT to_regclass('ledger_conflicts')").fetchone() == (None,):
            return []
        cur = conn.execute(
            """SELECT voucher_id, topic, partition, "offset", booked_from, booked_digest, arrived_digest, differences
            FROM ledger_conflicts WHERE namespace = %s ORDER BY detected_at, topic, partition, "offset" """,
            (namespace,),
        )
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur]


def book_digests(url: str, namespace: str) -> dict[str, str | None]:
    """voucher id → digest of every voucher in ``namespace``'s books (to hold them against the topic)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        ensure_schema(conn)
        return dict(
            conn.execute("SELECT voucher_id, digest FROM ledger_vouchers WHERE namespace = %s", (namespace,)).fetchall()
        )


def read_books(url: str, tenant: str, topic_prefix: str | None = None) -> dict[str, Any]:
    """What the books in PostgreSQL say about ``tenant`` (in the namespace ``topic_prefix``, or in all of them):
    ``rows`` and distinct ``vouchers`` (equal unless one is there twice), ``unbalanced`` voucher ids (Σ debit ≠
    Σ credit over the lines, fewer than two lines, or lines that disagree with the voucher's totals), totals, the
    trial balance by account (``trial_balance``; ``accounts``: account → balance), in fen, and the ``conflicts``
    the sink stopped at (of the namespace, any tenant)."""
    where, args = "v.tenant = %s", [tenant]
    if topic_prefix is not None:
        where, args = where + " AND v.namespace = %s", [tenant, topic_prefix]
    with psycopg.connect(url, connect_timeout=5) as conn:
        ensure_schema(conn)
        rows, vouchers, debit, credit = conn.execute(
            "SELECT count(*), count(DISTINCT (namespace, voucher_id)), coalesce(sum(debit_fen), 0), "
            f"coalesce(sum(credit_fen), 0) FROM ledger_vouchers v WHERE {where}",
            args,
        ).fetchone()
        unbalanced = [
            r[0]
            for r in conn.execute(
                f"""SELECT v.voucher_id FROM ledger_vouchers v LEFT JOIN ledger_voucher_lines l
                USING (namespace, voucher_id)
                WHERE {where} GROUP BY v.namespace, v.voucher_id
                HAVING count(l.line_no) < 2 OR sum(l.debit_fen) <> sum(l.credit_fen)
                    OR sum(l.debit_fen) <> max(v.debit_fen) OR sum(l.credit_fen) <> max(v.credit_fen)
                ORDER BY 1""",
                args,
            )
        ]
        trial = {  # the view's query, restricted to the namespace when one is given
            account: {"name": name, "lines": n, "debit": int(dr), "credit": int(cr), "balance": int(dr - cr)}
            for account, name, n, dr, cr in conn.execute(
                f"""SELECT l.account, max(l.name), count(*), sum(l.debit_fen), sum(l.credit_fen)
                FROM ledger_voucher_lines l JOIN ledger_vouchers v USING (namespace, voucher_id)
                WHERE {where} GROUP BY l.account ORDER BY l.account""",
                args,
            )
        }
        stopped_at = conn.execute(
            'SELECT voucher_id, topic, partition, "offset", differences FROM ledger_conflicts'
            + (" WHERE namespace = %s" if topic_prefix is not None else "")
            + ' ORDER BY detected_at, topic, partition, "offset"',
            [topic_prefix] if topic_prefix is not None else [],
        ).fetchall()
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
        "conflicts": [
            {"voucher_id": v, "at": f"{t}/{p}@{o}", "differences": d.split("\n")} for v, t, p, o, d in stopped_at
        ],
    }
