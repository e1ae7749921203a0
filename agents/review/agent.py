"""The review agent: canonical order snapshots and operators' commands in (key ``tenant:order_id``),
review decisions, saga requests, decisions and cancellations out; holds and velocity in Redis."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import EventT, StreamT

from agents.review.core import KEEP, Review, ReviewState
from agents.review.registry import Registry
from agents.review.rules import Facts, velocity_windows
from engine import redisx
from engine.app import context, state_table
from engine.stage import PartitionWork, Stage, now_ms
from schemas import wire
from schemas.order import Order
from schemas.review import CancelSaga, OrderCancellation, ReviewCommand, ReviewDecision, StartSaga
from schemas.saga import OrderDecision


def install(app: faust.App, registry: Registry, redis: Any, keys: redisx.Keys) -> Stage:
    ctx = context(app)
    topics, settings = ctx.topics, ctx.settings
    reviews = state_table(app, "reviews", "tenant:order_id -> review state (status, version, held snapshot)")
    inputs = app.topic(
        topics.orders, topics.review_commands, key_type=bytes, value_type=bytes, partitions=settings.partitions
    )
    route = {
        StartSaga: topics.saga_requests,
        CancelSaga: topics.saga_requests,
        ReviewDecision: topics.review_decisions,
        OrderDecision: topics.order_decisions,
        OrderCancellation: topics.order_cancellations,
    }
    review = Review()
    stage = Stage(app, "review")
    facts: dict[tuple[int, int], Facts] = {}  # (partition, offset) -> facts, per batch

    async def prefetch(events: list[EventT]) -> None:
        """Velocity counts for every order of the batch whose tenant has velocity rules (one round trip)."""
        facts.clear()
        asks = []
        for event in events:
            if event.message.topic != topics.orders:
                continue
            try:
                order = wire.decode(event.message.value or b"", Order)
            except wire.WireError:
                continue
            windows = velocity_windows(registry.get(order.tenant))
            if windows:
                asks.append((event, order, windows))
        if not asks:
            return
        pipe = redis.pipeline(transaction=False)
        for _, order, windows in asks:
            key = keys.velocity(order.tenant, order.buyer.id)
            pipe.zadd(key, {order.order_id: order.created_at})  # idempotent: a replay adds nothing
            pipe.expire(key, max(windows) * 2)
            for window in windows:
                pipe.zcount(key, order.created_at - window * 1000, order.created_at)
        replies = await redisx.safely("velocity", pipe.execute(), default=None)
        if replies is None:
            return  # the velocity rules are skipped (and say so in the review decision)
        i = 0
        for event, _, windows in asks:
            counts = replies[i + 2 : i + 2 + len(windows)]
            facts[(event.message.partition, event.message.offset)] = Facts(dict(zip(windows, counts, strict=True)))
            i += 2 + len(windows)

    def handle(work: PartitionWork, event: EventT) -> None:
        msg = event.message
        is_order = msg.topic == topics.orders
        record = stage.decode(work, event, Order if is_order else ReviewCommand)
        if record is None:
            return
        state = ReviewState.from_state(work.get(reviews, record.key))
        now = now_ms()
        if is_order:
            found = facts.get((msg.partition, msg.offset), Facts())
            step = review.on_order(state, record, registry.get(record.tenant), found, now)
        else:
            step = review.on_command(state, record, now)
        stage.stats.note(step.note)
        for out in step.outputs:
            work.emit(route[type(out)], out)
        if step.changed and step.state is not None:
            work.put(reviews, record.key, step.state.to_state())
        if step.hold is not KEEP:
            work.side_effects.append((record.tenant, record.order_id, step.hold))

    async def update_holds(work: PartitionWork) -> None:
        """The holds read model, written after the outputs and state are (replays rewrite the same)."""
        if not work.side_effects:
            return
        pipe = redis.pipeline(transaction=False)
        for tenant, order_id, hold in work.side_effects:
            if hold is None:
                pipe.hdel(keys.holds(tenant), order_id)
            else:
                pipe.hset(keys.holds(tenant), order_id, wire.encode(hold))
        await redisx.safely("holds", pipe.execute())

    @app.agent(inputs, name="review", concurrency=1)
    async def review_agent(stream: StreamT) -> None:
        await stage.run(stream, handle, after_commit=update_holds, prefetch=prefetch)

    return stage
