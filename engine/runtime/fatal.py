"""The one way a worker gives up: log why, flush the logs, exit with a code its supervisor understands.

A worker exits only when going on would be wrong or useless — it cannot take its transactional id, its stream
thread died of a bug outside any record's processing, a restore cannot reach its changelog's end — and
``oms run``/the test pool start it again (engine.supervisor): a crash costs latency, never an order. Codes:
70 (software: the runtime itself failed), 75 (temporary: try again), 137 (fault injection).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger("oms")

SOFTWARE = 70
TEMPORARY = 75


def fatal(code: int, why: str) -> NoReturn:
    log.critical("exiting (%d): %s", code, why)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
