"""Which delivered records a stage may process: a pure decision per record (unit-tested).

A stage's state covers its input up to a *position* (the next offset), written in the same transaction as
the state. A record is

* ``stale``   — fetched in an earlier read epoch of its partition (before a seek or a rebalance): skip it,
                the current epoch delivers it again;
* ``reseek``  — of the current epoch, but that epoch began at an unknown offset or past the position
                (Faust's own seek to a group commit, a reset): seek back to the position and skip it;
* ``covered`` — below the position: the state already includes it (a replay);
* ``admit``   — at or past the position, in an epoch that began at or before it.

Inside one trusted epoch records arrive in offset order, so a jump past the position is not a loss: the
offsets in between are transaction markers or records of aborted transactions, which a ``read_committed``
reader never receives. That is what lets a stage read topics written by transactional producers — its own
upstream stages included — whose offsets are never gap-free.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    STALE = "stale"
    RESEEK = "reseek"
    COVERED = "covered"
    ADMIT = "admit"


@dataclass(slots=True)
class Cursor:
    """A stage's view of one input partition: the position its state covers and the epoch it trusts."""

    position: int
    trusted_epoch: int | None = None
    reseek_epoch: int | None = None  # the epoch for which a seek back to the position was already asked


def judge(cursor: Cursor, offset: int, record_epoch: int, epoch: int, epoch_start: int | None) -> Verdict:
    """``epoch``/``epoch_start``: the partition's current read epoch and the offset it began at."""
    if record_epoch != epoch:
        return Verdict.STALE
    if cursor.trusted_epoch != epoch:
        if epoch_start is None or epoch_start > cursor.position:
            return Verdict.RESEEK
        cursor.trusted_epoch = epoch
    if offset < cursor.position:
        return Verdict.COVERED
    return Verdict.ADMIT
