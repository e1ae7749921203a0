"""Stock sync to the platforms (库存同步, 一盘货): which quantity each shop may sell, and the updates that tell it.

* :class:`SyncRules` — a tenant's allocation rules, published as versioned records into every partition of the
  stock-sync inbox (``oms stock-sync publish``) and, latest only, to the compacted ``stock-sync-rules`` topic.
* :class:`AtpChanged` — the inventory's word that a SKU's stock changed at a warehouse (on hand, reserved after
  it), into the stock-sync inbox under ``tenant:sku``.
* :class:`StockUpdate` — the outbox (``stock-sync-requests``, key ``tenant:shop``): set this shop's sellable
  quantity of this SKU; ``update_id`` is the platform's idempotency key.
* :class:`StockSyncResult` — the platform's answer, written by the gateway to the stock-sync inbox (the stage
  decides whether to ask again) and, as sent, to ``stock-sync-results``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas import keys
from schemas.common import EpochMs, Ident, Record, Tenant, Text
from schemas.fulfilment import Tick

Units = Annotated[int, Meta(ge=0, le=10_000_000)]
Mode = Literal["share", "fixed", "off"]

#: Platform request shapes the gateway speaks (the shop's channel picks one).
PLATFORMS = ("taobao", "jd", "douyin", "shopify")


class ShopRule(Record, kw_only=True):
    """How one shop sells a SKU: a ``share`` (percent) of what is available after safety stock, a ``fixed``
    quantity (never more than is available), or ``off`` (the shop sells none: 0 is sent). ``oversell`` units are
    added on top — pre-sale (预售) or deliberate oversell, beyond what is in stock: 0, off, by default."""

    shop_id: Ident
    mode: Mode = "share"
    share_pct: Annotated[int, Meta(ge=0, le=100)] = 100
    fixed: Units = 0
    oversell: Units = 0


class SkuRule(ShopRule, kw_only=True):
    """A shop's rule for some SKUs only: ``sku`` is a SKU, or a prefix ending in ``*`` (a category by code,
    e.g. ``SHOE-*``). The most specific rule wins: an exact SKU, then the longest prefix, then the shop's rule."""

    sku: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.#/-]{0,159}\*?$|^\*$")]


class SyncShop(Record, kw_only=True):
    """A shop stock is synced to, and the request shape its platform speaks."""

    shop_id: Ident
    platform: Literal["taobao", "jd", "douyin", "shopify"]
    location_id: Ident = "default"  # Shopify: the location whose level is set


class SyncRules(Record, kw_only=True):
    """A tenant's stock allocation over its shops. Version: later supersedes earlier."""

    v: int = 1
    tenant: Tenant
    version: Annotated[int, Meta(ge=1)]
    shops: list[SyncShop] = msgspec.field(default_factory=list)
    safety_stock: Units = 0  # held back from every shop (for the web store, stores, mistakes)
    rules: list[ShopRule] = msgspec.field(default_factory=list)  # per shop (none: the shop gets 100 %)
    sku_rules: list[SkuRule] = msgspec.field(default_factory=list)
    every_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 1_000  # at most one update per SKU per shop this often


class SyncRulesVersion(Record, tag="sync_rules", tag_field="kind", kw_only=True):
    """A copy of :class:`SyncRules` in one partition of the stock-sync inbox."""

    v: int = 1
    rules: SyncRules


class AtpChanged(Record, tag="atp", tag_field="kind", kw_only=True):
    """A SKU's stock at one warehouse after a change (the inventory's stock event, reduced). Key ``tenant:sku``."""

    v: int = 1
    tenant: Tenant
    sku: Ident
    warehouse: Ident
    on_hand: int
    reserved: int
    version: Annotated[int, Meta(ge=1)]  # the SKU's stock version (gap-free per SKU)
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.sku(self.tenant, self.sku)


class StockUpdate(Record, kw_only=True):
    """Set ``quantity`` as what ``shop_id`` may sell of ``sku`` (full update). Key ``tenant:shop_id``."""

    v: int = 1
    update_id: Ident  # the platform's idempotency key: one per (shop, SKU, stock version, rules version, attempt)
    tenant: Tenant
    shop_id: Ident
    platform: Literal["taobao", "jd", "douyin", "shopify"]
    location_id: Ident = "default"
    sku: Ident
    quantity: Units
    atp: Units  # what the quantity was computed from
    stock_version: int
    rules_version: int
    attempt: Annotated[int, Meta(ge=1)] = 1
    ts: EpochMs

    @property
    def key(self) -> str:
        return f"{self.tenant}:{self.shop_id}"


class StockSyncResult(Record, tag="sync_result", tag_field="kind", kw_only=True):
    """The platform's answer to one :class:`StockUpdate`. Key ``tenant:sku`` (back to the SKU's writer)."""

    v: int = 1
    update_id: Ident
    tenant: Tenant
    shop_id: Ident
    sku: Ident
    quantity: Units
    status: Literal["accepted", "refused"]
    answer: Text = ""  # the platform's words (bounded)
    attempt: int = 1
    ts: EpochMs

    @property
    def key(self) -> str:
        return keys.sku(self.tenant, self.sku)


#: What the stock-sync inbox carries.
StockSyncRecord = AtpChanged | StockSyncResult | SyncRulesVersion | Tick


def update_id(tenant: str, shop: str, sku: str, stock_version: int, rules_version: int, attempt: int) -> str:
    return f"stk.{tenant}.{shop}.{sku}.s{stock_version}.r{rules_version}.a{attempt}"


def atp_of(on_hand: int, reserved: int) -> int:
    return max(0, on_hand - reserved)
