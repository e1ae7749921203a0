"""Fixtures of the pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.settings import Settings
from tests.pipeline.harness import Pipeline


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    """Topics of a fresh namespace; worker pools the test starts are stopped and the topics deleted after."""
    p = Pipeline(settings)
    try:
        yield p
    finally:
        p.close()
