"""The holds list (挂起订单): one Redis hash per tenant, order id → summary (JSON), for operators and the API.

It is a read model: the order stage's state is the truth, the stage writes here after each committed
transaction, and rebuilds a partition's entries from its state when Redis restarted empty or after the
partition changed owner (engine.readmodels.sync). Each summary carries the order's inbox key, which the API
needs to route an operator's action to the order's one writer, and the partition that wrote it.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from engine.readmodels.redis import ERRORS, Keys

log = logging.getLogger("oms.holds")


class Unavailable(RuntimeError):
    """Redis cannot be reached right now."""


class HoldsModel:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def apply(self, partition: int, changes: list[tuple[str, str, dict[str, Any] | None]]) -> bool:
        """Put or remove entries (tenant, order id, summary or None); False if Redis failed."""
        if not changes:
            return True
        pipe = self.redis.pipeline(transaction=False)
        for tenant, order_id, summary in changes:
            if summary is None:
                pipe.hdel(self.keys.holds(tenant), order_id)
            else:
                pipe.hset(self.keys.holds(tenant), order_id, orjson.dumps({**summary, "partition": partition}))
        try:
            await pipe.execute()
            return True
        except ERRORS as exc:
            log.warning("holds list not updated (Redis: %s); it is rebuilt when Redis answers again", exc)
            return False

    async def list(self, tenant: str) -> list[dict[str, Any]]:
        try:
            raw = await self.redis.hgetall(self.keys.holds(tenant))
        except ERRORS as exc:
            raise Unavailable(str(exc)) from None
        holds = [orjson.loads(v) for v in raw.values()]
        return sorted(holds, key=lambda h: (h.get("held_at", 0), h["order_id"]))

    async def find(self, tenant: str, order_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.hget(self.keys.holds(tenant), order_id)
        except ERRORS as exc:
            raise Unavailable(str(exc)) from None
        return None if raw is None else orjson.loads(raw)

    async def replace_partition(self, partition: int, held: list[tuple[str, str, dict[str, Any]]]) -> bool:
        """Make the list hold exactly ``held`` for ``partition`` (entries of other partitions stay)."""
        try:
            wanted = {(tenant, order_id) for tenant, order_id, _ in held}
            pipe = self.redis.pipeline(transaction=False)
            async for name in self.redis.scan_iter(match=self.keys.holds_pattern(), count=500):
                tenant = name.decode().rsplit(":", 1)[-1]
                for field, value in (await self.redis.hgetall(name)).items():
                    entry = orjson.loads(value)
                    if entry.get("partition") == partition and (tenant, field.decode()) not in wanted:
                        pipe.hdel(name, field)
            for tenant, order_id, summary in held:
                pipe.hset(self.keys.holds(tenant), order_id, orjson.dumps({**summary, "partition": partition}))
            await pipe.execute()
            return True
        except ERRORS as exc:
            log.warning("holds list of partition %d not rebuilt yet (Redis: %s)", partition, exc)
            return False
