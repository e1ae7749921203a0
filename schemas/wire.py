"""Bytes on the wire: orjson does the JSON, msgspec turns builtins into validated typed records.

``decode`` raises :class:`WireError` with a reason code, never anything else, so callers can dead-letter
bad input without knowing which library complained.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import orjson

from schemas.deadletter import ReasonCode

T = TypeVar("T")


class WireError(ValueError):
    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def to_builtins(record: Any) -> Any:
    return msgspec.to_builtins(record)


def encode(record: Any) -> bytes:
    """Typed record (or builtins) → JSON bytes."""
    if isinstance(record, msgspec.Struct):
        record = msgspec.to_builtins(record)
    return orjson.dumps(record)


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


def decode(raw: bytes | bytearray | memoryview | str, typ: type[T] | Any) -> T:
    return convert(loads(raw), typ)
