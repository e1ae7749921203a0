"""The shipping stage (发货): one writer per shipment (key ``tenant:shipment_id``).

Reads the shipping inbox — picked shipments (from fulfilment), the carriers' waybill answers (from the carrier
gateway) and shipping policy versions (one copy per partition) — and runs the pure rules of
agents.shipping.core: waybill requests go to the carrier gateway, issue commands to the inventory, and the
shipment, goods-issued and failure records to their result topics, all in the stage's transaction.
"""

from __future__ import annotations

import faust

from agents.shipping.core import ShipmentState, Step, on_answer, on_picked
from engine.app import context
from engine.runtime.stage import Stage
from engine.runtime.stamp import Stamp
from engine.runtime.work import Input, Logic, PartitionWork
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import WaybillRegistered
from schemas.deadletter import ReasonCode
from schemas.fulfilment import ShipmentPicked
from schemas.inventory import Issue
from schemas.ledger import ParcelsShipped
from schemas.shipping import (
    GoodsIssued,
    ShipmentFailed,
    ShipmentShipped,
    ShippingPolicy,
    ShippingPolicyVersion,
    ShippingRecord,
    WaybillAnswer,
    WaybillWanted,
)

SHIPMENTS, POLICIES = "shipping-shipments", "shipping-policies"
#: A tenant that never published a policy ships by the warehouse's default carrier with default sizes.
DEFAULT_POLICY = ShippingPolicy()


def policy_key(tenant: str, partition: int) -> str:
    return f"{tenant}:shipping-policy@p{partition}"


class ShippingLogic(Logic):
    name = "shipping"
    tables = (SHIPMENTS, POLICIES)

    def __init__(self, topics: Topics, partitions: int, retention_ms: int, inbox_epoch: str = "") -> None:
        self.inputs = (topics.shipping_inbox,)
        self.topics = topics
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.origin_prefix = f"shipping.{inbox_epoch or 'x'}"  # the idempotency origin of its issue commands
        self.ledger_inbox = topics.ledger_inbox
        self.routes: dict[type, tuple[str, ...]] = {
            WaybillWanted: (topics.waybill_requests,),
            ShipmentShipped: (topics.shipped,),
            ShipmentFailed: (topics.shipping_failures,),
            GoodsIssued: (topics.goods_issued, topics.aftersales_inbox, topics.ledger_inbox),
            Issue: (topics.inventory_commands,),
            WaybillRegistered: (topics.tracking_inbox,),
        }

    def process(self, work: PartitionWork, record: Input) -> None:
        try:
            item = wire.decode(record.value, ShippingRecord)
        except wire.WireError as exc:
            work.dead_letter(record, exc.reason, exc.detail)
            return
        p = record.partition
        if isinstance(item, ShippingPolicyVersion):  # broadcast: one copy on every partition
            key = policy_key(item.tenant, p)
            current = work.get_as(POLICIES, key, ShippingPolicyVersion)
            work.put_if_newer(POLICIES, key, item, item.version, current.version if current else None, "policy")
            return
        if work.misrouted(record, item.key, self.partitions, item.tenant):
            return
        now = record.timestamp_ms
        work.advance(now)
        state = work.get_as(SHIPMENTS, item.key, ShipmentState)
        found = work.get_config(POLICIES, policy_key(item.tenant, p), ShippingPolicyVersion)
        policy = found.policy if found is not None else DEFAULT_POLICY
        step: Step
        if isinstance(item, ShipmentPicked):
            step = on_picked(state, item, policy, list(item.carriers), now)
        else:
            assert isinstance(item, WaybillAnswer)
            step = on_answer(state, item, policy, Stamp(f"{self.origin_prefix}.p{p}", record.offset), now)
        if step.changed and step.state is not None:
            work.put(SHIPMENTS, item.key, step.state, expires_at=self._expiry(step.state))
        for out in step.outputs:
            if isinstance(out, ShipmentShipped):  # finance books its freight
                parcels = ParcelsShipped(shipped=out)
                work.emit(self.ledger_inbox, parcels.key, parcels)
            for topic in self.routes[type(out)]:
                work.emit(topic, out.key, out)
        if step.note:
            work.note(step.note)
        if step.refused is not None:
            work.dead_letter(record, ReasonCode(step.refused[0]), step.refused[1], item.tenant)

    def _expiry(self, state: ShipmentState) -> int | None:
        """A shipment is kept while waybills are awaited, then ``retention`` (record time) for late answers."""
        return None if state.closed_at is None else state.closed_at + self.retention_ms

    def expires_at(self, table: str, value: bytes) -> int | None:
        return self._expiry(wire.decode_state(value, ShipmentState)) if table == SHIPMENTS else None


def install(app: faust.App) -> Stage:
    ctx = context(app)
    settings = ctx.settings
    logic = ShippingLogic(
        ctx.topics,
        settings.partitions,
        settings.order_retention_s * 1000,
        ctx.topic_epochs.get(ctx.topics.shipping_inbox, ""),
    )
    return Stage(app, logic)
