"""Order pulling (定时抓取): how far each pulled shop's order list has been read.

A ``PullCheckpoint`` is written to the compacted ``pull-checkpoints`` topic (key ``tenant:channel:shop``) in the
same Kafka transaction as the raw orders of the window it closes: the orders and the checkpoint are visible
together or not at all, so a poller that dies starts again from the last window it finished — nothing lost, and
what it pulls twice (the overlap, a window retried) is one order to the order stage (same channel version).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from schemas.common import EpochMs, Ident, Record, Tenant


class PullCheckpoint(Record, kw_only=True):
    v: int = 1
    tenant: Tenant
    channel: Ident
    shop_id: Ident
    modified_until: EpochMs  # every order the platform modified before this time has been pulled
    windows: Annotated[int, Meta(ge=0)] = 0  # windows closed so far
    pulled: Annotated[int, Meta(ge=0)] = 0  # orders pulled so far (duplicates of pushes included)
    ts: EpochMs

    @property
    def key(self) -> str:
        return pull_key(self.tenant, self.channel, self.shop_id)


def pull_key(tenant: str, channel: str, shop: str) -> str:
    return f"{tenant}:{channel}:{shop}"
