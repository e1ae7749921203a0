"""A stage's tables: each is a local store (engine.state.store) backed by a compacted changelog topic.

A table partition lives with its input partition: the stage that owns partition ``p`` of its input writes
partition ``p`` of every one of its tables' changelogs, in the same transaction as its outputs. The changelog
is the table; the store is the worker's copy of it (restored by engine.state.restore on every assignment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.state.store import TableStore, open_store


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog of ``table``: ``<app id>-<table>-changelog`` (compacted, as many partitions as the inputs)."""
    return f"{app_id}-{table}-changelog"


@dataclass
class Table:
    name: str
    changelog: str
    store: TableStore

    @classmethod
    def open(cls, app_id: str, name: str, kind: str, datadir: Path) -> Table:
        return cls(name, changelog_topic(app_id, name), open_store(kind, datadir / "tables" / name))
