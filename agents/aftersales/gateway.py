"""The channel gateway: the write-back outbox's sender (回传物流). I/O, not a core.

One thread per worker consumes ``channel-writebacks`` (its own consumer group), calls the platform through a
:class:`ChannelAdapter` with the request's idempotency key, and writes one ``WriteBackResult`` per request to
the aftersales inbox; only then are the requests committed. Whether to try again is decided by aftersales from
the result in its log (a new request, the same idempotency key), never here.

A real adapter signs and sends the request to the platform's API (Taobao TOP, JD JOS, Douyin open platform,
Shopify Admin API). The main job and the tests use :class:`LocalChannel`: platforms simulated in Redis (shared
by every worker's gateway) that apply each idempotency key once and refuse every n-th call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from engine.kafka.gateway import Gateway
from engine.settings import Settings
from engine.topics import Topics
from schemas.aftersales import WriteBackRequest, WriteBackResult

log = logging.getLogger("oms.channels")


class ChannelRefused(Exception):
    """The platform refused the call (rate limit, outage, invalid session): worth asking again."""


class ChannelAdapter(Protocol):
    def send(self, request: WriteBackRequest) -> str:
        """Apply the request on the platform (once per idempotency key); returns the platform's reference."""
        ...


@dataclass
class LocalChannel:
    """Platforms on this machine: each idempotency key applied once (a second call returns the first reference);
    every ``fail_every``-th call refused."""

    client: Any  # redis.Redis
    prefix: str
    fail_every: int = 0

    def send(self, request: WriteBackRequest) -> str:
        calls = int(self.client.incr(f"{self.prefix}:channel:calls"))
        if self.fail_every and calls % self.fail_every == 0:
            raise ChannelRefused(f"simulated: {request.platform} refused the call (isv.service-busy)")
        applied = f"{self.prefix}:channel:{request.platform}:applied"
        reference = f"{request.platform}-{calls}"
        self.client.hsetnx(applied, request.idempotency_key, reference)
        return self.client.hget(applied, request.idempotency_key).decode()


def result_of(request: WriteBackRequest, reference: str | None, error: str = "") -> WriteBackResult:
    return WriteBackResult(
        request_id=request.request_id,
        tenant=request.tenant,
        order_id=request.order_id,
        idempotency_key=request.idempotency_key,
        attempt=request.attempt,
        ok=reference is not None,
        error=error[:500],
        platform_ref=reference or "",
        ts=request.ts,
    )


class ChannelGateway(Gateway):
    request_type = WriteBackRequest

    def __init__(self, settings: Settings, topics: Topics, adapter: ChannelAdapter) -> None:
        super().__init__("channel-gateway", settings, topics.writebacks, topics.dead_letters)
        self.topics = topics
        self.adapter = adapter

    def answer(self, requests: list[WriteBackRequest]) -> list[tuple[str, str, Any]]:
        results = []
        for request in requests:
            try:
                results.append(result_of(request, self.adapter.send(request)))
            except (ChannelRefused, redis.RedisError) as exc:
                results.append(result_of(request, None, str(exc) or type(exc).__name__))
        return [(self.topics.aftersales_inbox, r.key, r) for r in results]
