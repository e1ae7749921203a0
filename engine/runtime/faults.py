"""Fault injection for the fault tests: a wrapper around a worker's transactional producer. Never set in production.

``OMS_FAULT=<stage>:<step>:<records>`` arms one fault: in the first transaction in which ``<stage>`` has, counting
that transaction's records, admitted at least ``<records>`` records, at ``<step>``:

* ``mid-send``       half of the transaction's records are handed to the producer, then the process dies;
* ``before-commit``  every output, changelog record and the input offsets are sent, the commit is not: the
                     process dies with the transaction open (the next holder of its id, or of its partitions,
                     aborts it);
* ``after-commit``   the transaction is committed, the local table stores are not written: the process dies;
* ``after-apply``    committed and written locally, before the next batch: the process dies;
* ``pause``          right before the commit the process stops itself (SIGSTOP) — a zombie the test resumes with
                     SIGCONT after its partitions moved, to prove it is fenced.

Before it fires, the fault writes a JSON report to ``OMS_FAULT_REPORT`` (the stage, the step, one partition of
the stage in the transaction and the offsets of its records there), so a test can prove the fault happened where
it meant. The commit path knows nothing of this: :class:`FaultyProducer` stands in for the producer and watches
the calls it gets (engine.runtime.checkpoint tells every producer what a transaction holds, in ``begin``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runtime.fatal import fatal

log = logging.getLogger("oms.fault")

FAULT_ENV = "OMS_FAULT"
REPORT_ENV = "OMS_FAULT_REPORT"
STEPS = ("mid-send", "before-commit", "after-commit", "after-apply", "pause")


@dataclass
class TxnInfo:
    """What a transaction holds, per stage: records admitted by the stage once it commits, and, per partition,
    the input offsets of its records (``{partition: {topic: [offsets]}}``); and how many records it sends."""

    admitted: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, dict[int, dict[str, list[int]]]] = field(default_factory=dict)
    sends: int = 0


@dataclass
class Fault:
    stage: str
    step: str
    after_records: int
    report: Path | None
    fired: bool = False

    @classmethod
    def from_env(cls) -> Fault | None:
        spec = os.environ.get(FAULT_ENV, "")
        if not spec:
            return None
        parts = spec.split(":")
        if len(parts) != 3 or parts[1] not in STEPS or not parts[2].isdigit():
            raise ValueError(f"{FAULT_ENV}={spec!r}: want <stage>:<step>:<records>, step one of {STEPS}")
        report = os.environ.get(REPORT_ENV)
        return cls(parts[0], parts[1], int(parts[2]), Path(report) if report else None)

    def armed(self, info: TxnInfo) -> bool:
        return not self.fired and info.admitted.get(self.stage, 0) >= self.after_records

    def fire(self, info: TxnInfo) -> None:
        """Report, then kill (or stop) this process."""
        self.fired = True
        partitions = info.offsets.get(self.stage, {})
        partition = min(partitions) if partitions else -1
        report = {
            "stage": self.stage,
            "step": self.step,
            "partition": partition,
            "offsets": partitions.get(partition, {}),
            "records": sum(len(o) for o in partitions.get(partition, {}).values()),
            "pid": os.getpid(),
        }
        if self.report is not None:
            self.report.write_text(json.dumps(report))
        log.error("fault injection: %s", json.dumps(report))
        if self.step == "pause":
            # At this thread, not the process: a process-directed SIGSTOP is taken by whichever thread the kernel
            # picks, and until that one runs (on a loaded machine, milliseconds) this thread ran on and committed
            # the very transaction the pause was to hold open. Sent to itself, it stops before kill returns.
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
            log.error("fault injection: resumed after SIGSTOP")
            return
        fatal(137, f"fault injection at {self.step}")


class FaultyProducer:
    """A transactional producer that fires one :class:`Fault` at its step (everything else is passed through)."""

    def __init__(self, producer: Any, fault: Fault) -> None:
        self._inner = producer
        self.fault = fault
        self._info = TxnInfo()
        self._armed = False
        self._sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def begin(self, info: TxnInfo | None = None) -> None:
        self._info = info or TxnInfo()
        self._armed = self.fault.armed(self._info)
        self._sent = 0
        self._inner.begin()

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self._inner.produce(*args, **kwargs)
        self._sent += 1
        if self._sent * 2 >= self._info.sends:
            self._fire("mid-send")

    def commit(self) -> None:
        self._fire("before-commit")
        self._fire("pause")
        self._inner.commit()
        self._fire("after-commit")

    def applied(self) -> None:
        self._fire("after-apply")

    def _fire(self, step: str) -> None:
        if self._armed and self.fault.step == step:
            self._armed = False
            self.fault.fire(self._info)
