"""Replay a stage's logic in-process over recorded input: the determinism check (I7).

A stage's outputs and state must be a function of its ordered input alone. :class:`Replay` runs the very
code the Kafka runtime runs (engine.runtime.work) over records read back from a topic, partition by partition
in offset order, in batches of any size, from an empty state or from a snapshot taken mid-way; the test then
compares its outputs and final state with what the engine wrote to the result topics and changelogs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.runtime.work import (
    ExpiryIndex,
    Input,
    Logic,
    Output,
    PartitionWork,
    apply_locally,
    rebuild_expiry,
    run_records,
)
from engine.state.store import DictPartitions


@dataclass
class ReplayState:
    stores: dict[str, DictPartitions]
    watermarks: dict[int, int] = field(default_factory=dict)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)

    def snapshot(self) -> ReplayState:
        return copy.deepcopy(self)

    def tables(self) -> dict[str, dict[bytes, bytes]]:
        """Every table's content across partitions (the keys are partitioned, so they do not collide)."""
        out: dict[str, dict[bytes, bytes]] = {}
        for name, store in self.stores.items():
            merged = out[name] = {}
            for data in store.partitions.values():
                merged.update(data)
        return out


class Replay:
    def __init__(self, logic: Logic, dead_letters_topic: str, state: ReplayState | None = None) -> None:
        self.logic = logic
        self.dead_letters_topic = dead_letters_topic
        self.state = state or ReplayState({t: DictPartitions() for t in logic.tables})
        self._expiry: dict[int, dict[str, ExpiryIndex]] = {}

    def run(self, records: Iterable[Input], batch: int = 100) -> list[Output]:
        """Process ``records`` (any interleaving of partitions; each partition's in offset order) and return
        the outputs in the order the engine would send them per partition."""
        by_partition: dict[int, list[Input]] = {}
        for record in records:
            if record.offset < self.state.positions.get((record.topic, record.partition), 0):
                continue  # covered by the state already
            by_partition.setdefault(record.partition, []).append(record)
        outputs: list[Output] = []
        for partition in sorted(by_partition):
            todo = by_partition[partition]
            for start in range(0, len(todo), batch):
                outputs += self._transaction(partition, todo[start : start + batch])
        return outputs

    def _transaction(self, partition: int, records: list[Input]) -> list[Output]:
        state = self.state
        expiry = self._expiry.get(partition)
        if expiry is None:
            expiry = self._expiry[partition] = rebuild_expiry(self.logic, state.stores, partition)  # type: ignore[arg-type]
        work = PartitionWork(
            self.logic.name,
            partition,
            state.stores,  # type: ignore[arg-type]
            expiry,
            state.watermarks.get(partition, 0),
            self.dead_letters_topic,
        )
        next_offsets = run_records(self.logic, work, records)
        work.purge_expired()
        apply_locally(work)
        state.watermarks[partition] = work.watermark
        for topic, offset in next_offsets.items():
            state.positions[(topic, partition)] = offset
        return work.outputs
