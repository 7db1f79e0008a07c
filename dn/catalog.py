"""The catalog of one shard: databases and tables, versioned by timestamp.

Every DDL command carries the commit timestamp it was stamped with. The catalog keeps the whole
history (create and drop timestamps), so a table dropped at t is still resolvable, and readable,
at snapshots before t. ``as_of(ts)`` gives the catalog a checkpoint at ``ts`` records.

DDL commands (the grammar logged and stored in range objects; op values are frozen)::

    [OP_CREATE_DATABASE, db]
    [OP_DROP_DATABASE, db]                    drops the database and every live table in it
    [OP_CREATE_TABLE, db, table, [[col, type], ...], [pk_col, ...]]
    [OP_DROP_TABLE, db, table]

``check(cmd, ts)`` validates a command against the live catalog (raising NotFound or
AlreadyExists) without changing anything; ``apply(cmd, ts)`` changes it and must only be called
with commands that passed ``check`` (or that are replayed from the log, where they did).

Callers hold the engine's lock for ``check``/``apply``; lookups are plain dict reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dn.errors import AlreadyExists, Internal, InvalidArgument, NotFound
from dn.schema import TableDef, check_name, make_table

OP_WRITE = 0
OP_CREATE_DATABASE = 1
OP_DROP_DATABASE = 2
OP_CREATE_TABLE = 3
OP_DROP_TABLE = 4
#: A write of columns (the rows of ``OP_WRITE``, by column); see :mod:`dn.write.log`.
OP_WRITE_COLUMNS = 5
#: A write of columns with the idempotency token of its part (:mod:`dn.write.tokens`).
OP_WRITE_COLUMNS_TOKEN = 6
#: A transaction's intent on this shard: its writes to every table here, at the transaction's
#: commit timestamp, applied once decided (:mod:`dn.write.txn`, decision 0015).
OP_PREPARE = 7
WRITE_OPS = (OP_WRITE, OP_WRITE_COLUMNS, OP_WRITE_COLUMNS_TOKEN)
DDL_OPS = (OP_CREATE_DATABASE, OP_DROP_DATABASE, OP_CREATE_TABLE, OP_DROP_TABLE)


@dataclass(frozen=True, slots=True)
class DatabaseDef:
    name: str
    create_ts: int
    drop_ts: int | None = None

    def live_at(self, ts: int) -> bool:
        return self.create_ts <= ts and (self.drop_ts is None or ts < self.drop_ts)


class Catalog:
    """Databases and tables with their whole DDL history."""

    def __init__(self) -> None:
        self._dbs: dict[str, list[DatabaseDef]] = {}
        self._tables: dict[tuple[str, str], list[TableDef]] = {}
        self._by_id: dict[int, TableDef] = {}

    # -- lookups ---------------------------------------------------------------------------

    def live_database(self, db: str) -> DatabaseDef | None:
        versions = self._dbs.get(db)
        if versions and versions[-1].drop_ts is None:
            return versions[-1]
        return None

    def live_table(self, db: str, table: str) -> TableDef:
        """The live version of a table, or NotFound."""
        _check_names(db, table)
        versions = self._tables.get((db, table))
        if versions and versions[-1].drop_ts is None:
            return versions[-1]
        self._not_found(db, table, None)

    def table_at(self, db: str, table: str, ts: int) -> TableDef:
        """The version of a table live at ``ts``, or NotFound."""
        _check_names(db, table)
        for t in reversed(self._tables.get((db, table), ())):
            if t.live_at(ts):
                return t
        self._not_found(db, table, ts)

    def table_by_id(self, table_id: int) -> TableDef:
        try:
            return self._by_id[table_id]
        except KeyError:
            raise Internal(f"no table with id {table_id} in the catalog") from None

    def tables(self) -> list[TableDef]:
        return [t for versions in self._tables.values() for t in versions]

    def databases_at(self, ts: int) -> list[str]:
        return sorted(n for n, vs in self._dbs.items() if any(d.live_at(ts) for d in vs))

    def tables_at(self, db: str, ts: int) -> list[str]:
        _check_names(db)
        return sorted(
            name
            for (d, name), vs in self._tables.items()
            if d == db and any(t.live_at(ts) for t in vs)
        )

    def _not_found(self, db: str, table: str, ts: int | None):
        when = "" if ts is None else f" at timestamp {ts}"
        if not any(
            d.live_at(ts) if ts is not None else d.drop_ts is None for d in self._dbs.get(db, ())
        ):
            raise NotFound(f"database {db!r} does not exist{when}", database=db)
        raise NotFound(f"table {db}.{table} does not exist{when}", database=db, table=table)

    # -- DDL -------------------------------------------------------------------------------

    def check(self, cmd: list, ts: int) -> None:
        """Raise if ``cmd`` cannot apply to the live catalog; change nothing."""
        op = cmd[0]
        if op == OP_CREATE_DATABASE:
            if self.live_database(cmd[1]) is not None:
                raise AlreadyExists(f"database {cmd[1]!r} already exists", database=cmd[1])
        elif op == OP_DROP_DATABASE:
            if self.live_database(cmd[1]) is None:
                raise NotFound(f"database {cmd[1]!r} does not exist", database=cmd[1])
        elif op == OP_CREATE_TABLE:
            db, table = cmd[1], cmd[2]
            if self.live_database(db) is None:
                raise NotFound(f"database {db!r} does not exist", database=db)
            versions = self._tables.get((db, table))
            if versions and versions[-1].drop_ts is None:
                raise AlreadyExists(f"table {db}.{table} already exists", database=db, table=table)
        elif op == OP_DROP_TABLE:
            self.live_table(cmd[1], cmd[2])
        else:
            raise InvalidArgument(f"unknown DDL op {op!r}")

    def apply(self, cmd: list, ts: int) -> None:
        """Apply a checked (or replayed) DDL command committed at ``ts``."""
        op = cmd[0]
        if op == OP_CREATE_DATABASE:
            self._dbs.setdefault(cmd[1], []).append(DatabaseDef(cmd[1], ts))
        elif op == OP_DROP_DATABASE:
            versions = self._dbs[cmd[1]]
            versions[-1] = replace(versions[-1], drop_ts=ts)
            for (db, _), tversions in self._tables.items():
                if db == cmd[1] and tversions[-1].drop_ts is None:
                    self._drop(tversions, ts)
        elif op == OP_CREATE_TABLE:
            _, db, table, cols, pk = cmd
            t = make_table(db, table, {c: ty for c, ty in cols}, list(pk), ts)
            self._tables.setdefault((db, table), []).append(t)
            self._by_id[t.id] = t
        elif op == OP_DROP_TABLE:
            self._drop(self._tables[(cmd[1], cmd[2])], ts)
        else:
            raise Internal(f"unknown DDL op {op!r}")

    def _drop(self, versions: list[TableDef], ts: int) -> None:
        versions[-1] = replace(versions[-1], drop_ts=ts)
        self._by_id[versions[-1].id] = versions[-1]

    # -- persistence -----------------------------------------------------------------------

    def as_of(self, ts: int) -> dict:
        """The catalog as it stood at ``ts``, as plain data (for checkpoints)."""
        dbs = []
        for versions in self._dbs.values():
            for d in versions:
                if d.create_ts <= ts:
                    drop = d.drop_ts if d.drop_ts is not None and d.drop_ts <= ts else None
                    dbs.append([d.name, d.create_ts, drop])
        tables = []
        for versions in self._tables.values():
            for t in versions:
                if t.create_ts <= ts:
                    drop = t.drop_ts if t.drop_ts is not None and t.drop_ts <= ts else None
                    tables.append(replace(t, drop_ts=drop).to_wire())
        dbs.sort(key=lambda d: (d[1], d[0]))
        tables.sort(key=lambda t: t[4])
        return {"databases": dbs, "tables": tables}

    @classmethod
    def from_dict(cls, data: dict) -> Catalog:
        cat = cls()
        for name, create_ts, drop_ts in data["databases"]:
            cat._dbs.setdefault(name, []).append(DatabaseDef(name, create_ts, drop_ts))
        for w in data["tables"]:
            t = TableDef.from_wire(w)
            cat._tables.setdefault((t.db, t.name), []).append(t)
            cat._by_id[t.id] = t
        cat._check()
        return cat

    def _check(self) -> None:
        """Invariants: versions ordered, at most the newest live, ids consistent."""
        for versions in list(self._dbs.values()) + list(self._tables.values()):
            for older, newer in zip(versions, versions[1:]):
                assert older.drop_ts is not None, "only the newest version may be live"
                assert older.drop_ts <= newer.create_ts, "versions overlap"
        for t in self.tables():
            assert self._by_id[t.id] == t, f"id index stale for {t.db}.{t.name}"


def ddl_create_database(db: object) -> list:
    return [OP_CREATE_DATABASE, check_name("database", db)]


def ddl_drop_database(db: object) -> list:
    return [OP_DROP_DATABASE, check_name("database", db)]


def ddl_create_table(db: object, table: object, schema: object, primary_key: object) -> list:
    t = make_table(db, table, schema, primary_key, 0)  # validates everything
    return [OP_CREATE_TABLE, t.db, t.name, [list(c) for c in t.columns], list(t.primary_key)]


def ddl_drop_table(db: object, table: object) -> list:
    return [OP_DROP_TABLE, check_name("database", db), check_name("table", table)]


def _check_names(*names: object) -> None:
    """Lookups take names as strings; anything else is a malformed request (not NotFound)."""
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgument(
                f"database and table names are strings, got {type(name).__name__} {name!r:.60}"
            )
