"""Re-read partitions whose commits stopped moving while they still have records to read.

After a rebalance, Faust can leave an assigned partition that is never processed again: records
prefetched before the post-rebalance seek are delivered afterwards, push the read offset past the
commit, and the records re-fetched from the commit are then dropped as "already read". They are never
acked, so the commit stays where it is forever (faust-streaming #166, #596, #629 describe the symptom;
reproduced here by crashing a worker with its state ahead of its offsets).

Every stage here is idempotent, so re-reading from the commit is always safe: this watchdog seeks such a
partition back to its committed offset with Faust's public ``Consumer.seek``. A partition that is merely
busy keeps committing and is never touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import faust
from faust.types import TP

from engine.app import active_partitions

log = logging.getLogger("oms.watchdog")


@dataclass
class _Seen:
    committed: int | None
    since: float


def install(app: faust.App, stall_s: float, interval_s: float = 5.0) -> None:
    seen: dict[TP, _Seen] = {}

    @app.timer(interval_s)
    async def stuck_partitions() -> None:
        if app.in_recovery:
            seen.clear()
            return
        try:
            await _check(app, seen, stall_s)
        except Exception:  # a partition revoked under our feet: try again next tick
            log.debug("watchdog check skipped", exc_info=True)


async def _check(app: faust.App, seen: dict[TP, _Seen], stall_s: float) -> None:
    consumer = app.consumer
    now = time.monotonic()
    actives = {
        tp for tp in active_partitions(app) if not tp.topic.endswith("-changelog") and "__assignor" not in tp.topic
    }
    for tp in list(seen):
        if tp not in actives:
            seen.pop(tp)
    for tp in actives:
        committed = consumer._committed_offset.get(tp)
        highwater = consumer.highwater(tp)
        if highwater is None or highwater <= (committed or 0):
            seen.pop(tp, None)  # caught up (or nothing known yet)
            continue
        last = seen.get(tp)
        if last is None or last.committed != committed:
            seen[tp] = _Seen(committed, now)
            continue
        if now - last.since < stall_s:
            continue
        start = committed if committed is not None else 0
        log.warning(
            "partition %s/%s made no progress for %.0fs (committed %s, highwater %s): re-reading from %s",
            tp.topic,
            tp.partition,
            now - last.since,
            committed,
            highwater,
            start,
        )
        await consumer.seek(tp, start)
        seen[tp] = _Seen(committed, now)
