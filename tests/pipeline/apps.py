"""App variants for tests that need part of the pipeline missing (OMS_APP=tests.pipeline.apps:…)."""

from __future__ import annotations

import faust

from agents.coordinator import agent as coordinator
from agents.review import agent as review
from agents.review.registry import Registry
from engine.app import create_app
from engine.redisx import Keys, client
from engine.settings import Settings


def no_inventory(settings: Settings, worker_index: int = 0) -> faust.App:
    """Review and coordinator without the inventory agent: reserves go unanswered, sagas hit their deadline."""
    app = create_app(settings, worker_index)
    review.install(app, Registry(), client(settings), Keys(settings.topic_prefix))
    coordinator.install(app)
    return app


def diagnostic(settings: Settings, worker_index: int = 0) -> faust.App:
    """The full pipeline plus a timer that logs what the consumer believes about its partitions."""
    import logging

    from agents.pipeline import create_app as full

    app = full(settings, worker_index)
    log = logging.getLogger("oms.diagnostic")

    @app.timer(5.0)
    async def consumer_state() -> None:
        c = app.consumer
        aio = c._thread._consumer
        sub = aio._subscription.subscription
        rows = []
        for tp in sorted(c.assignment()):
            if "changelog" in tp.topic or "assignor" in tp.topic:
                continue
            from aiokafka import TopicPartition

            st = sub.assignment.state_value(TopicPartition(tp.topic, tp.partition)) if sub else None
            rows.append(
                f"{tp.topic.split('.')[-1]}/{tp.partition}: faust_active={tp in (c._active_partitions or ())} "
                f"faust_paused={tp in c._paused_partitions} aio_paused={st.paused if st else '?'} "
                f"pos={st.position if st and st.has_valid_position else None} hw={st.highwater if st else None} "
                f"read={c._read_offset.get(tp)} committed={c._committed_offset.get(tp)}"
            )
        log.warning("DIAG flow=%s recovery=%s\n  %s", app.flow_control.is_active(), app.in_recovery, "\n  ".join(rows))

    return app
