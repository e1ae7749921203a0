"""The stage kit (engine.runtime.kit) on a toy stage, in-process: the prelude every stage shares — decode,
broadcast configuration, ticks, routing, time — and the finish — state with its expiry, routes, notes, refusal."""

from __future__ import annotations

import msgspec

from engine.kafka.clients import Message, partition_for
from engine.runtime.kit import Broadcast, KeyedLogic, Step
from engine.runtime.replay import Replay
from engine.runtime.work import Input, PartitionWork
from schemas import wire
from schemas.deadletter import DeadLetter, ReasonCode
from schemas.fulfilment import Tick

PARTITIONS = 4
INBOX, OUT, COPIES, DLQ = "toy-inbox", "toy-out", "toy-copies", "toy-dead-letters"


class Count(msgspec.Struct, tag="count", tag_field="kind", kw_only=True):
    tenant: str
    name: str
    n: int
    ts: int = 0

    @property
    def key(self) -> str:
        return f"{self.tenant}:{self.name}"


class Limit(msgspec.Struct, tag="limit", tag_field="kind", kw_only=True):
    tenant: str
    version: int
    most: int

    @property
    def key(self) -> str:
        return self.tenant


class Total(msgspec.Struct, kw_only=True):
    tenant: str
    name: str
    total: int
    updated_at: int = 0

    @property
    def key(self) -> str:
        return f"{self.tenant}:{self.name}"


Inbox = Count | Limit | Tick


def limit_key(tenant: str, partition: int) -> str:
    return f"{tenant}:limit@p{partition}"


LIMIT = Broadcast(Limit, "limits", Limit, limit_key, "limit")


class Copy(msgspec.Struct, kw_only=True):
    total: Total

    @property
    def key(self) -> str:
        return self.total.key


class ToyLogic(KeyedLogic[Total]):
    """Sums counts per name; a total above the tenant's limit is refused; ticks are counted."""

    name = "toy"
    inputs = (INBOX,)
    tables = ("totals", "limits")
    record_type = Inbox
    broadcasts = (LIMIT,)
    state_table, state_type = "totals", Total
    partitions = PARTITIONS
    routes = {Total: (OUT, (COPIES, lambda t: Copy(total=t) if t.total > 1 else None))}  # noqa: RUF012

    def handle(self, work: PartitionWork, record: Input, item: Count) -> Step[Total]:
        state = work.get_as("totals", item.key, Total) or Total(tenant=item.tenant, name=item.name, total=0)
        limit = self.config(work, LIMIT, item.tenant, record.partition)
        total = state.total + item.n
        if limit is not None and total > limit.most:
            return Step(state, refused=(ReasonCode.INVALID_RECORD, f"{total} > {limit.most}"))
        new = msgspec.structs.replace(state, total=total)
        return Step(new, True, [new], note="counted")

    def on_tick(self, work: PartitionWork, record: Input, tick: Tick) -> None:
        work.note("ticks")

    def touch(self, state: Total, now: int) -> None:
        state.updated_at = now

    def keep_until(self, state: Total) -> int | None:
        return state.updated_at + 10_000


def records(*items: tuple[object, int, int | None]) -> list[Input]:
    """(record or raw bytes, time, partition: None for the key's own) -> inbox records, offsets per partition."""
    found: list[Input] = []
    offsets: dict[int, int] = {}
    for item, ts, partition in items:
        key = getattr(item, "key", "acme")
        p = partition_for(key, PARTITIONS) if partition is None else partition
        raw = item if isinstance(item, bytes) else wire.encode(item)
        found.append(Message(INBOX, p, offsets.get(p, 0), key.encode(), raw, ts, ()))
        offsets[p] = offsets.get(p, 0) + 1
    return found


def letters(outputs: list) -> list[DeadLetter]:
    return [wire.decode(o.value, DeadLetter) for o in outputs if o.topic == DLQ]


def test_the_prelude_dead_letters_bad_and_misrouted_records_and_keeps_one_copy_of_configuration_per_partition() -> None:
    a = Count(tenant="acme", name="a", n=1)
    home = partition_for(a.key, PARTITIONS)
    replay = Replay(ToyLogic(), DLQ)
    outputs = replay.run(
        records(
            (b"{not json", 1_000, home),
            (a, 2_000, (home + 1) % PARTITIONS),  # not its key's partition: a second writer
            *[(Limit(tenant="acme", version=1, most=5), 3_000, p) for p in range(PARTITIONS)],
            (Limit(tenant="acme", version=1, most=99), 3_500, home),  # not newer: noted only
            (a, 4_000, None),
        )
    )
    reasons = sorted((d.reason, d.tenant or "") for d in letters(outputs))
    assert reasons == [(ReasonCode.MALFORMED_JSON, ""), (ReasonCode.MISROUTED, "acme")]
    limits = replay.state.tables()["limits"]
    assert sorted(limits) == sorted(limit_key("acme", p).encode() for p in range(PARTITIONS))
    assert wire.decode_state(limits[limit_key("acme", home).encode()], Limit).most == 5
    assert [o.topic for o in outputs if o.topic != DLQ] == [OUT]


def test_the_finish_writes_the_state_with_its_expiry_routes_outputs_and_dead_letters_a_refusal() -> None:
    a = Count(tenant="acme", name="a", n=1)
    replay = Replay(ToyLogic(), DLQ)
    outputs = replay.run(
        records(
            (Limit(tenant="acme", version=1, most=3), 500, partition_for(a.key, PARTITIONS)),
            (a, 1_000, None),
            (a, 2_000, None),
            (msgspec.structs.replace(a, n=5), 3_000, None),  # over the limit: refused, nothing changes
        )
    )
    totals = [wire.decode(o.value, Total) for o in outputs if o.topic == OUT]
    assert [(t.total, t.updated_at) for t in totals] == [(1, 1_000), (2, 2_000)]
    assert [wire.decode(o.value, Copy).total.total for o in outputs if o.topic == COPIES] == [2]  # None: not sent
    (letter,) = letters(outputs)
    assert (letter.reason, letter.tenant, letter.detail) == (ReasonCode.INVALID_RECORD, "acme", "7 > 3")
    stored = replay.state.tables()["totals"][a.key.encode()]
    assert wire.decode_state(stored, Total).total == 2
    logic = ToyLogic()
    assert logic.expires_at("totals", stored) == 12_000  # the index rebuilt from the store agrees with the write
    assert logic.expires_at("limits", stored) is None


def test_time_is_the_record_time_and_a_tick_s_own_and_an_expired_state_reads_as_absent() -> None:
    a = Count(tenant="acme", name="a", n=1)
    p = partition_for(a.key, PARTITIONS)
    replay = Replay(ToyLogic(), DLQ)
    outputs = replay.run(records((a, 1_000, None), (Tick(ts=50_000), 1_100, p), (a, 1_200, None)), batch=1)
    assert replay.state.watermarks[p] == 50_000  # the tick's time, not its record's; never back
    totals = [wire.decode(o.value, Total).total for o in outputs if o.topic == OUT]
    assert totals == [1, 1]  # kept until 11_000: forgotten by the time the tick said
