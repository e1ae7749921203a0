"""The whole pipeline as one Faust app: what ``oms worker`` runs (``OMS_APP=agents.pipeline:create_app``).

ingest (raw channel topics, HTTP API) → orders → review → saga-requests → coordinator ⇄ inventory.
"""

from __future__ import annotations

import faust

from agents.coordinator import agent as coordinator
from agents.ingest import agent as ingest
from agents.ingest import views as ingest_views
from agents.inventory import agent as inventory
from agents.review import agent as review
from agents.review import views as review_views
from agents.review.registry import Registry
from engine import broadcast
from engine.app import create_app as create_base_app
from engine.catalog import Catalog
from engine.http import Edge
from engine.settings import Settings
from engine.tenants import Tenants


def create_app(settings: Settings, worker_index: int = 0) -> faust.App:
    app = create_base_app(settings, worker_index)
    topics = app.oms.topics
    tenants = Tenants.load(settings.tenants_file)
    registry = Registry.from_file(settings.rules_file)
    edge = Edge(settings, tenants)
    catalog = Catalog(edge.redis, edge.keys)
    broadcast.follow(app, settings.bootstrap, topics.review_rules, settings.partitions, registry.on_record)

    ingest.install(app, tenants, catalog)
    ingest_views.install(app, edge, catalog)
    review.install(app, registry, edge.redis, edge.keys)
    review_views.install(app, edge, registry)
    coordinator.install(app)
    inventory.install(app, catalog)
    return app
