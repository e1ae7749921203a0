"""Publishing warehouse layouts into the log: the only way a layout change reaches allocation, merging and waves.

One transaction writes each layout to every partition of the order inbox (where reservations are ranked by
it) and of the fulfilment inbox (where it shapes merges, waves and pick paths), and to the compacted
``layouts`` topic (what the API shows). Each partition sees a version at one point of its own log, so a replay
decides the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from engine.kafka import broadcast
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.fulfilment import Layout, LayoutVersion


def publish_layouts(settings: Settings, layouts: Iterable[Layout], publisher: str) -> int:
    """Blocking. ``publisher`` names the writer (its transactional id), e.g. ``layout-publisher``."""
    layouts = list(layouts)
    if not layouts:
        return 0
    topics = Topics(settings.topic_prefix)
    copies = []
    for layout in layouts:
        key = layout.tenant.encode()
        # Allocation needs the warehouses and policies, not the bins (the bulk of a real layout).
        lite = msgspec.structs.replace(
            layout, warehouses=[msgspec.structs.replace(w, bins=[]) for w in layout.warehouses]
        )
        copies += [
            (topics.order_inbox, key, wire.encode(LayoutVersion(layout=lite))),
            (topics.fulfilment_inbox, key, wire.encode(LayoutVersion(layout=layout))),
        ]
    latest = [(topics.layouts, layout.tenant.encode(), wire.encode(layout)) for layout in layouts]
    broadcast.publish(settings, publisher, copies, latest)
    return len(layouts)
