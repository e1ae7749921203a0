"""The tracking stage (物流轨迹): one writer per waybill (key ``tenant:waybill``).

Reads the tracking inbox — waybill registrations from shipping and carriers' events (from carrier integrations
writing to the topic, or the webhook ``POST /api/v1/{tenant}/carrier-events``) — and runs the forward-only state
machine of agents.tracking.core: each visible change goes to ``tracking-updates`` and to the aftersales inbox of
every order the waybill carries.
"""

from __future__ import annotations

import faust

from agents.tracking.core import Tracking, apply_event, register
from engine.app import context
from engine.runtime.kit import KeyedLogic, Step
from engine.runtime.stage import Stage
from engine.runtime.work import Input, PartitionWork
from engine.topics import Topics
from schemas.aftersales import OrderTracking, TrackingRecord, WaybillRegistered
from schemas.deadletter import ReasonCode
from schemas.shipping import TrackingUpdate

WAYBILLS = "tracking-waybills"


class TrackingLogic(KeyedLogic[Tracking]):
    """Record time; the waybill's tracking is kept a retention after its last change."""

    name = "tracking"
    tables = (WAYBILLS,)
    record_type = TrackingRecord
    state_table, state_type = WAYBILLS, Tracking

    def __init__(self, topics: Topics, partitions: int, retention_ms: int) -> None:
        self.inputs = (topics.tracking_inbox,)
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.routes = {
            TrackingUpdate: (topics.tracking_updates,),
            OrderTracking: (topics.aftersales_inbox,),
        }

    def handle(self, work: PartitionWork, record: Input, item: TrackingRecord) -> Step[Tracking]:
        state = work.get_as(WAYBILLS, item.key, Tracking)
        if state is not None and state.carrier != item.carrier:
            detail = f"{item.waybill} is a {state.carrier} waybill, the record says {item.carrier}"
            return Step(refused=(ReasonCode.INVALID_RECORD, detail))
        if isinstance(item, WaybillRegistered):
            return register(state, item, work.now)
        return apply_event(state, item, work.now)

    def touch(self, state: Tracking, now: int) -> None:
        state.updated_at = now

    def keep_until(self, state: Tracking) -> int | None:
        return state.updated_at + self.retention_ms


def install(app: faust.App) -> Stage:
    ctx = context(app)
    logic = TrackingLogic(ctx.topics, ctx.settings.partitions, ctx.settings.order_retention_s * 1000)
    return Stage(app, logic)
