"""Settings, codec, wire format, workload, topics and schema export — no servers."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from engine import codec
from engine.schema_export import export
from engine.settings import Settings, SettingsError, config_table
from engine.stage import ADMIT, AHEAD, COVERED, admission, offset_key, partition_for
from engine.topics import SPECS, Topics
from engine.transport import _NoReadFilter
from engine.workload import Workload, WorkloadSpec
from schemas import wire
from schemas.deadletter import ReasonCode
from schemas.inventory import InventoryCommand
from schemas.order import Channel, Order

ROOT = Path(__file__).resolve().parents[2]


def test_settings_come_from_the_environment() -> None:
    s = Settings.from_env({"KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "OMS_PARTITIONS": "12", "OMS_SAGA_TIMEOUT_S": "5"})
    assert s.bootstrap == "k1:9092,k2:9092" and not s.uses_local_kafka
    assert s.partitions == 12 and s.saga_timeout_s == 5.0
    assert Settings.from_env({}).bootstrap == "127.0.0.1:9092"
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"OMS_PARTITIONS": "many"}, "OMS_PARTITIONS"),
        ({"OMS_PARTITIONS": "0"}, "OMS_PARTITIONS"),
        ({"OMS_TABLE_STORE": "redis://"}, "OMS_TABLE_STORE"),
        ({"OMS_TOPIC_PREFIX": "a b"}, "OMS_TOPIC_PREFIX"),
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


def test_codec_round_trips_state_and_tombstones() -> None:
    codec.register()
    from faust.serializers import codecs

    c = codecs.get_codec("orjson")
    assert c.loads(c.dumps({"l": {"W": [1, 2]}})) == {"l": {"W": [1, 2]}}
    assert c.loads(b"") is None  # a deleted key's tombstone during recovery


def test_wire_errors_carry_reason_codes() -> None:
    with pytest.raises(wire.WireError) as bad_json:
        wire.decode(b"{nope", Order)
    assert bad_json.value.reason is ReasonCode.MALFORMED_JSON
    with pytest.raises(wire.WireError) as bad_type:
        wire.decode(b'{"kind": "reserve", "tenant": 5}', InventoryCommand)
    assert bad_type.value.reason is ReasonCode.SCHEMA_VIOLATION


def test_partitioning_matches_kafka_murmur2() -> None:
    # Values from the Java client's Utils.murmur2 (toPositive(murmur2(key)) % n), as aiokafka implements it.
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
    stock = list(Workload(WorkloadSpec(orders=300, seed=4)).opening_stock("loader", 1000, 1))
    assert [c.seq for c in stock] == sorted({c.seq for c in stock})  # strictly increasing per origin


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
        "order.v1.schema.json": [wire.to_builtins(o) for o in w.orders()],
        "inventory-command.v1.schema.json": [wire.to_builtins(c) for c in w.opening_stock("l", 1, 1)],
    }
    for name, records in samples.items():
        schema = json.loads(paths[name].read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        for record in records:
            jsonschema.validate(record, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**records[0], "tenant": "has:colon"}, schema)


def test_topics_share_one_prefix() -> None:
    t = Topics("oms")
    assert t.orders == "oms.orders" and t.inventory_commands == "oms.inventory-commands"
    assert len(set(t.all())) == len(SPECS) + len(Channel)  # the contract topics and one raw topic per channel
    assert t.channel_of(t.raw[Channel.JD]) is Channel.JD and t.channel_of(t.orders) is None


def test_admission_is_strictly_in_offset_order() -> None:
    assert admission(expected=10, offset=10) == ADMIT
    assert admission(expected=10, offset=9) == COVERED  # the state already includes it: a replay
    assert admission(expected=10, offset=0) == COVERED
    assert admission(expected=10, offset=11) == AHEAD  # a hole: offset 10 was never seen
    assert offset_key("oms.orders", 3) == "oms.orders/3"


def test_faust_read_offset_filter_is_off() -> None:
    """Faust drops records below its read offset and books jumps as gaps; with this mapping it does neither."""
    offsets = _NoReadFilter()
    offsets["t", 0] = 500  # what Faust writes after a stale record
    assert offsets["t", 0] is None  # what its drain loop then reads: re-fetched record 12 is not dropped
    offsets.pop(("t", 0), None)
    offsets.update({("t", 1): 3})
    assert offsets["t", 1] is None
