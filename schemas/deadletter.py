"""Dead letters (I6): bad input is parked here with a reason code and its original bytes."""

from __future__ import annotations

import base64
import enum

from schemas.common import EpochMs, Ident, Record, Text


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
    """Key: the original record's key when it had one. ``dead_letter_id`` is the source coordinates, so a
    redelivered bad record dead-letters to the same id."""

    v: int = 1
    dead_letter_id: Ident
    reason: ReasonCode
    detail: Text
    stage: Ident
    source_topic: str
    source_partition: int
    source_offset: int
    key_b64: str | None
    value_b64: str
    tenant: str | None = None
    ts: EpochMs

    @property
    def original_value(self) -> bytes:
        return base64.b64decode(self.value_b64)


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
    """A dead letter for one input record: why, where it came from, and its original bytes."""
    return DeadLetter(
        dead_letter_id=dead_letter_id(topic, partition, offset),
        reason=reason,
        detail=detail[:2000],
        stage=stage,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key_b64=None if key is None else base64.b64encode(key).decode(),
        value_b64=base64.b64encode(value or b"").decode(),
        tenant=tenant,
        ts=max(0, ts),
    )
