"""Idempotency stamps for the commands a stage derives from one input record.

A stage that sends commands to another stage stamps each with ``(origin, seq)``: the origin names the stage, the
incarnation of the topic it read and the partition; ``seq = offset * SEQ_FANOUT + i`` for the i-th command of
the input at ``offset``. Stamps strictly increase per origin, and a replayed input reproduces the same ones —
so the receiving writer can tell a redelivery from a new command without any shared state.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQ_FANOUT = 1024


@dataclass(frozen=True, slots=True)
class Stamp:
    """Where the input came from: the idempotency origin of the commands it causes, and its offset."""

    origin: str
    offset: int

    def seq(self, i: int) -> int:
        if not 0 <= i < SEQ_FANOUT:
            raise ValueError(f"sub-index {i} out of range")
        return self.offset * SEQ_FANOUT + i
