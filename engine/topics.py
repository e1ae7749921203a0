"""Topic names, keys and the record on each: the pipeline's public contract (README "Topics").

Every topic has the same partition count so that co-keyed topics are co-partitioned, and every key
starts with the tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.aftersales import (
    AftersalesRecord,
    CustomerNotification,
    OrderProgress,
    ReturnSettled,
    TrackingRecord,
    WriteBackRequest,
)
from schemas.deadletter import DeadLetter
from schemas.fulfilment import (
    FulfilmentRecord,
    Layout,
    OrderAllocation,
    PickList,
    PickOutcome,
    Shipment,
    ShipmentPicked,
    ShortPickOutcome,
    Wave,
    WithdrawalOutcome,
)
from schemas.inbox import InboxRecord
from schemas.inventory import InventoryCommand, StockEvent
from schemas.ledger import LedgerRecord, Reconciliation, Voucher
from schemas.order import Channel
from schemas.pulling import PullCheckpoint
from schemas.review import OrderCancellation, ReviewDecision, RuleSet
from schemas.saga import OrderDecision
from schemas.shipping import (
    GoodsIssued,
    ShipmentFailed,
    ShipmentShipped,
    ShippingRecord,
    TrackingUpdate,
    WaybillWanted,
)
from schemas.stocksync import StockSyncRecord, StockSyncResult, StockUpdate, SyncRules


@dataclass(frozen=True)
class TopicSpec:
    role: str  # attribute name on Topics
    suffix: str
    key: str
    record: Any  # None: the channel's own payload
    schema_name: str
    public: bool  # a result topic other systems consume (its schema is exported)
    doc: str
    config: dict[str, str] = field(default_factory=dict)


def _spec(
    role: str, suffix: str, key: str, record: Any, schema: str, public: bool, doc: str, **config: str
) -> TopicSpec:
    return TopicSpec(
        role, suffix, key, record, schema, public, doc, {k.replace("_", "."): v for k, v in config.items()}
    )


SPECS: tuple[TopicSpec, ...] = (
    _spec(
        "order_inbox",
        "order-inbox",
        "tenant:shop:b-buyer (the order's buyer key)",
        InboxRecord,
        "order-inbox.v1",
        True,
        "Everything that can change an order, in one order per buyer: channel snapshots (ingest, API), operator "
        "actions, the inventory's line results, fulfilment's short picks, and review rule and layout versions (one "
        "copy per partition).",
    ),
    _spec(
        "review_rules",
        "review-rules",
        "tenant",
        RuleSet,
        "rule-set.v1",
        True,
        "The latest review rules of each tenant (compacted), as published; what the API shows.",
        cleanup_policy="compact",
    ),
    _spec(
        "review_decisions",
        "review-decisions",
        "tenant:order_id",
        ReviewDecision,
        "review-decision.v1",
        True,
        "What review decided (approved, held, rejected, released, cancelled, awaiting payment) and which rules fired.",
    ),
    _spec(
        "inventory_commands",
        "inventory-commands",
        "tenant:sku",
        InventoryCommand,
        "inventory-command.v1",
        True,
        "Every stock change: reserve, release, issue, receive, adjust, return, short pick. One writer per SKU.",
    ),
    _spec(
        "order_decisions",
        "order-decisions",
        "tenant:order_id",
        OrderDecision,
        "order-decision.v1",
        True,
        "One terminal decision per order: accepted, rejected (stock, review) or cancelled.",
    ),
    _spec(
        "order_cancellations",
        "order-cancellations",
        "tenant:order_id",
        OrderCancellation,
        "order-cancellation.v1",
        True,
        "Cancellations before shipment (with the reservations released) and return requests after.",
    ),
    _spec(
        "stock_events",
        "stock-events",
        "tenant:sku",
        StockEvent,
        "stock-event.v1",
        True,
        "Every applied stock change with the state after it (gap-free version per SKU).",
    ),
    _spec(
        "layouts",
        "layouts",
        "tenant",
        Layout,
        "layout.v1",
        True,
        "The latest published warehouse layout of each tenant (compacted): warehouses, zones, bins, policies.",
        cleanup_policy="compact",
    ),
    _spec(
        "allocations",
        "allocations",
        "tenant:order_id",
        OrderAllocation,
        "order-allocation.v1",
        True,
        "分仓 of each accepted order: which warehouse ships which lines, by which strategy, on quotes or not.",
    ),
    _spec(
        "fulfilment_inbox",
        "fulfilment-inbox",
        "tenant:warehouse",
        FulfilmentRecord,
        "fulfilment-inbox.v1",
        True,
        "Everything that changes one warehouse's fulfilment, in one order: accepted parcels, withdrawn orders, pick "
        "confirmations, layout versions (one copy per partition) and ticks (record time for merge windows and "
        "wave timers).",
    ),
    _spec(
        "shipments",
        "shipments",
        "tenant:shipment_id",
        Shipment,
        "shipment.v1",
        True,
        "Parcels released for picking: one warehouse, one carrier; the lines of one order, or of merged orders.",
    ),
    _spec(
        "waves",
        "waves",
        "tenant:wave_id",
        Wave,
        "wave.v1",
        True,
        "Waves released per warehouse: which shipments, why (count, time), and their pick lists.",
    ),
    _spec(
        "pick_lists",
        "pick-lists",
        "tenant:pick_list_id",
        PickList,
        "pick-list.v1",
        True,
        "One picker's walk with one cart through one zone: stops in walking order, path length and S-shape length.",
    ),
    _spec(
        "pick_outcomes",
        "pick-outcomes",
        "tenant:pick_list_id",
        PickOutcome,
        "pick-outcome.v1",
        True,
        "Pick confirmations as applied: confirmed (picked and short units per stop) or refused (and why).",
    ),
    _spec(
        "picked_shipments",
        "picked-shipments",
        "tenant:shipment_id",
        ShipmentPicked,
        "shipment-picked.v1",
        True,
        "Shipments whose every pick list was confirmed: the picked units per line, ready for packing.",
    ),
    _spec(
        "short_picks",
        "short-picks",
        "tenant:order_id",
        ShortPickOutcome,
        "short-pick-outcome.v1",
        True,
        "How each short-picked line was resolved: re-reserved in another warehouse, or shipped partial.",
    ),
    _spec(
        "withdrawals",
        "fulfilment-withdrawals",
        "tenant:order_id",
        WithdrawalOutcome,
        "withdrawal-outcome.v1",
        True,
        "What became of a cancelled accepted order in fulfilment: left its waiting shipment, or too late (拦截).",
    ),
    _spec(
        "shipping_inbox",
        "shipping-inbox",
        "tenant:shipment_id",
        ShippingRecord,
        "shipping-inbox.v1",
        True,
        "Everything that changes one shipment's shipping, in one order: the picked shipment, the carriers' waybill "
        "answers, and shipping policy versions (one copy per partition).",
    ),
    _spec(
        "waybill_requests",
        "waybill-requests",
        "tenant:carrier:warehouse",
        WaybillWanted,
        "waybill-wanted.v1",
        True,
        "Waybill numbers wanted, one per parcel and attempt, for the carrier gateway (batched per carrier and "
        "warehouse; the parcel id is the carrier's idempotency key).",
    ),
    _spec(
        "shipped",
        "shipments-shipped",
        "tenant:shipment_id",
        ShipmentShipped,
        "shipment-shipped.v1",
        True,
        "Shipments that left their warehouse (发货): parcels with their carrier (and why), cost and waybill.",
    ),
    _spec(
        "shipping_failures",
        "shipping-failures",
        "tenant:shipment_id",
        ShipmentFailed,
        "shipment-failed.v1",
        True,
        "Shipments no carrier would give a waybill for, after every attempt (their stock stays reserved).",
    ),
    _spec(
        "goods_issued",
        "goods-issued",
        "tenant:order_id",
        GoodsIssued,
        "goods-issued.v1",
        True,
        "Goods that left a warehouse per order and shipment (销售出库): what finance books revenue and cost on.",
    ),
    _spec(
        "tracking_inbox",
        "tracking-inbox",
        "tenant:waybill",
        TrackingRecord,
        "tracking-inbox.v1",
        True,
        "Everything about one waybill, in one order: its registration by shipping (which orders it carries) and "
        "carriers' tracking events (物流轨迹). Carrier integrations write their events here; so does the webhook.",
    ),
    _spec(
        "tracking_updates",
        "tracking-updates",
        "tenant:waybill",
        TrackingUpdate,
        "tracking-update.v1",
        True,
        "A waybill's tracking state changed (progress, exception, recovered, delivered or returned); never backwards.",
    ),
    _spec(
        "aftersales_inbox",
        "aftersales-inbox",
        "tenant:order_id",
        AftersalesRecord,
        "aftersales-inbox.v1",
        True,
        "Everything that happens to an accepted order, in one order: its approval snapshot, goods issued, tracking, "
        "write-back answers, return requests and receipts, store pickups and claims, and ticks (record time).",
    ),
    _spec(
        "writebacks",
        "channel-writebacks",
        "tenant:order_id",
        WriteBackRequest,
        "writeback-request.v1",
        True,
        "The write-back outbox (回传物流): one request per attempt in the platform's own shape, with an idempotency "
        "key shared by every attempt; the channel gateway sends them.",
    ),
    _spec(
        "notifications",
        "notifications",
        "tenant:order_id",
        CustomerNotification,
        "customer-notification.v1",
        True,
        "What customers are told (shipped, delivered, pickup code, picked up, pickup expired, refunded); phone masked.",
    ),
    _spec(
        "order_progress",
        "order-progress",
        "tenant:order_id",
        OrderProgress,
        "order-progress.v1",
        True,
        "Where each accepted order stands: shipped (partial or complete), delivered, exception, written back (or "
        "failed), returns requested and received, pickup ready, picked up, expired.",
    ),
    _spec(
        "returns",
        "returns-settled",
        "tenant:order_id",
        ReturnSettled,
        "return-settled.v1",
        True,
        "Received returns (退货入库) per line: units, sellable or quarantined, and the refund: what finance reverses.",
    ),
    _spec(
        "ledger_inbox",
        "ledger-inbox",
        "tenant:order_id (stock moves without an order: tenant:sku; freight: tenant:shipment_id)",
        LedgerRecord,
        "ledger-inbox.v1",
        True,
        "What finance books (业财一体化), in one order per order: approvals (what was paid), goods issued, stock moves "
        "with their moving-average value, shipped parcels (freight), deliveries, returns, settlement lines, and "
        "ledger policies (one copy per partition).",
    ),
    _spec(
        "vouchers",
        "vouchers",
        "tenant:entity (order id, SKU or shipment id)",
        Voucher,
        "voucher.v1",
        True,
        "Balanced accounting vouchers (记账凭证) in integer fen, one per source event and kind (deterministic ids).",
    ),
    _spec(
        "reconciliations",
        "reconciliations",
        "tenant:order_id",
        Reconciliation,
        "reconciliation.v1",
        True,
        "Payout reconciliation (对账) results per settlement line or open receivable: matched, amount mismatch, "
        "missing in books, missing in file, duplicate.",
    ),
    _spec(
        "stock_sync_inbox",
        "stock-sync-inbox",
        "tenant:sku",
        StockSyncRecord,
        "stock-sync-inbox.v1",
        True,
        "Everything that changes what the shops may sell of one SKU, in one order: the inventory's ATP changes, the "
        "platforms' answers to stock updates, stock-sync rules versions (one copy per partition) and ticks.",
    ),
    _spec(
        "stock_sync_rules",
        "stock-sync-rules",
        "tenant",
        SyncRules,
        "stock-sync-rules.v1",
        True,
        "The latest published stock-sync rules of each tenant (compacted): shops, shares, safety stock, overrides.",
        cleanup_policy="compact",
    ),
    _spec(
        "stock_sync_requests",
        "stock-sync-requests",
        "tenant:shop_id",
        StockUpdate,
        "stock-update.v1",
        True,
        "The stock-sync outbox (库存同步): set a shop's sellable quantity of a SKU, in the platform's terms; the "
        "update id is the platform's idempotency key. The stock-sync gateway sends them.",
    ),
    _spec(
        "stock_sync_results",
        "stock-sync-results",
        "tenant:sku",
        StockSyncResult,
        "stock-sync-result.v1",
        True,
        "The platforms' answers to stock updates (accepted, refused and why), as the gateway received them.",
    ),
    _spec(
        "pull_checkpoints",
        "pull-checkpoints",
        "tenant:channel:shop_id",
        PullCheckpoint,
        "pull-checkpoint.v1",
        True,
        "How far each pulled shop's order list has been read (compacted), written in the transaction of the raw "
        "orders of the window it closes; the order pullers own shops by its partitions.",
        cleanup_policy="compact",
    ),
    _spec(
        "dead_letters",
        "dead-letters",
        "original key",
        DeadLetter,
        "dead-letter.v1",
        True,
        "Bad input: reason code, source topic/partition/offset, original bytes.",
    ),
)

RAW_KEY = "tenant:shop_id:platform_order_id"


class Topics:
    """Topic names under one prefix (a deployment, or one test run)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        for spec in SPECS:
            setattr(self, spec.role, f"{prefix}.{spec.suffix}")
        #: raw channel payloads, one topic per channel, consumed by the same adapters as the HTTP API
        self.raw: dict[Channel, str] = {ch: f"{prefix}.raw.{ch.value}" for ch in Channel}

    # declared for type checkers; set in __init__
    order_inbox: str
    review_rules: str
    review_decisions: str
    inventory_commands: str
    order_decisions: str
    order_cancellations: str
    stock_events: str
    layouts: str
    allocations: str
    fulfilment_inbox: str
    shipments: str
    waves: str
    pick_lists: str
    pick_outcomes: str
    picked_shipments: str
    short_picks: str
    withdrawals: str
    shipping_inbox: str
    waybill_requests: str
    shipped: str
    shipping_failures: str
    goods_issued: str
    tracking_inbox: str
    tracking_updates: str
    aftersales_inbox: str
    writebacks: str
    notifications: str
    order_progress: str
    returns: str
    ledger_inbox: str
    vouchers: str
    reconciliations: str
    stock_sync_inbox: str
    stock_sync_rules: str
    stock_sync_requests: str
    stock_sync_results: str
    pull_checkpoints: str
    dead_letters: str

    def all(self) -> list[str]:
        return [getattr(self, spec.role) for spec in SPECS] + list(self.raw.values())

    def name(self, spec: TopicSpec) -> str:
        return getattr(self, spec.role)

    def configs(self) -> dict[str, dict[str, str]]:
        return {getattr(self, s.role): s.config for s in SPECS if s.config}

    def channel_of(self, raw_topic: str) -> Channel | None:
        for channel, name in self.raw.items():
            if name == raw_topic:
                return channel
        return None
