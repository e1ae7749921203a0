"""Which SKUs a tenant sells: a Redis set per tenant (filled by the inventory agent as stock arrives).

Used to refuse lines with unknown SKUs at the edge. An empty or unreachable catalog checks nothing: the
inventory agent still refuses to reserve a SKU it has no stock record for.

Unlike the holds list and the trial balance (engine.readmodels.versioned), it is not versioned: it only ever
adds SKUs to a set, and adding is idempotent and commutes, so late, repeated or reordered writes — a worker that
lost its partition, a rebuild racing newer commits — all end in the same set. Nothing is ever removed from it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from engine.readmodels import redis as redisx
from schemas.order import Order


@dataclass
class Lookup:
    """The answer for one batch of orders."""

    known: dict[str, set[str]] = field(default_factory=dict)  # tenant -> SKUs that exist
    checked: set[str] = field(default_factory=set)  # tenants whose catalog was readable and not empty

    def unknown(self, order: Order) -> list[str]:
        if order.tenant not in self.checked:
            return []
        return sorted({line.sku for line in order.lines} - self.known.get(order.tenant, set()))


class Catalog:
    def __init__(self, redis: Any, keys: redisx.Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def lookup(self, orders: list[Order]) -> Lookup:
        """Every SKU of these orders, in one round trip."""
        result = Lookup()
        wanted: dict[str, list[str]] = defaultdict(list)
        for order in orders:
            wanted[order.tenant].extend(sorted({line.sku for line in order.lines} - set(wanted[order.tenant])))
        if not wanted:
            return result
        pipe = self.redis.pipeline(transaction=False)
        tenants = list(wanted)
        for tenant in tenants:
            pipe.scard(self.keys.catalog(tenant))
            pipe.smismember(self.keys.catalog(tenant), wanted[tenant])
        replies = await redisx.safely("catalog", pipe.execute(), default=None)
        if replies is None:
            return result
        for i, tenant in enumerate(tenants):
            size, flags = replies[2 * i], replies[2 * i + 1]
            if size:
                result.checked.add(tenant)
                result.known[tenant] = {sku for sku, ok in zip(wanted[tenant], flags, strict=True) if ok}
        return result

    async def add(self, tenant: str, skus: set[str]) -> bool:
        """False when Redis could not be written (the catalog is rebuilt later, engine.readmodels.sync)."""
        if not skus:
            return True
        done = await redisx.safely("catalog add", self.redis.sadd(self.keys.catalog(tenant), *sorted(skus)), False)
        return done is not False


def publish(redis_url: str, keys: redisx.Keys, catalog: dict[str, set[str]]) -> int:
    """Import a product master (tenant -> SKUs) into the catalog, from a synchronous caller."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        pipe = r.pipeline(transaction=False)
        for tenant, skus in catalog.items():
            for chunk in range(0, len(skus), 1000):
                pipe.sadd(keys.catalog(tenant), *sorted(skus)[chunk : chunk + 1000])
        pipe.execute()
    finally:
        r.close()
    return sum(len(s) for s in catalog.values())
