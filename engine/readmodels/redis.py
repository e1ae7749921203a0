"""Redis for read models and edge idempotency: one client per process, keys namespaced by topic prefix.

Redis is never the source of truth and never decides anything inside a stage. It holds what the log can
rebuild — the holds list, the SKU catalog — and the API's memory of deliveries already produced. Every caller
fails open: if Redis cannot be reached the stream still deduplicates (by channel version, in the order stage)
and the inventory still refuses unknown SKUs, so an outage costs early feedback, not correctness; when Redis
comes back empty, the stages write the read models again from their state (engine.readmodels.sync).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from engine.settings import Settings

log = logging.getLogger("oms.redis")
ERRORS = (RedisError, OSError, TimeoutError)


class Keys:
    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def idempotency(self, tenant: str, what: str) -> str:
        return f"{self.p}:idem:{tenant}:{what}"

    def holds(self, tenant: str) -> str:
        return f"{self.p}:holds:{tenant}"

    def holds_pattern(self) -> str:
        return f"{self.p}:holds:*"

    def epoch(self) -> str:
        """A token set when Redis is first used: when it is gone, Redis restarted empty."""
        return f"{self.p}:readmodels:epoch"

    def catalog(self, tenant: str) -> str:
        return f"{self.p}:catalog:{tenant}"

    def trial_balance(self, tenant: str) -> str:
        """The ledger's trial balance of a tenant: a hash, one field per partition's share."""
        return f"{self.p}:trial-balance:{tenant}"


def client(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.redis, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30, decode_responses=False
    )


async def safely(what: str, coro: Any, default: Any = None) -> Any:
    """Await a Redis call; on failure log once and return ``default`` (fail open)."""
    try:
        return await coro
    except ERRORS as exc:
        log.warning("redis unavailable for %s: %s", what, exc)
        return default
