"""The coordinator agent: the reservation saga per order (key ``tenant:order_id``).

It consumes three co-partitioned topics — orders, line results, saga timeouts — so everything about one
order reaches the same single writer. A timer sends a timeout tick (to the same agent, through a topic)
for every pending saga past its deadline; the decision itself is always made in-stream.
"""

from __future__ import annotations

import logging

import faust
from faust.types import EventT, StreamT

from agents.coordinator.core import PENDING, Coordinator, Saga, Stamp
from engine.app import active_partitions, context, state_table
from engine.stage import Output, PartitionWork, Stage, now_ms
from schemas import wire
from schemas.review import CancelSaga, SagaRequest, StartSaga
from schemas.saga import LineResult, SagaTimeout

log = logging.getLogger("oms.coordinator")


def install(app: faust.App) -> Stage:
    ctx = context(app)
    topics, settings = ctx.topics, ctx.settings
    partitions = settings.partitions
    rules = Coordinator(timeout_ms=int(settings.saga_timeout_s * 1000))
    sagas = state_table(app, "sagas", "tenant:order_id -> saga state (lines, status, deadline)")
    inputs = app.topic(
        topics.saga_requests,
        topics.line_results,
        topics.saga_timeouts,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
    )
    # Short origin names keep the inventory's high-water map small: "o3" = saga-requests partition 3.
    alias = {topics.saga_requests: "o", topics.line_results: "r", topics.saga_timeouts: "t"}
    stage = Stage(app, "coordinator")
    pending: dict[str, tuple[int, int]] = {}  # saga key -> (partition, deadline): the timer's index
    indexed: set[int] = set()

    def handle(work: PartitionWork, event: EventT) -> None:
        msg = event.message
        kind = alias[msg.topic]
        record = stage.decode(work, event, {"o": SagaRequest, "r": LineResult, "t": SagaTimeout}[kind])
        if record is None:
            return
        stamp = Stamp(f"{settings.app_id}.{kind}{msg.partition}", msg.offset)
        saga = Saga.from_state(work.get(sagas, record.key))
        now = now_ms()
        if isinstance(record, StartSaga):
            step = rules.on_order(saga, record.order, stamp, msg.partition, now)
        elif isinstance(record, CancelSaga):
            step = rules.on_cancel(saga, record, stamp, now)
        elif kind == "r":
            step = rules.on_result(saga, record, stamp, now)
        else:
            step = rules.on_timeout(saga, record, stamp, now)
        stage.stats.note(step.note)
        for cmd in step.commands:
            work.emit(topics.inventory_commands, cmd)
        if step.decision is not None:
            work.emit(topics.order_decisions, step.decision)
        if step.cancellation is not None:
            work.emit(topics.order_cancellations, step.cancellation)
        if step.changed and step.saga is not None:
            work.put(sagas, record.key, step.saga.to_state())

    def track(work: PartitionWork) -> None:
        """After a batch is durable: keep the timer's index of pending sagas current."""
        for key, state in work.writes.get(sagas, {}).items():
            if isinstance(state, dict) and state.get("s") == PENDING:
                pending[key] = (state["p"], state["dl"])
            else:
                pending.pop(key, None)

    @app.agent(inputs, name="coordinator", concurrency=1)
    async def coordinator(stream: StreamT) -> None:
        await stage.run(stream, handle, after_commit=track)

    @app.timer(max(0.2, min(2.0, settings.saga_timeout_s / 5)))
    async def saga_deadlines() -> None:
        if app.in_recovery:
            return
        active = {tp.partition for tp in active_partitions(app) if tp.topic == topics.saga_requests}
        if active != indexed:
            # Partitions moved (start-up, rebalance, a worker died): rebuild the index from the table.
            for key in [k for k, (p, _) in pending.items() if p not in active]:
                pending.pop(key)
            for key, state in list(sagas.items()):
                if state.get("s") == PENDING and state["p"] in active - indexed:
                    pending[key] = (state["p"], state["dl"])
            indexed.clear()
            indexed.update(active)
        now = now_ms()
        due = [(key, p, dl) for key, (p, dl) in pending.items() if dl <= now and p in active]
        if not due:
            return
        outputs = []
        for key, _p, deadline in due:
            tenant, order_id = key.split(":", 1)
            tick = SagaTimeout(tenant=tenant, order_id=order_id, deadline=deadline, ts=now)
            outputs.append(Output(topics.saga_timeouts, key.encode(), wire.encode(tick)))
        await stage.send_durably(outputs)
        for key, _p, _dl in due:
            pending.pop(key, None)  # the saga decides in-stream; if the tick is lost, a rebuild finds it
        log.info("saga timeouts sent: %d", len(due))

    return stage
