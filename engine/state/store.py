"""Byte-level access to one partition of a Faust table's local store.

A stage never writes a table through Faust's ``table[key] = value``: that would send a changelog record with
Faust's own producer, outside the stage's transaction. It produces the changelog records itself, in the same
transaction as its outputs, and once that transaction is committed writes the same bytes here — exactly what
Faust's recovery and its standby replicas apply from the changelog, so a restored table equals the one that
was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class PartitionStore(Protocol):
    """One table's local state, per partition."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def apply(self, partition: int, writes: dict[bytes, bytes | None], changelog_offset: int | None) -> None: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...


def store_of(table: Any) -> PartitionStore:
    """The adapter for a Faust table's store (RocksDB or memory)."""
    store = table.data
    if hasattr(store, "_db_for_partition"):
        return RocksPartitions(store)
    if hasattr(store, "_key_partition"):
        return MemoryPartitions(store)
    raise TypeError(f"unsupported table store {type(store).__name__}")


class RocksPartitions:
    """Faust's RocksDB store: one database per partition; the changelog offset is kept under Faust's key."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._offset_key: bytes = store.offset_key

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._store._db_for_partition(partition).get(key)
        return None if value is None else bytes(value)

    def apply(self, partition: int, writes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        import rocksdict

        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(self._offset_key, str(changelog_offset).encode())
        self._store._db_for_partition(partition).write(batch)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._store._db_for_partition(partition).items():
            if key != self._offset_key:
                yield bytes(key), bytes(value)


class MemoryPartitions:
    """Faust's memory store: one dict for all partitions, with the partition of each key beside it."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def get(self, partition: int, key: bytes) -> bytes | None:
        if self._store._key_partition.get(key, partition) != partition:
            return None
        value = self._store.data.get(key)
        return value if value else None

    def apply(self, partition: int, writes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        data, where = self._store.data, self._store._key_partition
        for key, value in writes.items():
            if value is None:
                data.pop(key, None)
                where.pop(key, None)
            else:
                data[key] = value
                where[key] = partition

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        where = self._store._key_partition
        for key, value in list(self._store.data.items()):
            if value and where.get(key) == partition:
                yield key, value


class DictPartitions:
    """A plain in-process store with the same interface: for replaying a stage outside Kafka (tests)."""

    def __init__(self) -> None:
        self.partitions: dict[int, dict[bytes, bytes]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.partitions.get(partition, {}).get(key)

    def apply(self, partition: int, writes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        data = self.partitions.setdefault(partition, {})
        for key, value in writes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        yield from list(self.partitions.get(partition, {}).items())
