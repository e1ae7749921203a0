"""The holds list (挂起订单): one Redis hash per tenant, order id → summary (JSON), for operators and the API.

It is a read model: the order stage's state is the truth. The stage writes here after each committed
transaction, and rebuilds a partition's entries from its state when Redis restarted empty, after a failed
update, or after the partition changed owner (engine.readmodels.sync). Each summary carries the order's inbox
key, which the API needs to route an operator's action to the order's one writer, and the partition that wrote
it.

**Written only if newer, by source position** (engine.readmodels.versioned). Every put or delete carries a
version: after a commit, the offset of the order-inbox record whose processing changed the hold; in a rebuild,
the stage's stored position for the partition minus one, the position being read *before* the state is
scanned, so the scan covers at least that much. An order lives in one inbox partition, so its versions only
grow, and Redis keeps, per order, the write of the newest version whatever order the writes arrive in: a
worker that lost the partition and flushes older updates late, or a rebuild that scanned the state while newer
transactions committed, can neither bring back a released hold nor delete a newer one. A version per order
id is kept in ``<key>:versions`` (deleted orders included); readers read the data hash only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from engine.readmodels.redis import ERRORS, Keys
from engine.readmodels.versioned import VersionedHash, Write

log = logging.getLogger("oms.holds")

#: A change of the list: (tenant, order id, summary or None when no longer held, version).
Change = tuple[str, str, dict[str, Any] | None, int]
#: A held order as the state shows it: (tenant, order id, summary).
Held = tuple[str, str, dict[str, Any]]


class Unavailable(RuntimeError):
    """Redis cannot be reached right now."""


class HoldsModel:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.hashes = VersionedHash(redis)

    def _entry(self, partition: int, summary: dict[str, Any] | None) -> bytes | None:
        return None if summary is None else orjson.dumps({**summary, "partition": partition})

    async def apply(self, partition: int, changes: Iterable[Change]) -> bool:
        """Put or remove entries, each only if its version is newer than the order's in Redis; False if Redis
        failed (the partition is then rebuilt)."""
        by_key: dict[str, dict[str, Write]] = {}
        for tenant, order_id, summary, version in changes:
            fields = by_key.setdefault(self.keys.holds(tenant), {})
            earlier = fields.get(order_id)
            if earlier is None or version >= earlier[1]:  # of one version, the last change is the state after it
                fields[order_id] = (order_id, version, self._entry(partition, summary))
        if not by_key:
            return True
        try:
            await self.hashes.apply_many({key: list(fields.values()) for key, fields in by_key.items()})
            return True
        except ERRORS as exc:
            log.warning("holds list not updated (Redis: %s); it is rebuilt when Redis answers again", exc)
            return False

    async def list(self, tenant: str) -> list[dict[str, Any]]:
        try:
            raw = await self.redis.hgetall(self.keys.holds(tenant))
        except ERRORS as exc:
            raise Unavailable(str(exc)) from None
        holds = [orjson.loads(v) for v in raw.values()]
        return sorted(holds, key=lambda h: (h.get("held_at", 0), h["order_id"]))

    async def find(self, tenant: str, order_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.hget(self.keys.holds(tenant), order_id)
        except ERRORS as exc:
            raise Unavailable(str(exc)) from None
        return None if raw is None else orjson.loads(raw)

    async def listed(self, partition: int) -> dict[str, set[str]]:
        """Every order the list holds for ``partition``, by the hash it is in."""
        prefix = self.keys.holds("")
        found: dict[str, set[str]] = {}
        async for raw_name in self.redis.scan_iter(match=self.keys.holds_pattern(), count=500):
            name = raw_name.decode()
            if ":" in name[len(prefix) :]:
                continue  # not a tenant's list: its versions (``<key>:versions``)
            for field, value in (await self.redis.hgetall(name)).items():
                if orjson.loads(value).get("partition") == partition:
                    found.setdefault(name, set()).add(field.decode())
        return found

    async def replace_partition(self, partition: int, position: int, held: Callable[[], Iterable[Held]]) -> bool:
        """Make the list show what the state of ``partition`` holds (entries of other partitions stay).

        ``position`` is the stage's stored position for the partition (the next inbox offset its state covers),
        read before anything else; ``held()`` then scans the state, which therefore covers at least
        ``position - 1``. Every held order is put and every listed order of the partition that is not held is
        deleted at version ``position - 1``: a change of a newer transaction, whether the scan saw it or not,
        has a higher version and stands. Redis is read before the state is scanned, so the scan is as recent as
        it can be."""
        version = position - 1
        try:
            listed = await self.listed(partition)
            writes: dict[str, dict[str, Write]] = {}
            for tenant, order_id, summary in held():
                writes.setdefault(self.keys.holds(tenant), {})[order_id] = (
                    order_id,
                    version,
                    self._entry(partition, summary),
                )
            for name, order_ids in listed.items():
                fields = writes.setdefault(name, {})
                for order_id in order_ids - set(fields):
                    fields[order_id] = (order_id, version, None)
            await self.hashes.apply_many({key: list(fields.values()) for key, fields in writes.items() if fields})
            return True
        except ERRORS as exc:
            log.warning("holds list of partition %d not rebuilt yet (Redis: %s)", partition, exc)
            return False
