"""The baselines' pure pieces (no servers): the ceiling's hop transforms emit the engine's record types with the
engine's keys, its readiness and rate arithmetic, and the Redis designs' stock pools, order plan and oversell
check."""

from __future__ import annotations

from bench.baselines import (
    HOPS,
    ORDER_HEADER,
    REDIS_CANNOT,
    Collector,
    assignments_complete,
    hop_rates,
    lines_of,
    order_plan,
    oversell,
    result_of,
    stock_pools,
)
from schemas import wire
from schemas.inbox import OrderSnapshot
from schemas.inventory import Reserve
from schemas.order import Address, Buyer, Channel, Order, OrderLine, buyer_key
from schemas.saga import DecisionStatus, LineResult, OrderDecision
from workload.generator import Workload, WorkloadSpec


def order(oid: str = "jd-s1-1", skus: tuple[str, ...] = ("SKU-00001", "SKU-00002")) -> Order:
    return Order(
        tenant="acme",
        order_id=oid,
        channel=Channel.JD,
        shop_id="s1",
        platform_order_id=oid.rsplit("-", 1)[-1],
        buyer=Buyer(id="b7"),
        receiver=Address(name="x"),
        lines=[OrderLine(line_no=i + 1, sku=s, quantity=i + 1, unit_price_fen=100) for i, s in enumerate(skus)],
        created_at=1_000,
        ingested_at=2_000,
    )


def relay(o: Order) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    snap = OrderSnapshot(order=o)
    return lines_of(wire.encode(snap), snap.key.encode(), "ceiling-0-0", 5, set())


def test_hop1_fans_out_one_engine_reserve_per_line_keyed_by_sku() -> None:
    outs = relay(order())
    assert [k for k, _, _ in outs] == [b"acme:SKU-00001", b"acme:SKU-00002"]
    cmds = [wire.decode(v, Reserve) for _, v, _ in outs]  # the engine's own schema, validated
    assert [c.quantity for c in cmds] == [1, 2]
    assert {c.reply_to for c in cmds} == {buyer_key(order())}
    assert len({c.seq for c in cmds}) == 2
    assert outs[0][2] == [(ORDER_HEADER, b"2,1000,2000")]


def test_hop1_drops_a_redelivered_order() -> None:
    snap = OrderSnapshot(order=order())
    seen: set[str] = set()
    assert len(lines_of(wire.encode(snap), snap.key.encode(), "o", 1, seen)) == 2
    assert lines_of(wire.encode(snap), snap.key.encode(), "o", 2, seen) == []


def test_hops_2_and_3_answer_each_line_and_decide_once_all_arrived() -> None:
    results = [result_of(v, h) for _, v, h in relay(order())]
    assert {k for k, _, _ in results} == {buyer_key(order()).encode()}
    assert wire.decode(results[0][1], LineResult).line_id == "jd-s1-1#1"
    collector = Collector()
    assert collector.add(results[0][1], results[0][2], 9) is None
    key, value, _ = collector.add(results[1][1], results[1][2], 9) or (b"", b"", [])
    decision = wire.decode(value, OrderDecision)
    assert key == b"acme:jd-s1-1"
    assert (decision.status, decision.channel, len(decision.lines)) == (DecisionStatus.ACCEPTED, Channel.JD, 2)
    assert (decision.order_created_at, decision.ingested_at, decision.decided_at) == (1_000, 2_000, 9)
    assert collector.add(results[1][1], results[1][2], 10) is None  # a redelivered result decides nothing twice
    assert not collector.pending


def test_assignments_complete_only_when_every_relay_holds_a_disjoint_cover() -> None:
    full = {(0, 0): [0, 1], (0, 1): [2, 3], (1, 0): [0, 2], (1, 1): [1, 3]}
    assert assignments_complete(full, hops=2, procs=2, partitions=4)
    assert not assignments_complete({**full, (1, 1): []}, hops=2, procs=2, partitions=4)  # revoked, rebalancing
    assert not assignments_complete({k: v for k, v in full.items() if k != (0, 1)}, 2, 2, 4)  # not joined yet
    assert not assignments_complete({**full, (0, 1): [1, 2, 3]}, 2, 2, 4)  # a partition held twice


def test_hop_rates_span_all_relays_of_a_hop() -> None:
    done = {
        (0, 0): {"in": 100, "out": 200, "first": 10.0, "last": 11.0, "cpu_s": 0.5, "py_cpu_s": 0.25},
        (0, 1): {"in": 100, "out": 150, "first": 10.5, "last": 12.0, "cpu_s": 0.25, "py_cpu_s": 0.25},
        (1, 0): {"in": 0, "out": 0, "first": 0.0, "last": 0.0, "cpu_s": 0.0, "py_cpu_s": 0.0},
    }
    rates = hop_rates(done, hops=2)
    assert rates[0] == {
        "hop": HOPS[0],
        "records": 200,
        "records_out": 350,
        "elapsed_s": 2.0,
        "records_per_s": 100.0,
        "cpu_s": 0.75,
        "python_cpu_s": 0.5,
    }
    assert rates[1]["records"] == 0 and rates[1]["records_per_s"] is None


def test_stock_pools_sum_each_skus_warehouses() -> None:
    w = Workload(WorkloadSpec(orders=200, skus=20))
    pools = stock_pools(w, "p")
    receipts = list(w.opening_stock("x", 0, 0))
    assert sum(pools.values()) == sum(r.quantity for r in receipts)
    assert set(pools) == {f"p:{r.tenant}:{r.sku}" for r in receipts}


def test_order_plan_sends_each_order_once_with_sorted_keys() -> None:
    twice = order(skus=("SKU-9", "SKU-1", "SKU-9"))
    plan = order_plan([twice, twice, order("jd-s1-2")], "p")
    assert len(plan) == 2
    assert plan[0] == (["p:acme:SKU-1", "p:acme:SKU-9"], [2, 4])


def test_oversell_counts_units_beyond_stock_and_lost_updates() -> None:
    totals = {"a": 5, "b": 3}
    assert oversell(totals, {"a": 5, "b": 1}, {"a": 0, "b": 2}) == {
        "oversold_units": 0,
        "negative_keys": 0,
        "inconsistent_keys": 0,
    }
    assert oversell(totals, {"a": 7}, {"a": -2, "b": 2}) == {
        "oversold_units": 2,
        "negative_keys": 1,
        "inconsistent_keys": 1,
    }


def test_redis_cannot_is_short() -> None:
    assert REDIS_CANNOT and all(0 < len(s) <= 160 for s in REDIS_CANNOT)
