"""The tracking stage (物流轨迹): one writer per waybill (key ``tenant:waybill``).

Reads the tracking inbox — waybill registrations from shipping and carriers' events (from carrier integrations
writing to the topic, or the webhook ``POST /api/v1/{tenant}/carrier-events``) — and runs the forward-only state
machine of agents.tracking.core: each visible change goes to ``tracking-updates`` and to the aftersales inbox of
every order the waybill carries.
"""

from __future__ import annotations

import faust

from agents.tracking.core import Applied, Tracking, apply_event, register
from engine.app import context
from engine.runtime.stage import Stage
from engine.runtime.work import Input, Logic, PartitionWork
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import OrderTracking, TrackingRecord, WaybillRegistered
from schemas.deadletter import ReasonCode
from schemas.shipping import TrackingUpdate

WAYBILLS = "tracking-waybills"


class TrackingLogic(Logic):
    name = "tracking"
    tables = (WAYBILLS,)

    def __init__(self, topics: Topics, partitions: int, retention_ms: int) -> None:
        self.inputs = (topics.tracking_inbox,)
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.routes: dict[type, str] = {
            TrackingUpdate: topics.tracking_updates,
            OrderTracking: topics.aftersales_inbox,
        }

    def process(self, work: PartitionWork, record: Input) -> None:
        try:
            item = wire.decode(record.value, TrackingRecord)
        except wire.WireError as exc:
            work.dead_letter(record, exc.reason, exc.detail)
            return
        if work.misrouted(record, item.key, self.partitions, item.tenant):
            return
        now = record.timestamp_ms
        work.advance(now)
        state = work.get_as(WAYBILLS, item.key, Tracking)
        if state is not None and state.carrier != item.carrier:
            detail = f"{item.waybill} is a {state.carrier} waybill, the record says {item.carrier}"
            work.dead_letter(record, ReasonCode.INVALID_RECORD, detail, item.tenant)
            return
        registering = isinstance(item, WaybillRegistered)
        applied: Applied = register(state, item, now) if registering else apply_event(state, item, now)
        work.note(applied.note)
        if applied.tracking is not state:
            applied.tracking.updated_at = now
            work.put(WAYBILLS, item.key, applied.tracking, expires_at=now + self.retention_ms)
        for out in applied.outputs:
            work.emit(self.routes[type(out)], out.key, out)

    def expires_at(self, table: str, value: bytes) -> int | None:
        return wire.decode_state(value, Tracking).updated_at + self.retention_ms


def install(app: faust.App) -> Stage:
    ctx = context(app)
    logic = TrackingLogic(ctx.topics, ctx.settings.partitions, ctx.settings.order_retention_s * 1000)
    return Stage(app, logic)
