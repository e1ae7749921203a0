"""Pickers for the main job (拣货): every pick list of the day confirmed, a few stops short (缺货), until nothing is
left to pick — the re-allocated lines' own pick lists included.

A picker's report is deterministic per pick list and seed: each stop comes up short with probability
``short_rate`` (by 1 unit up to all of them), only in the first round, so re-allocated lines are picked whole
and the day ends. Reports go to the fulfilment inbox as a scanner would send them; the caller adds them to the
invariants' inputs (what a picker reported picked is the truth).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.fulfilment.picking import report
from engine.kafka.clients import Sender, read_topics
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.fulfilment import PickConfirmation, PickList, PickOutcome, ShortPickOutcome


class PickingStalled(RuntimeError):
    """The engine stopped answering pick confirmations."""


@dataclass
class PickingDay:
    sent: list[PickConfirmation] = field(default_factory=list)
    short_lines: int = 0
    rounds: int = 0


def confirm_all(
    settings: Settings,
    topics: Topics,
    seed: int,
    short_rate: float,
    settle: Callable[[], object],
    supervise: Callable[[], object],
    timeout_s: float = 300.0,
) -> PickingDay:
    """Confirm every pick list written so far; wait for the outcomes and for every short to be answered; then
    ``settle`` (the caller's wait for the last merge windows and waves) and go again while new pick lists came."""
    day = PickingDay()
    done: set[str] = set()
    sender = Sender(settings.bootstrap)
    while True:
        lists = [wire.decode(m.value, PickList) for m in read_topics(settings.bootstrap, [topics.pick_lists])]
        todo = sorted((p for p in lists if p.pick_list_id not in done), key=lambda p: p.pick_list_id)
        if not todo:
            return day
        day.rounds += 1
        for pick in todo:
            rng = random.Random(f"{seed}:{pick.pick_list_id}")
            short = {
                s.line_id: rng.randrange(s.quantity)
                for s in pick.stops
                if day.rounds == 1 and rng.random() < short_rate
            }
            confirmation = report(pick, int(time.time() * 1000), short, picker=f"picker-{rng.randrange(1, 41)}")
            sender.send(topics.fulfilment_inbox, confirmation.key, wire.encode(confirmation))
            day.sent.append(confirmation)
            day.short_lines += len(short)
            done.add(pick.pick_list_id)
        sender.flush()
        _wait_answers(settings, topics, len(done), day.short_lines, supervise, timeout_s)
        settle()


def _wait_answers(
    settings: Settings, topics: Topics, confirmed: int, shorts: int, supervise: Callable[[], object], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    seen = (0, 0)
    while time.monotonic() < deadline:
        supervise()  # a worker that died meanwhile is started again: picks wait, they are not lost
        outcomes = {
            o.pick_list_id
            for m in read_topics(settings.bootstrap, [topics.pick_outcomes])
            if (o := wire.decode(m.value, PickOutcome)).status == "confirmed"
        }
        answers = {
            (a.order_id, a.line_id)
            for m in read_topics(settings.bootstrap, [topics.short_picks])
            if (a := wire.decode(m.value, ShortPickOutcome))
        }
        seen = (len(outcomes), len(answers))
        if seen[0] >= confirmed and seen[1] >= shorts:
            return
        time.sleep(1.0)
    raise PickingStalled(f"{seen[0]}/{confirmed} pick lists confirmed, {seen[1]}/{shorts} shorts answered")
