"""Stock sync without servers: the allocation over shops, coalescing by record time, refusals and backoff, stale
answers, the platforms' request shapes (against the simulated platforms' parser), the rules file, and the
checker's Y1–Y3 on broken histories."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.stocksync import core
from agents.stocksync.platforms import accepted, request_for
from agents.stocksync.publish import RulesError, parse_rules
from invariants.check import Verdict
from invariants.collect import Outputs
from invariants.inputs import Inputs
from invariants.stocksync import check_stock_sync, expected
from schemas.inventory import CommandKind, StockEvent
from schemas.stocksync import AtpChanged, ShopRule, SkuRule, StockSyncResult, StockUpdate, SyncRules, SyncShop
from workload import platforms as sim

SHOPS = [SyncShop(shop_id="tm-1", platform="taobao"), SyncShop(shop_id="jd-1", platform="jd"),
         SyncShop(shop_id="dy-1", platform="douyin"), SyncShop(shop_id="s1", platform="shopify")]  # fmt: skip


def rules(**changes: object) -> SyncRules:
    base = {
        "tenant": "acme",
        "version": 1,
        "shops": SHOPS,
        "safety_stock": 2,
        "rules": [
            ShopRule(shop_id="tm-1", share_pct=50),
            ShopRule(shop_id="jd-1", share_pct=30),
            ShopRule(shop_id="dy-1", mode="fixed", fixed=10),
            ShopRule(shop_id="s1", mode="off"),
        ],
        "every_ms": 1000,
    }
    return SyncRules(**{**base, **changes})  # type: ignore[arg-type]


def atp(on_hand: int, reserved: int, version: int, wh: str = "WH-SH") -> AtpChanged:
    return AtpChanged(tenant="acme", sku="A", warehouse=wh, on_hand=on_hand, reserved=reserved, version=version, ts=1)


def test_allocation_holds_back_safety_stock_serves_fixed_first_and_splits_the_rest() -> None:
    # ATP 42, safety 2 -> 40; dy-1 fixed 10 -> 30 left; tm-1 50 % and jd-1 30 % of 30; s1 off.
    assert core.allocate(rules(), "A", 42) == {"tm-1": 15, "jd-1": 9, "dy-1": 10, "s1": 0}
    assert core.allocate(rules(), "A", 5) == {"tm-1": 0, "jd-1": 0, "dy-1": 3, "s1": 0}
    assert core.allocate(rules(), "A", 0) == {"tm-1": 0, "jd-1": 0, "dy-1": 0, "s1": 0}
    # Shares past 100 % are scaled down; no rule is a 100 % share.
    over = rules(rules=[ShopRule(shop_id="tm-1", share_pct=100)], safety_stock=0)
    assert core.allocate(over, "A", 30) == {"tm-1": 7, "jd-1": 7, "dy-1": 7, "s1": 7}
    # SKU rules: an exact SKU beats a category prefix beats the shop's rule; oversell adds on top.
    sku_rules = [
        SkuRule(shop_id="s1", sku="A*", mode="share", share_pct=10, oversell=5),
        SkuRule(shop_id="s1", sku="AB", mode="fixed", fixed=1),
    ]
    r = rules(sku_rules=sku_rules)
    assert core.allocate(r, "A1", 42)["s1"] == 3 + 5
    assert core.allocate(r, "AB", 42)["s1"] == 1
    assert core.allocate(r, "B", 42)["s1"] == 0


@given(
    st.integers(0, 10_000),
    st.integers(0, 50),
    st.lists(st.tuples(st.sampled_from(["share", "fixed", "off"]), st.integers(0, 100), st.integers(0, 500)),
             min_size=4, max_size=4),
)  # fmt: skip
def test_without_oversell_the_shops_never_get_more_than_atp(available: int, safety: int, picks: list) -> None:
    shop_rules = [
        ShopRule(shop_id=s.shop_id, mode=mode, share_pct=pct, fixed=fixed)
        for s, (mode, pct, fixed) in zip(SHOPS, picks, strict=True)
    ]
    r = rules(rules=shop_rules, safety_stock=safety)
    got = core.allocate(r, "A", available)
    assert sum(got.values()) <= max(0, available - safety)
    assert got == expected(r, "A", available)  # the checker's restatement agrees


def test_updates_are_coalesced_per_sku_by_record_time() -> None:
    state = core.new_state("acme", "A")
    first = core.stock_changed(state, atp(42, 0, 1), rules(), now=10_000)
    assert {u.shop_id: u.quantity for u in first.outputs} == {"tm-1": 15, "jd-1": 9, "dy-1": 10, "s1": 0}
    # Inside the next second: nothing leaves, the round is due at sent_at + every_ms.
    second = core.stock_changed(state, atp(42, 10, 2), rules(), now=10_300)
    assert second.outputs == [] and second.due == 11_000 and second.note == "coalesced"
    third = core.stock_changed(state, atp(42, 20, 3), rules(), now=10_600)
    assert third.outputs == [] and third.due == 11_000
    due = core.sync(state, rules(), now=11_000)  # the tick: only the latest quantities, only shops that changed
    assert {u.shop_id: u.quantity for u in due.outputs} == {"tm-1": 5, "jd-1": 3}
    assert all(u.stock_version == 3 for u in due.outputs)
    # A copy of an applied change changes nothing.
    assert core.stock_changed(state, atp(42, 20, 3), rules(), now=12_000).changed is False


def test_a_refusal_asks_again_after_a_backoff_with_the_current_quantity_and_stale_answers_are_noted() -> None:
    state = core.new_state("acme", "A")
    sent = {u.shop_id: u for u in core.stock_changed(state, atp(42, 0, 1), rules(), now=10_000).outputs}

    def answer(u: StockUpdate, status: str) -> StockSyncResult:
        return StockSyncResult(update_id=u.update_id, tenant="acme", shop_id=u.shop_id, sku="A",
                               quantity=u.quantity, status=status, ts=1)  # type: ignore[arg-type]  # fmt: skip

    refused = core.answered(state, answer(sent["tm-1"], "refused"), rules(), now=12_000)
    assert refused.note == "refused" and refused.outputs == [] and refused.due == 12_500
    core.stock_changed(state, atp(42, 10, 2), rules(), now=12_100)  # stock moved meanwhile
    again = core.sync(state, rules(), now=12_500)
    tm = next(u for u in again.outputs if u.shop_id == "tm-1")
    assert tm.quantity == 10 and tm.attempt == 2 and tm.update_id != sent["tm-1"].update_id
    assert core.answered(state, answer(sent["tm-1"], "accepted"), rules(), now=12_600).note == "stale_answer"
    assert core.answered(state, answer(tm, "accepted"), rules(), now=12_700).note == "accepted"
    assert state.shops["tm-1"].acked == 10
    # A second refusal in a row waits longer.
    core.answered(state, answer(next(u for u in again.outputs if u.shop_id == "jd-1"), "refused"), rules(), 13_000)
    assert state.retry_at == 13_500


def test_no_rules_no_updates_and_a_new_version_is_applied_to_the_same_stock() -> None:
    state = core.new_state("acme", "A")
    assert core.stock_changed(state, atp(42, 0, 1), None, now=1_000).outputs == []
    r2 = rules(version=2, rules=[ShopRule(shop_id="tm-1", mode="fixed", fixed=40)])
    out = {u.shop_id: u.quantity for u in core.sync(state, r2, now=2_000).outputs}
    assert out["tm-1"] == 40 and sum(out.values()) <= 42


@pytest.mark.parametrize("platform", ["taobao", "jd", "douyin", "shopify"])
def test_each_platforms_request_shape_round_trips_through_the_simulated_platform(platform: str) -> None:
    update = StockUpdate(
        update_id="stk.acme.x.A.s1.r1.a1", tenant="acme", shop_id="x", platform=platform, sku="SKU-9", quantity=17,
        atp=20, stock_version=1, rules_version=1, ts=1,
    )  # type: ignore[arg-type]  # fmt: skip
    req = request_for(update)
    platforms = sim.SimulatedPlatforms(fail_every=2)
    status, body = platforms.handle(platform, {**req.headers}, req.body)
    assert accepted(platform, status, body)[0]
    assert platforms.state()["quantities"] == [
        {"platform": platform, "tenant": "acme", "shop_id": "x", "sku": "SKU-9", "quantity": 17}
    ]
    other = request_for(msgspec.structs.replace(update, update_id="other", quantity=3))
    status, body = platforms.handle(platform, {**other.headers}, other.body)  # the 2nd call: refused, busy
    ok, words = accepted(platform, status, body)
    assert not ok and words
    status, body = platforms.handle(platform, {**req.headers}, req.body)  # a repeat: its first answer
    assert accepted(platform, status, body)[0] and platforms.state()["repeated"] == 1


def test_a_rules_file_is_checked_before_it_is_published() -> None:
    good = """
[[tenant]]
tenant = "acme"
version = 3
shops = [ { shop_id = "tm-1", platform = "taobao" } ]
rules = [ { shop_id = "tm-1", mode = "share", share_pct = 80 } ]
"""
    (r,) = parse_rules(good)
    assert r.version == 3 and r.rules[0].share_pct == 80
    with pytest.raises(RulesError, match="not in its shops"):
        parse_rules(good.replace('rules = [ { shop_id = "tm-1"', 'rules = [ { shop_id = "jd-9"'))
    with pytest.raises(RulesError, match="share_pct"):
        parse_rules(good.replace("share_pct = 80", "share_pct = 180"))
    with pytest.raises(RulesError, match="no \\[\\[tenant\\]\\]"):
        parse_rules("x = 1")


def _event(version: int, on_hand: int, reserved: int) -> StockEvent:
    return StockEvent(
        event_id=f"e{version}", tenant="acme", sku="A", warehouse="WH-SH", kind=CommandKind.RESERVE, d_on_hand=0,
        d_reserved=0, on_hand=on_hand, reserved=reserved, version=version, origin="o", seq=version, ts=1,
    )  # fmt: skip


def _verdict(updates: list[StockUpdate], results: list[StockSyncResult], complete: bool = True) -> Verdict:
    events = [_event(1, 42, 0), _event(2, 42, 20)]
    inputs = Inputs(sync_rules=[rules()], stock_sync_complete=complete)
    out = Outputs(stock_updates=updates, stock_sync_results=results)
    v = Verdict()
    check_stock_sync(inputs, out, {e.event_id: e for e in events}, v)
    return v


def _round(version: int, atp_now: int, skew: dict[str, int] | None = None) -> tuple[list, list]:
    want = {**expected(rules(), "A", atp_now), **(skew or {})}
    updates = [
        StockUpdate(update_id=f"u{version}{shop}", tenant="acme", shop_id=shop, platform="taobao", sku="A",
                    quantity=q, atp=atp_now, stock_version=version, rules_version=1, ts=1)
        for shop, q in want.items()
    ]  # fmt: skip
    results = [
        StockSyncResult(update_id=u.update_id, tenant="acme", shop_id=u.shop_id, sku="A", quantity=u.quantity,
                        status="accepted", ts=1)
        for u in updates
    ]  # fmt: skip
    return updates, results


def test_the_checker_accepts_a_true_history_and_catches_each_kind_of_lie() -> None:
    u1, r1 = _round(1, 42)
    u2, r2 = _round(2, 22)
    assert _verdict(u1 + u2, r1 + r2).ok
    # Y2: the platforms were left at the first round's quantities.
    bad = _verdict(u1 + u2, r2 + r1)
    assert not bad.ok and any(f.startswith("Y2") for f in bad.violations)
    # Y1: a quantity the rule does not give for that stock version.
    lie, lie_results = _round(2, 22, {"tm-1": 11})
    assert any(f.startswith("Y1") for f in _verdict(u1 + lie, r1 + lie_results).violations)
    # Y3: a round that adds up to more than ATP (a rule the engine invented).
    greedy, greedy_results = _round(2, 22, {"s1": 30})
    assert any(f.startswith("Y3") for f in _verdict(u1 + greedy, r1 + greedy_results).violations)
    # An update naming rules nobody published.
    stray = [StockUpdate(update_id="s", tenant="acme", shop_id="tm-1", platform="taobao", sku="A", quantity=1,
                         atp=1, stock_version=1, rules_version=9, ts=1)]  # fmt: skip
    assert any("never published" in f for f in _verdict(stray, [], complete=False).violations)


def test_the_example_rules_file_parses() -> None:
    from pathlib import Path

    from agents.stocksync.publish import load_rules

    (r,) = load_rules(Path(__file__).resolve().parents[2] / "deploy" / "stocksync.example.toml")
    assert r.tenant == "acme" and {s.platform for s in r.shops} == {"taobao", "jd", "douyin", "shopify"}
