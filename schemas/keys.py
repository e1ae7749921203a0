"""Partition keys, in one place: the key decides the single writer.

A record's key picks its partition (murmur2, like Faust and Java), and a stage owns each partition of its inbox:
so whatever shares a key has one writer, which sees it in one order, and keeps its state without a lock. Every
record's ``key`` property (``schemas/``) calls a function of this module, as should any code that builds a key
itself; each function says which stage is the single writer for that key and why the key is made as it is.

Rules every key follows:

* It starts with the tenant, then ``:`` (``schemas.common.KEY_SEP``), then the entity. Identifiers never
  contain ``:`` (``schemas.common.Ident``), so a key names exactly one entity and splits back unambiguously.
* It is made only of fields that never change for the entity: a key that changed between two records of one
  entity would give it two writers.
* It never changes, byte for byte: deterministic ids, the partition of every stored record and byte-identical
  replays depend on it (``tests/unit/test_keys.py`` pins each kind to its literal).
* All topics share one partition count, so topics with the same key are co-partitioned: a stage's inbox and the
  result topics it writes under the same key line up partition for partition.

Some records carry the key they are sent under in a field instead of computing it: an answer to the order side
(``reply_to`` of ``LineResult``, ``StockQuote``, ``LineShort``; ``inbox_key`` of ``OperatorAction``) goes back
under the :func:`buyer` key its question came with, because the answering stage (the inventory, fulfilment, the
API) cannot compute a buyer key from what it knows.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.inventory import StockEvent
    from schemas.order import Order

# The separator is schemas.common.KEY_SEP (":"); the functions spell it out, the fastest way to build a string.

_SAFE_BUYER = re.compile(r"^[A-Za-z0-9_.#/-]{1,100}$")


def tenant(tenant: str) -> str:
    """``tenant``: configuration published as versioned records into the log — review rules, layouts, shipping
    and ledger policies. Their publisher writes one copy to every partition of each inbox that uses them, so
    the key does not pick a writer; it names whose configuration it is (and is the key of the compacted
    ``layouts`` topic, where the latest layout per tenant is kept)."""
    return tenant


def buyer(tenant: str, shop_id: str, buyer_id: str, order_id: str) -> str:
    """``tenant:shop:b-<buyer>``, or ``tenant:shop:o-<order id>``: the order side's single writer, the order
    stage (review, velocity rules, the reservation saga), on the ``order-inbox``; it is also part of the merge
    key (合单) fulfilment groups an accepted order's parcels by, since merges never cross buyers.

    Everything about one buyer's orders in one shop has one writer, so review sees the buyer's recent orders in
    its own state and the saga of each order runs in one partition. The buyer id is stripped; one that is not a
    safe identifier is replaced by ``h-`` and 20 hex digits of its SHA-1 (``schemas.common.Key``: a key is made
    of identifier characters only). A buyer id that is masked (contains ``*``) or missing says nothing about who
    bought, so such an order is its own entity, keyed by its order id. The key never depends on the receiver: a
    channel may edit the address of an order, and a changed key would give one order two writers."""
    buyer_id = buyer_id.strip()
    if buyer_id and "*" not in buyer_id:
        part = buyer_id if _SAFE_BUYER.match(buyer_id) else "h-" + hashlib.sha1(buyer_id.encode()).hexdigest()[:20]
        return f"{tenant}:{shop_id}:b-{part}"
    return f"{tenant}:{shop_id}:o-{order_id}"


def buyer_key(order: Order) -> str:
    """The :func:`buyer` key of an order (the order inbox's key of its snapshots)."""
    return buyer(order.tenant, order.shop_id, order.buyer.id, order.order_id)


def raw_order(tenant: str, shop_id: str, platform_order_id: str) -> str:
    """``tenant:shop:platform_order_id``: a platform payload as-is on ``raw.<channel>``, read by the ingest stage
    (stateless: any partition may adapt any order). Keyed by the platform's own order id, which is all a pulling
    integration knows before the payload is adapted; the ingest stage checks that the payload names the same
    order (``bad_key`` otherwise) and sends the adapted order on under its :func:`buyer` key."""
    return f"{tenant}:{shop_id}:{platform_order_id}"


def order(tenant: str, order_id: str) -> str:
    """``tenant:order_id``: one order. The single writer of the aftersales stage (``aftersales-inbox``: tracking,
    write-back, returns, pickups of one order) and of the ledger's order book (``ledger-inbox``: an order's
    revenue, cost and settlement booked by one writer, so its receivable is never split).

    On the order side's result topics (decisions, reviews, cancellations, allocations, short-pick outcomes),
    fulfilment's withdrawals and aftersales' outputs, it keeps every record of one order in one partition, in
    the order written, for their consumers; the order stage's own table of orders uses it too (an order's buyer
    key is computed from the order, never the other way round)."""
    return f"{tenant}:{order_id}"


def sku(tenant: str, sku: str) -> str:
    """``tenant:sku``: the stock side's single writer, the inventory, on ``inventory-commands``. One agent owns
    each SKU's stock (every warehouse of it), so a reserve can never oversell and needs no lock; its
    ``stock-events`` carry the same key, so their gap-free versions per SKU are in one partition. Commands for
    one SKU from anywhere (orders, fulfilment, loaders, WMS) meet in one log, in one order."""
    return f"{tenant}:{sku}"


def line_reservation(tenant: str, sku: str, line_id: str) -> str:
    """``tenant:sku:line_id``: one order line's reservation in the inventory's ``lines`` table. Not a partition
    key of its own: only the :func:`sku` writer writes it, to the partition of that SKU's commands (table writes
    go to their input's partition), and it starts with the SKU's key because a reservation is part of one SKU's
    stock. A remainder line (``<line>/r``) is a line of its own."""
    return f"{tenant}:{sku}:{line_id}"


def warehouse(tenant: str, warehouse: str) -> str:
    """``tenant:warehouse``: fulfilment's single writer, on ``fulfilment-inbox`` (parcels of accepted orders,
    withdrawals, pick confirmations). Merging (合单), waves (波次) and pick lists all happen inside one warehouse,
    so one writer per warehouse decides them without coordination; a pick confirmation goes to the writer that
    released its pick list."""
    return f"{tenant}:{warehouse}"


def shipment(tenant: str, shipment_id: str) -> str:
    """``tenant:shipment_id``: shipping's single writer, on ``shipping-inbox`` (a picked shipment, the carrier
    gateway's waybill answers). Packing, the carrier of each parcel and its waybill attempts are one shipment's
    business; the gateway's answers come back under this key (``reply_to`` of the request). Also the key of
    fulfilment's ``shipments`` and ``picked-shipments``, shipping's results, and the ledger's freight."""
    return f"{tenant}:{shipment_id}"


def wave(tenant: str, wave_id: str) -> str:
    """``tenant:wave_id``: a wave on ``waves``, written by the :func:`warehouse` writer that released it; keyed
    by its own id for the WMS that consumes it."""
    return f"{tenant}:{wave_id}"


def pick_list(tenant: str, pick_list_id: str) -> str:
    """``tenant:pick_list_id``: a pick list on ``pick-lists`` and what became of its confirmation on
    ``pick-outcomes``, both written by the :func:`warehouse` writer: a picker's handheld reads one list's records
    in one partition. Fulfilment's table of released pick lists uses it too."""
    return f"{tenant}:{pick_list_id}"


def waybill_batch(tenant: str, carrier: str, warehouse: str) -> str:
    """``tenant:carrier:warehouse``: a waybill request on ``waybill-requests``, read by the carrier gateway (no
    stage state: the carrier's idempotency key is the parcel id). The gateway asks a carrier for numbers in
    batches per carrier and warehouse, so the requests of one batch meet in one partition; each answer goes back
    to the :func:`shipment` writer under the request's ``reply_to``."""
    return f"{tenant}:{carrier}:{warehouse}"


def waybill(tenant: str, waybill: str) -> str:
    """``tenant:waybill``: tracking's single writer, on ``tracking-inbox`` (shipping's registration of a waybill
    and carriers' events). A carrier reports per waybill, and one parcel may carry several orders, so the state
    that only moves forward is kept per waybill; ``tracking-updates`` carry the same key."""
    return f"{tenant}:{waybill}"


def stock_moved(event: StockEvent) -> str:
    """The ledger's key of a stock move: the :func:`order` of the units (an issue, a return, a short pick of an
    order's line), so their cost is booked by the same writer as the order's revenue, else the :func:`sku`
    (receipts, count adjustments: no order to book them with)."""
    return order(event.tenant, event.order_id) if event.order_id else sku(event.tenant, event.sku)


def voucher(tenant: str, entity: str) -> str:
    """``tenant:entity``: a voucher on ``vouchers``, keyed by what it books — an order, a SKU or a shipment
    (the ledger inbox's key of its source event), so one entity's vouchers are in one partition, in the order
    booked."""
    return f"{tenant}:{entity}"
