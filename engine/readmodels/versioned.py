"""A Redis hash written only if newer (I10): each field carries the version of the state it shows.

A read model is written after each committed transaction and rebuilt from the stages' state after a takeover
or when Redis restarted empty (engine.readmodels.sync). Those writers race: a worker that lost its partition may
still be flushing updates of transactions it committed before, a rebuild reads the state while newer updates are
being written, and updates of one transaction travel to Redis in no particular order relative to the next. So
every field is written with a *version* — the input position of the record whose processing produced it (or,
for a rebuild, the position the rebuilt state covers) — in a second hash, and a Lua script applies a put or a
delete only when its version is higher than the field's. A delete leaves its version behind, so an older put
arriving later cannot bring the field back. Positions of one key only grow (one writer per key), so the newest
state wins whatever order the writes arrive in.
"""

from __future__ import annotations

from typing import Any

#: KEYS: data hash, versions hash. ARGV: (field, version, value) triples; value "" deletes. Returns the writes
#: that were applied.
APPLY_IF_NEWER = """
local applied = 0
for i = 1, #ARGV, 3 do
  local field, version, value = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local current = tonumber(redis.call('HGET', KEYS[2], field) or '-1')
  if version > current then
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


def versions_key(data_key: str) -> str:
    return f"{data_key}:versions"


class VersionedHash:
    """Versioned puts and deletes on Redis hashes through one registered script (an asyncio Redis client)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._script = redis.register_script(APPLY_IF_NEWER)

    async def apply(self, key: str, writes: list[tuple[str, int, bytes | None]]) -> int:
        """``writes``: (field, version, value or None to delete). Returns how many were newer and applied."""
        if not writes:
            return 0
        args: list[Any] = []
        for field, version, value in writes:
            args += [field, version, b"" if value is None else value]
        return int(await self._script(keys=[key, versions_key(key)], args=args))
