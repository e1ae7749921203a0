"""The aftersales stage (售后与履约跟踪): one writer per accepted order (key ``tenant:order_id``).

Reads the aftersales inbox — the order's approval snapshot (order stage), goods issued (shipping), tracking
(tracking stage), write-back answers (channel gateway), return requests and receipts, store pickups and claims
(order stage, API) and ticks — and runs the pure rules of agents.aftersales.core. Its outputs: the write-back
outbox, customer notifications, order progress, settled returns, ``return`` and ``issue`` commands to the
inventory, goods issued for pickups, and cancellations of expired pickups to the order stage.

Without ``OMS_PICKUP_SECRET`` the stage still runs (shipping, tracking, returns, counter sales need no secret),
but issues no pickup codes: a pickup made ready then is recorded as ready without a code, every claim of it is
refused and it expires at its deadline, releasing its stock; the worker logs a warning at start. A code is a
keyed digest under the secret, so a code is never issued from a default anyone could know.
"""

from __future__ import annotations

import logging

import faust

from agents.aftersales.core import (
    AftersalesState,
    Step,
    on_goods_issued,
    on_opened,
    on_pickup_claim,
    on_pickup_due,
    on_pickup_ready,
    on_return_received,
    on_return_requested,
    on_tracking,
    on_writeback_result,
)
from engine.app import context
from engine.runtime.stage import Stage
from engine.runtime.stamp import Stamp
from engine.runtime.ticks import install_ticks
from engine.runtime.work import Input, Logic, PartitionWork
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import (
    AftersalesRecord,
    CustomerNotification,
    OrderOpened,
    OrderProgress,
    OrderTracking,
    PickupClaim,
    PickupReady,
    ReturnReceived,
    ReturnRequested,
    ReturnSettled,
    WriteBackRequest,
    WriteBackResult,
)
from schemas.deadletter import ReasonCode
from schemas.fulfilment import Tick
from schemas.inbox import OperatorAction
from schemas.inventory import Issue, Return
from schemas.ledger import LedgerRecord, ProgressMade, ReturnBooked
from schemas.shipping import GoodsIssued

ORDERS, PICKUPS = "aftersales-orders", "aftersales-pickups"
log = logging.getLogger("oms.aftersales")


class AftersalesLogic(Logic):
    name = "aftersales"
    tables = (ORDERS, PICKUPS)

    def __init__(
        self,
        topics: Topics,
        partitions: int,
        retention_ms: int,
        pickup_hold_ms: int,
        pickup_secret: str | None,
        inbox_epoch: str = "",
    ) -> None:
        self.inputs = (topics.aftersales_inbox,)
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.pickup_hold_ms = pickup_hold_ms
        self.secret = pickup_secret.encode() if pickup_secret else None  # None: no pickup codes are issued
        self.origin_prefix = f"aftersales.{inbox_epoch or 'x'}"  # the idempotency origin of its stock commands
        self.routes: dict[type, str] = {
            WriteBackRequest: topics.writebacks,
            CustomerNotification: topics.notifications,
            OrderProgress: topics.order_progress,
            ReturnSettled: topics.returns,
            Return: topics.inventory_commands,
            Issue: topics.inventory_commands,
            GoodsIssued: topics.goods_issued,
            OperatorAction: topics.order_inbox,
        }
        self.ledger_inbox = topics.ledger_inbox

    def process(self, work: PartitionWork, record: Input) -> None:
        try:
            item = wire.decode(record.value, AftersalesRecord)
        except wire.WireError as exc:
            work.dead_letter(record, exc.reason, exc.detail)
            return
        p = record.partition
        now = record.timestamp_ms
        if isinstance(item, Tick):
            work.advance(item.ts)
            self._expire_pickups(work, p, item.ts)
            return
        if work.misrouted(record, item.key, self.partitions, item.tenant):
            return
        work.advance(now)
        state = work.get_as(ORDERS, item.key, AftersalesState)
        stamp = Stamp(f"{self.origin_prefix}.p{p}", record.offset)
        step: Step
        if isinstance(item, OrderOpened):
            step = on_opened(state, item, now)
        elif isinstance(item, GoodsIssued):
            step = on_goods_issued(state, item, now)
        elif isinstance(item, OrderTracking):
            step = on_tracking(state, item, now)
        elif isinstance(item, WriteBackResult):
            step = on_writeback_result(state, item, now)
        elif isinstance(item, ReturnRequested):
            step = on_return_requested(state, item, now)
        elif isinstance(item, ReturnReceived):
            step = on_return_received(state, item, stamp, now)
        elif isinstance(item, PickupReady):
            step = on_pickup_ready(state, item, self.secret, self.pickup_hold_ms, stamp, now)
        else:
            assert isinstance(item, PickupClaim)
            step = on_pickup_claim(state, item, self.secret, stamp, now)
        self._apply(work, p, step, now)
        if step.refused is not None:
            work.dead_letter(record, ReasonCode(step.refused[0]), step.refused[1], item.tenant)

    def _apply(self, work: PartitionWork, p: int, step: Step, now: int) -> None:
        if step.note:
            work.note(step.note)
        if step.changed and step.state is not None:
            step.state.updated_at = now
            work.put(ORDERS, step.state.key, step.state, expires_at=now + self.retention_ms)
            pickup = step.state.pickup
            if pickup is not None:  # the partition's pickup deadlines: ready ones are watched, others dropped
                due = self._due(work, p)
                if pickup.status == "ready":
                    due[step.state.key] = pickup.expires_at
                else:
                    due.pop(step.state.key, None)
                work.put(PICKUPS, f"p{p}", wire.encode(due))
        for out in step.outputs:
            work.emit(self.routes[type(out)], out.key, out)
            booked = for_ledger(out)
            if booked is not None:
                work.emit(self.ledger_inbox, booked.key, booked)

    def _due(self, work: PartitionWork, p: int) -> dict[str, int]:
        return work.get_as(PICKUPS, f"p{p}", dict[str, int]) or {}

    def _expire_pickups(self, work: PartitionWork, p: int, now: int) -> None:
        for key, deadline in sorted(self._due(work, p).items(), key=lambda kv: (kv[1], kv[0])):
            if deadline > now:
                continue
            step = on_pickup_due(work.get_as(ORDERS, key, AftersalesState), now)
            if step.state is None or not step.changed:  # forgotten meanwhile: stop watching it
                due = self._due(work, p)
                due.pop(key, None)
                work.put(PICKUPS, f"p{p}", wire.encode(due))
                continue
            self._apply(work, p, step, now)

    def expires_at(self, table: str, value: bytes) -> int | None:
        if table == ORDERS:
            return wire.decode_state(value, AftersalesState).updated_at + self.retention_ms
        return None


def install(app: faust.App) -> Stage:
    ctx = context(app)
    settings = ctx.settings
    if not settings.pickup_secret:
        log.warning(
            "OMS_PICKUP_SECRET is not set: store pickups get no pickup code (they can only expire) and the pickup "
            "API answers 503; set a secret of at least 16 characters to serve pickups"
        )
    logic = AftersalesLogic(
        ctx.topics,
        settings.partitions,
        settings.order_retention_s * 1000,
        settings.pickup_hold_s * 1000,
        settings.pickup_secret,
        ctx.topic_epochs.get(ctx.topics.aftersales_inbox, ""),
    )
    stage = Stage(app, logic)
    install_ticks(app, stage, ctx.topics.aftersales_inbox, settings.aftersales_tick_s, settings.bootstrap)
    return stage


def for_ledger(out: object) -> LedgerRecord | None:
    """What finance books of aftersales' outputs: goods handed over in a store, deliveries, settled returns."""
    if isinstance(out, GoodsIssued):
        return out
    if isinstance(out, OrderProgress) and out.event == "delivered":
        return ProgressMade(progress=out)
    if isinstance(out, ReturnSettled):
        return ReturnBooked(settled=out)
    return None
