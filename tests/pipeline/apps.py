"""App variants for tests that need part of the pipeline missing (OMS_APP=tests.pipeline.apps:…)."""

from __future__ import annotations

import faust

from agents.coordinator import agent as coordinator
from engine.app import create_app
from engine.settings import Settings


def coordinator_only(settings: Settings, worker_index: int = 0) -> faust.App:
    """No inventory agent: reserve commands go unanswered, so sagas hit their deadline."""
    app = create_app(settings, worker_index)
    coordinator.install(app)
    return app
