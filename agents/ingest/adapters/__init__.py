"""One adapter per sales channel: the platform's own order payload → the canonical ``Order``.

``adapt()`` is the only entry point. It never raises anything but :class:`AdapterError`, which carries a
dead-letter reason code and a message naming the offending field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.ingest.adapters import douyin, jd, shopify, store, taobao
from agents.ingest.adapters.base import AdapterError, Source
from schemas.deadletter import ReasonCode
from schemas.order import Channel, Order

ADAPTERS: dict[Channel, Callable[[Source, Any], Order]] = {
    Channel.TMALL: taobao.adapt,
    Channel.TAOBAO: taobao.adapt,
    Channel.JD: jd.adapt,
    Channel.DOUYIN: douyin.adapt,
    Channel.SHOPIFY: shopify.adapt,
    Channel.WEB: store.adapt,
    Channel.POS: store.adapt,
}


def adapt(source: Source, payload: Any) -> Order:
    """Platform payload (already parsed JSON) → validated canonical Order, or AdapterError."""
    adapter = ADAPTERS.get(source.channel)
    if adapter is None:
        raise AdapterError(ReasonCode.UNKNOWN_CHANNEL, f"no adapter for channel {source.channel!r}")
    try:
        return adapter(source, payload)
    except AdapterError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise AdapterError(ReasonCode.INVALID_RECORD, f"payload too deeply nested or too large: {exc!r}") from None
    except Exception as exc:  # a gap in an adapter must classify, not crash (I6)
        raise AdapterError(ReasonCode.SCHEMA_VIOLATION, f"unreadable {source.channel.value} payload: {exc!r}") from None


__all__ = ["ADAPTERS", "AdapterError", "Source", "adapt"]
