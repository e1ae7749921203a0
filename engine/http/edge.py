"""What every HTTP endpoint of the engine needs: tenant auth, bounded bodies, JSON errors, a producer.

Every route that takes a body reads it with :meth:`Edge.body` (at most ``OMS_MAX_PAYLOAD_BYTES``), and every list
in a body has a documented maximum number of items (:func:`at_most`): more is a **413** ``oversize`` whose
message names the limit, never a record too large for a topic or a stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from engine.kafka.clients import AsyncProducer
from engine.readmodels.redis import Keys, client
from engine.settings import Settings
from engine.tenants import Tenants


@dataclass
class Problem(Exception):
    """A request refused with an HTTP status, a reason code and a message for the caller."""

    status: int
    code: str
    message: str


class Edge:
    """Per worker: the settings, tenants, Redis and the API's producer (created on first use)."""

    def __init__(self, settings: Settings, tenants: Tenants | None) -> None:
        self.settings = settings
        self.tenants = tenants
        self.keys = Keys(settings.topic_prefix)
        self.redis = client(settings)
        self._producer: AsyncProducer | None = None
        self._lock = asyncio.Lock()

    async def producer(self) -> AsyncProducer:
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    self._producer = AsyncProducer(self.settings.bootstrap)
        return self._producer

    def authenticate(self, request: Any, tenant: str) -> str:
        """The caller's identity for ``tenant`` from ``Authorization: Bearer <token>``, or a Problem."""
        if self.tenants is None:
            raise Problem(503, "not_configured", "no tenants are configured on this worker (set OMS_TENANTS_FILE)")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "unauthenticated", "send 'Authorization: Bearer <API token>'")
        owner = self.tenants.tenant_of_token(token.strip())
        if owner is None:
            raise Problem(401, "unauthenticated", "unknown API token")
        if owner != tenant:
            raise Problem(403, "tenant_mismatch", f"this token belongs to another tenant, not {tenant!r}")
        return f"token:{token.strip()[-4:]}"

    async def body(self, request: Any) -> bytes:
        """The whole request body, however the client's segments cut it, refusing more than the limit."""
        limit = self.settings.max_payload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Problem(
                413, "oversize", f"body of {request.content_length} bytes exceeds {limit} (OMS_MAX_PAYLOAD_BYTES)"
            )
        chunks, size = [], 0
        async for chunk in request.content.iter_any():  # to the end of the body, not the first segment
            size += len(chunk)
            if size > limit:
                raise Problem(413, "oversize", f"body exceeds {limit} bytes (OMS_MAX_PAYLOAD_BYTES)")
            chunks.append(chunk)
        return b"".join(chunks)


def at_most(items: Sized, limit: int, what: str) -> None:
    """A 413 ``oversize`` Problem naming the limit when a request carries more than ``limit`` ``what``."""
    if len(items) > limit:
        raise Problem(413, "oversize", f"{len(items)} {what}; at most {limit}")


def json_object(body: bytes, empty_ok: bool = False) -> dict[str, Any]:
    """A request body that must be one JSON object, or a 400 Problem saying why not."""
    if empty_ok and not body.strip():
        return {}
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "malformed_json", "body is not JSON") from None
    if not isinstance(fields, dict):
        raise Problem(400, "malformed_json", "body must be a JSON object")
    return fields


def reply(view: faust.web.View, status: int, body: dict[str, Any]) -> faust.web.Response:
    return view.json(body, status=status)


def problem(view: faust.web.View, exc: Problem) -> faust.web.Response:
    return view.json({"error": exc.code, "message": exc.message}, status=exc.status)
