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
from engine.runtime.kit import KeyedLogic, Step
from engine.runtime.stage import Stage
from engine.runtime.stamp import Stamp
from engine.runtime.ticks import install_ticks
from engine.runtime.work import Input, PartitionWork
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
from schemas.fulfilment import Tick
from schemas.inbox import OperatorAction
from schemas.inventory import Issue, Return
from schemas.ledger import LedgerRecord, ProgressMade, ReturnBooked
from schemas.shipping import GoodsIssued

ORDERS, PICKUPS = "aftersales-orders", "aftersales-pickups"
log = logging.getLogger("oms.aftersales")


class AftersalesLogic(KeyedLogic[AftersalesState]):
    """Record time, and ticks for pickup deadlines; an order is kept a retention after its last change. Each
    partition keeps the deadlines of its ready pickups in one record (``aftersales-pickups``, key ``p<n>``)."""

    name = "aftersales"
    tables = (ORDERS, PICKUPS)
    record_type = AftersalesRecord
    state_table, state_type = ORDERS, AftersalesState

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
        books = (topics.ledger_inbox, for_ledger)  # finance books some of them
        self.routes = {
            WriteBackRequest: (topics.writebacks,),
            CustomerNotification: (topics.notifications,),
            OrderProgress: (topics.order_progress, books),
            ReturnSettled: (topics.returns, books),
            Return: (topics.inventory_commands,),
            Issue: (topics.inventory_commands,),
            GoodsIssued: (topics.goods_issued, books),
            OperatorAction: (topics.order_inbox,),
        }

    def handle(self, work: PartitionWork, record: Input, item: AftersalesRecord) -> Step:
        now = work.now
        state = work.get_as(ORDERS, item.key, AftersalesState)
        stamp = Stamp(f"{self.origin_prefix}.p{record.partition}", record.offset)
        if isinstance(item, OrderOpened):
            return on_opened(state, item, now)
        if isinstance(item, GoodsIssued):
            return on_goods_issued(state, item, now)
        if isinstance(item, OrderTracking):
            return on_tracking(state, item, now)
        if isinstance(item, WriteBackResult):
            return on_writeback_result(state, item, now)
        if isinstance(item, ReturnRequested):
            return on_return_requested(state, item, now)
        if isinstance(item, ReturnReceived):
            return on_return_received(state, item, stamp, now)
        if isinstance(item, PickupReady):
            return on_pickup_ready(state, item, self.secret, self.pickup_hold_ms, stamp, now)
        assert isinstance(item, PickupClaim)
        return on_pickup_claim(state, item, self.secret, stamp, now)

    def on_tick(self, work: PartitionWork, record: Input, tick: Tick) -> None:
        """Pickups whose deadline passed expire (stamped with the tick's time)."""
        p, now = record.partition, tick.ts
        for key, deadline in sorted(self._due(work, p).items(), key=lambda kv: (kv[1], kv[0])):
            if deadline > now:
                continue
            step = on_pickup_due(work.get_as(ORDERS, key, AftersalesState), now)
            if step.state is None or not step.changed:  # forgotten meanwhile: stop watching it
                due = self._due(work, p)
                due.pop(key, None)
                work.put(PICKUPS, f"p{p}", wire.encode(due))
                continue
            self.finish(work, record, tick, step, now)

    def state_key(self, item: object, state: AftersalesState) -> str:
        return state.key  # a tick's steps are keyed by their state

    def touch(self, state: AftersalesState, now: int) -> None:
        state.updated_at = now

    def keep_until(self, state: AftersalesState) -> int | None:
        return state.updated_at + self.retention_ms

    def save(self, work: PartitionWork, item: object, step: Step, now: int) -> None:
        super().save(work, item, step, now)
        state = step.state
        if step.changed and state is not None and state.pickup is not None:
            # the partition's pickup deadlines: ready ones are watched, others dropped
            p = work.partition
            due = self._due(work, p)
            if state.pickup.status == "ready":
                due[state.key] = state.pickup.expires_at
            else:
                due.pop(state.key, None)
            work.put(PICKUPS, f"p{p}", wire.encode(due))

    def _due(self, work: PartitionWork, p: int) -> dict[str, int]:
        return work.get_as(PICKUPS, f"p{p}", dict[str, int]) or {}


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
