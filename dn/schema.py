"""Table definitions: a table's columns and primary key, its names, and its keys.

A :class:`TableDef` is one version of a table: its columns (ordered, typed), its primary key
and the timestamps of its creation and drop. Its ``id`` is its creation timestamp, unique
within a shard, so a table dropped and created again under the same name is a different table.

Rows travel inside the engine as tuples in column order (``None`` for a null); primary keys are
the key value itself for a one-column key and a tuple for a composite key. Columns are nullable
unless they are part of the primary key. The column types and what a value of each may be are
:mod:`dn.values`; a whole write batch is checked by :mod:`dn.batch`, through the methods of
:class:`TableDef` of the same names.

Invariants: a TableDef is immutable; :func:`make_table` and :func:`check_name` let no invalid
definition or name through, so every TableDef in the engine names only valid columns and types.

Callers: any module of any package (the definitions travel to clients, shards and the
coordinator in wire form, :meth:`TableDef.to_wire`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dn import batch
from dn.errors import InvalidArgument
from dn.values import COLUMN_TYPES, check_pk_value

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,127}$")
MAX_COLUMNS = 1024


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid database, table or column name; else InvalidArgument."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: use 1-128 letters, digits, '_' or '-', "
            "starting with a letter or '_'"
        )
    return name


@dataclass(frozen=True, slots=True)
class TableDef:
    """One version of a table. ``drop_ts`` is None while the table is live. ``names`` are the
    column names in order, ``nameset`` the same as a set, ``pk_pos`` the positions of the
    primary-key columns in a row tuple."""

    db: str
    name: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]
    create_ts: int
    drop_ts: int | None = None
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    pk_pos: tuple[int, ...] = field(init=False, repr=False, compare=False)
    nameset: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(c for c, _ in self.columns)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "pk_pos", tuple(names.index(c) for c in self.primary_key))
        object.__setattr__(self, "nameset", frozenset(names))

    @property
    def id(self) -> int:
        return self.create_ts

    def live_at(self, ts: int) -> bool:
        return self.create_ts <= ts and (self.drop_ts is None or ts < self.drop_ts)

    def to_wire(self) -> list:
        return [
            self.db,
            self.name,
            [list(c) for c in self.columns],
            list(self.primary_key),
            self.create_ts,
            self.drop_ts,
        ]

    @classmethod
    def from_wire(cls, w: list) -> TableDef:
        db, name, cols, pk, create_ts, drop_ts = w
        return cls(db, name, tuple((c, t) for c, t in cols), tuple(pk), create_ts, drop_ts)

    # -- keys -------------------------------------------------------------------------------

    def pk_of(self, row: tuple) -> Any:
        """The primary key of a row tuple."""
        pos = self.pk_pos
        if len(pos) == 1:
            return row[pos[0]]
        return tuple(row[p] for p in pos)

    def check_key(self, key: object) -> Any:
        """A primary-key value as given by a caller, validated and normalized."""
        pk_types = [self.columns[p][1] for p in self.pk_pos]
        if len(pk_types) == 1:
            return check_pk_value(self, self.primary_key[0], pk_types[0], key)
        if not isinstance(key, tuple | list) or len(key) != len(pk_types):
            raise InvalidArgument(
                f"table {self.db}.{self.name} has a composite primary key "
                f"{list(self.primary_key)}: give a tuple of {len(pk_types)} values, got {key!r}"
            )
        return tuple(
            check_pk_value(self, c, t, v)
            for c, t, v in zip(self.primary_key, pk_types, key, strict=True)
        )

    def column_keys(self, cols: list) -> list:
        """The primary keys of columns in column order (a new list)."""
        pos = self.pk_pos
        if not cols:
            return []
        if len(pos) == 1:
            return list(cols[pos[0]])
        return list(zip(*(cols[p] for p in pos)))

    # -- write batches (the rules are dn.batch) ---------------------------------------------

    def normalize_rows(self, upserts: Any, max_value_bytes: int) -> list[tuple]:
        """Row dicts -> validated row tuples in column order (:func:`dn.batch.normalize_rows`)."""
        return batch.normalize_rows(self, upserts, max_value_bytes)

    def normalize_columns(self, columns: Any, max_value_bytes: int) -> tuple[list, int]:
        """A columnar batch -> (validated columns in column order, row count)
        (:func:`dn.batch.normalize_columns`)."""
        return batch.normalize_columns(self, columns, max_value_bytes)

    def rows_as_columns(self, upserts: Any, max_value_bytes: int) -> tuple[list, int]:
        """Row dicts -> (validated columns in column order, row count)
        (:func:`dn.batch.rows_as_columns`)."""
        return batch.rows_as_columns(self, upserts, max_value_bytes)

    def check_packed_columns(self, cols: Any, max_value_bytes: int) -> None:
        """Check one chunk of columns packed by a client
        (:func:`dn.batch.check_packed_columns`)."""
        batch.check_packed_columns(self, cols, max_value_bytes)

    def check_row_tuples(self, rows: Any, max_value_bytes: int) -> list:
        """Rows packed by a client, checked and returned as they are
        (:func:`dn.batch.check_row_tuples`)."""
        return batch.check_row_tuples(self, rows, max_value_bytes)

    def check_batch(self, rows: Any, dels: list, max_batch_rows: int) -> list:
        """The checked primary keys of a normalized batch (:func:`dn.batch.check_batch`)."""
        return batch.check_batch(self, rows, dels, max_batch_rows)

    def check_keys(self, keys: list, dels: list, max_batch_rows: int) -> list:
        """:meth:`check_batch` given the upserts' keys (:func:`dn.batch.check_keys`)."""
        return batch.check_keys(self, keys, dels, max_batch_rows)

    def normalize_deletes(self, deletes: Any) -> list:
        """A batch's deletes -> checked primary keys (:func:`dn.batch.normalize_deletes`)."""
        return batch.normalize_deletes(self, deletes)


def make_table(db: str, name: str, schema: object, primary_key: object, ts: int) -> TableDef:
    """Validate a create-table request and build its TableDef."""
    check_name("database", db)
    check_name("table", name)
    if not isinstance(schema, dict) or not schema:
        raise InvalidArgument("schema must be a non-empty dict of column name to type name")
    if len(schema) > MAX_COLUMNS:
        raise InvalidArgument(f"a table has at most {MAX_COLUMNS} columns")
    columns = []
    for col, typ in schema.items():
        check_name("column", col)
        if typ not in COLUMN_TYPES:
            raise InvalidArgument(
                f"column {col!r} has unknown type {typ!r}; types are {list(COLUMN_TYPES)}"
            )
        columns.append((col, typ))
    if isinstance(primary_key, str):
        pk = (primary_key,)
    elif isinstance(primary_key, list | tuple) and primary_key:
        pk = tuple(primary_key)
    else:
        raise InvalidArgument("primary_key must be a column name or a non-empty list of them")
    for c in pk:
        if not isinstance(c, str) or c not in schema:
            raise InvalidArgument(f"primary-key column {c!r} is not in the schema")
    if len(set(pk)) != len(pk):
        raise InvalidArgument(f"primary key {list(pk)} names a column twice")
    return TableDef(db, name, tuple(columns), pk, ts)
