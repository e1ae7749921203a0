"""``oms settle``: send a platform settlement file to the ledger stage and report the reconciliation (对账).

The I/O around agents.ledger.settlement (which holds every rule): read the file, publish its lines to the
ledger inbox in one transaction (keyed ``tenant:order_id``, murmur2 like every producer here), wait until the
ledger answered each line on the reconciliations topic (``read_committed``), read the vouchers for the open
receivables, publish the ``missing_in_file`` results, print the report and write it as JSON.

Exit codes: 0 done (row errors and mismatches are findings, not failures), 1 the ledger did not answer every
line within ``wait_s`` (nothing of ``missing_in_file`` is published then), 2 the file or the arguments cannot be
used, or the topics are not there.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from confluent_kafka import KafkaException

from agents.ledger.settlement import (
    MAX_FILE_BYTES,
    SettlementFileError,
    batch_id_for,
    mentioned_orders,
    missing_in_file,
    parse_settlement,
    receivables_from_vouchers,
    report_text,
    shops_of,
    summarize,
)
from engine.kafka import broadcast
from engine.kafka.admin import admin
from engine.kafka.clients import Message, read_topics, tail
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.ledger import Reconciliation, ReconStatus, Voucher


@dataclass(frozen=True)
class SettleOptions:
    file: Path
    tenant: str
    channel: str
    shop: str | None = None
    batch: str | None = None
    wait_s: float = 120.0
    out: Path | None = None
    receivable_code: str = "1122"


def settle(settings: Settings, opts: SettleOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Blocking: the whole ``oms settle`` run. Returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:  # never more than the parser takes (and one byte, so that it can say the file is too big)
        with opts.file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        print(f"oms settle: cannot read {opts.file}: {exc}", file=err)
        return 2
    now = int(time.time() * 1000)
    batch = opts.batch or batch_id_for(data, opts.tenant, opts.channel, opts.shop)
    try:
        lines, errors = parse_settlement(
            data, tenant=opts.tenant, channel=opts.channel, shop_id=opts.shop, batch_id=batch, default_ts=now
        )
    except SettlementFileError as exc:
        print(f"oms settle: {opts.file}: {exc}", file=err)
        return 2
    except ValueError as exc:  # a tenant, channel or batch id that is not one
        print(f"oms settle: {exc}", file=err)
        return 2
    print(f"batch {batch}: {len(lines)} line(s), {len(errors)} row error(s) in {opts.file}", file=err)
    for e in errors:
        print(f"  {e.line()}", file=err)

    topics = Topics(settings.topic_prefix)
    try:
        present = admin(settings.bootstrap, quiet=True).list_topics(timeout=10).topics
    except KafkaException as exc:
        print(f"oms settle: no Kafka at {settings.bootstrap}: {exc}", file=err)
        return 2
    absent = [t for t in (topics.ledger_inbox, topics.reconciliations, topics.vouchers) if t not in present]
    if absent:
        where = "is the engine's Kafka running, the prefix right?"
        print(f"oms settle: topic(s) {', '.join(absent)} not found ({where})", file=err)
        return 2

    publisher = f"settle.{batch}"
    if lines:
        broadcast.publish(
            settings, publisher, [], [(topics.ledger_inbox, ln.key.encode(), wire.encode(ln)) for ln in lines]
        )
    answers, complete = _wait_for_answers(settings, topics, opts, batch, {ln.order_id for ln in lines}, err)

    vouchers = []
    for msg in read_topics(settings.bootstrap, [topics.vouchers], timeout_s=max(60.0, opts.wait_s)):
        try:
            vouchers.append(wire.decode(msg.value, Voucher))
        except wire.WireError:
            continue
    receivables = receivables_from_vouchers(vouchers, opts.tenant, opts.channel, opts.receivable_code)
    shops = ({opts.shop} if opts.shop else set()) | shops_of(lines)
    missing = missing_in_file(
        receivables,
        mentioned_orders(lines, errors),
        tenant=opts.tenant,
        channel=opts.channel,
        batch_id=batch,
        ts=now,
        shops=shops or None,
    )
    if complete and missing:
        broadcast.publish(
            settings, publisher, [], [(topics.reconciliations, r.key.encode(), wire.encode(r)) for r in missing]
        )

    results = [answers[o] for o in sorted(answers)] + missing
    print(report_text(results, errors), file=out)
    if not complete:
        waiting = sorted({ln.order_id for ln in lines} - set(answers))
        print(
            f"\noms settle: the ledger answered {len(answers)} of {len(lines)} line(s) within {opts.wait_s:g} s; "
            f"still waiting for {', '.join(waiting[:5])}{' …' if len(waiting) > 5 else ''}. missing_in_file was "
            "computed but not published; run the same file again later (same batch, nothing is booked twice).",
            file=out,
        )
    if opts.out is not None:
        report = {
            "batch_id": batch,
            "tenant": opts.tenant,
            "channel": opts.channel,
            "file": str(opts.file),
            "lines": len(lines),
            "complete": complete,
            "missing_in_file_published": complete and bool(missing),
            "summary": summarize(results),
            "row_errors": [
                {"row": e.row, "reason": e.reason, "message": e.message, "platform_order_id": e.platform_order_id}
                for e in errors
            ],
            "results": [wire.to_builtins(r) for r in results],
        }
        opts.out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0 if complete else 1


def _wait_for_answers(
    settings: Settings, topics: Topics, opts: SettleOptions, batch: str, expected: set[str], err: TextIO
) -> tuple[dict[str, Reconciliation], bool]:
    """Follow the reconciliations topic from the beginning until the ledger answered every expected order of
    ``batch`` (or ``wait_s`` passed). Returns the answers per order and whether they are complete."""
    answers: dict[str, Reconciliation] = {}
    if not expected:
        return answers, True
    start = time.monotonic()
    shown = [0.0]

    def on_message(msg: Message) -> None:
        try:
            r = wire.decode(msg.value, Reconciliation)
        except wire.WireError:
            return
        if (
            r.batch_id == batch
            and r.tenant == opts.tenant
            and r.order_id in expected
            and r.status != ReconStatus.MISSING_IN_FILE
        ):
            answers[r.order_id] = r

    def stop() -> bool:
        done = len(answers) >= len(expected)
        elapsed = time.monotonic() - start
        if done or elapsed - shown[0] >= 0.5:
            shown[0] = elapsed
            print(f"\rreconciled {len(answers)}/{len(expected)} line(s), {elapsed:.0f} s", end="", file=err, flush=True)
        return done or elapsed > opts.wait_s

    tail(settings.bootstrap, [topics.reconciliations], on_message, stop)
    print(file=err)
    return answers, len(answers) >= len(expected)
