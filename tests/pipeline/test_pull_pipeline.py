"""Order pulling (定时抓取) on the real broker and the simulated platforms' order list: a Tmall shop whose orders
are all on the platform, two thirds of them also pushed; a third arrive by pull only (their push never came);
then an outage of the platform's list API while more pull-only orders are placed. Every order is decided once,
the pull resumed from its checkpoint in Kafka after the outage (which the platform and the puller both saw), the
list was read page by page, and every invariant holds."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import orjson
import pytest

from engine.kafka.clients import Sender
from engine.tenants import PullShop
from schemas.order import Address, Buyer, Channel, Order, OrderLine, OrderStatus, order_id
from schemas.pulling import PullCheckpoint
from tests.pipeline.harness import Pipeline, wait_for
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.channels import taobao
from workload.delivery import Credentials
from workload.generator import DAY_START_MS, Workload, WorkloadSpec
from workload.platforms import SimulatedPlatforms

pytestmark = pytest.mark.pipeline

HOME = Address(name="周九", phone="13400001234", province="浙江省", city="杭州市", street="西湖路 9 号")


def orders(skus: list[str], first: int, n: int, at: int, rng: random.Random) -> list[Order]:
    return [
        Order(
            tenant="acme", order_id=order_id(Channel.TMALL, "tm-9", f"{7_000_000 + i}"), channel=Channel.TMALL,
            shop_id="tm-9", platform_order_id=f"{7_000_000 + i}", status=OrderStatus.PAID,
            buyer=Buyer(id=f"pl-{i}", nick=f"pl-{i}"), receiver=HOME,
            lines=[OrderLine(line_no=1, sku=rng.choice(skus), quantity=1, unit_price_fen=5_000)],
            created_at=at + i * 1_000, paid_at=at + i * 1_000, ingested_at=0,
        )
        for i in range(first, first + n)
    ]  # fmt: skip


def intent(o: Order) -> Order:
    """What the Taobao payload means: its version is the trade's ``modified``, to the second."""
    return msgspec.structs.replace(o, version=o.created_at // 1000 * 1000)


def test_pulled_orders_catch_up_missed_pushes_and_an_outage_without_loss_or_duplicates(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    platforms = SimulatedPlatforms().start()
    try:
        shop = PullShop(channel="tmall", shop_id="tm-9", every_s=1.0)
        creds = Credentials.create(["acme", "blue"], tmp_path, pull=[("acme", shop)])
        workload = Workload(WorkloadSpec(orders=10, seed=9, skus=20))
        pipeline.load(workload)
        skus = [workload.spec.sku(i + 1) for i in range(20)]
        pool = pipeline.start_workers(
            2, tenants_file=str(creds.path), platform_url=platforms.url, pull_page_size=7, pull_overlap_s=5
        )
        rng = random.Random(3)
        day = orders(skus, 0, 45, DAY_START_MS + 8 * 3_600_000, rng)
        pushed, pull_only = day[:30], day[30:]
        sender = Sender(pipeline.bootstrap)
        for o in day:
            platforms.place("acme", "tm-9", taobao(o))
        for o in pushed:
            sender.send(pipeline.topics.raw[Channel.TMALL], f"acme:tm-9:{o.platform_order_id}", orjson.dumps(taobao(o)))
        sender.flush()
        pipeline.inputs.add_orders(intent(o) for o in day)
        pipeline.wait_decisions(len(day), timeout_s=180, pool=pool)

        # -- an outage of the list API: more orders are placed (their pushes lost); the pull catches up after ----
        def puller_stats() -> dict:
            found: dict[str, int] = {}
            for i in range(pool.count):
                side = (pool.stats(i) or {}).get("sidecars", {}).get("order-puller", {})
                for k in ("windows", "pages", "orders", "refused"):
                    found[k] = found.get(k, 0) + int(side.get(k, 0))
            return found

        platforms.outage(True)
        late = orders(skus, 45, 15, DAY_START_MS + 9 * 3_600_000, rng)
        for o in late:
            platforms.place("acme", "tm-9", taobao(o))
        pipeline.inputs.add_orders(intent(o) for o in late)
        wait_for(lambda: platforms.state()["list_refused"] >= 2 and puller_stats()["refused"] >= 2, 60, "the outage")
        assert len(pipeline.decisions()) == len(day), "an order arrived during the outage: the outage did not hold"
        platforms.outage(False)
        pipeline.wait_decisions(len(day) + len(late), timeout_s=180, pool=pool)

        stats = puller_stats()
        assert stats["pages"] > stats["windows"] >= 2, stats  # more than one page per window: paged
        assert stats["orders"] >= len(pull_only) + len(late), stats
        # The checkpoint in Kafka passes the last order the platform holds (to the second), one shop, one key.
        placed = max(m for m, *_ in platforms.listed[("acme", "tm-9")]) // 1000 * 1000

        def checkpointed() -> bool:
            latest = {c.key: c for c in pipeline.read(pipeline.topics.pull_checkpoints, PullCheckpoint)}
            return list(latest) == ["acme:tmall:tm-9"] and latest["acme:tmall:tm-9"].modified_until > placed

        wait_for(checkpointed, 30, "the pull checkpoint past the last order")
        pipeline.wait_idle()
        verdict = assert_invariants(pipeline)
        assert verdict.counts["decisions"] == len(day) + len(late)
    finally:
        platforms.stop()
