"""Stock sync (库存同步), from the inputs: the rules as published and the stock the inventory holds (its events,
themselves checked against the commands sent by I2 and the open lines by I4).

* **Y1** every stock update the engine sent is its shop's rule (the version it names, as published) applied to
  the SKU's ATP at the stock version it names (recomputed from the stock events: on hand − reserved per warehouse,
  the last event at or below that version);
* **Y2** once stock sync has settled: the last quantity each platform accepted for a shop and SKU is the shop's
  rule, in the tenant's latest rules, applied to the SKU's final ATP — for every SKU with stock and every shop;
* **Y3** the quantities of one round (one SKU, one stock version) add up to no more than the ATP they were computed
  from, unless a rule in play allows overselling; at the end, likewise for the last accepted quantities.

The allocation is restated here from the README's rules, not imported from the stage: safety stock held back,
``fixed`` shops first (never more than is left), ``share`` shops split the rest by percent (scaled down past
100 %), ``off`` shops 0, then ``oversell`` units added.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from invariants.collect import Outputs
from invariants.inputs import Inputs
from schemas.inventory import StockEvent
from schemas.stocksync import ShopRule, SyncRules

if TYPE_CHECKING:
    from invariants.check import Verdict


def _rule(rules: SyncRules, shop: str, sku: str) -> ShopRule:
    exact = [r for r in rules.sku_rules if r.shop_id == shop and r.sku == sku]
    if exact:
        return exact[0]
    prefixes = [r for r in rules.sku_rules if r.shop_id == shop and r.sku.endswith("*") and sku.startswith(r.sku[:-1])]
    if prefixes:
        return max(prefixes, key=lambda r: len(r.sku))
    own = [r for r in rules.rules if r.shop_id == shop]
    return own[0] if own else ShopRule(shop_id=shop)


def expected(rules: SyncRules, sku: str, atp: int) -> dict[str, int]:
    chosen = [(s.shop_id, _rule(rules, s.shop_id, sku)) for s in rules.shops]
    left = max(0, atp - rules.safety_stock)
    got = {shop: 0 for shop, _ in chosen}
    for shop, r in chosen:
        if r.mode == "fixed":
            got[shop] = min(r.fixed, left)
            left -= got[shop]
    pool, pct = left, max(100, sum(r.share_pct for _, r in chosen if r.mode == "share"))
    for shop, r in chosen:
        if r.mode == "share":
            got[shop] = min(pool * r.share_pct // pct, left)
            left -= got[shop]
    return {shop: got[shop] + (r.oversell if r.mode != "off" else 0) for shop, r in chosen}


def _oversells(rules: SyncRules, sku: str) -> bool:
    return any(_rule(rules, s.shop_id, sku).oversell > 0 for s in rules.shops)


def _atp_at(events: list[StockEvent], version: int) -> int:
    """The SKU's ATP after its change ``version``: each warehouse at its last event up to it."""
    level: dict[str, StockEvent] = {}
    for e in events:
        if e.version <= version:
            level[e.warehouse] = e
    return sum(max(0, e.on_hand - e.reserved) for e in level.values())


def check_stock_sync(inputs: Inputs, out: Outputs, applied: dict[str, StockEvent], v: Verdict) -> None:
    if not inputs.sync_rules and not out.stock_updates:
        return
    published = {(r.tenant, r.version): r for r in inputs.sync_rules}
    events: dict[tuple[str, str], list[StockEvent]] = defaultdict(list)
    for e in sorted(applied.values(), key=lambda e: e.version):
        events[(e.tenant, e.sku)].append(e)
    rounds: dict[tuple[str, str, int, int], int] = defaultdict(int)
    for u in out.stock_updates:
        rules = published.get((u.tenant, u.rules_version))
        if rules is None:
            v.fail("Y1", f"{u.update_id}: rules version {u.rules_version} of {u.tenant} was never published")
            continue
        atp = _atp_at(events[(u.tenant, u.sku)], u.stock_version)
        want = expected(rules, u.sku, atp).get(u.shop_id)
        if want != u.quantity:
            v.fail("Y1", f"{u.update_id}: sent {u.quantity}, the rule gives {want} of ATP {atp}")
        if not _oversells(rules, u.sku):
            rounds[(u.tenant, u.sku, u.stock_version, u.rules_version)] += u.quantity if u.attempt == 1 else 0
    for (tenant, sku, version, _), total in rounds.items():
        atp = _atp_at(events[(tenant, sku)], version)
        if total > atp:
            v.fail("Y3", f"{tenant}:{sku}: one round at stock version {version} sent {total} units, ATP was {atp}")
    v.counts["stock_updates"] = len(out.stock_updates)
    v.counts["stock_updates_refused"] = sum(1 for r in out.stock_sync_results if r.status == "refused")
    if not inputs.stock_sync_complete:
        return
    latest: dict[str, SyncRules] = {}
    for r in inputs.sync_rules:
        if r.tenant not in latest or r.version > latest[r.tenant].version:
            latest[r.tenant] = r
    last: dict[tuple[str, str, str], int] = {}
    for res in out.stock_sync_results:  # in the order the platforms answered, per SKU
        if res.status == "accepted":
            last[(res.tenant, res.shop_id, res.sku)] = res.quantity
    for (tenant, sku), evs in events.items():
        rules = latest.get(tenant)
        if rules is None:
            continue
        atp = _atp_at(evs, evs[-1].version)
        want = expected(rules, sku, atp)
        for shop, quantity in want.items():
            got = last.get((tenant, shop, sku))
            if got != quantity:
                v.fail("Y2", f"{tenant}:{sku}: shop {shop} last accepted {got}, its rule gives {quantity} of ATP {atp}")
        accepted_total = sum(last.get((tenant, shop, sku), 0) for shop in want)
        if accepted_total > atp and not _oversells(rules, sku):
            v.fail("Y3", f"{tenant}:{sku}: the shops may sell {accepted_total} in all, ATP is {atp}")
