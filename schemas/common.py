"""Building blocks shared by every record: identifiers, money, quantities, keys.

The data rules live here so they are enforced at every decode: money is integer fen (分),
identifiers are deterministic strings of a restricted alphabet (so ``:`` can join them into keys), and
every key starts with the tenant.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

#: Upper bounds that make "absurd" input a validation error instead of a business event.
MAX_LINE_QUANTITY = 10_000
MAX_UNIT_PRICE_FEN = 100_000_000  # ¥1,000,000 per unit
MAX_LINES_PER_ORDER = 200
MAX_STOCK_DELTA = 10_000_000

KEY_SEP = ":"

Tenant = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$",
        description="Tenant (retailer) id; first part of every key",
    ),
]
Ident = Annotated[
    str,
    Meta(
        pattern=r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.#/-]{0,159}$",
        description="Deterministic identifier; never contains ':' (the key separator) nor '..' (a path segment)",
    ),
]
Key = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}:[A-Za-z0-9_.#/:-]{1,400}$",
        description="A record key: the tenant, ':', then the entity (e.g. tenant:shop:buyer)",
    ),
]
Text = Annotated[str, Meta(max_length=2000)]
Fen = Annotated[int, Meta(ge=0, le=MAX_UNIT_PRICE_FEN * MAX_LINE_QUANTITY, description="Money in integer fen (分)")]
UnitPriceFen = Annotated[int, Meta(ge=0, le=MAX_UNIT_PRICE_FEN, description="Unit price in integer fen (分)")]
Quantity = Annotated[int, Meta(ge=1, le=MAX_LINE_QUANTITY, description="Units, strictly positive")]
EpochMs = Annotated[int, Meta(ge=0, le=32503680000000, description="Unix time in milliseconds")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 currency code")]
Seq = Annotated[int, Meta(ge=0, description="Per-origin sequence number; strictly increasing per origin")]


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every record that crosses a topic: immutable, keyword-only, validated on decode."""


def join_key(*parts: str) -> str:
    """Join key parts with the separator; the first part is always the tenant. Records' keys are made by
    schemas.keys, one function per kind of key."""
    return KEY_SEP.join(parts)
