"""A tripwire on the Faust internals this engine builds on.

The stream runtime (engine.runtime.runner) replaces Faust's Kafka services; engine.app starts the app with a
boot strategy that leaves them out. That rests on what a few private parts of faust-streaming do *today*, so
every worker checks, before it starts, that the installed versions and the source of each part are the ones
this code was written against, and refuses to start with a clear message naming what changed. A test does the
same. After reviewing a new release, print the new fingerprints with ``python -m engine.tripwire`` and update
``EXPECTED``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from importlib.metadata import version

#: Distributions whose internals are used, with the versions reviewed.
VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1"}

#: Each relied-on internal → why it matters → sha256 (first 16 hex) of its source.
EXPECTED: dict[str, tuple[str, str]] = {
    "faust.app.base:BootStrategy.kafka_consumer": (
        "without enable_kafka, Faust's consumer (and its group membership) is not started",
        "1a288f3d603fc224",
    ),
    "faust.app.base:BootStrategy.kafka_producer": (
        "without enable_kafka, Faust's producer is not started",
        "54a789df64f66255",
    ),
    "faust.app.base:BootStrategy.tables": (
        "without enable_kafka, Faust's table manager is not started",
        "09ec521e9811243a",
    ),
    "faust.app.base:App.on_started": (
        "tasks (the stream runtime's start) and the web server start once table recovery is over",
        "c03627f2dc44a1dd",
    ),
    "faust.tables.manager:TableManager.wait_until_recovery_completed": (
        "a recovery that never started is over at once",
        "e0f224aba177e99d",
    ),
}


class TripwireError(RuntimeError):
    pass


def _resolve(path: str) -> object:
    module_name, _, qualname = path.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def fingerprint(path: str) -> str:
    source = inspect.getsource(_resolve(path))  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def differences() -> list[str]:
    problems = []
    for dist, wanted in VERSIONS.items():
        found = version(dist)
        if found != wanted:
            problems.append(f"{dist} is {found}, this engine was reviewed against {wanted}")
    for path, (why, digest) in EXPECTED.items():
        try:
            found = fingerprint(path)
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            problems.append(f"{path} is gone ({exc}); it is needed because {why}")
            continue
        if found != digest:
            problems.append(f"{path} changed (source {found}, reviewed {digest}); it matters because {why}")
    return problems


def check() -> None:
    problems = differences()
    if problems:
        raise TripwireError(
            "the installed Faust internals differ from the ones this engine was reviewed against:\n  - "
            + "\n  - ".join(problems)
            + "\nReview engine/app.py and engine/runtime/runner.py against them, then "
            "update engine/tripwire.py (python -m engine.tripwire prints the current fingerprints)."
        )


def main() -> int:
    for path, (why, _) in EXPECTED.items():
        print(f'    "{path}": ("{why}", "{fingerprint(path)}"),')
    problems = differences()
    print("\n".join(problems) if problems else "no differences", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
