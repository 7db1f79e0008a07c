"""Reads into Apache Arrow: a table's columns as a ``pyarrow.Table`` or record batches.

The types are :data:`dn.columnar.ARROW_TYPES`; the primary-key columns of a schema are not
nullable. Pure functions over the columns a read picked (:func:`dn.read.view.scan_columns`,
or window by window: :mod:`dn.read.stream`); any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa

from dn.columnar import ARROW_TYPES
from dn.read.rows import projection
from dn.schema import TableDef


def arrow_schema(table: TableDef, columns: Sequence[str] | None = None) -> pa.Schema:
    """The Arrow schema of ``table``'s rows, projected on ``columns`` (checked)."""
    names, pick = projection(table, columns)
    types = dict(table.columns)
    keys = set(table.primary_key)
    chosen = names if pick is None else [n for n, _ in pick]
    return pa.schema([pa.field(n, ARROW_TYPES[types[n]], nullable=n not in keys) for n in chosen])


def to_arrow(table: TableDef, cols: list[list], columns: Sequence[str] | None = None) -> pa.Table:
    """The table's columns (one list each, in column order; ``[]`` for no rows) as a
    ``pyarrow.Table`` projected on ``columns``."""
    schema = arrow_schema(table, columns)
    index = {n: i for i, n in enumerate(table.names)}
    if not cols:
        return schema.empty_table()
    arrays = [pa.array(cols[index[f.name]], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def to_batches(
    table: TableDef, chunks: Iterable[list[list]], columns: Sequence[str] | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """``chunks`` (each the table's columns of some rows, as :func:`to_arrow` takes them; the
    rows in order across chunks) as record batches of exactly ``batch_rows`` rows, the last
    one shorter, none empty: :func:`to_arrow`'s arrays, so the batches equal the slices of
    one :func:`to_arrow` of all the rows. Holds at most one chunk and one batch of rows."""
    schema = arrow_schema(table, columns)
    pending: list[pa.RecordBatch] = []
    n = 0
    for cols in chunks:
        if not cols:
            continue
        part = to_arrow(table, cols, columns)
        pending.extend(part.to_batches())
        n += part.num_rows
        while n >= batch_rows:
            rows = pa.Table.from_batches(pending, schema)
            yield _one_batch(rows.slice(0, batch_rows))
            pending = rows.slice(batch_rows).to_batches()
            n -= batch_rows
    if n:
        yield _one_batch(pa.Table.from_batches(pending, schema))


def _one_batch(rows: pa.Table) -> pa.RecordBatch:
    return rows.combine_chunks().to_batches()[0]
