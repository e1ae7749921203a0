"""Replay determinism of the stages' logic (I7), in-process: the same ordered input gives byte-identical outputs
and state, whatever the batch size and from any restart point. (The pipeline test
``test_replaying_each_stage_reproduces_what_the_engine_wrote`` compares the same against a real run.)"""

from __future__ import annotations

import time

from agents.inventory.agent import InventoryLogic
from agents.orders.agent import OrderLogic
from engine.kafka.clients import partition_for
from engine.runtime.replay import Replay
from engine.runtime.work import Input, Output
from engine.topics import Topics
from schemas import wire
from schemas.inbox import OrderSnapshot
from workload.generator import Workload, WorkloadSpec

PARTITIONS = 4
TOPICS = Topics("t")


def _append(log: list[Input], topic: str, key: str | bytes, value: bytes, ts: int, offsets: dict) -> None:
    raw_key = key.encode() if isinstance(key, str) else key
    p = partition_for(raw_key, PARTITIONS)
    offset = offsets.get((topic, p), 0)
    offsets[(topic, p)] = offset + 2  # every other offset: as if transaction markers sat in between
    log.append(Input(topic, p, offset, raw_key, value, ts))


def recorded_logs() -> tuple[list[Input], list[Input]]:
    """A small day run through both logics in a loop, recording each stage's input log as it was built."""
    workload = Workload(WorkloadSpec(orders=250, seed=7, skus=40, hot_skus=5, hot_stock_ratio=0.3))
    inbox: list[Input] = []
    commands: list[Input] = []
    offsets: dict = {}
    now = int(time.time() * 1000)
    for cmd in workload.opening_stock("loader", 0, now):
        _append(commands, TOPICS.inventory_commands, cmd.key, wire.encode(cmd), now, offsets)
    for order in workload.orders():
        snapshot = OrderSnapshot(order=order)
        _append(inbox, TOPICS.order_inbox, snapshot.key, wire.encode(snapshot), now, offsets)
    orders = Replay(OrderLogic(TOPICS, PARTITIONS, 86_400_000, "e1"), TOPICS.dead_letters)
    stock = Replay(InventoryLogic(TOPICS, PARTITIONS, 86_400_000), TOPICS.dead_letters)
    done_inbox = done_commands = 0
    while done_inbox < len(inbox) or done_commands < len(commands):
        now += 5
        for out in orders.run(inbox[done_inbox:]):
            if out.topic == TOPICS.inventory_commands:
                _append(commands, out.topic, out.key or b"", out.value or b"", now, offsets)
        done_inbox = len(inbox)
        for out in stock.run(commands[done_commands:]):
            if out.topic == TOPICS.order_inbox:
                _append(inbox, out.topic, out.key or b"", out.value or b"", now, offsets)
        done_commands = len(commands)
    return inbox, commands


def _ordered(records: list[Input]) -> list[Input]:
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _signature(outputs: list[Output]) -> list[tuple]:
    return [(o.topic, o.key, o.value) for o in outputs]


def test_each_stage_replays_to_the_same_outputs_and_state_whatever_the_batching() -> None:
    inbox, commands = recorded_logs()
    assert len(inbox) > 600 and len(commands) > 800
    for make, log in (
        (lambda: OrderLogic(TOPICS, PARTITIONS, 86_400_000, "e1"), _ordered(inbox)),
        (lambda: InventoryLogic(TOPICS, PARTITIONS, 86_400_000), _ordered(commands)),
    ):
        runs = []
        for batch in (1, 7, 10_000):
            replay = Replay(make(), TOPICS.dead_letters)
            outputs = replay.run(log, batch=batch)
            runs.append((_signature(outputs), replay.state.tables()))
        assert runs[0] == runs[1] == runs[2]
        assert runs[0][0], "the stage produced outputs"


def test_each_stage_replays_the_same_from_a_restart_point() -> None:
    inbox, commands = recorded_logs()
    for make, log in (
        (lambda: OrderLogic(TOPICS, PARTITIONS, 86_400_000, "e1"), _ordered(inbox)),
        (lambda: InventoryLogic(TOPICS, PARTITIONS, 86_400_000), _ordered(commands)),
    ):
        whole = Replay(make(), TOPICS.dead_letters)
        expected = _signature(whole.run(log, batch=50))
        first = Replay(make(), TOPICS.dead_letters)
        cut = len(log) // 2
        head = _signature(first.run(log[:cut], batch=13))
        resumed = Replay(make(), TOPICS.dead_letters, first.state.snapshot())
        # The restarted stage is handed the whole log again, as after a crash: what its state covers is skipped.
        tail = _signature(resumed.run(log, batch=31))
        assert sorted(head + tail) == sorted(expected)
        assert resumed.state.tables() == whole.state.tables()


def test_an_order_from_a_channel_clock_far_ahead_does_not_make_later_orders_look_forgotten() -> None:
    """Event time follows channel time only up to a day ahead of the log's own time; a newer order after one
    stamped a month ahead is decided, and an order really older than the retention is dead-lettered."""
    import msgspec

    from schemas.deadletter import DeadLetter, ReasonCode

    workload = Workload(WorkloadSpec(orders=3, seed=7))
    first, second, third = list(workload.orders())[:3]
    now, day = int(time.time() * 1000), 86_400_000
    buyer = first.buyer
    ahead = msgspec.structs.replace(first, created_at=now + 30 * day, version=now + 30 * day)
    normal = msgspec.structs.replace(second, buyer=buyer, shop_id=first.shop_id, created_at=now - 3_600_000,
                                     version=now - 3_600_000)  # fmt: skip
    ancient = msgspec.structs.replace(third, buyer=buyer, shop_id=first.shop_id, created_at=now - 30 * day,
                                      version=now - 30 * day)  # fmt: skip
    log: list[Input] = []
    offsets: dict = {}
    for order in (ahead, normal, ancient):
        snapshot = OrderSnapshot(order=order)
        _append(log, TOPICS.order_inbox, snapshot.key, wire.encode(snapshot), now, offsets)
    assert len({r.partition for r in log}) == 1
    outputs = Replay(OrderLogic(TOPICS, PARTITIONS, 7 * day, "e1"), TOPICS.dead_letters).run(log)
    letters = [wire.decode(o.value, DeadLetter) for o in outputs if o.topic == TOPICS.dead_letters]
    assert [(d.reason, d.source_offset) for d in letters] == [(ReasonCode.FORGOTTEN_ORDER, log[2].offset)]
    decided = {o.key for o in outputs if o.topic == TOPICS.review_decisions}
    assert f"{normal.tenant}:{normal.order_id}".encode() in decided
