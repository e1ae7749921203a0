"""Settings, wire format, workload, topics, schema export, the stage's work unit, the tripwire — no servers."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import jsonschema
import msgspec
import orjson
import pytest

from engine import tripwire
from engine.kafka.clients import partition_for
from engine.runtime.work import ExpiryIndex, Input, Logic, PartitionWork, run_records
from engine.schema_export import export
from engine.settings import Settings, SettingsError, config_table
from engine.state.store import DictPartitions
from engine.supervisor import Spawner
from engine.topics import SPECS, Topics
from schemas import wire
from schemas.common import MAX_LINE_QUANTITY, MAX_STOCK_DELTA
from schemas.deadletter import ReasonCode
from schemas.inbox import InboxRecord, OrderSnapshot
from schemas.inventory import InventoryCommand
from schemas.order import Channel, Order
from workload.generator import Workload, WorkloadSpec

ROOT = Path(__file__).resolve().parents[2]


def test_settings_come_from_the_environment() -> None:
    s = Settings.from_env({"KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "OMS_PARTITIONS": "12", "OMS_SAGA_STUCK_S": "5"})
    assert s.bootstrap == "k1:9092,k2:9092" and not s.uses_local_kafka
    assert s.partitions == 12 and s.saga_stuck_s == 5.0
    assert Settings.from_env({}).bootstrap == "127.0.0.1:9092"
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"OMS_PARTITIONS": "many"}, "OMS_PARTITIONS"),
        ({"OMS_PARTITIONS": "0"}, "OMS_PARTITIONS"),
        ({"OMS_TABLE_STORE": "redis://"}, "OMS_TABLE_STORE"),
        ({"OMS_TOPIC_PREFIX": "a b"}, "OMS_TOPIC_PREFIX"),
        ({"OMS_TRANSACTION_TIMEOUT_S": "1"}, "OMS_TRANSACTION_TIMEOUT_S"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env(env)


def test_readme_documents_every_setting_and_topic() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config_table() in readme, "README's configuration table is out of date: paste `oms config`"
    for spec in SPECS:
        assert f"`<prefix>.{spec.suffix}`" in readme, f"README does not list topic {spec.suffix}"


def test_wire_errors_carry_reason_codes_and_encoding_is_deterministic() -> None:
    with pytest.raises(wire.WireError) as bad_json:
        wire.decode(b"{nope", Order)
    assert bad_json.value.reason is ReasonCode.MALFORMED_JSON
    with pytest.raises(wire.WireError) as bad_type:
        wire.decode(b'{"kind": "reserve", "tenant": 5}', InventoryCommand)
    assert bad_type.value.reason is ReasonCode.SCHEMA_VIOLATION
    order = next(iter(Workload(WorkloadSpec(orders=1, seed=3)).orders()))
    once = wire.encode(OrderSnapshot(order=order))
    assert wire.encode(wire.decode(once, InboxRecord)) == once


def test_identifiers_refuse_path_segments() -> None:
    order = next(iter(Workload(WorkloadSpec(orders=1, seed=3)).orders()))
    with pytest.raises(wire.WireError, match="shop_id"):
        wire.convert({**wire.to_builtins(order), "shop_id": "a/../../b"}, Order)


def test_partitioning_matches_kafka_murmur2() -> None:
    # Known values of the Java client's toPositive(Utils.murmur2(key)) % n, which aiokafka reproduces.
    assert partition_for("acme:SKU-00001", 8) == partition_for(b"acme:SKU-00001", 8)
    spread = {partition_for(f"acme:SKU-{i:05d}", 8) for i in range(200)}
    assert spread == set(range(8))


def test_workload_is_deterministic_per_seed() -> None:
    a = list(Workload(WorkloadSpec(orders=300, seed=4)).orders())
    b = list(Workload(WorkloadSpec(orders=300, seed=4)).orders())
    c = list(Workload(WorkloadSpec(orders=300, seed=5)).orders())
    assert a == b and a != c
    assert len({o.key for o in a}) == 300 and len(a) > 300  # duplicates are re-sent copies
    assert all(o.key.startswith(o.tenant + ":") for o in a)
    assert {len(o.lines) for o in a} <= set(range(1, 7))


@pytest.mark.parametrize("orders", [2_000, 100_000, 1_000_000])
def test_a_generated_day_is_valid_on_the_wire_at_every_size(orders: int) -> None:
    """A hot SKU's opening receipt outgrows an order line's cap as the day grows; it must still be a valid
    receipt (a 100k-order day once dead-lettered two of them)."""
    stock = list(Workload(WorkloadSpec(orders=orders, seed=1)).opening_stock("loader", 0, 1))
    assert max(c.quantity for c in stock) > MAX_LINE_QUANTITY or orders < 100_000
    for command in stock:
        assert wire.decode(wire.encode(command), InventoryCommand) == command
    orders_sample = list(itertools.islice(Workload(WorkloadSpec(orders=orders, seed=1)).orders(), 2_000))
    for order in orders_sample:
        wire.decode(wire.encode(OrderSnapshot(order=order)), InboxRecord)


def test_a_receipt_may_exceed_an_order_lines_cap_but_a_reservation_may_not() -> None:
    receipt = wire.to_builtins(next(Workload(WorkloadSpec(orders=5, seed=2)).opening_stock("l", 1, 1)))
    big = MAX_LINE_QUANTITY * 50
    assert wire.decode(orjson.dumps({**receipt, "quantity": big}), InventoryCommand).quantity == big
    with pytest.raises(wire.WireError) as too_big:
        wire.decode(orjson.dumps({**receipt, "quantity": MAX_STOCK_DELTA + 1}), InventoryCommand)
    assert too_big.value.reason is ReasonCode.SCHEMA_VIOLATION
    reserve = {k: receipt[k] for k in ("tenant", "sku", "origin", "seq", "ts")}
    reserve |= {"kind": "reserve", "command_id": "r1", "order_id": "o1", "line_id": "o1-1", "reply_to": "acme:s:b"}
    assert wire.decode(orjson.dumps({**reserve, "quantity": MAX_LINE_QUANTITY}), InventoryCommand)
    with pytest.raises(wire.WireError):
        wire.decode(orjson.dumps({**reserve, "quantity": MAX_LINE_QUANTITY + 1}), InventoryCommand)


def test_flash_sale_puts_one_scarce_sku_in_front_of_many_buyers() -> None:
    spec = WorkloadSpec(orders=500, seed=1, flash_sale=True, flash_share=0.5, flash_stock=10)
    orders = list(Workload(spec).orders())
    flash = [o for o in orders if o.lines[0].sku == "FLASH-0001"]
    assert len(flash) > 150


def test_exported_schemas_accept_real_records(tmp_path: Path) -> None:
    paths = {p.name: p for p in export(tmp_path)}
    assert {f"{s.schema_name}.schema.json" for s in SPECS if s.public} == set(paths)
    w = Workload(WorkloadSpec(orders=5, seed=2, skus=10))
    samples = {
        "order-inbox.v1.schema.json": [wire.to_builtins(OrderSnapshot(order=o)) for o in w.orders()],
        "inventory-command.v1.schema.json": [wire.to_builtins(c) for c in w.opening_stock("l", 1, 1)],
    }
    for name, records in samples.items():
        schema = json.loads(paths[name].read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        for record in records:
            jsonschema.validate(record, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**samples["inventory-command.v1.schema.json"][0], "tenant": "has:colon"}, schema)


def test_topics_share_one_prefix() -> None:
    t = Topics("oms")
    assert t.order_inbox == "oms.order-inbox" and t.inventory_commands == "oms.inventory-commands"
    assert len(set(t.all())) == len(SPECS) + len(Channel)  # the contract topics and one raw topic per channel
    assert t.channel_of(t.raw[Channel.JD]) is Channel.JD and t.channel_of(t.order_inbox) is None


# -- the work unit ------------------------------------------------------------------------------------------
class Counting(Logic):
    """A toy logic: counts records per key, forgets a key 100 ms (event time) after it reached 3."""

    name = "count"
    tables = ("counts",)
    inputs = ("in",)

    def process(self, work: PartitionWork, record: Input) -> None:
        if record.value == b"boom":
            work.put("counts", b"poison", b"1")
            work.emit("out", b"poison", b"half-done")
            raise RuntimeError("boom")
        work.advance(record.timestamp_ms)
        key = record.key or b""
        n = int(work.get("counts", key) or 0) + 1
        work.put("counts", key, str(n).encode(), expires_at=record.timestamp_ms + 100 if n >= 3 else None)
        work.emit("out", key, str(n).encode())

    def expires_at(self, table: str, value: bytes) -> int | None:
        return None


def _work(store: DictPartitions, index: dict[str, ExpiryIndex] | None = None) -> PartitionWork:
    return PartitionWork("count", 0, {"counts": store}, index if index is not None else {}, 0, "dlq")


def _rec(offset: int, key: bytes, value: bytes = b"x", ts: int = 0) -> Input:
    return Input("in", 0, offset, key, value, ts)


def test_a_failing_record_is_undone_and_dead_lettered_and_the_partition_moves_on() -> None:
    work = _work(DictPartitions())
    positions = run_records(Counting(), work, [_rec(0, b"a"), _rec(1, b"p", b"boom"), _rec(2, b"a")])
    assert positions == {"in": 3}
    assert work.writes["counts"] == {b"a": b"2"}, "the failed record's write is undone"
    assert [o.value for o in work.outputs if o.topic == "out"] == [b"1", b"2"]
    [letter] = work.dead_letters
    assert letter.reason is ReasonCode.PROCESSING_ERROR and letter.original_value == b"boom"
    assert letter.source_offset == 1 and "boom" in letter.detail


def test_entries_whose_time_passed_read_as_absent_and_are_purged() -> None:
    store = DictPartitions()
    work = _work(store)
    run_records(Counting(), work, [_rec(i, b"k", ts=10 * i) for i in range(3)])  # k reaches 3 at t=20
    assert work.get("counts", b"k") == b"3"
    run_records(Counting(), work, [_rec(3, b"other", ts=120)])  # event time passes 20 + 100
    assert work.get("counts", b"k") is None, "forgotten once its time has come"
    assert work.purge_expired() == 1 and work.writes["counts"][b"k"] is None


def test_the_expiry_index_pops_only_current_entries() -> None:
    index = ExpiryIndex()
    index.set(b"a", 10)
    index.set(b"a", 50)  # moved later: the old heap entry is stale
    index.set(b"b", 20)
    index.set(b"c", 30)
    index.set(b"c", None)  # no longer expiring
    assert index.pop_due(25) == [b"b"]
    assert index.pop_due(100) == [b"a"]


# -- the tripwire -------------------------------------------------------------------------------------------
def test_the_patched_faust_and_aiokafka_internals_are_the_reviewed_ones() -> None:
    assert tripwire.differences() == []


def test_the_tripwire_names_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    path = next(iter(tripwire.EXPECTED))
    why, _ = tripwire.EXPECTED[path]
    monkeypatch.setitem(tripwire.EXPECTED, path, (why, "0000000000000000"))
    monkeypatch.setitem(tripwire.VERSIONS, "aiokafka", "0.0.1")
    with pytest.raises(tripwire.TripwireError) as err:
        tripwire.check()
    assert path in str(err.value) and "aiokafka is" in str(err.value)


def test_struct_state_is_typed_not_single_letter_keys() -> None:
    from agents.inventory.core import SkuStock
    from agents.orders.state import OrderState

    for struct in (SkuStock, OrderState):
        assert all(len(f) > 2 for f in struct.__struct_fields__), f"{struct.__name__} has cryptic field names"
    assert msgspec.json.encode(SkuStock(tenant="t", sku="s")).startswith(b'{"tenant":"t"')


def test_a_child_started_from_a_short_lived_thread_outlives_the_thread(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG is per thread: the spawner keeps children alive when the thread asking ends, and still
    ends them when the spawner itself goes (its stand-in for the parent dying)."""
    spawner = Spawner()
    started: list[subprocess.Popen] = []
    asker = threading.Thread(
        target=lambda: started.append(spawner.popen(["sleep", "30"], tmp_path / "child.log", dict(os.environ)))
    )
    asker.start()
    asker.join()
    child = started[0]
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)  # would be -SIGTERM right away if forked from the asking thread
        spawner.close()
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
