"""Ticks: the passage of time as records, for stages whose rules wait (merge windows, wave timers, pickup
deadlines). The owner of each input partition writes a ``Tick`` into it every few seconds; the stage's clock is
the record time it reads, so a replay of the log waits exactly as the first run did (I7)."""

from __future__ import annotations

import time
from collections.abc import Callable

import faust

from engine.kafka.clients import Sender
from engine.runtime.stage import Stage
from schemas import wire
from schemas.fulfilment import Tick


def install_ticks(
    app: faust.App,
    stage: Stage,
    topic: str,
    every_s: float,
    bootstrap: str,
    wanted: Callable[[int], bool] | None = None,
) -> None:
    """Every ``every_s``, a tick into each partition of ``topic`` this worker owns (and ``wanted`` says, if given:
    a stage whose rules rarely wait keeps its inbox idle when nothing does)."""
    sender: list[Sender] = []

    @app.timer(every_s, name=f"{topic}-ticks")
    async def tick() -> None:
        owned = {p for p in stage.owned() if wanted is None or wanted(p)}
        if not owned:
            return
        if not sender:
            sender.append(Sender(bootstrap))
        value = wire.encode(Tick(ts=now_ms()))
        for p in sorted(owned):
            sender[0].send(topic, None, value, partition=p)
        sender[0].poll()  # a lost tick costs nothing: the next one carries a later time


def now_ms() -> int:
    return int(time.time() * 1000)  # a tick's time is wall time once, when it is written; then it is a record
