"""The views projection: what the query API reads, as Redis hashes written from the result topics (pure).

Hashes, under the projector's namespace (engine.readmodels.projector), each field written from one source:

=============================  =====================================  ============================================
hash                           field ← topic                          version
=============================  =====================================  ============================================
``order:<tenant>:<order>``     ``order`` ← order inbox snapshots      the channel's version (a stale copy loses)
                               ``review`` ← review decisions          offset
                               ``decision`` ← order decisions         offset
                               ``allocation`` ← allocations           offset
                               ``cancellation:<id>``, ``withdrawal:<warehouse>``, ``short:<line>``,
                               ``shipment:<id>`` (its lines of this order), ``progress:<id>`` (shipped, delivered,
                               written back, returns …), ``return:<id>``, ``voucher:<id>``         offset
``buyer:<tenant>:<buyer>``     ``<order>`` ← order inbox snapshots    the channel's version
``shipment:<tenant>:<id>``     ``shipment``, ``wave``, ``picked``, ``shipped``, ``failed``          offset
``waybill:<tenant>:<number>``  ``shipment`` ← shipped; ``tracking`` ← tracking updates              offset
``stock:<tenant>:<sku>``       ``<warehouse>`` ← stock events          the SKU's stock version
                               ``shop:<shop>`` ← stock-sync results   offset (accepted answers only)
``sync:<tenant>:<shop>``       ``<sku>`` ← stock-sync results         offset (the last answer, accepted or not)
=============================  =====================================  ============================================

An order's status is not stored: :mod:`agents.views.read` derives it from these parts when it is read, so no
part has to know the others and parts may arrive in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from engine.readmodels.projector import Write
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import OrderProgress, ReturnSettled
from schemas.fulfilment import OrderAllocation, Shipment, ShipmentPicked, ShortPickOutcome, Wave, WithdrawalOutcome
from schemas.inbox import OrderSnapshot
from schemas.inventory import StockEvent
from schemas.ledger import Voucher
from schemas.review import OrderCancellation, ReviewDecision
from schemas.saga import OrderDecision
from schemas.shipping import ShipmentFailed, ShipmentShipped, TrackingUpdate
from schemas.stocksync import StockSyncResult


class _Kind(msgspec.Struct):
    kind: str = ""


def order_key(tenant: str, order_id: str) -> str:
    return f"order:{tenant}:{order_id}"


def buyer_key(tenant: str, buyer_id: str) -> str:
    return f"buyer:{tenant}:{buyer_id}"


def shipment_key(tenant: str, shipment_id: str) -> str:
    return f"shipment:{tenant}:{shipment_id}"


def waybill_key(tenant: str, waybill: str) -> str:
    return f"waybill:{tenant}:{waybill}"


def stock_key(tenant: str, sku: str) -> str:
    return f"stock:{tenant}:{sku}"


def sync_key(tenant: str, shop: str) -> str:
    return f"sync:{tenant}:{shop}"


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


Handler = Callable[[bytes, int], list[Write]]


class Views:
    """The projection over a deployment's topics (engine.readmodels.projector.Projection)."""

    name = "views"

    def __init__(self, topics: Topics) -> None:
        t = topics
        self.handlers: dict[str, Handler] = {
            t.order_inbox: self._inbox,
            t.review_decisions: self._review,
            t.order_decisions: self._decision,
            t.order_cancellations: self._cancellation,
            t.allocations: self._allocation,
            t.withdrawals: self._withdrawal,
            t.short_picks: self._short,
            t.shipments: self._shipment,
            t.waves: self._wave,
            t.picked_shipments: self._picked,
            t.shipped: self._shipped,
            t.shipping_failures: self._failed,
            t.tracking_updates: self._tracking,
            t.order_progress: self._progress,
            t.returns: self._return,
            t.vouchers: self._voucher,
            t.stock_events: self._stock,
            t.stock_sync_results: self._synced,
        }

    def topics(self) -> list[str]:
        return sorted(self.handlers)

    def project(self, topic: str, partition: int, offset: int, value: bytes) -> list[Write]:
        return self.handlers[topic](value, offset)

    # -- orders ----------------------------------------------------------------------------------------------
    def _inbox(self, value: bytes, offset: int) -> list[Write]:
        if wire.decode(value, _Kind).kind != "order":
            return []  # line results, operator actions, rule and layout copies: not the order's contents
        o = wire.decode(value, OrderSnapshot).order
        summary = {
            "channel": o.channel.value,
            "shop_id": o.shop_id,
            "platform_order_id": o.platform_order_id,
            "channel_status": o.status.value,
            "buyer_id": o.buyer.id,
            "lines": [
                {"line_no": ln.line_no, "sku": ln.sku, "quantity": ln.quantity, "unit_price_fen": ln.unit_price_fen}
                | ({"paid_fen": ln.paid_fen} if ln.paid_fen is not None else {})
                | ({"status": ln.status.value} if ln.status.value != "active" else {})
                for ln in o.lines
            ],
            "goods_fen": o.goods_fen,
            "shipping_fen": o.shipping_fen,
            "delivery": o.delivery,
            "pickup_store": o.pickup_store,
            "created_at": o.created_at,
            "paid_at": o.paid_at,
            "version": o.version,
        }
        return [
            Write(order_key(o.tenant, o.order_id), "order", o.version, _json(summary)),
            Write(buyer_key(o.tenant, o.buyer.id), o.order_id, o.version, _json(o.created_at)),
        ]

    def _review(self, value: bytes, offset: int) -> list[Write]:
        r = wire.decode(value, ReviewDecision)
        body = {"outcome": r.outcome.value, "reasons": r.reasons, "actor": r.actor, "ts": r.ts}
        return [Write(order_key(r.tenant, r.order_id), "review", offset, _json(body))]

    def _decision(self, value: bytes, offset: int) -> list[Write]:
        d = wire.decode(value, OrderDecision)
        body = {
            "status": d.status.value,
            "reason": d.reason.value if d.reason else None,
            "detail": d.detail,
            "lines": [wire.to_builtins(ln) for ln in d.lines],
            "decided_at": d.decided_at,
        }
        return [Write(order_key(d.tenant, d.order_id), "decision", offset, _json(body))]

    def _cancellation(self, value: bytes, offset: int) -> list[Write]:
        c = wire.decode(value, OrderCancellation)
        body = {"kind": c.kind.value, "line_ids": c.line_ids, "reason": c.reason, "ts": c.ts}
        return [Write(order_key(c.tenant, c.order_id), f"cancellation:{c.cancellation_id}", offset, _json(body))]

    def _allocation(self, value: bytes, offset: int) -> list[Write]:
        a = wire.decode(value, OrderAllocation)
        body = {"strategy": a.strategy, "parcels": wire.to_builtins(a.parcels), "ts": a.ts}
        return [Write(order_key(a.tenant, a.order_id), "allocation", offset, _json(body))]

    def _withdrawal(self, value: bytes, offset: int) -> list[Write]:
        w = wire.decode(value, WithdrawalOutcome)
        body = {"outcome": w.outcome, "shipment_ids": w.shipment_ids, "ts": w.ts}
        return [Write(order_key(w.tenant, w.order_id), f"withdrawal:{w.warehouse}", offset, _json(body))]

    def _short(self, value: bytes, offset: int) -> list[Write]:
        s = wire.decode(value, ShortPickOutcome)
        body = {"outcome": s.outcome, "missing": s.missing, "warehouse": s.warehouse, "ts": s.ts}
        return [Write(order_key(s.tenant, s.order_id), f"short:{s.line_id}", offset, _json(body))]

    def _progress(self, value: bytes, offset: int) -> list[Write]:
        p = wire.decode(value, OrderProgress)
        body = {"event": p.event.value, "detail": p.detail, "waybill": p.waybill, "ts": p.ts}
        return [Write(order_key(p.tenant, p.order_id), f"progress:{p.progress_id}", offset, _json(body))]

    def _return(self, value: bytes, offset: int) -> list[Write]:
        r = wire.decode(value, ReturnSettled)
        body = {"warehouse": r.warehouse, "refund_fen": r.refund_fen, "lines": wire.to_builtins(r.lines), "ts": r.ts}
        return [Write(order_key(r.tenant, r.order_id), f"return:{r.return_id}", offset, _json(body))]

    def _voucher(self, value: bytes, offset: int) -> list[Write]:
        v = wire.decode(value, Voucher)
        if v.order_id is None:
            return []  # stock moves and freight: the books', not an order's
        body = {"kind": v.kind.value, "amount_fen": v.debit_fen, "book_date": v.book_date}
        return [Write(order_key(v.tenant, v.order_id), f"voucher:{v.voucher_id}", offset, _json(body))]

    # -- shipments and waybills ------------------------------------------------------------------------------
    def _shipment(self, value: bytes, offset: int) -> list[Write]:
        s = wire.decode(value, Shipment)
        body = {
            "warehouse": s.warehouse,
            "carrier": s.carrier,
            "order_ids": s.order_ids,
            "lines": wire.to_builtins(s.lines),
            "split_reason": s.split_reason,
            "ts": s.ts,
        }
        writes = [Write(shipment_key(s.tenant, s.shipment_id), "shipment", offset, _json(body))]
        for order_id in s.order_ids:
            mine = [
                {"line_id": ln.line_id, "sku": ln.sku, "quantity": ln.quantity}
                for ln in s.lines
                if ln.order_id == order_id
            ]
            part = {"warehouse": s.warehouse, "carrier": s.carrier, "lines": mine}
            writes.append(Write(order_key(s.tenant, order_id), f"shipment:{s.shipment_id}", offset, _json(part)))
        return writes

    def _wave(self, value: bytes, offset: int) -> list[Write]:
        w = wire.decode(value, Wave)
        body = _json({"wave_id": w.wave_id, "trigger": w.trigger, "ts": w.ts})
        return [Write(shipment_key(w.tenant, sid), "wave", offset, body) for sid in w.shipment_ids]

    def _picked(self, value: bytes, offset: int) -> list[Write]:
        p = wire.decode(value, ShipmentPicked)
        body = {"lines": wire.to_builtins(p.lines), "ts": p.ts}
        return [Write(shipment_key(p.tenant, p.shipment_id), "picked", offset, _json(body))]

    def _shipped(self, value: bytes, offset: int) -> list[Write]:
        s = wire.decode(value, ShipmentShipped)
        parcels = [
            {"parcel_id": p.parcel_id, "carrier": p.carrier, "waybill": p.waybill, "cost_fen": p.cost_fen}
            for p in s.parcels
        ]
        writes = [
            Write(shipment_key(s.tenant, s.shipment_id), "shipped", offset, _json({"parcels": parcels, "ts": s.ts}))
        ]
        for p in s.parcels:
            at = _json({"shipment_id": s.shipment_id, "order_ids": s.order_ids, "carrier": p.carrier})
            writes.append(Write(waybill_key(s.tenant, p.waybill), "shipment", offset, at))
        return writes

    def _failed(self, value: bytes, offset: int) -> list[Write]:
        f = wire.decode(value, ShipmentFailed)
        body = {"attempts": f.attempts, "errors": f.errors[-3:], "ts": f.ts}
        return [Write(shipment_key(f.tenant, f.shipment_id), "failed", offset, _json(body))]

    def _tracking(self, value: bytes, offset: int) -> list[Write]:
        u = wire.decode(value, TrackingUpdate)
        body = {
            "carrier": u.carrier,
            "status": u.status.value,
            "exception": u.exception,
            "final": u.final,
            "occurred_at": u.occurred_at,
            "ts": u.ts,
        }
        return [Write(waybill_key(u.tenant, u.waybill), "tracking", offset, _json(body))]

    # -- stock -----------------------------------------------------------------------------------------------
    def _stock(self, value: bytes, offset: int) -> list[Write]:
        e = wire.decode(value, StockEvent)
        body = {"on_hand": e.on_hand, "reserved": e.reserved, "version": e.version, "ts": e.ts}
        return [Write(stock_key(e.tenant, e.sku), e.warehouse, e.version, _json(body))]

    def _synced(self, value: bytes, offset: int) -> list[Write]:
        r = wire.decode(value, StockSyncResult)
        body = {"quantity": r.quantity, "status": r.status, "answer": r.answer[:200], "attempt": r.attempt, "ts": r.ts}
        writes = [Write(sync_key(r.tenant, r.shop_id), r.sku, offset, _json(body))]
        if r.status == "accepted":
            shown = _json({"quantity": r.quantity, "ts": r.ts})
            writes.append(Write(stock_key(r.tenant, r.sku), f"shop:{r.shop_id}", offset, shown))
        return writes
