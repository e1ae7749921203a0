"""Stock sync (库存同步) on the real broker, Redis and the simulated platforms (a real HTTP server): four shops of
four platforms, a day of orders moving stock, the rules changed mid-day, and a platform that refuses every
fourth call. At the end every shop holds what its rule gives of the final ATP (on the platform itself and by
Y1–Y3 from the topics), no round gave the shops more than ATP, refusals were asked again, a hot SKU's updates
were coalesced, and the API shows each shop's sync state. Every invariant is checked at the end."""

from __future__ import annotations

import random

import pytest

from agents.stocksync.publish import publish_sync_rules
from invariants.stocksync import expected
from schemas.inventory import Receive, receive_id
from schemas.order import Address, Buyer, Channel, Order, OrderLine, OrderStatus, order_id
from schemas.stocksync import ShopRule, SkuRule, SyncRules, SyncShop
from tests.pipeline.harness import Pipeline, http, wait_for
from tests.pipeline.test_channels_pipeline import auth
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.day import wait_stock_sync
from workload.delivery import Credentials
from workload.generator import DAY_START_MS
from workload.platforms import SimulatedPlatforms

pytestmark = pytest.mark.pipeline

SKUS = ["SY-HOT", "SY-A", "SY-B", "SY-C", "SY-D", "FL-1"]
WAREHOUSES = ["WH-SH", "WH-BJ"]
SHOPS = [
    SyncShop(shop_id="tm-1", platform="taobao"),
    SyncShop(shop_id="jd-1", platform="jd"),
    SyncShop(shop_id="dy-1", platform="douyin"),
    SyncShop(shop_id="s1", platform="shopify", location_id="7001"),
]
HOME = Address(name="孙八", phone="13500001234", province="广东省", city="广州市", street="天河路 5 号")


def rules(version: int, tm_share: int) -> SyncRules:
    return SyncRules(
        tenant="acme", version=version, shops=SHOPS, safety_stock=3, every_ms=1_000,
        rules=[
            ShopRule(shop_id="tm-1", share_pct=tm_share), ShopRule(shop_id="jd-1", share_pct=30),
            ShopRule(shop_id="dy-1", mode="fixed", fixed=8), ShopRule(shop_id="s1", share_pct=20),
        ],
        sku_rules=[SkuRule(shop_id="dy-1", sku="FL-*", mode="off")],
    )  # fmt: skip


def receipts() -> list[Receive]:
    return [
        Receive(
            command_id=receive_id("acme", sku, wh, "sy"), tenant="acme", sku=sku, origin="sync-loader", seq=n + 1,
            ts=1, warehouse=wh, quantity=120 if sku == "SY-HOT" else 30, unit_cost_fen=900, document_id="sy",
        )
        for n, (sku, wh) in enumerate((s, w) for s in SKUS for w in WAREHOUSES)
    ]  # fmt: skip


def orders(first: int, n: int, at: int, rng: random.Random) -> list[Order]:
    out = []
    for i in range(first, first + n):
        skus = ["SY-HOT", rng.choice(SKUS[1:])]
        lines = [OrderLine(line_no=k + 1, sku=s, quantity=rng.randint(1, 2), unit_price_fen=1_990)
                 for k, s in enumerate(skus)]  # fmt: skip
        out.append(
            Order(
                tenant="acme", order_id=order_id(Channel.TMALL, "tm-1", f"sy{i}"), channel=Channel.TMALL,
                shop_id="tm-1", platform_order_id=f"sy{i}", status=OrderStatus.PAID, buyer=Buyer(id=f"sy-{i}"),
                receiver=HOME, lines=lines, created_at=at + i, ingested_at=at + i, version=at + i,
            )
        )  # fmt: skip
    return out


def test_every_shop_ends_with_its_rule_applied_to_the_final_atp_through_refusals(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    platforms = SimulatedPlatforms(fail_every=4).start()
    try:
        first_rules = rules(1, 50)
        publish_sync_rules(pipeline.settings, [first_rules], "test-sync")
        pipeline.inputs.sync_rules.append(first_rules)
        pipeline.send_commands(receipts())
        pool = pipeline.start_workers(2, platform_url=platforms.url)
        rng = random.Random(41)
        now = DAY_START_MS + 11 * 3_600_000
        day = orders(0, 60, now, rng)
        pipeline.send_orders(day)
        pipeline.wait_decisions(len(day), timeout_s=180, pool=pool)
        # The rules change mid-day: every SKU of the tenant is sent again under the new version.
        second_rules = rules(2, 40)
        publish_sync_rules(pipeline.settings, [second_rules], "test-sync")
        pipeline.inputs.sync_rules.append(second_rules)
        more = orders(60, 60, now + 1_000, rng)
        pipeline.send_orders(more)
        pipeline.wait_decisions(len(day) + len(more), timeout_s=180, pool=pool)
        wait_stock_sync(pipeline.settings, pipeline.topics, pool)  # idle, and no round waiting for its time

        # -- what the platforms hold: each shop, its rule of the final ATP -----------------------------------
        final = pipeline.verdict().counts["final_levels"]
        state = platforms.state()
        held = {(q["shop_id"], q["sku"]): q["quantity"] for q in state["quantities"] if q["tenant"] == "acme"}
        for sku in SKUS:
            atp = sum(max(0, on_hand - reserved) for on_hand, reserved in final[f"acme:{sku}"].values())
            want = expected(second_rules, sku, atp)
            assert {shop: held.get((shop, sku)) for shop in want} == want, (sku, atp)
            assert sum(want.values()) <= atp
        assert held[("dy-1", "FL-1")] == 0  # the category rule switched the shop off for it
        assert state["refused"] > 0, "the platform never refused: the retries were not exercised"

        # -- the engine's own word: refusals asked again, a hot SKU coalesced ------------------------------
        notes: dict[str, int] = {}
        for i in range(pool.count):
            for what, n in pipeline.stats(pool, i, "stocksync").get("notes", {}).items():
                notes[what] = notes.get(what, 0) + n
        assert notes.get("refused", 0) > 0 and notes.get("coalesced", 0) > 0, notes
        assert notes.get("sync_rules_applied", 0) >= 2 * pipeline.settings.partitions, notes

        # -- the API: each shop's sync state and each SKU's per-shop quantity ----------------------------------
        headers = auth(credentials)

        def shown() -> bool:
            status, body = http("GET", pipeline.api("/api/v1/acme/stock/SY-HOT"), None, headers)
            return status == 200 and {s: v["quantity"] for s, v in body["shops"].items()} == {
                shop: held[(shop, "SY-HOT")] for shop in ("tm-1", "jd-1", "dy-1", "s1")
            }

        wait_for(shown, 60, "the stock view's per-shop quantities")
        status, synced = http("GET", pipeline.api("/api/v1/acme/stock-sync/jd-1"), None, headers)
        assert status == 200 and synced["skus"]["SY-A"]["quantity"] == held[("jd-1", "SY-A")]

        pipeline.inputs.stock_sync_complete = True
        verdict = assert_invariants(pipeline)
        assert verdict.counts["stock_updates_refused"] > 0
    finally:
        platforms.stop()
