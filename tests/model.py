"""A dict-based reference model of one shard's tables, for tests.

The model records every committed change with its timestamp and answers the same questions as
the engine: the rows of a table at a snapshot (in primary-key order), one row, and the changes
in from_ts <= ts <= snapshot in (ts, pk) order. Tables are versioned like the catalog: a
dropped table is readable before its drop, a re-created one starts empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TableVersion:
    create_ts: int
    pk: tuple[str, ...]
    columns: tuple[str, ...]
    drop_ts: int | None = None
    history: list[tuple[int, str, object, dict | None]] = field(default_factory=list)

    def live_at(self, ts: int) -> bool:
        return self.create_ts <= ts and (self.drop_ts is None or ts < self.drop_ts)


class Model:
    def __init__(self) -> None:
        self.tables: dict[str, list[TableVersion]] = {}

    def create(self, name: str, ts: int, pk: tuple[str, ...], columns: tuple[str, ...]) -> None:
        self.tables.setdefault(name, []).append(TableVersion(ts, pk, columns))

    def drop(self, name: str, ts: int) -> None:
        self.tables[name][-1].drop_ts = ts

    def live(self, name: str) -> TableVersion | None:
        versions = self.tables.get(name)
        if versions and versions[-1].drop_ts is None:
            return versions[-1]
        return None

    def key_of(self, name: str, row: dict):
        pk = self.tables[name][-1].pk
        return row[pk[0]] if len(pk) == 1 else tuple(row[c] for c in pk)

    def write(self, name: str, ts: int, upserts: list[dict], deletes: list) -> None:
        t = self.live(name)
        assert t is not None
        changes = [(ts, "upsert", self.key_of(name, r), r) for r in upserts]
        changes += [(ts, "delete", k, None) for k in deletes]
        changes.sort(key=lambda c: c[2])
        t.history.extend(changes)

    def version_at(self, name: str, ts: int) -> TableVersion | None:
        for t in reversed(self.tables.get(name, [])):
            if t.live_at(ts):
                return t
        return None

    def state(self, name: str, snapshot: int) -> dict:
        t = self.version_at(name, snapshot)
        assert t is not None
        out: dict = {}
        for ts, kind, pk, row in t.history:
            if ts > snapshot:
                break
            if kind == "delete":
                out.pop(pk, None)
            else:
                out[pk] = row
        return out

    def rows(self, name: str, snapshot: int, columns: list[str] | None = None) -> list[dict]:
        st = self.state(name, snapshot)
        t = self.version_at(name, snapshot)
        full = [{c: st[k].get(c) for c in t.columns} for k in sorted(st)]
        if columns is None:
            return full
        return [{c: r[c] for c in columns} for r in full]

    def changes(self, name: str, from_ts: int, snapshot: int) -> list[tuple]:
        t = self.version_at(name, snapshot)
        assert t is not None
        return [
            (ts, kind, pk, None if row is None else {c: row.get(c) for c in t.columns})
            for ts, kind, pk, row in t.history
            if from_ts <= ts <= snapshot
        ]
