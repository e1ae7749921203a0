"""The whole pipeline as one Faust app: what ``oms worker`` runs (``OMS_APP=agents.pipeline:create_app``)."""

from __future__ import annotations

import faust

from agents.coordinator import agent as coordinator
from agents.inventory import agent as inventory
from engine.app import create_app as create_base_app
from engine.settings import Settings


def create_app(settings: Settings, worker_index: int = 0) -> faust.App:
    app = create_base_app(settings, worker_index)
    inventory.install(app)
    coordinator.install(app)
    return app
