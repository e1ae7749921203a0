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
from engine.runtime.kit import Broadcast, KeyedLogic
from engine.runtime.stage import Stage
from engine.runtime.stamp import Stamp
from engine.runtime.work import Input, PartitionWork
from engine.topics import Topics
from schemas.aftersales import WaybillRegistered
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


POLICY = Broadcast(ShippingPolicyVersion, POLICIES, ShippingPolicyVersion, policy_key, "policy")


class ShippingLogic(KeyedLogic[ShipmentState]):
    """Record time; a shipment is kept while waybills are awaited, then ``retention`` (record time) for late
    answers."""

    name = "shipping"
    tables = (SHIPMENTS, POLICIES)
    record_type = ShippingRecord
    broadcasts = (POLICY,)
    state_table, state_type = SHIPMENTS, ShipmentState

    def __init__(self, topics: Topics, partitions: int, retention_ms: int, inbox_epoch: str = "") -> None:
        self.inputs = (topics.shipping_inbox,)
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.origin_prefix = f"shipping.{inbox_epoch or 'x'}"  # the idempotency origin of its issue commands
        self.routes = {
            WaybillWanted: (topics.waybill_requests,),
            ShipmentShipped: ((topics.ledger_inbox, parcels_shipped), topics.shipped),  # finance books its freight
            ShipmentFailed: (topics.shipping_failures,),
            GoodsIssued: (topics.goods_issued, topics.aftersales_inbox, topics.ledger_inbox),
            Issue: (topics.inventory_commands,),
            WaybillRegistered: (topics.tracking_inbox,),
        }

    def handle(self, work: PartitionWork, record: Input, item: ShipmentPicked | WaybillAnswer) -> Step:
        p, now = record.partition, work.now
        state = work.get_as(SHIPMENTS, item.key, ShipmentState)
        found = self.config(work, POLICY, item.tenant, p)
        policy = found.policy if found is not None else DEFAULT_POLICY
        if isinstance(item, ShipmentPicked):
            return on_picked(state, item, policy, list(item.carriers), now)
        return on_answer(state, item, policy, Stamp(f"{self.origin_prefix}.p{p}", record.offset), now)

    def keep_until(self, state: ShipmentState) -> int | None:
        return None if state.closed_at is None else state.closed_at + self.retention_ms


def parcels_shipped(shipped: ShipmentShipped) -> ParcelsShipped:
    return ParcelsShipped(shipped=shipped)


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
