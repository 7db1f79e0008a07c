"""Apache Arrow's types for DN's, and a write batch from an Arrow table, record batch or pandas
DataFrame (reads into Arrow: :mod:`dn.read.arrow`).

Types, both ways:

=========  =====================  =============================================
DN type    Arrow type written     Arrow types taken in a write
=========  =====================  =============================================
int64      ``int64``              any signed int, and ``uint8``..``uint32``
float64    ``float64``            ``float16``, ``float32``, ``float64``
string     ``string``             ``string``, ``large_string``, ``string_view``
bytes      ``binary``             ``binary``, ``large_binary``, ``fixed_size_binary``
bool       ``bool``               ``bool``
=========  =====================  =============================================

Arrow nulls are nulls; the primary-key columns of a schema are not nullable. A write takes its
columns by name (a column left out is null in every row, as for a dict of columns), checks each
column's Arrow type against the table's type (``InvalidArgument`` naming the column otherwise),
and hands the engine's usual checks a list per column (``to_pylist``, one C loop per column:
no dict or tuple per row). A pandas DataFrame goes through ``pyarrow.Table.from_pandas``.

Pure functions; any thread. Imported by :mod:`dn.batch`, so it imports nothing of the engine
but its errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dn.errors import InvalidArgument

if TYPE_CHECKING:
    from dn.schema import TableDef

#: The Arrow type each DN type is read as.
ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
    "bool": pa.bool_(),
}


def _accepts(dn_type: str, t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    if dn_type == "int64":
        return pa.types.is_signed_integer(t) or t in (pa.uint8(), pa.uint16(), pa.uint32())
    if dn_type == "float64":
        return pa.types.is_floating(t)
    if dn_type == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or _is("string_view", t)
    if dn_type == "bytes":
        return (
            pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
        )
    return pa.types.is_boolean(t)


def _is(name: str, t: pa.DataType) -> bool:
    check = getattr(pa.types, f"is_{name}", None)
    return bool(check and check(t))


def is_columnar(data: Any) -> bool:
    """True for an Arrow table or record batch, or a pandas DataFrame."""
    if isinstance(data, pa.Table | pa.RecordBatch):
        return True
    return type(data).__name__ == "DataFrame" and hasattr(data, "columns")


def from_arrow(table: TableDef, data: Any) -> dict[str, list]:
    """An Arrow table, record batch or pandas DataFrame as a dict of columns (lists) for
    :func:`dn.batch.normalize_columns`; InvalidArgument for an unknown column, a column of a
    type the table's column does not take, or a null in a primary-key column."""
    if not isinstance(data, pa.Table | pa.RecordBatch):
        try:
            data = pa.Table.from_pandas(data, preserve_index=False)
        except Exception as exc:  # pandas and pyarrow raise several unrelated types
            raise InvalidArgument(f"the DataFrame does not convert to Arrow: {exc}") from None
    types = dict(table.columns)
    out: dict[str, list] = {}
    for name, column in zip(data.schema.names, data.columns, strict=True):
        if name not in types:
            raise InvalidArgument(
                f"unknown column {name!r} for table {table.db}.{table.name}; "
                f"columns are {list(table.names)}"
            )
        if not _accepts(types[name], column.type):
            raise InvalidArgument(
                f"column {name!r} of {table.db}.{table.name} is {types[name]}, not Arrow "
                f"{column.type}"
            )
        if name in table.primary_key and column.null_count:
            raise InvalidArgument(f"primary-key column {name!r} holds {column.null_count} null(s)")
        out[name] = column.to_pylist()
    return out
