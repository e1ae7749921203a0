"""Loading stock (receipts, adjustments, returns) and sending orders, the way a WMS or an integration would.

A loader is one command origin. Its sequence numbers come from the log, never the clock (a clock can step
back, and commands below an origin's high-water mark are refused): each command's ``seq`` is the end offset
of its target partition when the load starts, times ``SEQ_SPAN``, plus its place in the load. Offsets only
grow, so a later load always numbers above an earlier one. A load is one transaction: all of it or none, so a
load that failed half-way can simply be run again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import msgspec

from engine.kafka.clients import Sender, end_offsets, partition_for
from engine.kafka.transactions import TxnProducer
from engine.topics import Topics
from schemas import wire
from schemas.inbox import OrderSnapshot
from schemas.inventory import InventoryCommand
from schemas.order import Order

#: Commands one load may send to one partition (the room between two offsets' sequence numbers).
SEQ_SPAN = 1 << 20
LOADER_ORIGIN = "stock-loader"
SENT_HEADER = "oms-sent-ms"


def load_stock(
    bootstrap: str,
    topics: Topics,
    partitions: int,
    commands: Iterable[InventoryCommand],
    origin: str = LOADER_ORIGIN,
    app_id: str = "oms",
) -> int:
    """Send ``commands`` as origin ``origin`` in one transaction; returns how many were sent."""
    ends = end_offsets(bootstrap, topics.inventory_commands, partitions)
    used = dict.fromkeys(range(partitions), 0)
    producer = TxnProducer(bootstrap, f"{app_id}.loader.{origin}", timeout_s=60.0)
    sent = 0
    try:
        producer.init()
        producer.begin()
        for cmd in commands:
            p = partition_for(cmd.key, partitions)
            if used[p] >= SEQ_SPAN:
                raise ValueError(f"more than {SEQ_SPAN} commands for partition {p} in one load")
            stamped = msgspec.structs.replace(cmd, origin=origin, seq=ends[p] * SEQ_SPAN + used[p])
            used[p] += 1
            producer.produce(topics.inventory_commands, cmd.key.encode(), wire.encode(stamped))
            sent += 1
        producer.commit()
    finally:
        producer.close()
    return sent


def send_orders(bootstrap: str, topics: Topics, orders: Iterable[Order]) -> int:
    """Canonical orders straight into the order inbox (as the API would), each stamped with the time it was
    sent (``ingested_at`` and the ``oms-sent-ms`` header)."""
    sender = Sender(bootstrap)
    for order in orders:
        sent = int(time.time() * 1000)
        snapshot = OrderSnapshot(order=msgspec.structs.replace(order, ingested_at=sent))
        sender.send(topics.order_inbox, snapshot.key, wire.encode(snapshot), headers={SENT_HEADER: str(sent).encode()})
    sender.flush()
    return sender.sent
