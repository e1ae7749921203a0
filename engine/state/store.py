"""The local copy of a stage's tables: one store per table, addressed by partition, holding raw bytes.

A store is a cache of its changelog topic, never a source of truth. A stage writes a table only through its
transaction (the changelog record goes out with the outputs and the input position, engine.runtime.checkpoint)
and, once the transaction is committed, applies the same bytes here together with the changelog offset they
got. On an assignment the runtime reads each changelog partition from the offset after the one the store holds
up to its end (engine.state.restore), so a store that survived a restart — the worker's own, kept on disk — only
catches up on what others wrote meanwhile. Nothing uncommitted ever reaches a store.

Two kinds (``OMS_TABLE_STORE``): ``rocksdb://`` (one RocksDB database per table partition under the worker's
data directory, through rocksdict; survives restarts) and ``memory://`` (dicts; restored from the changelog
after every start).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

#: Where a RocksDB partition keeps the offset of the last changelog record it holds. A key no table can have:
#: table keys start with a tenant.
OFFSET_KEY = b"\x00oms:changelog-offset"


class PartitionStore(Protocol):
    """One table's local state, per partition (what a stage's logic reads through engine.runtime.work)."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def apply(self, partition: int, writes: dict[bytes, bytes | None], changelog_offset: int | None) -> None: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...


class TableStore(PartitionStore, Protocol):
    """A store the runtime restores: it also knows how far into its changelog each partition is."""

    def offset(self, partition: int) -> int | None:
        """The offset of the last changelog record applied to ``partition`` (None: nothing yet)."""

    def reset(self, partition: int) -> None:
        """Forget ``partition`` (its changelog was recreated): the next restore reads it from the beginning."""

    def close(self) -> None: ...


class MemoryStore:
    """Dicts, one per partition."""

    def __init__(self) -> None:
        self.partitions: dict[int, dict[bytes, bytes]] = {}
        self._offsets: dict[int, int] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        data = self.partitions.get(partition)
        return None if data is None else data.get(key)

    def apply(self, partition: int, writes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        data = self.partitions.get(partition)
        if data is None:
            data = self.partitions[partition] = {}
        for key, value in writes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        if changelog_offset is not None:
            self._offsets[partition] = changelog_offset

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        yield from list(self.partitions.get(partition, {}).items())

    def offset(self, partition: int) -> int | None:
        return self._offsets.get(partition)

    def reset(self, partition: int) -> None:
        self.partitions.pop(partition, None)
        self._offsets.pop(partition, None)

    def close(self) -> None:
        self.partitions.clear()
        self._offsets.clear()


#: The in-process store of a replay (engine.runtime.replay): the same interface, nothing to restore.
DictPartitions = MemoryStore


class RocksStore:
    """One RocksDB database per partition, at ``<root>/p<partition>``, opened on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dbs: dict[int, object] = {}

    def _db(self, partition: int):
        db = self._dbs.get(partition)
        if db is None:
            db = self._dbs[partition] = _open(self.root / f"p{partition}")
        return db

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._db(partition).get(key)  # type: ignore[attr-defined,no-any-return]

    def apply(self, partition: int, writes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        import rocksdict

        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(OFFSET_KEY, str(changelog_offset).encode())
        self._db(partition).write(batch)  # type: ignore[attr-defined]

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db(partition).items():  # type: ignore[attr-defined]
            if key != OFFSET_KEY:
                yield bytes(key), bytes(value)

    def offset(self, partition: int) -> int | None:
        raw = self._db(partition).get(OFFSET_KEY)  # type: ignore[attr-defined]
        return None if raw is None else int(raw)

    def reset(self, partition: int) -> None:
        db = self._dbs.pop(partition, None)
        if db is not None:
            db.close()  # type: ignore[attr-defined]
        shutil.rmtree(self.root / f"p{partition}", ignore_errors=True)

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()  # type: ignore[attr-defined]
        self._dbs.clear()


def _open(path: Path):
    """A raw-bytes RocksDB sized for many small databases (tables × partitions) on one worker."""
    import rocksdict

    path.mkdir(parents=True, exist_ok=True)
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_max_open_files(64)
    options.set_write_buffer_size(8 * 1024 * 1024)
    options.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(10, block_based=True)
    table.set_block_cache(rocksdict.Cache(16 * 1024 * 1024))
    options.set_block_based_table_factory(table)
    return rocksdict.Rdict(str(path), options=options)


def open_store(kind: str, root: Path) -> TableStore:
    """``rocksdb://`` or ``memory://`` (``OMS_TABLE_STORE``)."""
    scheme = kind.split("://", 1)[0]
    if scheme == "memory":
        return MemoryStore()
    if scheme == "rocksdb":
        return RocksStore(root)
    raise ValueError(f"unknown table store {kind!r}: rocksdb:// or memory://")
