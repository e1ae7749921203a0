"""Publishing stock-sync rules into the log (``oms stock-sync publish FILE``): the only way a rule reaches the stage.

One transaction writes each tenant's rules to every partition of the stock-sync inbox (each partition sees the
version at one point of its own log, so a replay decides the same) and to the compacted ``stock-sync-rules``
topic (the latest, for readers). The file is TOML, one ``[[tenant]]`` table per tenant::

    [[tenant]]
    tenant = "acme"
    version = 1                # later supersedes earlier; an equal or lower version is ignored by the stage
    safety_stock = 2           # held back from every shop
    every_ms = 1000            # at most one update per SKU per shop this often
    shops = [ { shop_id = "tm-1", platform = "taobao" }, { shop_id = "s1", platform = "shopify", location_id = "1" } ]
    rules = [ { shop_id = "tm-1", mode = "share", share_pct = 60 }, { shop_id = "s1", mode = "fixed", fixed = 20 } ]
    sku_rules = [ { shop_id = "s1", sku = "FLASH-*", mode = "off" } ]
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path

from engine.kafka import broadcast
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.stocksync import SyncRules, SyncRulesVersion


class RulesError(ValueError):
    """A rules file that cannot be published; the message says where and why."""


def parse_rules(text: str, source: str = "rules") -> list[SyncRules]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not TOML: {exc}") from None
    tables = doc.get("tenant")
    if not isinstance(tables, list) or not tables:
        raise RulesError(f"{source}: no [[tenant]] table")
    out = []
    for i, table in enumerate(tables):
        try:
            rules = wire.convert(table, SyncRules)
        except wire.WireError as exc:
            raise RulesError(f"{source}: tenant {i + 1}: {exc.detail}") from None
        check(rules, f"{source}: tenant {rules.tenant!r}")
        out.append(rules)
    tenants = [r.tenant for r in out]
    if len(set(tenants)) != len(tenants):
        raise RulesError(f"{source}: a tenant appears twice")
    return out


def check(rules: SyncRules, where: str) -> None:
    """What the schema cannot say: rules name shops that exist, once each."""
    shops = [s.shop_id for s in rules.shops]
    if len(set(shops)) != len(shops):
        raise RulesError(f"{where}: a shop is listed twice")
    ruled = [r.shop_id for r in rules.rules]
    if len(set(ruled)) != len(ruled):
        raise RulesError(f"{where}: a shop has two rules (use sku_rules for some SKUs)")
    for r in [*rules.rules, *rules.sku_rules]:
        if r.shop_id not in shops:
            raise RulesError(f"{where}: a rule names shop {r.shop_id!r}, which is not in its shops")


def load_rules(path: Path) -> list[SyncRules]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesError(f"{path}: {exc.strerror}") from None
    return parse_rules(text, str(path))


def publish_sync_rules(settings: Settings, rules: Iterable[SyncRules], publisher: str) -> int:
    """Blocking. ``publisher`` names the writer (its transactional id), e.g. ``stock-sync-publisher``."""
    rules = list(rules)
    topics = Topics(settings.topic_prefix)
    copies = [(topics.stock_sync_inbox, r.tenant.encode(), wire.encode(SyncRulesVersion(rules=r))) for r in rules]
    latest = [(topics.stock_sync_rules, r.tenant.encode(), wire.encode(r)) for r in rules]
    if rules:
        broadcast.publish(settings, publisher, copies, latest)
    return len(rules)
