"""Table definitions and the validation of rows, keys and names against them.

A :class:`TableDef` is one version of a table: its columns (ordered, typed), its primary key
and the timestamps of its creation and drop. Its ``id`` is its creation timestamp, unique
within a shard, so a table dropped and created again under the same name is a different table.

Rows travel inside the engine as tuples in column order (``None`` for a null); primary keys are
the key value itself for a one-column key and a tuple for a composite key. Validation happens
here, before anything is logged, so bad input never reaches the store.

Column types: ``int64``, ``float64``, ``string``, ``bytes``, ``bool``. Columns are nullable
unless they are part of the primary key. A float64 column accepts ints (stored as floats); an
int64 column does not accept bools or floats. Primary-key floats may not be NaN.

Duplicate keys in one batch (two upserts, or an upsert and a delete, of the same key) are
rejected with :class:`InvalidArgument`: a batch states one outcome per key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from dn.errors import InvalidArgument

COLUMN_TYPES = ("int64", "float64", "string", "bytes", "bool")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,127}$")
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
MAX_COLUMNS = 1024
_FAST_MIN_ROWS = 16  # below this the per-value path is as fast as the column-wise one


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
    """One version of a table. ``drop_ts`` is None while the table is live."""

    db: str
    name: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]
    create_ts: int
    drop_ts: int | None = None
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    pk_pos: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _nameset: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(c for c, _ in self.columns)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "pk_pos", tuple(names.index(c) for c in self.primary_key))
        object.__setattr__(self, "_nameset", frozenset(names))

    @property
    def id(self) -> int:
        return self.create_ts

    def live_at(self, ts: int) -> bool:
        return self.create_ts <= ts and (self.drop_ts is None or ts < self.drop_ts)

    def to_wire(self) -> list:
        return [self.db, self.name, [list(c) for c in self.columns], list(self.primary_key),
                self.create_ts, self.drop_ts]

    @classmethod
    def from_wire(cls, w: list) -> TableDef:
        db, name, cols, pk, create_ts, drop_ts = w
        return cls(db, name, tuple((c, t) for c, t in cols), tuple(pk), create_ts, drop_ts)

    # -- validation -------------------------------------------------------------------------

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
            return _check_pk_value(self, self.primary_key[0], pk_types[0], key)
        if not isinstance(key, tuple | list) or len(key) != len(pk_types):
            raise InvalidArgument(
                f"table {self.db}.{self.name} has a composite primary key "
                f"{list(self.primary_key)}: give a tuple of {len(pk_types)} values, got {key!r}"
            )
        return tuple(
            _check_pk_value(self, c, t, v)
            for c, t, v in zip(self.primary_key, pk_types, key, strict=True)
        )

    def normalize_rows(self, upserts: Any, max_value_bytes: int) -> list[tuple]:
        """Row dicts -> validated row tuples in column order."""
        if isinstance(upserts, dict) or not _is_sequence(upserts):
            raise InvalidArgument("upserts must be a list of row dicts")
        if type(upserts) is list and len(upserts) >= _FAST_MIN_ROWS:
            fast = self._fast_rows(upserts, max_value_bytes)
            if fast is not None:
                return fast
        names = self.names
        nameset = self._nameset
        checks = [(i, n, t, i in self.pk_pos) for i, (n, t) in enumerate(self.columns)]
        out = []
        for row in upserts:
            if type(row) is not dict:
                raise InvalidArgument(
                    f"each upsert must be a dict of column values, got {type(row).__name__}"
                )
            if not nameset.issuperset(row):
                unknown = sorted(str(k) for k in row if k not in nameset)
                raise InvalidArgument(
                    f"unknown column(s) {unknown} for table {self.db}.{self.name}; "
                    f"columns are {list(names)}"
                )
            values = [row.get(n) for n in names]
            for i, name, typ, is_pk in checks:
                v = values[i]
                if v is None:
                    if is_pk:
                        raise InvalidArgument(
                            f"primary-key column {name!r} of {self.db}.{self.name} is missing "
                            "or null"
                        )
                    continue
                ok, v2 = _CHECKERS[typ](v, max_value_bytes)
                if not ok:
                    raise InvalidArgument(_type_message(self, name, typ, v, max_value_bytes))
                if v2 is not v:
                    values[i] = v2
                if is_pk and typ == "float64" and math.isnan(v2):
                    raise InvalidArgument(f"primary-key column {name!r} may not be NaN")
            out.append(tuple(values))
        return out

    def _fast_rows(self, upserts: list, max_value_bytes: int) -> list[tuple] | None:
        """The rows of a batch in which every upsert is a plain dict naming exactly the
        table's columns, with no nulls and values of exactly the column types within limits,
        checked column by column with C-level builtins (O(rows x columns), no Python call per
        value). None sends the batch to the per-value path, which gives the same rows for
        everything this accepts and builds the error messages."""
        names = self.names
        n = len(names)
        if set(map(type, upserts)) != {dict} or set(map(len, upserts)) != {n}:
            return None
        try:
            if n == 1:
                name = names[0]
                rows = [(r[name],) for r in upserts]
            else:
                rows = list(map(itemgetter(*names), upserts))
        except KeyError:
            return None
        return rows if self._columns_ok(rows, max_value_bytes) else None

    def _columns_ok(self, rows: list, max_value_bytes: int) -> bool:
        """True when every column of ``rows`` (tuples in column order) holds only non-null
        values of exactly its type, within limits; checked column by column with C-level
        builtins. False means: look value by value (which also builds the error message)."""
        return all(self._column_ok(i, col, max_value_bytes)
                   for i, col in enumerate(zip(*rows)))

    def _column_ok(self, i: int, col: Any, max_value_bytes: int) -> bool:
        """:meth:`_columns_ok` for column ``i`` alone (a non-empty list or tuple)."""
        typ = self.columns[i][1]
        types = set(map(type, col))
        if typ == "int64":
            return types == {int} and min(col) >= INT64_MIN and max(col) <= INT64_MAX
        if typ == "bytes":
            return types == {bytes} and max(map(len, col)) <= max_value_bytes
        if typ == "string":
            if types != {str} or max(map(len, col)) * 4 > max_value_bytes:
                return False
            try:
                "".join(col).encode("utf-8")
            except UnicodeEncodeError:
                return False
            return True
        if typ == "float64":
            return types == {float} and not (i in self.pk_pos and any(v != v for v in col))
        return types == {bool}

    def _column_ok_or_null(self, i: int, col: Any, max_value_bytes: int) -> bool:
        """:meth:`_column_ok`, where a column outside the primary key may also hold nulls."""
        if self._column_ok(i, col, max_value_bytes):
            return True
        if i in self.pk_pos:
            return False
        present = [v for v in col if v is not None]
        return not present or self._column_ok(i, present, max_value_bytes)

    # -- columnar batches -------------------------------------------------------------------

    def normalize_columns(self, columns: Any, max_value_bytes: int) -> tuple[list, int]:
        """A columnar batch -> (validated columns in column order, row count).

        ``columns`` maps column names to sequences of equal length, one value per row (lists,
        tuples, or anything with ``tolist()`` such as a numpy array). A column left out is
        null in every row; primary-key columns must be given. Values are checked and
        normalized exactly as :meth:`normalize_rows` does it, column by column."""
        if not isinstance(columns, Mapping):
            raise InvalidArgument("columns must be a dict of column name to a list of values")
        unknown = sorted(str(k) for k in columns if k not in self._nameset)
        if unknown:
            raise InvalidArgument(f"unknown column(s) {unknown} for table {self.db}.{self.name};"
                                  f" columns are {list(self.names)}")
        for c in self.primary_key:
            if columns.get(c) is None:
                raise InvalidArgument(f"primary-key column {c!r} of {self.db}.{self.name} is "
                                      "missing from the columns")
        cols: list = []
        lengths: dict[str, int] = {}
        for name in self.names:
            col = columns.get(name)
            if col is not None:
                col = _as_column(name, col)
                lengths[name] = len(col)
            cols.append(col)
        if len(set(lengths.values())) > 1:
            raise InvalidArgument(f"the columns of a batch must have equal lengths, got "
                                  f"{lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            return [], 0
        for i, col in enumerate(cols):
            if col is None:
                cols[i] = [None] * n
            elif not self._column_ok_or_null(i, col, max_value_bytes):
                cols[i] = self._normalize_column(i, col, max_value_bytes)
        return cols, n

    def _normalize_column(self, i: int, col: Any, max_value_bytes: int) -> list:
        """Column ``i`` checked value by value: normalized, or the precise error."""
        name, typ = self.columns[i]
        is_pk = i in self.pk_pos
        check = _CHECKERS[typ]
        out = []
        for v in col:
            if v is None:
                if is_pk:
                    raise InvalidArgument(f"primary-key column {name!r} of {self.db}."
                                          f"{self.name} may not be null")
                out.append(None)
                continue
            ok, v2 = check(v, max_value_bytes)
            if not ok:
                raise InvalidArgument(_type_message(self, name, typ, v, max_value_bytes))
            if is_pk and typ == "float64" and math.isnan(v2):
                raise InvalidArgument(f"primary-key column {name!r} may not be NaN")
            out.append(v2)
        return out

    def rows_as_columns(self, upserts: Any, max_value_bytes: int) -> tuple[list, int]:
        """Row dicts -> (validated columns in column order, row count): the rows of
        :meth:`normalize_rows`, by column. A batch of plain dicts naming exactly the table's
        columns is read column by column (no tuple per row)."""
        names = self.names
        if (type(upserts) is list and len(upserts) >= _FAST_MIN_ROWS
                and set(map(type, upserts)) == {dict} and set(map(len, upserts)) == {len(names)}):
            try:
                cols = [list(map(itemgetter(c), upserts)) for c in names]
            except KeyError:
                cols = None
            if cols is not None and all(self._column_ok(i, c, max_value_bytes)
                                        for i, c in enumerate(cols)):
                return cols, len(upserts)
        rows = self.normalize_rows(upserts, max_value_bytes)
        return ([list(c) for c in zip(*rows)] if rows else []), len(rows)

    def check_packed_columns(self, cols: Any, max_value_bytes: int) -> None:
        """One chunk of columns that arrives already normalized (as a client packed it): an
        array of one array per column, all of the same non-zero length; checked exactly as
        :meth:`check_row_tuples` checks rows."""
        n = len(self.names)
        if (not isinstance(cols, list | tuple) or len(cols) != n
                or set(map(type, cols)) - {tuple, list}):
            raise InvalidArgument(
                f"a packed chunk of {self.db}.{self.name} must be an array of {n} columns")
        lengths = set(map(len, cols))
        if len(lengths) != 1 or 0 in lengths:
            raise InvalidArgument(f"the columns of a packed chunk of {self.db}.{self.name} "
                                  "must have equal, non-zero lengths")
        if not all(self._column_ok_or_null(i, c, max_value_bytes) for i, c in enumerate(cols)):
            self.check_row_tuples(list(zip(*cols)), max_value_bytes)  # the precise error

    def column_keys(self, cols: list) -> list:
        """The primary keys of columns in column order (a new list)."""
        pos = self.pk_pos
        if not cols:
            return []
        if len(pos) == 1:
            return list(cols[pos[0]])
        return list(zip(*(cols[p] for p in pos)))

    def check_row_tuples(self, rows: Any, max_value_bytes: int) -> list:
        """Rows that arrive already normalized (tuples in column order, as a client packed
        them): check them exactly as :meth:`normalize_rows` would, without converting. A row
        that is valid but not in normal form (an int in a float64 column) is refused too."""
        if not isinstance(rows, list | tuple):
            raise InvalidArgument("packed rows must be an array of rows")
        n = len(self.names)
        if rows and (set(map(type, rows)) - {tuple, list} or set(map(len, rows)) != {n}):
            raise InvalidArgument(
                f"each packed row of {self.db}.{self.name} must be an array of {n} values")
        if self._columns_ok(rows, max_value_bytes):
            return rows
        for row in rows:  # the slow path: the precise error, or acceptance with nulls
            as_dict = {c: v for c, v in zip(self.names, row) if v is not None}
            (normal,) = self.normalize_rows([as_dict], max_value_bytes)
            if normal != tuple(row) or any(type(a) is not type(b) for a, b in zip(normal, row)):
                raise InvalidArgument(
                    f"a packed row of {self.db}.{self.name} is not in normal form: {row!r}")
        return rows

    def check_batch(self, rows: Any, dels: list, max_batch_rows: int) -> list:
        """The primary keys of a normalized batch (rows' keys, then the deletes), after the
        checks every write gets: not empty, not over ``max_batch_rows``, each key once."""
        pos = self.pk_pos
        keys = (list(map(itemgetter(pos[0]), rows)) if len(pos) == 1
                else [self.pk_of(r) for r in rows])
        return self.check_keys(keys, dels, max_batch_rows)

    def check_keys(self, keys: list, dels: list, max_batch_rows: int) -> list:
        """:meth:`check_batch` given the upserts' keys: ``keys`` (extended here by ``dels``)."""
        keys.extend(dels)
        n = len(keys)
        if n == 0:
            raise InvalidArgument("a write needs at least one upsert or delete")
        if n > max_batch_rows:
            raise InvalidArgument(f"batch of {n} rows is over max_batch_rows={max_batch_rows}")
        if len(set(keys)) != n:
            seen: set = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise InvalidArgument(
                f"primary key {dup!r} appears twice in one batch of {self.db}.{self.name}; a "
                "batch may name each key once")
        return keys

    def normalize_deletes(self, deletes: Any) -> list:
        if type(deletes) in (list, tuple) and not deletes:
            return []
        if isinstance(deletes, dict | str | bytes) or not _is_sequence(deletes):
            raise InvalidArgument("deletes must be a list of primary-key values")
        return [self.check_key(k) for k in deletes]


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


def _is_sequence(x: Any) -> bool:
    return isinstance(x, list | tuple) or (
        hasattr(x, "__iter__") and not isinstance(x, str | bytes | dict)
    )


def _as_column(name: str, col: Any) -> list | tuple:
    """A caller's column as a list or tuple: a list (copied: the caller may reuse it once the
    call returns), a tuple, another sequence such as a ``range``, or an array with
    ``tolist()`` (numpy, pandas). Sets, dicts, strings and one-shot iterators are refused:
    a column's order must pair its values with the other columns' values."""
    if type(col) is tuple:
        return col
    if type(col) is list:
        return tuple(col)
    if isinstance(col, str | bytes | bytearray | Mapping) or not (
            hasattr(col, "tolist") or isinstance(col, Sequence)):
        raise InvalidArgument(f"column {name!r} must be a list, tuple or array of values, "
                              f"got {type(col).__name__}")
    out = col.tolist() if hasattr(col, "tolist") else list(col)
    if not isinstance(out, list):
        raise InvalidArgument(f"column {name!r} must be one-dimensional")
    return out


def _check_pk_value(t: TableDef, col: str, typ: str, v: object) -> Any:
    if v is None:
        raise InvalidArgument(f"primary-key column {col!r} of {t.db}.{t.name} may not be null")
    ok, v2 = _CHECKERS[typ](v, 1 << 62)
    if not ok:
        raise InvalidArgument(_type_message(t, col, typ, v, None))
    if typ == "float64" and math.isnan(v2):
        raise InvalidArgument(f"primary-key column {col!r} may not be NaN")
    return v2


def _type_message(t: TableDef, col: str, typ: str, v: object, limit: int | None) -> str:
    if limit is not None and isinstance(v, str | bytes | bytearray | memoryview):
        size = len(v.encode("utf-8", "surrogatepass")) if isinstance(v, str) else len(v)
        if size > limit and _CHECKERS[typ](v, 1 << 62)[0]:
            return (
                f"value of column {col!r} in {t.db}.{t.name} is {size} bytes, over "
                f"max_value_bytes={limit}"
            )
    shown = repr(v)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if typ == "string" and type(v) is str:
        return f"column {col!r} of {t.db}.{t.name} is a string that is not valid UTF-8: {shown}"
    return (
        f"column {col!r} of {t.db}.{t.name} is {typ}, got {type(v).__name__} {shown}"
        + (" (out of int64 range)" if typ == "int64" and type(v) is int else "")
    )


def _chk_int(v, _limit):
    return (type(v) is int and INT64_MIN <= v <= INT64_MAX), v


def _chk_float(v, _limit):
    t = type(v)
    if t is float:
        return True, v
    if t is int and INT64_MIN <= v <= INT64_MAX:
        return True, float(v)
    return False, v


def _chk_str(v, limit):
    if type(v) is not str:
        return False, v
    if len(v) * 4 > limit and len(v.encode("utf-8", "surrogatepass")) > limit:
        return False, v
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False, v
    return True, v


def _chk_bytes(v, limit):
    t = type(v)
    if t is not bytes:
        if t is bytearray or t is memoryview:
            v = bytes(v)
        else:
            return False, v
    return len(v) <= limit, v


def _chk_bool(v, _limit):
    return type(v) is bool, v


_CHECKERS = {
    "int64": _chk_int,
    "float64": _chk_float,
    "string": _chk_str,
    "bytes": _chk_bytes,
    "bool": _chk_bool,
}
