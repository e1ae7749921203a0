"""The HTTP edge's validation, as a pure function: bytes and a path in, orders or clear errors out.

Status codes: 400 malformed JSON or a bad path, 404 unknown channel, 413 too large (more than ``max_bytes``, or
more than ``MAX_BATCH`` orders in one batch), 415 not JSON,
422 an order that cannot be used (missing or wrong-typed fields, quantity ≤ 0, absurd amounts, unknown
SKU), each with the reason code that a dead letter would carry and a message naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agents.ingest.adapters import AdapterError, Source, adapt
from agents.ingest.adapters.base import parse_json
from schemas.deadletter import ReasonCode
from schemas.order import Channel, Order

MAX_BATCH = 500
_IDENT = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.#/-]{0,63}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Refused:
    """The whole request is refused."""

    status: int
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


@dataclass(frozen=True)
class ItemError:
    index: int
    code: str
    message: str


@dataclass
class Parsed:
    orders: list[tuple[int, Order]] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    batch: bool = False


def channel_of(name: str) -> Channel | None:
    try:
        return Channel(name)
    except ValueError:
        return None


def parse(
    tenant: str, channel: str, shop: str, body: bytes, content_type: str | None, received_at: int, max_bytes: int
) -> Parsed | Refused:
    ch = channel_of(channel)
    if ch is None:
        return Refused(
            404, ReasonCode.UNKNOWN_CHANNEL.value, f"unknown channel {channel!r}; one of {[c.value for c in Channel]}"
        )
    if not _TENANT.match(tenant) or not _IDENT.match(shop):
        return Refused(
            400, "bad_path", "tenant and shop must be letters, digits, '-', '_' (shop also '.', '#', '/'; never '..')"
        )
    if content_type is not None and content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        return Refused(415, "unsupported_media_type", f"send application/json, not {content_type!r}")
    if len(body) > max_bytes:
        return Refused(413, ReasonCode.OVERSIZE.value, f"body of {len(body)} bytes exceeds {max_bytes}")
    try:
        payload = parse_json(body)
    except AdapterError as exc:
        return Refused(400, exc.reason.value, f"body is not JSON: {exc.detail}")
    batch = isinstance(payload, list) or (isinstance(payload, dict) and isinstance(payload.get("orders"), list))
    items = payload if isinstance(payload, list) else payload["orders"] if batch else [payload]
    if len(items) > MAX_BATCH:
        return Refused(413, ReasonCode.OVERSIZE.value, f"{len(items)} orders in one batch; at most {MAX_BATCH}")
    if batch and not items:
        return Refused(422, ReasonCode.SCHEMA_VIOLATION.value, "empty batch")
    result = Parsed(batch=batch)
    source = Source(tenant=tenant, channel=ch, shop_id=shop, received_at=received_at)
    for i, item in enumerate(items):
        try:
            result.orders.append((i, adapt(source, item)))
        except AdapterError as exc:
            result.errors.append(ItemError(i, exc.reason.value, exc.detail))
    return result
