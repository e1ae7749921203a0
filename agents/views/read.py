"""Views as the API answers them, assembled from the projected hashes (agents.views.projection) — pure.

An order's **status** is derived here from its parts, never stored, so parts may arrive in any order:

received → held / reviewed → accepted / rejected / cancelled → waved → picked → shipped → delivered / returned

* ``received``: the order is known, review has not spoken; ``held``: review holds it (an operator decides) or it
  awaits payment; ``reviewed``: review approved (or an operator released) it and its stock is being reserved;
* ``accepted`` / ``rejected`` / ``cancelled``: the order's one decision — or, after acceptance, a whole-order
  cancellation;
* then, over the shipments it still has (a withdrawn one does not count): ``waved`` once one is in a wave,
  ``picked`` once every one is picked, ``shipped`` once a parcel left (the order's progress says so),
  ``delivered`` once every waybill is delivered, ``returned`` once a return was received.
"""

from __future__ import annotations

from typing import Any

import orjson

Hash = dict[bytes, bytes]

STATUSES = (
    "received",
    "held",
    "reviewed",
    "accepted",
    "rejected",
    "cancelled",
    "waved",
    "picked",
    "shipped",
    "delivered",
    "returned",
)


def _fields(h: Hash) -> dict[str, Any]:
    return {k.decode(): orjson.loads(v) for k, v in h.items()}


def _prefixed(fields: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in sorted(fields.items()) if k.startswith(prefix)}


def shipment_ids(order: Hash) -> list[str]:
    return sorted(k.decode()[len("shipment:") :] for k in order if k.startswith(b"shipment:"))


def waybills(shipments: dict[str, Hash]) -> list[str]:
    out = set()
    for h in shipments.values():
        shipped = h.get(b"shipped")
        if shipped:
            out.update(p["waybill"] for p in orjson.loads(shipped)["parcels"])
    return sorted(out)


def status(fields: dict[str, Any], shipments: dict[str, dict[str, Any]]) -> str:
    review, decision = fields.get("review"), fields.get("decision")
    events = {p["event"] for p in _prefixed(fields, "progress:").values()}
    whole_cancel = any(c["kind"] == "order" for c in _prefixed(fields, "cancellation:").values())
    if decision is None:
        if whole_cancel or (review and review["outcome"] == "cancelled"):
            return "cancelled"
        if review is None:
            return "received" if "order" in fields else "unknown"
        if review["outcome"] in ("held", "awaiting_payment"):
            return "held"
        if review["outcome"] == "rejected":
            return "rejected"
        return "reviewed"
    if decision["status"] != "accepted":
        return str(decision["status"])
    if whole_cancel:
        return "cancelled"
    if "return_received" in events or any(k.startswith("return:") for k in fields):
        return "returned"
    if "delivered" in events or "picked_up" in events:
        return "delivered"
    if "shipped" in events:
        return "shipped"
    withdrawn = {
        s for w in _prefixed(fields, "withdrawal:").values() if w["outcome"] == "left" for s in w["shipment_ids"]
    }
    live = [s for sid, s in shipments.items() if sid not in withdrawn]
    if live and all("picked" in s for s in live):
        return "picked"
    if any("wave" in s for s in live):
        return "waved"
    return "accepted"


def order_view(
    tenant: str, order_id: str, order: Hash, shipments: dict[str, Hash], tracking: dict[str, Hash]
) -> dict[str, Any] | None:
    """The order as customer service sees it, or None when nothing is known of it."""
    if not order:
        return None
    fields = _fields(order)
    ships = {sid: _fields(h) for sid, h in shipments.items()}
    by_waybill = {wb: _fields(h) for wb, h in tracking.items()}
    decision = fields.get("decision") or {}
    reserved = {ln["line_id"]: ln for ln in decision.get("lines", [])}
    snapshot = fields.get("order") or {}
    lines = [
        {
            **ln,
            "line_id": f"{order_id}#{ln['line_no']}",
            "warehouse": reserved.get(f"{order_id}#{ln['line_no']}", {}).get("warehouse"),
        }
        for ln in snapshot.get("lines", [])
    ]
    shipments_out = []
    for sid in sorted(ships):
        s = ships[sid]
        mine = fields.get(f"shipment:{sid}", {})
        parcels = (s.get("shipped") or {}).get("parcels", [])
        shipments_out.append(
            {
                "shipment_id": sid,
                "warehouse": mine.get("warehouse") or (s.get("shipment") or {}).get("warehouse"),
                "carrier": mine.get("carrier") or (s.get("shipment") or {}).get("carrier"),
                "lines": mine.get("lines", []),
                "merged_with": sorted(set((s.get("shipment") or {}).get("order_ids", [])) - {order_id}),
                "wave": s.get("wave"),
                "picked": "picked" in s,
                "failed": s.get("failed"),
                "parcels": [{**p, "tracking": by_waybill.get(p["waybill"], {}).get("tracking")} for p in parcels],
            }
        )
    return {
        "tenant": tenant,
        "order_id": order_id,
        "status": status(fields, ships),
        **{k: snapshot.get(k) for k in ("channel", "shop_id", "platform_order_id", "buyer_id", "channel_status")},
        **{k: snapshot.get(k) for k in ("goods_fen", "shipping_fen", "delivery", "created_at", "paid_at", "version")},
        "lines": lines,
        "review": fields.get("review"),
        "decision": {k: v for k, v in decision.items() if k != "lines"} or None,
        "allocation": fields.get("allocation"),
        "cancellations": list(_prefixed(fields, "cancellation:").values()),
        "withdrawals": _prefixed(fields, "withdrawal:"),
        "short_picks": _prefixed(fields, "short:"),
        "shipments": shipments_out,
        "progress": sorted(_prefixed(fields, "progress:").values(), key=lambda p: (p["ts"], p["event"])),
        "returns": _prefixed(fields, "return:"),
        "vouchers": _prefixed(fields, "voucher:"),
    }


def shipment_view(tenant: str, shipment_id: str, shipment: Hash, tracking: dict[str, Hash]) -> dict[str, Any] | None:
    if not shipment:
        return None
    s = _fields(shipment)
    by_waybill = {wb: _fields(h) for wb, h in tracking.items()}
    parcels = (s.get("shipped") or {}).get("parcels", [])
    state = "shipped" if parcels else "picked" if "picked" in s else "waved" if "wave" in s else "released"
    return {
        "tenant": tenant,
        "shipment_id": shipment_id,
        "status": "failed" if "failed" in s and not parcels else state,
        **(s.get("shipment") or {}),
        "wave": s.get("wave"),
        "picked": s.get("picked"),
        "failed": s.get("failed"),
        "parcels": [{**p, "tracking": by_waybill.get(p["waybill"], {}).get("tracking")} for p in parcels],
    }


def stock_view(tenant: str, sku: str, stock: Hash) -> dict[str, Any]:
    """Available to promise (可售): on hand − reserved, per warehouse and in all, as the inventory last said; and
    what each shop may sell of it, as stock sync last told the shop."""
    warehouses, shops = {}, {}
    for name, raw in sorted(stock.items()):
        if name.startswith(b"shop:"):
            shops[name.decode()[len("shop:") :]] = orjson.loads(raw)
            continue
        wh, level = name, orjson.loads(raw)
        warehouses[wh.decode()] = {
            "on_hand": level["on_hand"],
            "reserved": level["reserved"],
            "atp": max(0, level["on_hand"] - level["reserved"]),
            "version": level["version"],
        }
    return {
        "tenant": tenant,
        "sku": sku,
        "known": bool(warehouses),
        "on_hand": sum(w["on_hand"] for w in warehouses.values()),
        "reserved": sum(w["reserved"] for w in warehouses.values()),
        "atp": sum(w["atp"] for w in warehouses.values()),
        "version": max((w["version"] for w in warehouses.values()), default=0),
        "warehouses": warehouses,
        "shops": shops,  # what each shop was last told it may sell (stock sync), as its platform accepted
    }


def sync_view(tenant: str, shop: str, sync: Hash) -> dict[str, Any]:
    """What one shop was last sent per SKU and how its platform answered."""
    skus = {k.decode(): orjson.loads(v) for k, v in sorted(sync.items())}
    return {
        "tenant": tenant,
        "shop_id": shop,
        "skus": skus,
        "refused": sorted(sku for sku, s in skus.items() if s["status"] != "accepted"),
    }
