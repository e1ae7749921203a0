"""Fault injection at each step of a stage's transaction, for the fault tests. Never set in production.

``OMS_FAULT=<stage>:<step>:<events>`` arms one fault: in the first transaction of ``<stage>`` once it has
admitted at least ``<events>`` records, at ``<step>``:

* ``mid-send``       half of the transaction's records are handed to the producer, then the process dies;
* ``before-commit``  every output, changelog record and position is sent, the commit is not: the process dies
                     with the transaction open (the next owner's fencing aborts it);
* ``after-commit``   the transaction is committed, the local table store is not written: the process dies;
* ``after-apply``    committed and written locally, the group offset not yet committed: the process dies;
* ``pause``          right before the commit the process stops itself (SIGSTOP) — a zombie the test resumes
                     with SIGCONT after its partitions moved, to prove it is fenced.

Before it fires, the fault writes a JSON report to ``OMS_FAULT_REPORT`` (the stage, the step, the partition
and the offsets of the transaction's records), so a test can prove the fault happened where it meant.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("oms.fault")

FAULT_ENV = "OMS_FAULT"
REPORT_ENV = "OMS_FAULT_REPORT"
STEPS = ("mid-send", "before-commit", "after-commit", "after-apply", "pause")


@dataclass
class Fault:
    stage: str
    step: str
    after_events: int
    report: Path | None
    fired: bool = False

    @classmethod
    def from_env(cls, stage: str) -> Fault | None:
        spec = os.environ.get(FAULT_ENV, "")
        parts = spec.split(":")
        if len(parts) != 3 or parts[0] != stage:
            return None
        if parts[1] not in STEPS:
            raise ValueError(f"{FAULT_ENV}={spec!r}: step must be one of {STEPS}")
        report = os.environ.get(REPORT_ENV)
        return cls(stage, parts[1], int(parts[2]), Path(report) if report else None)

    def armed(self, step: str, admitted: int) -> bool:
        return not self.fired and step == self.step and admitted >= self.after_events

    def fire(self, partition: int, offsets: dict[str, list[int]], records: int) -> None:
        """Report, then kill (or stop) this process."""
        self.fired = True
        report = {
            "stage": self.stage,
            "step": self.step,
            "partition": partition,
            "offsets": offsets,
            "records": records,
            "pid": os.getpid(),
        }
        if self.report is not None:
            self.report.write_text(json.dumps(report))
        log.error("fault injection: %s", json.dumps(report))
        if self.step == "pause":
            os.kill(os.getpid(), signal.SIGSTOP)
            log.error("fault injection: resumed after SIGSTOP")
            return
        os._exit(137)
