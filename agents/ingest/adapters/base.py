"""Typed access to untrusted platform JSON, with errors that name the field, and money without floats."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from schemas import wire
from schemas.deadletter import ReasonCode
from schemas.order import Channel, Order
from schemas.order import order_id as make_order_id

CST = timezone(timedelta(hours=8))  # China Standard Time: Taobao and JD send local time without an offset
MAX_TEXT = 2000


class AdapterError(ValueError):
    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Source:
    """Where a payload came from: the tenant and shop are never taken from the payload itself."""

    tenant: str
    channel: Channel
    shop_id: str
    received_at: int  # ms


def missing(path: str) -> AdapterError:
    return AdapterError(ReasonCode.SCHEMA_VIOLATION, f"missing field {path}")


def wrong(path: str, want: str, got: Any) -> AdapterError:
    return AdapterError(ReasonCode.SCHEMA_VIOLATION, f"{path}: expected {want}, got {type(got).__name__}")


def obj(d: Any, path: str = "$") -> dict[str, Any]:
    if not isinstance(d, dict):
        raise wrong(path, "an object", d)
    return d


def field(d: dict[str, Any], key: str, path: str, required: bool = True) -> Any:
    value = d.get(key)
    if value is None and required:
        raise missing(f"{path}.{key}")
    return value


def text(d: dict[str, Any], key: str, path: str, required: bool = False, default: str = "") -> str:
    value = field(d, key, path, required)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise wrong(f"{path}.{key}", "a string", value)
    return str(value)[:MAX_TEXT]


def ident(d: dict[str, Any], key: str, path: str) -> str:
    """A platform id: a non-empty string or a non-negative integer (big ids arrive as either)."""
    value = field(d, key, path)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise wrong(f"{path}.{key}", "an id (string or integer)", value)
    s = str(value).strip()
    if not s or (isinstance(value, int) and value < 0):
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"{path}.{key}: empty or negative id")
    return s


_INT = re.compile(r"^[+-]?[0-9]{1,15}$")


def integer(d: dict[str, Any], key: str, path: str, required: bool = True, default: int = 0) -> int:
    """Integers may arrive as JSON numbers or numeric strings (JD sends ``"itemTotal": "2"``)."""
    value = field(d, key, path, required)
    if value is None:
        return default
    if isinstance(value, bool):
        raise wrong(f"{path}.{key}", "an integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.match(value.strip()):
        return int(value.strip())
    raise wrong(f"{path}.{key}", "an integer", value)


_MONEY = re.compile(r"^[+-]?[0-9]{1,13}(\.[0-9]{1,2})?$")


def yuan(d: dict[str, Any], key: str, path: str, required: bool = True, default: int = 0) -> int:
    """Money as a decimal string in major units ("199.00", Taobao/JD/Shopify) → integer minor units."""
    value = field(d, key, path, required)
    if value is None or value == "":
        if required:
            raise missing(f"{path}.{key}")
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise wrong(f"{path}.{key}", "a money amount", value)
    raw = value if isinstance(value, str) else repr(value)
    if not _MONEY.match(raw.strip()):
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"{path}.{key}: {raw[:40]!r} is not an amount")
    try:
        cents = Decimal(raw.strip()) * 100
    except InvalidOperation:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"{path}.{key}: {raw[:40]!r} is not an amount") from None
    return int(cents)


def fen(d: dict[str, Any], key: str, path: str, required: bool = True, default: int = 0) -> int:
    """Money already in integer minor units (Douyin)."""
    return integer(d, key, path, required, default)


def items(d: dict[str, Any], key: str, path: str, inner: str | None = None) -> list[Any]:
    """A list; TOP-style wrappers ({"order": [...]}) are unwrapped with ``inner``."""
    value = field(d, key, path)
    if inner and isinstance(value, dict):
        value = value.get(inner)
    if not isinstance(value, list):
        raise wrong(f"{path}.{key}", "a list", value)
    return value


def local_time(d: dict[str, Any], key: str, path: str, required: bool = True) -> int | None:
    """``"2026-11-11 00:00:12"`` in China time (Taobao, JD) → epoch ms. Zero dates mean "not yet"."""
    value = field(d, key, path, required)
    if value is None or value == "" or (isinstance(value, str) and value.startswith(("0001-", "1970-01-01"))):
        if required:
            raise missing(f"{path}.{key}")
        return None
    if not isinstance(value, str):
        raise wrong(f"{path}.{key}", "a 'YYYY-MM-DD HH:MM:SS' time", value)
    try:
        return int(datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST).timestamp() * 1000)
    except ValueError:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"{path}.{key}: {value[:40]!r} is not a time") from None


def unix_seconds(d: dict[str, Any], key: str, path: str, required: bool = True) -> int | None:
    value = integer(d, key, path, required, default=0)
    if not value:
        if required:
            raise missing(f"{path}.{key}")
        return None
    if not 0 < value < 32503680000:
        raise AdapterError(ReasonCode.INVALID_RECORD, f"{path}.{key}: {value} is not a plausible unix time")
    return value * 1000


def iso_time(d: dict[str, Any], key: str, path: str, required: bool = True) -> int | None:
    """ISO 8601 with an offset (Shopify, the web store), or epoch milliseconds."""
    value = field(d, key, path, required)
    if value is None or value == "":
        if required:
            raise missing(f"{path}.{key}")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value < 32503680000000:
            raise AdapterError(ReasonCode.INVALID_RECORD, f"{path}.{key}: {value} is not a plausible time")
        return value
    if not isinstance(value, str):
        raise wrong(f"{path}.{key}", "an ISO 8601 time", value)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"{path}.{key}: {value[:40]!r} is not an ISO time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return int(parsed.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise AdapterError(ReasonCode.INVALID_RECORD, f"{path}.{key}: {value[:40]!r} is out of range") from None


def sku_code(value: Any, path: str) -> str:
    if value is None or value == "":
        raise missing(path)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise wrong(path, "a SKU code", value)
    return str(value).strip()


def build(source: Source, platform_order_id: str, fields: dict[str, Any]) -> Order:
    """Assemble and validate the canonical order (msgspec checks every range and pattern here)."""
    data = {
        "tenant": source.tenant,
        "order_id": make_order_id(source.channel, source.shop_id, platform_order_id),
        "channel": source.channel.value,
        "shop_id": source.shop_id,
        "platform_order_id": platform_order_id,
        "ingested_at": source.received_at,
        **fields,
    }
    try:
        return msgspec.convert(data, Order)
    except msgspec.ValidationError as exc:
        raise AdapterError(ReasonCode.INVALID_RECORD, str(exc)[:500]) from None


def parse_json(raw: bytes | str) -> Any:
    try:
        return wire.loads(raw)
    except wire.WireError as exc:
        raise AdapterError(exc.reason, exc.detail) from None
