"""The query API's read models on the real broker and Redis: a day of orders picked and shipped while a worker —
and with it its projector — is killed (SIGKILL) mid-way; then the live views equal a rebuild from the topics, a
late write never wins, available to promise is on hand − reserved as the inventory's own events last said, and
the API answers what was sent (orders by id, by the channel's id, by buyer; shipments by id and by waybill),
to its own tenant only. Every invariant is checked at the end."""

from __future__ import annotations

import random

import orjson
import pytest
import redis

from agents.fulfilment.layout import generate_layout
from agents.fulfilment.picking import report
from agents.fulfilment.publish import publish_layouts
from agents.views.projection import Views, order_key
from engine.kafka.clients import unprocessed
from engine.readmodels.projector import Applier, Write, dump, namespace, projector_group, rebuild
from schemas.fulfilment import PickList, WavePolicy
from schemas.inventory import Receive, StockEvent, receive_id
from schemas.order import Address, Buyer, Channel, Order, OrderLine, OrderStatus, order_id
from schemas.shipping import ShipmentShipped
from tests.pipeline.harness import Pipeline, http, wait_for
from tests.pipeline.test_channels_pipeline import auth
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.delivery import Credentials
from workload.generator import DAY_START_MS

pytestmark = pytest.mark.pipeline

SKUS = ["VW-A", "VW-B", "VW-C", "VW-D"]
WAREHOUSES = ["WH-SH", "WH-BJ"]
HOME = Address(name="钱七", phone="13600001234", province="江苏省", city="南京市", street="中山路 3 号")


def receipts() -> list[Receive]:
    return [
        Receive(
            command_id=receive_id("acme", sku, wh, "vw"), tenant="acme", sku=sku, origin="views-loader", seq=n + 1,
            ts=1, warehouse=wh, quantity=25, unit_cost_fen=1_000, document_id="vw",
        )
        for n, (sku, wh) in enumerate((s, w) for s in SKUS for w in WAREHOUSES)
    ]  # fmt: skip


def orders(first: int, n: int, at: int, rng: random.Random) -> list[Order]:
    """Orders of three channels; every buyer orders several times (so ``?buyer=`` has something to list)."""
    channels = [Channel.TMALL, Channel.JD, Channel.WEB]
    out = []
    for i in range(first, first + n):
        channel = channels[i % 3]
        shop = f"{channel.value}-1"
        lines = [
            OrderLine(line_no=k + 1, sku=sku, quantity=rng.randint(1, 3), unit_price_fen=2_990)
            for k, sku in enumerate(rng.sample(SKUS, 2))
        ]
        out.append(
            Order(
                tenant="acme", order_id=order_id(channel, shop, f"vw{i}"), channel=channel, shop_id=shop,
                platform_order_id=f"vw{i}", status=OrderStatus.PAID, buyer=Buyer(id=f"vw-buyer-{i % 9}"),
                receiver=HOME, lines=lines, created_at=at + i, ingested_at=at + i, version=at + i,
            )
        )  # fmt: skip
    return out


def test_views_survive_a_killed_projector_equal_a_rebuild_and_answer_what_was_sent(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    settings = pipeline.settings
    waves = WavePolicy(release_count=8, release_after_s=1)
    publish_layouts(settings, [generate_layout("acme", WAREHOUSES, SKUS, merge_window_s=1, waves=waves)], "test-v")
    pipeline.send_commands(receipts())
    pool = pipeline.start_workers(2)
    r = redis.Redis.from_url(settings.redis)
    live = namespace(settings)
    views = Views(pipeline.topics)
    rng = random.Random(23)
    now = DAY_START_MS + 9 * 3_600_000
    first = orders(0, 40, now, rng)
    pipeline.send_orders(first)
    pipeline.wait_decisions(len(first), timeout_s=180, pool=pool)

    def projected_orders() -> int:
        return sum(1 for _ in r.scan_iter(match=f"{live}:order:acme:*", count=1000)) // 2  # data + versions

    # -- the kill: worker 1's projector has been writing views; it dies with its worker -------------------------
    def worker_1_projects() -> bool:
        pool.supervise()
        side = (pool.stats(1) or {}).get("sidecars", {}).get("views-projector", {})
        return side.get("records", 0) > 0 and projected_orders() >= 10

    wait_for(worker_1_projects, 120, "worker 1's projector writing views")
    before_kill = projected_orders()
    pool.kill(1)
    second = orders(40, 40, now + 1_000, rng)
    pipeline.send_orders(second)
    day = first + second
    confirmed: set[str] = set()

    def shipped_all() -> bool:
        for pick_list in pipeline.read(pipeline.topics.pick_lists, PickList):
            if pick_list.pick_list_id not in confirmed:
                confirmation = report(pick_list, DAY_START_MS)
                pipeline.inputs.picks.append(confirmation)
                pipeline.send(pipeline.topics.fulfilment_inbox, [confirmation])
                confirmed.add(pick_list.pick_list_id)
        pool.supervise()
        accepted = {d.order_id for d in pipeline.decisions().values() if d.status.value == "accepted"}
        issued = {g.order_id for g in pipeline.outputs().goods_issued}
        return len(pipeline.decisions()) == len(day) and accepted <= issued

    wait_for(shipped_all, 300, "every order decided and every accepted one shipped")
    assert [x.index for x in pool.restarts] == [1] and pool.restarts[0].exit_code == -9
    pipeline.inputs.fulfilment_complete = True
    pipeline.wait_idle()
    wait_for(lambda: not unprocessed(settings.bootstrap, projector_group(settings), views.topics()), 120, "views")
    assert projected_orders() == len(day) > before_kill, "the projectors did not go on after the kill"

    # -- live == rebuilt from the topics; a late write never wins ------------------------------------------------
    rebuilt_space = namespace(settings, "views-rebuilt")
    counts = rebuild(settings, views, rebuilt_space)
    assert counts["undecodable"] == 0 and counts["records"] > len(day)
    live_dump, rebuilt = dump(r, live), dump(r, rebuilt_space)
    assert live_dump == rebuilt, sorted(set(live_dump.items()) ^ set(rebuilt.items()))[:5]
    assert sum(1 for k in live_dump if k.startswith("order:")) == len(day)

    target = order_key("acme", day[0].order_id)
    held = r.hget(f"{live}:{target}:versions", "decision")
    assert held is not None, "the order's decision was never projected"
    version, forged = int(held), b'{"status":"forged"}'
    applier = Applier(r, live)
    late = [Write(target, "decision", version, forged), Write(target, "decision", version - 1, forged)]
    assert applier.apply(late) == 0
    assert r.hget(f"{live}:{target}", "decision") == live_dump[target][b"decision"]
    stale = Write(target, "order", day[0].version - 1, b'{"version": 0}')  # an older channel version of the order
    assert applier.apply([stale]) == 0

    # -- available to promise: on hand - reserved, as the inventory's own events last said ----------------------
    last: dict[tuple[str, str], StockEvent] = {}
    for e in pipeline.read(pipeline.topics.stock_events, StockEvent):
        if e.tenant == "acme" and ((e.sku, e.warehouse) not in last or e.version > last[(e.sku, e.warehouse)].version):
            last[(e.sku, e.warehouse)] = e
    headers = auth(credentials)
    status, body = http("GET", pipeline.api(f"/api/v1/acme/stock?skus={','.join(SKUS)}"), None, headers)
    assert status == 200, body
    for level in body["stock"]:
        mine = {wh: e for (sku, wh), e in last.items() if sku == level["sku"]}
        assert level["atp"] == sum(max(0, e.on_hand - e.reserved) for e in mine.values()), level
        for wh, e in mine.items():
            assert (level["warehouses"][wh]["on_hand"], level["warehouses"][wh]["reserved"]) == (e.on_hand, e.reserved)
    status, one = http("GET", pipeline.api("/api/v1/acme/stock/VW-A"), None, headers)
    assert status == 200 and one == body["stock"][0]

    # -- orders: what was sent, with the decision made; by id, by the channel's id, by buyer --------------------
    decisions = {d.order_id: d for d in pipeline.decisions().values()}
    shipped = {o for s in pipeline.read(pipeline.topics.shipped, ShipmentShipped) for o in s.order_ids}
    for sent in day:
        status, view = http("GET", pipeline.api(f"/api/v1/acme/orders/{sent.order_id}"), None, headers)
        assert status == 200, view
        assert [(ln["sku"], ln["quantity"]) for ln in view["lines"]] == [(ln.sku, ln.quantity) for ln in sent.lines]
        assert view["buyer_id"] == sent.buyer.id and view["channel"] == sent.channel.value
        decided = decisions[sent.order_id].status.value
        want = (
            {"rejected"} if decided == "rejected" else {"shipped", "delivered"} if sent.order_id in shipped else set()
        )
        assert view["status"] in want, (sent.order_id, decided, view["status"])
        if decided == "accepted":
            assert all(ln["warehouse"] in WAREHOUSES for ln in view["lines"]) and view["shipments"]
    sample = day[5]
    query = f"channel={sample.channel.value}&shop={sample.shop_id}&platform_order_id={sample.platform_order_id}"
    _, by_channel = http("GET", pipeline.api(f"/api/v1/acme/orders?{query}"), None, headers)
    _, by_id = http("GET", pipeline.api(f"/api/v1/acme/orders/{sample.order_id}"), None, headers)
    assert by_channel == by_id
    status, listed = http("GET", pipeline.api(f"/api/v1/acme/orders?buyer={sample.buyer.id}"), None, headers)
    assert status == 200
    assert sorted(o["order_id"] for o in listed["orders"]) == sorted(o.order_id for o in day if o.buyer == sample.buyer)

    # -- a shipment by id and by its waybill -------------------------------------------------------------------
    left = pipeline.read(pipeline.topics.shipped, ShipmentShipped)[0]
    status, by_sid = http("GET", pipeline.api(f"/api/v1/acme/shipments/{left.shipment_id}"), None, headers)
    assert status == 200 and by_sid["status"] == "shipped" and by_sid["order_ids"] == left.order_ids
    _, by_waybill = http("GET", pipeline.api(f"/api/v1/acme/waybills/{left.parcels[0].waybill}"), None, headers)
    assert by_waybill == by_sid

    # -- the API's manners: ETag, its own tenant only, clear refusals ------------------------------------------
    url = pipeline.api(f"/api/v1/acme/orders/{sample.order_id}")
    etag = _etag(url, headers)
    assert _status(url, {**headers, "If-None-Match": etag}) == 304
    assert _status(url, {}) == 401
    assert _status(url, auth(credentials, "blue")) == 403
    assert _status(pipeline.api("/api/v1/blue/orders/" + sample.order_id), auth(credentials, "blue")) == 404
    assert _status(pipeline.api("/api/v1/acme/orders?limit=3"), headers) == 400
    assert _status(pipeline.api("/api/v1/acme/stock?skus=" + ",".join(["X"] * 201)), headers) == 413

    assert_invariants(pipeline)


def _etag(url: str, headers: dict[str, str]) -> str:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as res:
        orjson.loads(res.read())
        return str(res.headers["ETag"])


def _status(url: str, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as res:
            return int(res.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
