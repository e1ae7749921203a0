"""The whole pipeline as one Faust app: what ``oms worker`` runs (``OMS_APP=agents.pipeline:create_app``).

raw channel topics ─► ingest ─┐
HTTP API, webhooks ───────────┴─► order inbox ─► orders (review + saga) ─► inventory commands ─► inventory
                                       ▲                 │                                          │
                                       │                 └─► fulfilment inbox ─► fulfilment ─► shipments, waves,
                                       │     pick confirmations ─┘ (per warehouse)  (merge, waves,   pick lists,
                                       │                                             picking)        pick outcomes
                                       ├──────────── short picks ◄──────────────────────┤  (+ short-pick commands)
                                       │                               picked shipments ▼
                                       │            shipping inbox ─► shipping (pack, carriers, waybills) ─► shipped,
                                       │             ▲ waybill answers        │ waybill requests          goods issued
                                       │             └── carrier gateway ◄────┘ (+ issue commands to the inventory)
                                       ├──────────────────── line results ◄─────────────────────────┘
                                       │  waybills ─► tracking inbox ◄── carrier events (topic, webhook)
                                       │                   │ tracking (per waybill) ─► tracking updates
                                       │                   ▼
     approved orders, pickups, ────────┴─► aftersales inbox ─► aftersales (per order) ─► write-back outbox ─►
     channel returns                    ▲  goods issued, returns, pickup claims (API)    channel gateway ─┐
                                        │                    notifications, order progress, returns settled
                                        └──────────────── write-back results ◄──────────────────────────┘
  approvals, goods issued, stock moves (valued), shipped parcels, deliveries, returns, settlement lines
     └──► ledger inbox ─► ledger (per order: costing, VAT, revenue recognition) ─► vouchers ─► PostgreSQL sink
                                     trial balance (table → Redis → HTTP)         reconciliations
  stock events ─► stock-sync inbox ─► stock sync (per SKU: rules, coalescing) ─► stock-sync outbox ─► gateway ─►
                       ▲ platforms' answers ◄────────────────────────────────────────────────────────┘  platforms
  result topics ─► views projector (per worker, its own group) ─► Redis views ─► query API (orders, shipments, stock)
"""

from __future__ import annotations

import faust
import redis

from agents.aftersales import agent as aftersales
from agents.aftersales import views as aftersales_views
from agents.aftersales.gateway import ChannelGateway, LocalChannel
from agents.fulfilment import agent as fulfilment
from agents.fulfilment import views as fulfilment_views
from agents.ingest import agent as ingest
from agents.ingest import views as ingest_views
from agents.ingest.pull import OrderPuller, TaobaoOrderList
from agents.inventory import agent as inventory
from agents.ledger import agent as ledger
from agents.ledger import views as ledger_views
from agents.ledger.sink import VoucherSink
from agents.orders import agent as orders
from agents.orders import views as order_views
from agents.orders.registry import Registry
from agents.shipping import agent as shipping
from agents.shipping.gateway import CarrierGateway, LocalCarrier
from agents.stocksync import agent as stocksync
from agents.stocksync.gateway import HttpPlatform, StockSyncGateway
from agents.tracking import agent as tracking
from agents.tracking import views as tracking_views
from agents.views import api as views_api
from agents.views.projection import Views
from engine.app import context
from engine.app import create_app as create_base_app
from engine.http.edge import Edge
from engine.kafka import broadcast
from engine.readmodels.catalog import Catalog
from engine.readmodels.holds import HoldsModel
from engine.readmodels.projector import Projector
from engine.readmodels.sync import ReadModelSync
from engine.settings import Settings
from engine.tenants import Tenants
from schemas.order import Channel


def create_app(settings: Settings, worker_index: int = 0, topic_epochs: dict[str, str] | None = None) -> faust.App:
    app = create_base_app(settings, worker_index, topic_epochs)
    topics = context(app).topics
    tenants = Tenants.load(settings.tenants_file)
    registry = Registry()
    edge = Edge(settings, tenants)
    catalog = Catalog(edge.redis, edge.keys)
    holds = HoldsModel(edge.redis, edge.keys)
    sync = ReadModelSync(app, edge.redis, edge.keys)
    broadcast.follow(app, settings.bootstrap, topics.review_rules, settings.partitions, registry.on_record)

    ingest.install(app, tenants)
    ingest_views.install(app, edge, catalog)
    orders.install(app, holds, sync)
    order_views.install(app, edge, holds, registry)
    inventory.install(app, catalog, sync)
    fulfilment.install(app)
    fulfilment_views.install(app, edge)
    shipping.install(app)
    carrier = LocalCarrier(
        redis.Redis.from_url(settings.redis, socket_timeout=2.0),
        settings.topic_prefix,
        settings.carrier_range,
        settings.carrier_fail_every,
        settings.carrier_timeout_every,
    )
    tracking.install(app)
    tracking_views.install(app, edge)
    aftersales.install(app)
    aftersales_views.install(app, edge)
    ledger.install(app, edge.redis, edge.keys, sync)
    ledger_views.install(app, edge)
    stocksync.install(app)
    views_api.install(app, edge)
    gateways: list = [
        CarrierGateway(settings, topics, carrier),
        ChannelGateway(
            settings, topics, LocalChannel(carrier.client, settings.topic_prefix, settings.writeback_fail_every)
        ),
        VoucherSink(settings, topics),  # the books into PostgreSQL, for the accounting system
    ]
    if settings.platform_url:  # stock updates to the platforms (unset: they wait in the outbox topic)
        gateways.append(StockSyncGateway(settings, topics, HttpPlatform(settings.platform_url)))
    if settings.platform_url and tenants is not None and tenants.pulled_shops():  # order pulling (定时抓取)
        lists = {c: TaobaoOrderList(settings.platform_url) for c in (Channel.TMALL.value, Channel.TAOBAO.value)}
        gateways.append(OrderPuller(settings, topics, tenants.pulled_shops(), lists, context(app).worker_index))
    if settings.views:
        gateways.append(Projector(settings, Views(topics)))  # the query API's read models in Redis

    context(app).sidecars.update({g.name: g for g in gateways})

    @app.task
    async def start_gateways() -> None:
        """The carrier and channel gateways, the voucher sink and the views projector run beside the agents (their
        own threads and consumer groups)."""
        for gateway in gateways:
            gateway.start()

    @app.on_before_shutdown.connect
    async def stop_gateways(app: faust.App, **_: object) -> None:
        for gateway in gateways:
            gateway.stopping.set()

    return app
