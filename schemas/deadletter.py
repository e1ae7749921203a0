"""Dead letters (I6): bad input is parked here with a reason code, where it came from and a bounded excerpt.

A dead letter must always fit in a record, however large the record it stands for: a poison record near the
broker's size limit must not make a dead letter the producer refuses (and a worker that retries it for ever). So
it holds the source coordinates (topic, partition, offset: the full bytes stay in the source topic, read them
there), the original sizes and SHA-256 digests of the key and value, and only a prefix of each
(``MAX_VALUE_PREFIX`` / ``MAX_KEY_PREFIX`` bytes), with ``value_truncated`` / ``key_truncated`` saying whether
it was cut.
"""

from __future__ import annotations

import base64
import enum
import hashlib

from schemas.common import EpochMs, Ident, Record, Text

#: How much of the original value and key a dead letter keeps (bytes, before base64). Together with ``detail``
#: (at most 2000 characters) a dead letter stays well under 16 KiB.
MAX_VALUE_PREFIX = 4096
MAX_KEY_PREFIX = 1024
MAX_DETAIL = 2000


class ReasonCode(enum.StrEnum):
    MALFORMED_JSON = "malformed_json"  # not JSON at all
    SCHEMA_VIOLATION = "schema_violation"  # JSON, but wrong types, missing fields, out-of-range values
    INVALID_RECORD = "invalid_record"  # passes the schema but fails a cross-field rule
    UNKNOWN_WAREHOUSE = "unknown_warehouse"  # a stock command names a warehouse with no stock record
    WOULD_OVERSELL = "would_oversell"  # an adjustment would push on_hand below what is reserved
    NOT_RESERVED = "not_reserved"  # an issue command for a line that holds no reservation
    MISROUTED = "misrouted"  # on a partition its key does not hash to (a producer without murmur2)
    UNKNOWN_TENANT = "unknown_tenant"  # the key or path names a tenant that is not configured
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_SKU = "unknown_sku"  # a line names a SKU the tenant's catalog does not have
    BAD_KEY = "bad_key"  # a raw channel record whose key is not tenant:shop:platform_order_id
    OVERSIZE = "oversize"  # larger than the ingestion limit
    STALE_SEQUENCE = "stale_sequence"  # a command at or below its origin's high-water mark that was never applied
    UNKNOWN_PICK_LIST = "unknown_pick_list"  # a pick confirmation for a pick list this warehouse never released
    PICK_REFUSED = "pick_refused"  # a pick confirmation that does not match its pick list (over-pick, missing stop)
    #: a snapshot of an order created more than the order retention before its partition's event time: decided
    #: and forgotten long ago (a late update, a refund long after delivery), or synced far too late; not applied
    FORGOTTEN_ORDER = "forgotten_order"
    MISSING_RECEIVER = "missing_receiver"  # a picked shipment with no receiver: nothing to address it to
    NO_CARRIER = "no_carrier"  # a picked shipment from a warehouse with no carrier in the layout
    RETURN_INVALID = "return_invalid"  # a return asks back more than shipped, or a receipt without its request
    PICKUP_REFUSED = "pickup_refused"  # a pickup claim with a wrong code, at the wrong store, or after expiry
    PROCESSING_ERROR = "processing_error"  # a bug: the record is parked instead of stalling the partition


class DeadLetter(Record, kw_only=True):
    """Key: the original record's key (when it had one). ``dead_letter_id`` is the source coordinates, so a
    redelivered bad record dead-letters to the same id.

    ``value_b64`` / ``key_b64`` hold the original bytes when they fit (``MAX_VALUE_PREFIX`` / ``MAX_KEY_PREFIX``),
    else their prefix (``value_truncated`` / ``key_truncated``); ``value_size`` and ``value_sha256`` describe the
    whole original value, so it can be recognised and verified when read back from ``source_topic`` at
    ``source_partition``/``source_offset``. Letters of version 1 (before the bound) held the whole bytes and no
    sizes or digests: the properties below work for both."""

    v: int = 2
    dead_letter_id: Ident
    reason: ReasonCode
    detail: Text
    stage: Ident
    source_topic: str
    source_partition: int
    source_offset: int
    key_b64: str | None  # the key (or its first MAX_KEY_PREFIX bytes); None when the record had no key
    value_b64: str  # the value (or its first MAX_VALUE_PREFIX bytes)
    key_size: int | None = None
    key_sha256: str | None = None
    key_truncated: bool = False
    value_size: int | None = None
    value_sha256: str | None = None
    value_truncated: bool = False
    tenant: str | None = None
    ts: EpochMs

    @property
    def value_prefix(self) -> bytes:
        """The value as kept in the letter: all of it, or its first ``MAX_VALUE_PREFIX`` bytes if truncated."""
        return base64.b64decode(self.value_b64)

    @property
    def original_value(self) -> bytes | None:
        """The whole original value when the letter holds it; None when it holds a prefix only (the full bytes
        are in the source topic at the letter's coordinates)."""
        return None if self.value_truncated else self.value_prefix

    @property
    def original_size(self) -> int:
        """The original value's size in bytes."""
        return self.value_size if self.value_size is not None else len(self.value_prefix)

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the whole original value."""
        return self.value_sha256 if self.value_sha256 is not None else sha256(self.value_prefix)

    def matches(self, value: bytes) -> bool:
        """Whether ``value`` (e.g. read back from the source topic) is the record this letter stands for."""
        return len(value) == self.original_size and sha256(value) == self.digest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    return f"dlq.{topic.replace(':', '_')}.{partition}.{offset}"


def dead_letter(
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: ReasonCode,
    detail: str,
    ts: int,
    tenant: str | None = None,
) -> DeadLetter:
    """A dead letter for one input record: why, where it came from, its sizes and digests, and a bounded prefix
    of its bytes (the whole of them when they are small). However large the record, the letter fits."""
    value = value or b""
    return DeadLetter(
        dead_letter_id=dead_letter_id(topic, partition, offset),
        reason=reason,
        detail=detail[:MAX_DETAIL],
        stage=stage,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key_b64=None if key is None else base64.b64encode(key[:MAX_KEY_PREFIX]).decode(),
        key_size=None if key is None else len(key),
        key_sha256=None if key is None else sha256(key),
        key_truncated=key is not None and len(key) > MAX_KEY_PREFIX,
        value_b64=base64.b64encode(value[:MAX_VALUE_PREFIX]).decode(),
        value_size=len(value),
        value_sha256=sha256(value),
        value_truncated=len(value) > MAX_VALUE_PREFIX,
        tenant=None if tenant is None else tenant[:64],
        ts=max(0, ts),
    )
