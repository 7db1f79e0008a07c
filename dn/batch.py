"""Write batches: a caller's rows, columns and deletes checked and normalized against a table.

Rows travel inside the engine as tuples in column order (``None`` for a null); primary keys are
the key value itself for a one-column key and a tuple for a composite key. Validation happens
here, before anything is logged, so bad input never reaches the store. The rules for one value
are :mod:`dn.values`; columns are nullable unless they are part of the primary key.

Duplicate keys in one batch (two upserts, or an upsert and a delete, of the same key) are
rejected with :class:`InvalidArgument`: a batch states one outcome per key.

Invariants: a column-wise fast path accepts only what the per-value path accepts, with the same
result; anything else goes to the per-value path, which builds the precise error.
A caller's data is never changed (a list given as a column is copied), except the list of keys
given to :func:`check_keys`, which it extends by the deletes.

Callers: :class:`dn.schema.TableDef`, whose methods of the same names are the public way in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from math import copysign
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from dn.columnar import from_arrow, is_columnar
from dn.errors import InvalidArgument
from dn.values import CHECKERS, INT64_MAX, INT64_MIN, type_message

if TYPE_CHECKING:
    from dn.schema import TableDef

_FAST_MIN_ROWS = 16  # below this the per-value path is as fast as the column-wise one


def normalize_rows(table: TableDef, upserts: Any, max_value_bytes: int) -> list[tuple]:
    """Row dicts -> validated row tuples in column order."""
    if isinstance(upserts, dict) or not _is_sequence(upserts):
        raise InvalidArgument("upserts must be a list of row dicts")
    if type(upserts) is list and len(upserts) >= _FAST_MIN_ROWS:
        fast = _fast_rows(table, upserts, max_value_bytes)
        if fast is not None:
            return fast
    names = table.names
    nameset = table.nameset
    checks = [(i, n, t, i in table.pk_pos) for i, (n, t) in enumerate(table.columns)]
    out = []
    for row in upserts:
        if type(row) is not dict:
            raise InvalidArgument(
                f"each upsert must be a dict of column values, got {type(row).__name__}"
            )
        if not nameset.issuperset(row):
            unknown = sorted(str(k) for k in row if k not in nameset)
            raise InvalidArgument(
                f"unknown column(s) {unknown} for table {table.db}.{table.name}; "
                f"columns are {list(names)}"
            )
        values = [row.get(n) for n in names]
        for i, name, typ, is_pk in checks:
            v = values[i]
            if v is None:
                if is_pk:
                    raise InvalidArgument(
                        f"primary-key column {name!r} of {table.db}.{table.name} is missing or null"
                    )
                continue
            ok, v2 = CHECKERS[typ](v, max_value_bytes)
            if not ok:
                raise InvalidArgument(type_message(table, name, typ, v, max_value_bytes))
            if is_pk and typ == "float64":
                if math.isnan(v2):
                    raise InvalidArgument(f"primary-key column {name!r} may not be NaN")
                v2 = 0.0 if v2 == 0.0 else v2  # -0.0 is the key 0.0 (dn.values)
            if v2 is not v:
                values[i] = v2
        out.append(tuple(values))
    return out


def _fast_rows(table: TableDef, upserts: list, max_value_bytes: int) -> list[tuple] | None:
    """The rows of a batch in which every upsert is a plain dict naming exactly the
    table's columns, with no nulls and values of exactly the column types within limits,
    checked column by column with C-level builtins (O(rows x columns), no Python call per
    value). None sends the batch to the per-value path, which gives the same rows for
    everything this accepts and builds the error messages."""
    names = table.names
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
    return rows if _columns_ok(table, rows, max_value_bytes) else None


def _columns_ok(table: TableDef, rows: list, max_value_bytes: int) -> bool:
    """True when every column of ``rows`` (tuples in column order) holds only non-null
    values of exactly its type, within limits; checked column by column with C-level
    builtins. False means: look value by value (which also builds the error message)."""
    return all(_column_ok(table, i, col, max_value_bytes) for i, col in enumerate(zip(*rows)))


def _column_ok(table: TableDef, i: int, col: Any, max_value_bytes: int) -> bool:
    """:func:`_columns_ok` for column ``i`` alone (a non-empty list or tuple)."""
    typ = table.columns[i][1]
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
    if typ == "float64":  # a key's NaN is refused, its -0.0 made 0.0: by the per-value path
        return types == {float} and not (
            i in table.pk_pos and any(v != v or (v == 0.0 and copysign(1.0, v) < 0) for v in col)
        )
    return types == {bool}


def _column_ok_or_null(table: TableDef, i: int, col: Any, max_value_bytes: int) -> bool:
    """:func:`_column_ok`, where a column outside the primary key may also hold nulls."""
    if _column_ok(table, i, col, max_value_bytes):
        return True
    if i in table.pk_pos:
        return False
    present = [v for v in col if v is not None]
    return not present or _column_ok(table, i, present, max_value_bytes)


# -- columnar batches -------------------------------------------------------------------


def normalize_columns(table: TableDef, columns: Any, max_value_bytes: int) -> tuple[list, int]:
    """A columnar batch -> (validated columns in column order, row count).

    ``columns`` maps column names to sequences of equal length, one value per row (lists,
    tuples, or anything with ``tolist()`` such as a numpy array). A column left out is
    null in every row; primary-key columns must be given. Values are checked and
    normalized exactly as :func:`normalize_rows` does it, column by column."""
    if is_columnar(columns):  # an Arrow table or record batch, or a pandas DataFrame
        columns = from_arrow(table, columns)
    if not isinstance(columns, Mapping):
        raise InvalidArgument(
            "columns must be a dict of column name to a list of values, an Arrow table or "
            "record batch, or a pandas DataFrame"
        )
    unknown = sorted(str(k) for k in columns if k not in table.nameset)
    if unknown:
        raise InvalidArgument(
            f"unknown column(s) {unknown} for table {table.db}.{table.name};"
            f" columns are {list(table.names)}"
        )
    for c in table.primary_key:
        if columns.get(c) is None:
            raise InvalidArgument(
                f"primary-key column {c!r} of {table.db}.{table.name} is missing from the columns"
            )
    cols: list = []
    lengths: dict[str, int] = {}
    for name in table.names:
        col = columns.get(name)
        if col is not None:
            col = _as_column(name, col)
            lengths[name] = len(col)
        cols.append(col)
    if len(set(lengths.values())) > 1:
        raise InvalidArgument(f"the columns of a batch must have equal lengths, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        return [], 0
    for i, col in enumerate(cols):
        if col is None:
            cols[i] = [None] * n
        elif not _column_ok_or_null(table, i, col, max_value_bytes):
            cols[i] = _normalize_column(table, i, col, max_value_bytes)
    return cols, n


def _normalize_column(table: TableDef, i: int, col: Any, max_value_bytes: int) -> list:
    """Column ``i`` checked value by value: normalized, or the precise error."""
    name, typ = table.columns[i]
    is_pk = i in table.pk_pos
    check = CHECKERS[typ]
    out = []
    for v in col:
        if v is None:
            if is_pk:
                raise InvalidArgument(
                    f"primary-key column {name!r} of {table.db}.{table.name} may not be null"
                )
            out.append(None)
            continue
        ok, v2 = check(v, max_value_bytes)
        if not ok:
            raise InvalidArgument(type_message(table, name, typ, v, max_value_bytes))
        if is_pk and typ == "float64":
            if math.isnan(v2):
                raise InvalidArgument(f"primary-key column {name!r} may not be NaN")
            v2 = 0.0 if v2 == 0.0 else v2  # -0.0 is the key 0.0 (dn.values)
        out.append(v2)
    return out


def rows_as_columns(table: TableDef, upserts: Any, max_value_bytes: int) -> tuple[list, int]:
    """Row dicts -> (validated columns in column order, row count): the rows of
    :func:`normalize_rows`, by column. A batch of plain dicts naming exactly the table's
    columns is read column by column (no tuple per row)."""
    names = table.names
    if (
        type(upserts) is list
        and len(upserts) >= _FAST_MIN_ROWS
        and set(map(type, upserts)) == {dict}
        and set(map(len, upserts)) == {len(names)}
    ):
        try:
            cols = [list(map(itemgetter(c), upserts)) for c in names]
        except KeyError:
            cols = None
        if cols is not None and all(
            _column_ok(table, i, c, max_value_bytes) for i, c in enumerate(cols)
        ):
            return cols, len(upserts)
    rows = normalize_rows(table, upserts, max_value_bytes)
    return ([list(c) for c in zip(*rows)] if rows else []), len(rows)


def check_packed_columns(table: TableDef, cols: Any, max_value_bytes: int) -> None:
    """One chunk of columns that arrives already normalized (as a client packed it): an
    array of one array per column, all of the same non-zero length; checked exactly as
    :func:`check_row_tuples` checks rows."""
    n = len(table.names)
    if not isinstance(cols, list | tuple) or len(cols) != n or set(map(type, cols)) - {tuple, list}:
        raise InvalidArgument(
            f"a packed chunk of {table.db}.{table.name} must be an array of {n} columns"
        )
    lengths = set(map(len, cols))
    if len(lengths) != 1 or 0 in lengths:
        raise InvalidArgument(
            f"the columns of a packed chunk of {table.db}.{table.name} "
            "must have equal, non-zero lengths"
        )
    if not all(_column_ok_or_null(table, i, c, max_value_bytes) for i, c in enumerate(cols)):
        check_row_tuples(table, list(zip(*cols)), max_value_bytes)  # the precise error


def check_row_tuples(table: TableDef, rows: Any, max_value_bytes: int) -> list:
    """Rows that arrive already normalized (tuples in column order, as a client packed
    them): check them exactly as :func:`normalize_rows` would, without converting. A row
    that is valid but not in normal form (an int in a float64 column) is refused too."""
    if not isinstance(rows, list | tuple):
        raise InvalidArgument("packed rows must be an array of rows")
    n = len(table.names)
    if rows and (set(map(type, rows)) - {tuple, list} or set(map(len, rows)) != {n}):
        raise InvalidArgument(
            f"each packed row of {table.db}.{table.name} must be an array of {n} values"
        )
    if _columns_ok(table, rows, max_value_bytes):
        return rows
    for row in rows:  # the slow path: the precise error, or acceptance with nulls
        as_dict = {c: v for c, v in zip(table.names, row) if v is not None}
        (normal,) = normalize_rows(table, [as_dict], max_value_bytes)
        if normal != tuple(row) or any(type(a) is not type(b) for a, b in zip(normal, row)):
            raise InvalidArgument(
                f"a packed row of {table.db}.{table.name} is not in normal form: {row!r}"
            )
    return rows


def check_batch(table: TableDef, rows: Any, dels: list, max_batch_rows: int) -> list:
    """The primary keys of a normalized batch (rows' keys, then the deletes), after the
    checks every write gets: not empty, not over ``max_batch_rows``, each key once."""
    pos = table.pk_pos
    keys = list(map(itemgetter(pos[0]), rows)) if len(pos) == 1 else [table.pk_of(r) for r in rows]
    return check_keys(table, keys, dels, max_batch_rows)


def check_keys(table: TableDef, keys: list, dels: list, max_batch_rows: int) -> list:
    """:func:`check_batch` given the upserts' keys: ``keys`` (extended here by ``dels``)."""
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
            f"primary key {dup!r} appears twice in one batch of {table.db}.{table.name}; a "
            "batch may name each key once"
        )
    return keys


def normalize_deletes(table: TableDef, deletes: Any) -> list:
    """A batch's deletes -> their primary keys, each checked by :meth:`TableDef.check_key`."""
    if type(deletes) in (list, tuple) and not deletes:
        return []
    if isinstance(deletes, dict | str | bytes) or not _is_sequence(deletes):
        raise InvalidArgument("deletes must be a list of primary-key values")
    return [table.check_key(k) for k in deletes]


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
        hasattr(col, "tolist") or isinstance(col, Sequence)
    ):
        raise InvalidArgument(
            f"column {name!r} must be a list, tuple or array of values, got {type(col).__name__}"
        )
    out = col.tolist() if hasattr(col, "tolist") else list(col)
    if not isinstance(out, list):
        raise InvalidArgument(f"column {name!r} must be one-dimensional")
    return out
