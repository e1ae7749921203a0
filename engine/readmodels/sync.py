"""Keep the read models in Redis rebuilt from the stages' state.

A stage updates its read models after each committed transaction. Those updates can be missed (Redis down, a
worker killed between its commit and the update, a partition that changed owner), and Redis can restart empty.
So each read model registers a ``rebuild(partition)`` that writes it again from the stage's state; it runs for a
partition after the partition is assigned here (``mark_dirty``: the previous owner may have left it behind),
after a failed update, and for every owned partition when Redis restarted (a token in Redis is gone). Redis
therefore delays the operators' view, never stops it.

Updates and rebuilds race — a worker that lost the partition may still be flushing older updates after the new
owner's rebuild, a rebuild reads the state while newer transactions commit — so a read model whose entries can
change or disappear is **written only if newer, by source position** (engine.readmodels.versioned): an update
carries the input offset of the record that produced it, a rebuild the partition's stored position minus one,
read before the state is scanned; Redis keeps each entry's newest version whatever order the writes arrive in.
The holds list and the trial balance are written so; the catalog only ever adds SKUs to a set, where order does
not matter.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from engine.app import context
from engine.readmodels.redis import ERRORS, Keys

log = logging.getLogger("oms.readmodels")


@dataclass
class _Model:
    name: str
    owned: Callable[[], set[int]]
    rebuild: Callable[[int], Awaitable[bool]]
    dirty: set[int] = field(default_factory=set)


class ReadModelSync:
    def __init__(self, app: faust.App, redis: Any, keys: Keys, interval_s: float = 3.0) -> None:
        self.redis = redis
        self.keys = keys
        self.models: dict[str, _Model] = {}
        self._token: bytes | None = None
        self.rebuilds = 0

        @app.timer(interval_s)
        async def rebuild_read_models() -> None:
            if not context(app).runtime.ready:  # restoring: the stores are not the partitions' state yet
                return
            await self.tick()

    def register(self, name: str, owned: Callable[[], set[int]], rebuild: Callable[[int], Awaitable[bool]]) -> None:
        self.models[name] = _Model(name, owned, rebuild)

    def mark_dirty(self, name: str, partitions: set[int]) -> None:
        model = self.models.get(name)
        if model is not None:
            model.dirty |= partitions

    async def tick(self) -> None:
        try:
            token = await self.redis.get(self.keys.epoch())
            if token is None:
                await self.redis.set(self.keys.epoch(), secrets.token_hex(8), nx=True)
                token = await self.redis.get(self.keys.epoch())
        except ERRORS:
            return  # Redis is down: try again next tick
        if token != self._token:
            if self._token is not None:
                log.warning("Redis restarted empty: rebuilding every read model of the partitions owned here")
            for model in self.models.values():
                model.dirty |= model.owned()
            self._token = token
        for model in self.models.values():
            owned = model.owned()
            for partition in sorted(model.dirty):
                if partition not in owned:
                    model.dirty.discard(partition)
                elif await model.rebuild(partition):
                    model.dirty.discard(partition)
                    self.rebuilds += 1
