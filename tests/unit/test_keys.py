"""Partition keys, pinned: every record's key, computed through the record, is the literal it was before the keys
got one home (schemas.keys). The key decides the single writer and the partition, and deterministic ids and
byte-identical replays depend on it, so a key that changes by one byte is a broken contract, not a refactoring.

The literals below were computed from the code as it was before ``schemas/keys.py`` existed; never update one to
make a test pass.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import msgspec
import pytest

from schemas import keys
from schemas.aftersales import (
    CustomerNotification,
    OrderOpened,
    OrderProgress,
    OrderTracking,
    PickupClaim,
    PickupReady,
    ReturnReceived,
    ReturnRequested,
    ReturnSettled,
    WaybillRegistered,
    WriteBackRequest,
    WriteBackResult,
)
from schemas.common import KEY_SEP
from schemas.fulfilment import (
    Layout,
    LayoutVersion,
    LineShort,
    OrderAllocation,
    OrderWithdrawn,
    ParcelAccepted,
    PickConfirmation,
    PickList,
    PickOutcome,
    Shipment,
    ShipmentPicked,
    ShortPickOutcome,
    Wave,
    WithdrawalOutcome,
)
from schemas.inbox import OperatorAction, OrderSnapshot, RulesVersion
from schemas.inventory import (
    Adjust,
    Issue,
    Quote,
    Receive,
    Release,
    Reserve,
    Return,
    ShortPick,
    StockEvent,
    reservation_key,
)
from schemas.ledger import (
    LedgerPolicyVersion,
    ParcelsShipped,
    ProgressMade,
    Reconciliation,
    ReturnBooked,
    SettlementLine,
    StockMoved,
    Voucher,
)
from schemas.order import Address, Buyer, Channel, Order, OrderLine, buyer_key
from schemas.review import OrderCancellation, ReviewDecision, RuleSet
from schemas.saga import LineResult, OrderDecision, StockQuote
from schemas.shipping import (
    CarrierEvent,
    GoodsIssued,
    ShipmentFailed,
    ShipmentShipped,
    ShippingPolicyVersion,
    TrackingUpdate,
    WaybillAnswer,
    WaybillWanted,
)

#: The fields keys are made of, one distinct value each, so a key shows which fields it took.
POOL: dict[str, Any] = {
    "tenant": "acme",
    "order_id": "tmall-s1-9001",
    "shop_id": "s1",
    "sku": "SKU-7",
    "line_id": "tmall-s1-9001#2",
    "warehouse": "wh-hz",
    "shipment_id": "shp.wh-hz.42",
    "pick_list_id": "pl.wh-hz.3.1",
    "wave_id": "wave.wh-hz.3",
    "carrier": "sf",
    "waybill": "SF1001",
    "reply_to": "acme:s1:b-b1",
    "inbox_key": "acme:s1:b-b1",
}


def record(cls: type, **given: Any) -> Any:
    """A ``cls`` with the pool's values for the fields keys are made of; other required fields get a placeholder
    (a key must never read them)."""
    fields = {}
    for f in msgspec.structs.fields(cls):
        if f.name in given:
            fields[f.name] = given[f.name]
        elif f.name in POOL:
            fields[f.name] = POOL[f.name]
        elif f.required:
            fields[f.name] = None
    return cls(**fields)


def order(buyer: str = "b1", **changes: Any) -> Order:
    base = Order(
        tenant="acme",
        order_id="tmall-s1-9001",
        channel=Channel.TMALL,
        shop_id="s1",
        platform_order_id="9001",
        buyer=Buyer(id=buyer),
        receiver=Address(name="李四", province="浙江省", city="杭州市", street="文三路 90 号"),
        lines=[OrderLine(line_no=2, sku="SKU-7", quantity=1, unit_price_fen=100)],
        created_at=1_000,
        ingested_at=1_001,
    )
    return msgspec.structs.replace(base, **changes)


BY_ORDER = "acme:tmall-s1-9001"
BY_BUYER = "acme:s1:b-b1"
BY_SKU = "acme:SKU-7"
BY_WAREHOUSE = "acme:wh-hz"
BY_SHIPMENT = "acme:shp.wh-hz.42"
BY_WAYBILL = "acme:SF1001"
BY_TENANT = "acme"

stock_event = record(StockEvent, order_id=None)
stock_event_of_order = record(StockEvent, order_id="tmall-s1-9001")

#: (record, its key as it was): at least one record of every type that has a key.
PINNED: list[tuple[Any, str]] = [
    # the order side's inbox: the buyer (single writer: the order stage)
    (OrderSnapshot(order=order()), BY_BUYER),
    (OrderSnapshot(order=order(buyer="刘备")), "acme:s1:b-h-f6466c6cd5b8458c9830"),
    (OrderSnapshot(order=order(buyer=" b1 ")), BY_BUYER),
    (OrderSnapshot(order=order(buyer="t***8")), "acme:s1:o-tmall-s1-9001"),
    (OrderSnapshot(order=order(buyer="  ")), "acme:s1:o-tmall-s1-9001"),
    (record(OperatorAction), BY_BUYER),
    (record(LineResult), BY_BUYER),
    (record(StockQuote), BY_BUYER),
    (record(LineShort), BY_BUYER),
    # one copy per partition, keyed by the tenant
    (RulesVersion(rules=RuleSet(tenant="acme")), BY_TENANT),
    (RuleSet(tenant="acme"), BY_TENANT),
    (record(Layout), BY_TENANT),
    (LayoutVersion(layout=record(Layout)), BY_TENANT),
    (record(ShippingPolicyVersion), BY_TENANT),
    (record(LedgerPolicyVersion), BY_TENANT),
    # the order
    (order(), BY_ORDER),
    (record(OrderDecision), BY_ORDER),
    (record(ReviewDecision), BY_ORDER),
    (record(OrderCancellation), BY_ORDER),
    (record(OrderAllocation), BY_ORDER),
    (record(ShortPickOutcome), BY_ORDER),
    (record(WithdrawalOutcome), BY_ORDER),
    (record(GoodsIssued), BY_ORDER),
    (record(OrderOpened), BY_ORDER),
    (record(PickupReady), BY_ORDER),
    (record(PickupClaim), BY_ORDER),
    (record(OrderTracking), BY_ORDER),
    (record(WriteBackResult), BY_ORDER),
    (record(ReturnRequested), BY_ORDER),
    (record(ReturnReceived), BY_ORDER),
    (record(WriteBackRequest), BY_ORDER),
    (record(CustomerNotification), BY_ORDER),
    (record(OrderProgress), BY_ORDER),
    (record(ReturnSettled), BY_ORDER),
    (record(SettlementLine), BY_ORDER),
    (record(Reconciliation), BY_ORDER),
    (ProgressMade(progress=record(OrderProgress)), BY_ORDER),
    (ReturnBooked(settled=record(ReturnSettled)), BY_ORDER),
    # the SKU (single writer: the inventory)
    (record(Reserve), BY_SKU),
    (record(Release), BY_SKU),
    (record(Issue), BY_SKU),
    (record(Receive), BY_SKU),
    (record(Adjust), BY_SKU),
    (record(Return), BY_SKU),
    (record(ShortPick), BY_SKU),
    (record(Quote), BY_SKU),
    (stock_event, BY_SKU),
    # the warehouse (single writer: fulfilment)
    (record(ParcelAccepted), BY_WAREHOUSE),
    (record(OrderWithdrawn), BY_WAREHOUSE),
    (record(PickConfirmation), BY_WAREHOUSE),
    # the shipment (single writer: shipping)
    (record(Shipment), BY_SHIPMENT),
    (record(ShipmentPicked), BY_SHIPMENT),
    (record(WaybillAnswer), BY_SHIPMENT),
    (record(ShipmentShipped), BY_SHIPMENT),
    (record(ShipmentFailed), BY_SHIPMENT),
    (ParcelsShipped(shipped=record(ShipmentShipped)), BY_SHIPMENT),
    # fulfilment's outputs by their own ids
    (record(Wave), "acme:wave.wh-hz.3"),
    (record(PickList), "acme:pl.wh-hz.3.1"),
    (record(PickOutcome), "acme:pl.wh-hz.3.1"),
    # the carrier gateway's batch
    (record(WaybillWanted), "acme:sf:wh-hz"),
    # the waybill (single writer: tracking)
    (record(CarrierEvent), BY_WAYBILL),
    (record(TrackingUpdate), BY_WAYBILL),
    (record(WaybillRegistered), BY_WAYBILL),
    # the ledger: the order, else the SKU (stock moves) or the shipment (freight); vouchers by their entity
    (StockMoved(event=stock_event_of_order), BY_ORDER),
    (StockMoved(event=stock_event), BY_SKU),
    (record(Voucher, entity="tmall-s1-9001"), BY_ORDER),
    (record(Voucher, entity="SKU-7"), BY_SKU),
    (record(Voucher, entity="shp.wh-hz.42"), BY_SHIPMENT),
]


PIN_IDS = [f"{type(r).__name__}-{i}" for i, (r, _) in enumerate(PINNED)]


@pytest.mark.parametrize(("rec", "expected"), PINNED, ids=PIN_IDS)
def test_every_record_keeps_its_key(rec: Any, expected: str) -> None:
    assert rec.key == expected


def test_every_keyed_record_type_is_pinned() -> None:
    """A new record type with a key gets a pin here (its key is a contract from its first day)."""
    pinned = {type(r) for r, _ in PINNED}
    keyed = set()
    for name in ("order", "inbox", "saga", "review", "inventory", "fulfilment", "shipping", "aftersales", "ledger"):
        module = importlib.import_module(f"schemas.{name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and isinstance(getattr(cls, "key", None), property):
                keyed.add(cls)
    missing = {cls.__name__ for cls in keyed - pinned if not cls.__name__.startswith("_")}
    assert not missing, f"records with a key and no pin in this test: {sorted(missing)}"


def test_helpers_keep_their_keys() -> None:
    assert KEY_SEP == ":"
    assert buyer_key(order()) == BY_BUYER
    assert reservation_key("acme", "SKU-7", "tmall-s1-9001#2") == "acme:SKU-7:tmall-s1-9001#2"
    assert reservation_key("acme", "SKU-7", "tmall-s1-9001#2/r") == "acme:SKU-7:tmall-s1-9001#2/r"


def test_the_buyer_key_never_depends_on_the_receiver() -> None:
    """A channel may edit the address of an order: a changed key would give one order two writers."""
    moved = order(receiver=Address(name="王五", province="上海市", city="上海市", street="南京东路 1 号"))
    assert buyer_key(moved) == buyer_key(order()) == BY_BUYER
    masked = order(buyer="t***8")
    assert buyer_key(msgspec.structs.replace(masked, receiver=moved.receiver)) == buyer_key(masked)


def test_the_key_functions_are_the_keys() -> None:
    """Each function of schemas.keys, called directly, gives the records' keys."""
    assert keys.buyer("acme", "s1", "b1", "tmall-s1-9001") == BY_BUYER
    assert keys.buyer("acme", "s1", "t***8", "tmall-s1-9001") == "acme:s1:o-tmall-s1-9001"
    assert keys.buyer_key(order()) == BY_BUYER
    assert keys.tenant("acme") == BY_TENANT
    assert keys.order("acme", "tmall-s1-9001") == BY_ORDER
    assert keys.sku("acme", "SKU-7") == BY_SKU
    assert keys.line_reservation("acme", "SKU-7", "tmall-s1-9001#2") == "acme:SKU-7:tmall-s1-9001#2"
    assert keys.warehouse("acme", "wh-hz") == BY_WAREHOUSE
    assert keys.shipment("acme", "shp.wh-hz.42") == BY_SHIPMENT
    assert keys.wave("acme", "wave.wh-hz.3") == "acme:wave.wh-hz.3"
    assert keys.pick_list("acme", "pl.wh-hz.3.1") == "acme:pl.wh-hz.3.1"
    assert keys.waybill_batch("acme", "sf", "wh-hz") == "acme:sf:wh-hz"
    assert keys.waybill("acme", "SF1001") == BY_WAYBILL
    assert keys.stock_moved(stock_event_of_order) == BY_ORDER
    assert keys.stock_moved(stock_event) == BY_SKU
    assert keys.voucher("acme", "SKU-7") == BY_SKU
    assert keys.raw_order("acme", "s1", "9001") == "acme:s1:9001"
