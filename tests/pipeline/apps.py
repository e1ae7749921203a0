"""App variants for tests that need part of the pipeline missing (OMS_APP=tests.pipeline.apps:…)."""

from __future__ import annotations

import faust

from agents.orders import agent as orders
from engine.app import create_app
from engine.settings import Settings


def no_inventory(settings: Settings, worker_index: int = 0, topic_epochs: dict[str, str] | None = None) -> faust.App:
    """The order stage without the inventory: reserves go unanswered, sagas wait."""
    app = create_app(settings, worker_index, topic_epochs)
    orders.install(app)
    return app
