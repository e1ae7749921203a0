"""What the engine wrote: every result topic read back ``read_committed`` (a fenced writer's aborted records
are not the engine's output and must not count). A dead letter holds only a bounded prefix of a large record:
its full bytes are read back from its source coordinates, so the checker judges the record itself."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from engine.kafka.clients import _reader, read_topics
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import CustomerNotification, OrderProgress, ReturnSettled, WriteBackRequest
from schemas.deadletter import DeadLetter
from schemas.fulfilment import (
    OrderAllocation,
    PickList,
    PickOutcome,
    Shipment,
    ShipmentPicked,
    ShortPickOutcome,
    Wave,
    WithdrawalOutcome,
)
from schemas.inventory import InventoryCommand, StockEvent
from schemas.ledger import Reconciliation, Voucher
from schemas.review import OrderCancellation, ReviewDecision
from schemas.saga import OrderDecision
from schemas.shipping import (
    GoodsIssued,
    ShipmentFailed,
    ShipmentShipped,
    ShippingRecord,
    TrackingUpdate,
    WaybillAnswer,
)
from schemas.stocksync import StockSyncResult, StockUpdate


@dataclass
class Outputs:
    decisions: list[OrderDecision] = field(default_factory=list)
    decision_bytes: dict[str, set[bytes]] = field(default_factory=dict)  # decision id -> every distinct copy
    reviews: list[ReviewDecision] = field(default_factory=list)
    cancellations: list[OrderCancellation] = field(default_factory=list)
    stock_events: list[StockEvent] = field(default_factory=list)
    commands: list[InventoryCommand] = field(default_factory=list)  # everything on inventory-commands
    dead_letters: list[DeadLetter] = field(default_factory=list)
    shipments: list[Shipment] = field(default_factory=list)
    waves: list[Wave] = field(default_factory=list)
    pick_lists: list[PickList] = field(default_factory=list)
    withdrawals: list[WithdrawalOutcome] = field(default_factory=list)
    pick_outcomes: list[PickOutcome] = field(default_factory=list)
    short_picks: list[ShortPickOutcome] = field(default_factory=list)
    allocations: list[OrderAllocation] = field(default_factory=list)
    picked_shipments: list[ShipmentPicked] = field(default_factory=list)
    shipped: list[ShipmentShipped] = field(default_factory=list)
    shipping_failures: list[ShipmentFailed] = field(default_factory=list)
    goods_issued: list[GoodsIssued] = field(default_factory=list)
    waybill_answers: list[WaybillAnswer] = field(default_factory=list)  # the carrier's word, from the shipping inbox
    tracking_updates: list[TrackingUpdate] = field(default_factory=list)
    order_progress: list[OrderProgress] = field(default_factory=list)
    writebacks: list[WriteBackRequest] = field(default_factory=list)
    notifications: list[CustomerNotification] = field(default_factory=list)
    returns_settled: list[ReturnSettled] = field(default_factory=list)
    vouchers: list[Voucher] = field(default_factory=list)
    voucher_bytes: dict[str, set[bytes]] = field(default_factory=dict)  # voucher id -> every distinct copy
    reconciliations: list[Reconciliation] = field(default_factory=list)
    stock_updates: list[StockUpdate] = field(default_factory=list)  # the stock-sync outbox
    stock_sync_results: list[StockSyncResult] = field(default_factory=list)  # the platforms' answers, in order
    undecodable: Counter = field(default_factory=Counter)  # result topic -> records that fail their schema
    #: dead letter id -> the full value at the letter's source coordinates, for letters that hold a prefix only
    #: (absent when the source record could not be read: deleted by retention, or never there)
    originals: dict[str, bytes] = field(default_factory=dict)


def collect(bootstrap: str, topics: Topics, timeout_s: float = 120.0) -> Outputs:
    out = Outputs()
    sinks: dict[str, tuple[Any, list]] = {
        topics.order_decisions: (OrderDecision, out.decisions),
        topics.review_decisions: (ReviewDecision, out.reviews),
        topics.order_cancellations: (OrderCancellation, out.cancellations),
        topics.stock_events: (StockEvent, out.stock_events),
        topics.inventory_commands: (InventoryCommand, out.commands),
        topics.dead_letters: (DeadLetter, out.dead_letters),
        topics.shipments: (Shipment, out.shipments),
        topics.waves: (Wave, out.waves),
        topics.pick_lists: (PickList, out.pick_lists),
        topics.withdrawals: (WithdrawalOutcome, out.withdrawals),
        topics.pick_outcomes: (PickOutcome, out.pick_outcomes),
        topics.short_picks: (ShortPickOutcome, out.short_picks),
        topics.allocations: (OrderAllocation, out.allocations),
        topics.picked_shipments: (ShipmentPicked, out.picked_shipments),
        topics.shipped: (ShipmentShipped, out.shipped),
        topics.shipping_failures: (ShipmentFailed, out.shipping_failures),
        topics.goods_issued: (GoodsIssued, out.goods_issued),
        topics.shipping_inbox: (ShippingRecord, out.waybill_answers),
        topics.tracking_updates: (TrackingUpdate, out.tracking_updates),
        topics.order_progress: (OrderProgress, out.order_progress),
        topics.writebacks: (WriteBackRequest, out.writebacks),
        topics.notifications: (CustomerNotification, out.notifications),
        topics.returns: (ReturnSettled, out.returns_settled),
        topics.vouchers: (Voucher, out.vouchers),
        topics.reconciliations: (Reconciliation, out.reconciliations),
        topics.stock_sync_requests: (StockUpdate, out.stock_updates),
        topics.stock_sync_results: (StockSyncResult, out.stock_sync_results),
    }
    for msg in read_topics(bootstrap, list(sinks), timeout_s=timeout_s):
        typ, sink = sinks[msg.topic]
        try:
            record = wire.decode(msg.value, typ)
        except wire.WireError:
            if msg.topic not in (topics.inventory_commands, topics.shipping_inbox):  # inputs may hold bad records
                out.undecodable[msg.topic] += 1
            continue
        if msg.topic == topics.shipping_inbox and not isinstance(record, WaybillAnswer):
            continue
        sink.append(record)
        if typ is OrderDecision:
            out.decision_bytes.setdefault(record.decision_id, set()).add(bytes(msg.value or b""))
        elif typ is Voucher:
            out.voucher_bytes.setdefault(record.voucher_id, set()).add(bytes(msg.value or b""))
    out.originals = read_originals(bootstrap, out.dead_letters, timeout_s=min(timeout_s, 60.0))
    return out


_NOTHING_MORE = (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION)


def read_originals(bootstrap: str, letters: Iterable[DeadLetter], timeout_s: float = 60.0) -> dict[str, bytes]:
    """The full value of every truncated dead letter, read at its source coordinates (letters that hold their
    whole value need nothing). Reads each source partition from the first such offset to the last only."""
    wanted: dict[tuple[str, int], dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for letter in letters:
        if letter.value_truncated:
            wanted[(letter.source_topic, letter.source_partition)][letter.source_offset].append(letter.dead_letter_id)
    found: dict[str, bytes] = {}
    for (topic, partition), offsets in wanted.items():
        last = max(offsets)
        consumer = _reader(bootstrap, "originals")
        try:
            consumer.assign([TopicPartition(topic, partition, min(offsets))])
            deadline = time.monotonic() + timeout_s
            done = False
            while not done and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=100, timeout=0.5):
                    if m.error():  # the end of the partition, or a topic that is gone: nothing more to find
                        done = done or m.error().code() in _NOTHING_MORE
                        continue
                    for letter_id in offsets.get(m.offset(), ()):
                        found[letter_id] = bytes(m.value() or b"")
                    done = done or m.offset() >= last
        finally:
            consumer.close()
    return found
