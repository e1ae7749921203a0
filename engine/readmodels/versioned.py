"""A Redis hash written only if newer: each field carries the version of the state it shows.

A read model is written after each committed transaction and rebuilt from the stages' state after a takeover
or when Redis restarted empty (engine.readmodels.sync). Those writers race: a worker that lost its partition may
still be flushing updates of transactions it committed before, a rebuild reads the state while newer updates are
being written, and updates of one transaction travel to Redis in no particular order relative to the next. So
every field is written with a *version* — the input offset of the record whose processing produced it (or, for a
rebuild, the stored position of the state it read, minus one) — kept in a second hash, ``<key>:versions``, and a
Lua script applies a put or a delete only when its version is higher than the field's. A delete leaves its
version behind, so an older put arriving later cannot bring the field back. The records that change one field
all come from one input partition (one writer per key), where offsets only grow, so the newest state wins
whatever order the writes arrive in, and a write of the same version as the field's (the same state, written
twice) changes nothing.

Readers read the data hash alone (``HGETALL``/``HGET`` of the key); the versions hash is the writers' business.
What it costs: one version per field ever written, deleted ones included (their tombstones are what keeps an
older put out).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: KEYS: data hash, versions hash. ARGV: (field, version, value) triples; value "" deletes. Returns how many
#: writes were applied. Versions are compared as numbers (exact up to 2**53) and stored as the caller wrote them.
APPLY_IF_NEWER = """
local applied = 0
for i = 1, #ARGV, 3 do
  local field, version, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', KEYS[2], field)
  if not current or tonumber(version) > tonumber(current) then
    redis.call('HSET', KEYS[2], field, version)
    if value == '' then
      redis.call('HDEL', KEYS[1], field)
    else
      redis.call('HSET', KEYS[1], field, value)
    end
    applied = applied + 1
  end
end
return applied
"""

#: Fields per script call: a script runs alone on the server, so a rebuild of thousands of fields goes in pieces.
CHUNK = 500

#: (field, version, value or None to delete)
Write = tuple[str, int, bytes | None]


def versions_key(data_key: str) -> str:
    return f"{data_key}:versions"


class VersionedHash:
    """Versioned puts and deletes on Redis hashes through one registered script (an asyncio Redis client)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._script = redis.register_script(APPLY_IF_NEWER)

    async def apply(self, key: str, writes: Iterable[Write]) -> int:
        """Writes to one hash. Returns how many were newer and applied."""
        return await self.apply_many({key: list(writes)})

    async def apply_many(self, writes: dict[str, list[Write]]) -> int:
        """Writes to several hashes in one round trip. Returns how many were newer and applied. Raises the
        client's errors (some writes may have been applied: each one is idempotent, so write them all again)."""
        pipe = self.redis.pipeline(transaction=False)
        calls = 0
        for key, found in writes.items():
            for start in range(0, len(found), CHUNK):
                args: list[Any] = []
                for field, version, value in found[start : start + CHUNK]:
                    if value == b"":
                        raise ValueError(f"{key} {field}: an empty value cannot be written (it means a delete)")
                    args += [field, int(version), b"" if value is None else value]
                await self._script(keys=[key, versions_key(key)], args=args, client=pipe)
                calls += 1
        if not calls:
            return 0
        return sum(int(n) for n in await pipe.execute())
