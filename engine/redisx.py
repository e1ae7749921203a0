"""Redis for read models and edge idempotency: one client per process, keys namespaced by topic prefix.

Redis is never the source of truth here. Every caller fails open: if Redis cannot be reached, the
stream still deduplicates (by version in review) and the inventory still refuses unknown SKUs, so a
Redis outage costs early feedback, not correctness.
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

    def velocity(self, tenant: str, buyer: str) -> str:
        return f"{self.p}:velocity:{tenant}:{buyer}"

    def catalog(self, tenant: str) -> str:
        return f"{self.p}:catalog:{tenant}"


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
