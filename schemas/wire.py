"""Bytes on the wire and in state: msgspec JSON, one cached encoder/decoder per type.

``decode`` raises :class:`WireError` with a reason code, never anything else, so callers can dead-letter bad
input without knowing which library complained. Encoding is deterministic (fields in definition order, no
whitespace), which the replay-determinism guarantee relies on: the same record always has the same bytes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

import msgspec
import orjson

from schemas.deadletter import ReasonCode

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class WireError(ValueError):
    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@lru_cache(maxsize=256)
def _decoder(typ: Any) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(typ)


def to_builtins(record: Any) -> Any:
    return msgspec.to_builtins(record)


def encode(record: Any) -> bytes:
    """Typed record (or builtins) → JSON bytes."""
    return _encoder.encode(record)


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """JSON bytes → builtins, or WireError(MALFORMED_JSON)."""
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise WireError(ReasonCode.MALFORMED_JSON, str(exc)[:300]) from None


def convert(data: Any, typ: type[T] | Any) -> T:
    """Builtins → typed record, or WireError(SCHEMA_VIOLATION) naming the offending field."""
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        raise WireError(ReasonCode.SCHEMA_VIOLATION, str(exc)[:500]) from None


def decode(raw: bytes | bytearray | memoryview | str | None, typ: type[T] | Any) -> T:
    """JSON bytes → typed record: WireError(MALFORMED_JSON) if not JSON, (SCHEMA_VIOLATION) if not the type."""
    if raw is None:
        raise WireError(ReasonCode.MALFORMED_JSON, "no value (a tombstone)")
    try:
        return _decoder(typ).decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise WireError(ReasonCode.SCHEMA_VIOLATION, str(exc)[:500]) from None
    except msgspec.DecodeError as exc:
        raise WireError(ReasonCode.MALFORMED_JSON, str(exc)[:300]) from None


def decode_state(raw: bytes, typ: type[T] | Any) -> T:
    """Decode a stage's own state (written by this code, so any failure is a bug and raises as is)."""
    return _decoder(typ).decode(raw)  # type: ignore[no-any-return]
