"""The stream runtime's pieces without a broker: table stores, the commit protocol's order and roll-back, the fault
wrapper. (The runtime on a real broker — fencing, restore, takeovers — is in tests/pipeline.)"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.kafka.transactions import Aborted, Fenced
from engine.runtime import faults
from engine.runtime.checkpoint import OFFSETS_TAG, Checkpoint
from engine.runtime.faults import Fault, FaultyProducer, TxnInfo
from engine.runtime.stage import StageStats, Unit
from engine.runtime.work import Input, PartitionWork
from engine.state.store import OFFSET_KEY, MemoryStore, RocksStore, open_store


@pytest.mark.parametrize("kind", ["memory://", "rocksdb://"])
def test_a_store_applies_writes_with_their_changelog_offset_and_forgets_a_partition(tmp_path: Path, kind: str) -> None:
    store = open_store(kind, tmp_path / "t")
    assert store.offset(0) is None and store.get(0, b"a") is None
    store.apply(0, {b"a": b"1", b"b": b"2"}, 41)
    store.apply(0, {b"b": None, b"c": b"3"}, 42)
    store.apply(1, {b"a": b"other"}, None)
    assert store.get(0, b"a") == b"1" and store.get(0, b"b") is None and store.get(0, b"c") == b"3"
    assert dict(store.items(0)) == {b"a": b"1", b"c": b"3"}  # the offset key is not a table key
    assert store.offset(0) == 42 and store.offset(1) is None and store.get(1, b"a") == b"other"
    store.reset(0)
    assert store.offset(0) is None and dict(store.items(0)) == {} and store.get(1, b"a") == b"other"
    store.close()


def test_a_rocksdb_store_survives_a_restart(tmp_path: Path) -> None:
    store = RocksStore(tmp_path / "t")
    store.apply(3, {b"k": b"v"}, 7)
    store.close()
    again = RocksStore(tmp_path / "t")
    assert again.get(3, b"k") == b"v" and again.offset(3) == 7 and OFFSET_KEY not in dict(again.items(3))
    again.close()


# -- the commit protocol ------------------------------------------------------------------------------------
@dataclass
class FakeTable:
    changelog: str
    store: MemoryStore = field(default_factory=MemoryStore)


class FakeStage:
    """What a Unit needs of its stage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.positions_table = f"{name}-positions"
        self.tables = {t: FakeTable(f"app-{t}-changelog") for t in ("counts", self.positions_table)}
        self.stats = StageStats()
        self.applied: list[tuple[Unit, dict]] = []

    def apply(self, unit: Unit, offsets: dict) -> None:
        self.applied.append((unit, dict(offsets)))


class RecordingProducer:
    def __init__(self, fail_at: str | None = None, error: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_at = fail_at
        self.error = error or Aborted("broker hiccup")
        self.offset = 100

    def _maybe_fail(self, step: str) -> None:
        if step == self.fail_at:
            raise self.error

    def begin(self, info: Any = None) -> None:
        self.calls.append(("begin",))

    def produce(self, topic: str, key: Any, value: Any, partition: Any = None, headers: Any = None,
                on_delivery: Any = None) -> None:  # fmt: skip
        self.calls.append(("produce", topic, key, value, partition))
        self._maybe_fail("produce")
        if on_delivery is not None:
            self.offset += 1
            on_delivery(None, type("Msg", (), {"offset": lambda _self, o=self.offset: o})())

    def send_offsets(self, offsets: list, metadata: Any) -> None:
        self.calls.append(("send_offsets", [(o.topic, o.partition, o.offset, o.metadata) for o in offsets]))
        self._maybe_fail("send_offsets")

    def commit(self) -> None:
        self.calls.append(("commit",))
        self._maybe_fail("commit")

    def abort(self) -> None:
        self.calls.append(("abort",))

    def applied(self) -> None:
        self.calls.append(("applied",))


def _unit(stage: FakeStage, partition: int = 2) -> Unit:
    records = [Input("in", partition, o, b"k", b"v", 1000) for o in (5, 7)]
    work = PartitionWork(stage.name, partition, {"counts": MemoryStore()}, {}, 0, "dlq")
    work.emit("out", "k1", b"a")
    work.emit("out", "k2", b"b")
    work.put("counts", "k", b"2")
    return Unit(stage, partition, records, work, {"in": 8}, {b"in/2": b"pos"}, 0)  # type: ignore[arg-type]


def test_a_checkpoint_sends_outputs_then_changelogs_then_offsets_then_commits_then_applies() -> None:
    stage, producer = FakeStage("count"), RecordingProducer()
    unit = _unit(stage)
    Checkpoint(producer, lambda: "group-md").commit([unit])
    kinds = [c[0] for c in producer.calls]
    assert kinds == ["begin", "produce", "produce", "produce", "produce", "send_offsets", "commit", "applied"]
    produced = [c[1:] for c in producer.calls if c[0] == "produce"]
    assert produced == [
        ("out", b"k1", b"a", None),
        ("out", b"k2", b"b", None),
        ("app-counts-changelog", b"k", b"2", 2),  # the table partition is the input partition
        ("app-count-positions-changelog", b"in/2", b"pos", 2),  # the position last
    ]
    assert producer.calls[5][1] == [("in", 2, 8, OFFSETS_TAG)]
    ((applied, offsets),) = stage.applied
    assert applied is unit and offsets == {("app-counts-changelog", 2): 101, ("app-count-positions-changelog", 2): 102}


@pytest.mark.parametrize("step", ["produce", "send_offsets", "commit"])
def test_a_failed_transaction_is_rolled_back_before_anything_else_and_never_applied(step: str) -> None:
    stage, producer = FakeStage("count"), RecordingProducer(fail_at=step)
    checkpoint = Checkpoint(producer, lambda: "group-md")
    with pytest.raises(Aborted):
        checkpoint.commit([_unit(stage)])
    assert producer.calls[-1] == ("abort",), "aborted right away, so that a retry starts a clean transaction"
    assert stage.applied == [] and checkpoint.stats.aborted == 1 and checkpoint.stats.transactions == 0


def test_a_fenced_producer_is_not_aborted_and_nothing_is_applied() -> None:
    stage, producer = FakeStage("count"), RecordingProducer(fail_at="commit", error=Fenced("newer instance"))
    checkpoint = Checkpoint(producer, lambda: "group-md")
    with pytest.raises(Fenced):
        checkpoint.commit([_unit(stage)])
    assert ("abort",) not in producer.calls and stage.applied == [] and checkpoint.stats.fenced == 1


# -- fault injection ----------------------------------------------------------------------------------------
def test_the_fault_wrapper_fires_at_its_step_once_the_stage_has_admitted_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fired: list[tuple[int, str]] = []
    monkeypatch.setattr(faults, "fatal", lambda code, why: fired.append((code, why)))
    report = tmp_path / "fault.json"
    fault = Fault("inventory", "before-commit", 10, report)
    producer = FaultyProducer(RecordingProducer(), fault)
    early = TxnInfo(admitted={"inventory": 9}, offsets={"inventory": {1: {"in": [8]}}}, sends=2)
    producer.begin(early)
    producer.commit()
    assert fired == [] and not report.exists(), "not armed below 10 records"
    late = TxnInfo(admitted={"inventory": 12, "orders": 99}, offsets={"inventory": {3: {"in": [9, 10]}}}, sends=2)
    producer.begin(late)
    producer.commit()
    assert fired == [(137, "fault injection at before-commit")]
    assert json.loads(report.read_text()) | {"pid": 0} == {
        "stage": "inventory", "step": "before-commit", "partition": 3, "offsets": {"in": [9, 10]}, "records": 2,
        "pid": 0,
    }  # fmt: skip
    producer.begin(late)
    producer.commit()
    assert len(fired) == 1, "fires once"


def test_mid_send_fires_when_half_the_records_are_handed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    fired: list[int] = []
    inner = RecordingProducer()
    monkeypatch.setattr(faults, "fatal", lambda code, why: fired.append(len(inner.calls)))
    producer = FaultyProducer(inner, Fault("orders", "mid-send", 1, None))
    producer.begin(TxnInfo(admitted={"orders": 1}, offsets={"orders": {0: {"in": [0]}}}, sends=4))
    for n in range(4):
        producer.produce("t", None, b"x")
        if n == 0:
            assert fired == []
    assert fired == [3], "after the second of four sends (begin + 2 produces)"


# -- the transactional producer's delivery check ------------------------------------------------------------
class FakeLibProducer:
    """Stands in for confluent-kafka's Producer: reports each record's delivery as told, commits on request."""

    def __init__(self, offsets: list[int | None]) -> None:
        self.offsets = offsets
        self.pending: list[Any] = []
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self.pending.append((topic, kwargs))

    def flush(self, timeout: float = 0) -> int:
        for (topic, kwargs), offset in zip(self.pending, self.offsets, strict=False):
            msg = type("Msg", (), {"offset": lambda _s, o=offset: o, "topic": lambda _s, t=topic: t,
                                   "partition": lambda _s: 0})()  # fmt: skip
            kwargs["on_delivery"](None, msg)
        self.pending.clear()
        return 0

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")


def test_a_record_acknowledged_without_an_offset_rolls_the_transaction_back_instead_of_committing() -> None:
    """librdkafka reports a batch "implicitly acknowledged" (no offset) when a later batch of its partition
    succeeded after it failed; seen here with the earlier batch never written. Such a transaction must not commit."""
    from engine.kafka.transactions import TxnProducer

    producer = TxnProducer("127.0.0.1:1", "test.guard")
    producer._p = FakeLibProducer([5, None, 7])  # type: ignore[assignment]
    seen: list[int | None] = []
    producer.begin()
    producer.produce("t", b"k", b"a")
    producer.produce("t", b"k", b"b", on_delivery=lambda err, msg: seen.append(msg.offset()))
    producer.produce("t", b"k", b"c")
    with pytest.raises(Aborted, match="unconfirmed"):
        producer.commit()
    assert producer._p.calls == ["begin"] and seen == [None], "never committed; the caller's callback still called"
    producer.abort()
    assert producer._p.calls == ["begin", "abort"]
    producer._p = FakeLibProducer([8, 9])  # type: ignore[assignment]
    producer.begin()
    producer.produce("t", b"k", b"a")
    producer.produce("t", b"k", b"b")
    producer.commit()
    assert producer._p.calls == ["begin", "commit"]


# -- a batch that keeps failing is committed record by record; a poison record is dead-lettered on its own ----
class IsolationStage:
    """What the runtime needs of a stage for its retry and isolation path (positions as a plain dict)."""

    def __init__(self) -> None:
        self.name = "count"
        self.stats = StageStats()
        self.watermarks: dict[int, int] = {}
        self.dead_letters_topic = "dlq"
        self._owned = {0}
        self.committed_position = 0  # what the state covers (as if read back from the positions table)
        self.cached: int | None = None

    def position(self, topic: str, partition: int) -> int:
        return self.committed_position if self.cached is None else self.cached

    def admit(self, topic: str, partition: int, offset: int) -> bool:
        if offset < self.position(topic, partition):
            return False
        self.cached = offset + 1
        return True

    def rewind(self, topic: str, partition: int) -> None:
        self.cached = None

    def run(self, partition: int, records: list[Input]) -> Unit:
        work = PartitionWork(self.name, partition, {}, {}, 0, self.dead_letters_topic)
        for r in records:
            work.emit("out", r.key, r.value)
        return self.unit_of(partition, records, work, {records[-1].topic: records[-1].offset + 1}, 0)

    def unit_of(
        self, partition: int, records: list[Input], work: PartitionWork, next_offsets: dict, purged: int
    ) -> Unit:
        return Unit(self, partition, records, work, next_offsets, {}, purged)  # type: ignore[arg-type]


class PoisonCheckpoint:
    """Commits any transaction without the poison record; one holding it is refused as too large, every time."""

    def __init__(self, stage: IsolationStage, poison_offset: int) -> None:
        self.stage, self.poison = stage, poison_offset
        self.committed: list[list[tuple[str, bytes | None]]] = []
        self.attempts = 0

    def commit(self, units: list[Unit]) -> None:
        self.attempts += 1
        outputs = [(o.topic, o.value) for u in units for o in u.work.outputs]
        if any(r.offset == self.poison for u in units for r in u.records if u.work.outputs[0].topic == "out"):
            raise Aborted("a record of the transaction was refused: too large")
        self.committed.append(outputs)
        self.stage.committed_position = max(o for u in units for o in u.next_offsets.values())


def test_a_batch_that_keeps_failing_commits_record_by_record_and_its_poison_is_dead_lettered_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.runtime import runner as runner_module
    from engine.runtime.runner import MAX_ATTEMPTS, StreamRuntime
    from engine.settings import Settings

    monkeypatch.setattr(runner_module.time, "sleep", lambda s: None)
    runtime = StreamRuntime(Settings.from_env({}), 0)
    stage = IsolationStage()
    checkpoint = PoisonCheckpoint(stage, poison_offset=2)
    runtime._checkpoint = checkpoint  # type: ignore[assignment]
    seeks: list[tuple[str, int, int]] = []
    runtime._consumer = type("C", (), {"seek": lambda _s, tp: seeks.append((tp.topic, tp.partition, tp.offset))})()  # type: ignore[assignment]
    records = [Input("in", 0, o, b"k", f"r{o}".encode(), 1000) for o in range(5)]
    for r in records:
        assert stage.admit("in", 0, r.offset)
    runtime._commit({(stage, 0): records})  # type: ignore[dict-item]
    assert checkpoint.attempts >= MAX_ATTEMPTS + 5, "the batch tried, then each record alone"
    assert checkpoint.committed[:2] == [[("out", b"r0")], [("out", b"r1")]], "records before the poison, in order"
    (letter,) = checkpoint.committed[2]
    assert letter[0] == "dlq" and b"could not be committed" in (letter[1] or b""), "the poison alone, as a letter"
    assert checkpoint.committed[3:] == [[("out", b"r3")], [("out", b"r4")]], "and the partition moves on"
    assert stage.committed_position == 5 and stage.stats.isolated == 5 and runtime.stats.isolated_batches == 1
    assert seeks == [("in", 0, 0)], "the consumer was sent back to the state's position before the split"
