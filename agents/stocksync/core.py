"""Stock sync rules for one SKU (库存同步), pure: ``(state, record) -> step``.

What the stage decides, per (tenant, SKU), from the SKU's stock and the tenant's rules:

* **allocate** available to promise (ATP: on hand − reserved, over every warehouse) to the shops
  (:func:`allocate`): safety stock is held back; ``fixed`` shops get their quantity first (never more than is
  left), ``share`` shops split the rest by their percentages (scaled down when they add up to more than 100 %),
  ``off`` shops get 0; ``oversell`` units (pre-sale, off by default) are added last. Without ``oversell`` the
  shops' quantities add up to at most ATP, whatever the rules say.
* **sync** (:func:`sync`): every shop whose quantity differs from what it was last sent gets a
  :class:`~schemas.stocksync.StockUpdate` with its *current* quantity — at most one round per SKU every
  ``every_ms`` of record time (a hot SKU sends its latest quantity, not every change: the round waits, due at
  ``sent_at + every_ms``, and the stage's ticks bring it due);
* **answer** (:func:`answered`): a platform's ``accepted`` confirms the quantity; ``refused`` asks again with the
  SKU's current quantity after a backoff (0.5 s, doubling, at most 60 s of record time). Answers to an update
  that has been superseded are only noted.

State handed in is the stage's own copy (decoded from its table): functions change it and return it in their
step. Time is the record time they are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from engine.runtime.kit import Step
from schemas.stocksync import (
    AtpChanged,
    ShopRule,
    StockSyncResult,
    StockUpdate,
    SyncRules,
    atp_of,
    update_id,
)

MAX_BACKOFF_MS = 60_000
FIRST_BACKOFF_MS = 500
DEFAULT_RULE = ShopRule(shop_id="default", mode="share", share_pct=100)


class ShopSync(msgspec.Struct, kw_only=True):
    sent: int | None = None  # the quantity of the last update sent (None: send again)
    sent_id: str = ""
    acked: int | None = None  # the quantity the platform last accepted
    refusals: int = 0  # refusals in a row


class SkuSync(msgspec.Struct, kw_only=True):
    tenant: str
    sku: str
    levels: dict[str, list[int]] = msgspec.field(default_factory=dict)  # warehouse -> [on hand, reserved]
    stock_version: int = 0
    shops: dict[str, ShopSync] = msgspec.field(default_factory=dict)
    sent_at: int = 0  # record time of the last round of updates
    retry_at: int = 0  # no round before this (backoff after a refusal)
    due: int | None = None  # a round waits until this record time

    @property
    def atp(self) -> int:
        return sum(atp_of(on_hand, reserved) for on_hand, reserved in self.levels.values())

    @property
    def key(self) -> str:
        return f"{self.tenant}:{self.sku}"


@dataclass(slots=True)
class Synced(Step[SkuSync]):
    due: int | None = None  # when the stage's ticks must bring this SKU back (record time)


def rule_for(rules: SyncRules, shop: str, sku: str) -> ShopRule:
    """An exact SKU rule, else the longest matching prefix (``CAT-*``, ``*``), else the shop's rule, else 100 %."""
    best: ShopRule | None = None
    best_len = -1
    for r in rules.sku_rules:
        if r.shop_id != shop:
            continue
        if r.sku == sku:
            return r
        if r.sku.endswith("*") and sku.startswith(r.sku[:-1]) and len(r.sku) > best_len:
            best, best_len = r, len(r.sku)
    if best is not None:
        return best
    return next((r for r in rules.rules if r.shop_id == shop), DEFAULT_RULE)


def allocate(rules: SyncRules, sku: str, atp: int) -> dict[str, int]:
    """Each shop's quantity of ``sku`` when ``atp`` units are available to promise (module docstring)."""
    chosen = {s.shop_id: rule_for(rules, s.shop_id, sku) for s in rules.shops}
    left = max(0, atp - rules.safety_stock)
    out = dict.fromkeys(chosen, 0)
    for shop, r in chosen.items():
        if r.mode == "fixed":
            out[shop] = min(r.fixed, left)
            left -= out[shop]
    pool = left
    total_pct = max(100, sum(r.share_pct for r in chosen.values() if r.mode == "share"))
    for shop, r in chosen.items():
        if r.mode == "share":
            out[shop] = min(pool * r.share_pct // total_pct, left)
            left -= out[shop]
    for shop, r in chosen.items():
        if r.mode != "off":
            out[shop] += r.oversell
    return out


def new_state(tenant: str, sku: str) -> SkuSync:
    return SkuSync(tenant=tenant, sku=sku)


def stock_changed(state: SkuSync, event: AtpChanged, rules: SyncRules | None, now: int) -> Synced:
    if event.version <= state.stock_version and event.warehouse in state.levels:
        return Synced(state, False, note="stale_stock")  # a copy of a change already applied
    state.levels[event.warehouse] = [event.on_hand, event.reserved]
    state.stock_version = max(state.stock_version, event.version)
    step = sync(state, rules, now)
    step.changed = True
    return step


def sync(state: SkuSync, rules: SyncRules | None, now: int) -> Synced:
    """Send every shop whose quantity changed its current quantity, now or when the SKU's next round is due."""
    if rules is None or not rules.shops:
        return Synced(state, False, note="no_rules")
    want = allocate(rules, state.sku, state.atp)
    behind = [s for s in rules.shops if state.shops.get(s.shop_id, ShopSync()).sent != want[s.shop_id]]
    if not behind:
        changed = state.due is not None
        state.due = None
        return Synced(state, changed)
    ready = max(state.sent_at + rules.every_ms if state.sent_at else now, state.retry_at)
    if now < ready:
        changed = state.due != ready
        state.due = ready
        return Synced(state, changed, note="coalesced", due=ready)
    outputs = []
    for shop in behind:
        mine = state.shops.setdefault(shop.shop_id, ShopSync())
        attempt = mine.refusals + 1
        uid = update_id(state.tenant, shop.shop_id, state.sku, state.stock_version, rules.version, attempt)
        mine.sent, mine.sent_id = want[shop.shop_id], uid
        outputs.append(
            StockUpdate(
                update_id=uid, tenant=state.tenant, shop_id=shop.shop_id, platform=shop.platform,
                location_id=shop.location_id, sku=state.sku, quantity=want[shop.shop_id],
                atp=min(state.atp, 10_000_000), stock_version=state.stock_version, rules_version=rules.version,
                attempt=attempt, ts=now,
            )
        )  # fmt: skip
    state.sent_at, state.due = now, None
    return Synced(state, True, outputs=outputs, note="sent", counts={"updates": len(outputs)})


def answered(state: SkuSync, result: StockSyncResult, rules: SyncRules | None, now: int) -> Synced:
    mine = state.shops.get(result.shop_id)
    if mine is None or mine.sent_id != result.update_id:
        return Synced(state, False, note="stale_answer")  # superseded by a newer update: its answer decides
    if result.status == "accepted":
        mine.acked, mine.refusals = result.quantity, 0
        return Synced(state, True, note="accepted")
    mine.refusals += 1
    mine.sent = None  # asked again, with the quantity current then
    state.retry_at = now + min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** min(mine.refusals - 1, 16))
    step = sync(state, rules, now)
    step.changed, step.note = True, "refused"
    return step
