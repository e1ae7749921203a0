"""A tripwire on the Faust and aiokafka internals this engine builds on.

engine.kafka.transport, engine.state.tables, engine.state.store and engine.runtime.stage override or call
private parts of faust-streaming and aiokafka. Their correctness rests on what those parts do *today*, so
every worker checks, before it starts, that the installed versions and the source of each part are the ones
this code was written against, and refuses to start with a clear message naming what changed. A test does
the same. After reviewing a new release, print the new fingerprints with ``python -m engine.tripwire`` and
update ``EXPECTED``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from importlib.metadata import version

#: Distributions whose internals are used, with the versions reviewed.
VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}

#: Each relied-on internal → why it matters → sha256 (first 16 hex) of its source.
EXPECTED: dict[str, tuple[str, str]] = {
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        "read_committed is chosen by the in_transaction flag the transport sets",
        "c2701bfc3e6f6cad",
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._fetch_records": (
        "records are stamped with their read epoch in the consumer thread, after this returns",
        "39a2c6c79fc1455a",
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._seek_wait": (
        "every seek starts a read epoch",
        "9d221e816d940467",
    ),
    "faust.transport.drivers.aiokafka:Consumer._to_message": (
        "messages carry their read epoch and integer timestamp",
        "7c24f6511b2fcef7",
    ),
    "faust.transport.consumer:Consumer.getmany": (
        "replaced: a dropped record must end its partition's read epoch",
        "4b168d84882a70d6",
    ),
    "mode.utils.queues:FlowControlEvent.resume": (
        "resuming empties the stream queues through self.clear(), which the transport wraps to end read epochs",
        "4dcdc1253fd0dcb4",
    ),
    "faust.tables.recovery:Recovery.on_recovery_completed": (
        "streams are sought, then the flow resumed (queues emptied); an overtaken generation resumes nothing",
        "6ef567acf072e46d",
    ),
    "faust.transport.consumer:Consumer.on_buffer_full": (
        "a full stream buffer takes its partition out of the active set; the stage watchdog puts it back",
        "c8961679e0bcdce5",
    ),
    "faust.transport.consumer:Consumer.force_commit": (
        "replaced: the group commit takes the stages' positions",
        "cc094614d22c70fb",
    ),
    "faust.tables.recovery:Recovery._build_highwaters": (
        "replaced: transactional changelogs end with a marker; recovery waits for the last record",
        "91b4cc0d3724ae7b",
    ),
    "faust.tables.recovery:Recovery.on_rebalance": (
        "extended: a changelog partition that turned from active into standby keeps no stale highwater",
        "aa4d997a1795ceae",
    ),
    "faust.tables.manager:TableManager.on_rebalance": (
        "fencing runs before this starts recovery",
        "2d2c23a07bf54328",
    ),
    "faust.app.base:App._on_partitions_assigned": (
        "tables.on_rebalance (fencing, then recovery) runs before streams resume",
        "de932b7927db85b3",
    ),
    "faust.stores.rocksdb:Store.apply_changelog_batch": (
        "stages write the local store exactly as recovery does (raw bytes, offset key)",
        "ea3344d369fc4ab5",
    ),
    "faust.stores.rocksdb:Store._db_for_partition": ("stages address one partition's database", "cb7e67d5f9efc4bc"),
    "faust.stores.memory:Store.apply_changelog_batch": (
        "stages write the memory store as recovery does (key → partition map)",
        "71863e3cd727aac2",
    ),
    "aiokafka.consumer.fetcher:FetchResult.check_assignment": (
        "records fetched before a seek are discarded, which makes a read epoch start at its seek",
        "b5340df67e3f330f",
    ),
    "aiokafka.consumer.group_coordinator:GroupCoordinator.request_rejoin": (
        "a fenced stage asks for a rebalance",
        "f70a261c91c38cb5",
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
            "the installed Faust/aiokafka internals differ from the ones this engine was reviewed against:\n  - "
            + "\n  - ".join(problems)
            + "\nReview engine/kafka/transport.py, engine/state/ and engine/runtime/stage.py against them, then "
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
