"""A seeded day of orders and the opening stock that goes with it.

Same seed, same day: SKU popularity is Zipf-distributed, orders have 1–6 lines, the hottest SKUs get less
stock than their demand (so reservations really compete), and a flash-sale mode puts one scarce SKU in
front of many buyers. A small share of orders is sent twice, as channels and retries do.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.inventory import Receive, receive_id
from schemas.order import Address, Buyer, Channel, Order, OrderLine, order_id

CHANNEL_MIX: dict[Channel, float] = {
    Channel.TMALL: 0.28,
    Channel.TAOBAO: 0.10,
    Channel.JD: 0.20,
    Channel.DOUYIN: 0.26,
    Channel.SHOPIFY: 0.05,
    Channel.WEB: 0.07,
    Channel.POS: 0.04,
}
LINES_PER_ORDER = (1, 2, 3, 4, 5, 6)
LINES_WEIGHTS = (46, 25, 13, 8, 5, 3)
QUANTITIES = (1, 2, 3, 4, 5)
QUANTITY_WEIGHTS = (76, 16, 5, 2, 1)
PLACES = (
    ("上海市", "上海市", "浦东新区"),
    ("浙江省", "杭州市", "西湖区"),
    ("广东省", "广州市", "天河区"),
    ("广东省", "深圳市", "南山区"),
    ("北京市", "北京市", "朝阳区"),
    ("江苏省", "南京市", "鼓楼区"),
    ("四川省", "成都市", "武侯区"),
    ("湖北省", "武汉市", "洪山区"),
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
# 2026-11-11 00:00 China Standard Time: the day the generator simulates.
DAY_START_MS = int(datetime(2026, 11, 10, 16, 0, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000
FLASH_SKU = "FLASH-0001"


@dataclass(frozen=True)
class WorkloadSpec:
    orders: int = 20_000
    seed: int = 11
    tenants: tuple[str, ...] = ("acme", "blue")
    tenant_weights: tuple[float, ...] = (0.8, 0.2)
    skus: int = 2_000
    warehouses: tuple[str, ...] = ("WH-SH", "WH-GZ", "WH-BJ")
    zipf_s: float = 1.1
    stock_ratio: float = 2.0  # opening stock / expected demand, for ordinary SKUs
    hot_skus: int = 10  # the most popular SKUs per tenant get …
    hot_stock_ratio: float = 0.8  # … this much stock relative to demand: they sell out
    flash_sale: bool = False
    #: one address per buyer, so a repeat buyer's orders merge into one parcel. Off in the main job until the order
    #: side stops releasing a cancelled order's reservations before fulfilment answers: merged shipments leave their
    #: window early, and a cancellation then comes too late for a shipment whose stock it already gave back
    repeat_homes: bool = False
    flash_share: float = 0.3  # share of orders that are a single flash-SKU line in flash-sale mode
    flash_stock: int = 500
    duplicate_rate: float = 0.01
    #: stores (门店): stock locations that sell at the counter (every POS order) and hand over web orders
    #: picked up in store (``pickup_share`` of the web orders); they stock the ``store_skus`` most popular SKUs
    stores: tuple[str, ...] = ("ST-SH-01", "ST-BJ-01")
    store_skus: int = 300
    pickup_share: float = 0.3
    extra: dict[str, str] = field(default_factory=dict)

    def sku(self, rank: int) -> str:
        return f"SKU-{rank:05d}"


class Workload:
    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        n = spec.skus
        weights = [1.0 / (rank**spec.zipf_s) for rank in range(1, n + 1)]
        total = sum(weights)
        self.popularity = [w / total for w in weights]
        self.cum = list(itertools.accumulate(self.popularity))
        rng = random.Random(spec.seed * 7919)
        self.price = [rng.choice((990, 1990, 2990, 4990, 9990, 19900, 39900, 99900)) for _ in range(n)]
        # what the retailer paid per unit, net of VAT (采购成本): 45–65 % of the list price, by SKU
        self.cost = [price * (45 + (i * 7) % 21) // 100 for i, price in enumerate(self.price)]
        self.channel_names = list(CHANNEL_MIX)
        self.channel_cum = list(itertools.accumulate(CHANNEL_MIX.values()))
        self.tenant_cum = list(itertools.accumulate(spec.tenant_weights))

    # -- demand model ---------------------------------------------------------------------------------
    def expected_units(self, rank_index: int) -> float:
        avg_lines = sum(a * b for a, b in zip(LINES_PER_ORDER, LINES_WEIGHTS, strict=True)) / sum(LINES_WEIGHTS)
        avg_qty = sum(a * b for a, b in zip(QUANTITIES, QUANTITY_WEIGHTS, strict=True)) / sum(QUANTITY_WEIGHTS)
        share = 1.0 - (self.spec.flash_share if self.spec.flash_sale else 0.0)
        return self.spec.orders * share * avg_lines * avg_qty * self.popularity[rank_index]

    def opening_stock(self, origin: str, base_seq: int, ts: int) -> Iterator[Receive]:
        """One receive per (tenant, SKU, warehouse) with stock; ``base_seq`` keeps seqs increasing across
        loads (it is usually the load's start time)."""
        spec = self.spec
        rng = random.Random(spec.seed * 104729)
        seq = base_seq
        document = f"opening-{base_seq}"
        for t_index, tenant in enumerate(spec.tenants):
            tenant_share = spec.tenant_weights[t_index] / sum(spec.tenant_weights)
            for i in range(spec.skus):
                ratio = spec.hot_stock_ratio if i < spec.hot_skus else spec.stock_ratio
                units = int(self.expected_units(i) * tenant_share * ratio * rng.uniform(0.8, 1.2))
                units = max(units, 3 if rng.random() < 0.97 else 0)  # a few SKUs start out of stock
                yield from self._spread(tenant, spec.sku(i + 1), units, origin, seq, document, ts, rng)
                seq += len(spec.warehouses)
            if spec.flash_sale:
                yield from self._spread(tenant, FLASH_SKU, spec.flash_stock, origin, seq, document, ts, rng)
                seq += len(spec.warehouses)
            for i in range(min(spec.store_skus, spec.skus)):  # each store: a shelf of the popular SKUs
                for store in spec.stores:
                    units = 1 + int(self.expected_units(i) * tenant_share * 0.05 * rng.uniform(0.5, 1.5))
                    seq += 1
                    yield Receive(
                        command_id=receive_id(tenant, spec.sku(i + 1), store, document),
                        tenant=tenant,
                        sku=spec.sku(i + 1),
                        origin=origin,
                        seq=seq,
                        ts=ts,
                        warehouse=store,
                        quantity=units,
                        unit_cost_fen=self.unit_cost(spec.sku(i + 1)),
                        document_id=document,
                    )

    def _spread(
        self, tenant: str, sku: str, units: int, origin: str, seq: int, document: str, ts: int, rng: random.Random
    ) -> Iterator[Receive]:
        whs = self.spec.warehouses
        cuts = sorted(rng.randint(0, units) for _ in range(len(whs) - 1))
        shares = [b - a for a, b in zip([0, *cuts], [*cuts, units], strict=True)]
        for j, (wh, qty) in enumerate(zip(whs, shares, strict=True)):
            if qty > 0:
                yield Receive(
                    command_id=receive_id(tenant, sku, wh, document),
                    tenant=tenant,
                    sku=sku,
                    origin=origin,
                    seq=seq + j,
                    ts=ts,
                    warehouse=wh,
                    quantity=qty,
                    unit_cost_fen=self.unit_cost(sku),
                    document_id=document,
                )

    def unit_cost(self, sku: str) -> int:
        """A SKU's purchase cost (the flash-sale SKU and unknown ones: half of a ¥99 item)."""
        rank = int(sku[4:]) if sku.startswith("SKU-") and sku[4:].isdigit() else 0
        return self.cost[rank - 1] if 1 <= rank <= self.spec.skus else 4_950

    def catalog(self) -> dict[str, set[str]]:
        """Every SKU each tenant sells (the product master), stocked or not."""
        skus = {self.spec.sku(i + 1) for i in range(self.spec.skus)} | ({FLASH_SKU} if self.spec.flash_sale else set())
        return {tenant: set(skus) for tenant in self.spec.tenants}

    # -- orders ---------------------------------------------------------------------------------------
    def orders(self) -> Iterator[Order]:
        """The day's orders in event-time order, duplicates included (a duplicate is the same record)."""
        spec = self.spec
        rng = random.Random(spec.seed)
        times = sorted(self._event_time(rng) for _ in range(spec.orders))
        resend: list[tuple[int, Order]] = []
        for n, created in enumerate(times):
            order = self._order(rng, n, created)
            yield order
            if rng.random() < spec.duplicate_rate:
                resend.append((n + rng.randint(1, 200), order))
            while resend and resend[0][0] <= n:
                yield resend.pop(0)[1]
        for _, order in resend:
            yield order

    def _event_time(self, rng: random.Random) -> int:
        """Whole seconds, as platforms report them."""
        r = rng.random()
        if r < 0.18:  # the 11.11 midnight rush: 18 % of the day's orders in its first hour
            offset = int(rng.random() * 3_600)
        elif r < 0.45:  # evening peak 19:00–23:00
            offset = 19 * 3_600 + int(rng.random() * 4 * 3_600)
        else:
            offset = int(rng.random() * DAY_MS / 1000)
        return DAY_START_MS + offset * 1000

    @staticmethod
    def _receiver(rng: random.Random, place: tuple[str, str, str], tenant: str, buyer: str, homes: bool) -> Address:
        """Where the order goes: drawn from the day's stream; with ``homes``, one address per buyer instead (a repeat
        buyer ships home, so orders paid close together merge into one parcel) — the stream draws the same either
        way, so every later draw of the day stays what it was."""
        name, area, number, street = (
            rng.choice(SURNAMES),
            rng.randint(30, 99),
            rng.randint(1000, 9999),
            rng.randint(1, 999),
        )
        province, city, district = place
        if homes:
            home = random.Random(f"{tenant}:{buyer}")
            province, city, district = home.choice(PLACES)
            name, area, number, street = (
                home.choice(SURNAMES),
                home.randint(30, 99),
                home.randint(1000, 9999),
                home.randint(1, 999),
            )
        return Address(
            name=name + "先生", phone=f"1{area}****{number}", province=province, city=city, district=district,
            street=f"{street}号",
        )  # fmt: skip

    def _order(self, rng: random.Random, n: int, created: int) -> Order:
        spec = self.spec
        tenant = spec.tenants[bisect.bisect_left(self.tenant_cum, rng.random() * self.tenant_cum[-1])]
        channel = self.channel_names[
            min(
                bisect.bisect_left(self.channel_cum, rng.random() * self.channel_cum[-1]),
                len(self.channel_names) - 1,
            )
        ]
        shop = f"s{rng.randint(1, 2)}"
        platform_id = f"{20261111000000 + n * 7 + rng.randint(0, 6)}"
        if spec.flash_sale and rng.random() < spec.flash_share:
            picks = [(FLASH_SKU, 1, 9900)]
        else:
            count = rng.choices(LINES_PER_ORDER, LINES_WEIGHTS)[0]
            chosen: list[int] = []
            while len(chosen) < count:
                i = min(bisect.bisect_left(self.cum, rng.random()), spec.skus - 1)
                if i not in chosen:
                    chosen.append(i)
            picks = [(spec.sku(i + 1), rng.choices(QUANTITIES, QUANTITY_WEIGHTS)[0], self.price[i]) for i in chosen]
        place = rng.choice(PLACES)
        buyer = f"b{rng.randint(1, max(10, spec.orders // 3))}"
        # OMO, from its own random stream (the rest of the day does not move): POS sells at a store's counter,
        # some web orders are picked up in a store (门店自提).
        omo = random.Random(spec.seed * 1_000_003 + n)
        delivery, store = "ship", None
        if spec.stores and channel is Channel.POS:
            delivery, store = "counter", omo.choice(spec.stores)
        elif spec.stores and channel is Channel.WEB and omo.random() < spec.pickup_share:
            delivery, store = "pickup", omo.choice(spec.stores)
        return Order(
            tenant=tenant,
            order_id=order_id(channel, shop, platform_id),
            channel=channel,
            shop_id=shop,
            platform_order_id=platform_id,
            buyer=Buyer(id=buyer, nick=f"nick_{buyer}"),
            receiver=self._receiver(rng, place, tenant, buyer, spec.repeat_homes),
            lines=[
                OrderLine(line_no=k + 1, sku=sku, quantity=qty, unit_price_fen=price)
                for k, (sku, qty, price) in enumerate(picks)
            ],
            created_at=created,
            paid_at=created + rng.randint(5, 120) * 1000,
            ingested_at=0,
            delivery=delivery,  # type: ignore[arg-type]
            pickup_store=store,
        )
