"""Rows as dicts: projections and the functions that turn row tuples or columns into dicts.

A read returns rows as dicts of column name to value, in the table's column order or projected
on the ``columns`` the caller asked for. :func:`projection` validates the names once per read;
:func:`row_maker` and :func:`column_maker` then build every dict with one function made for
that read from source text (as ``collections.namedtuple`` makes its classes): a dict display
with constant keys builds a dict about twice as fast as ``dict(zip(names, row))``, and for rows
given by column ``map`` builds the dicts from the columns with no tuple per row.

Invariant: the source text holds only validated column names, quoted with ``repr``, and
subscripts; nothing a caller gives reaches ``eval`` otherwise. Not here: choosing rows
(:mod:`dn.read.pick`). Pure functions: any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from dn.errors import InvalidArgument
from dn.schema import TableDef

#: A projection: the table's column names, and the (name, position) pairs asked for (None:
#: every column, in order).
Projection = tuple[tuple[str, ...], list[tuple[str, int]] | None]


def projection(table: TableDef, columns: Sequence[str] | None) -> Projection:
    """``columns`` checked against ``table``: raises InvalidArgument for anything but a list
    or tuple of the table's column names."""
    if columns is None:
        return table.names, None
    if isinstance(columns, str) or not isinstance(columns, list | tuple):
        raise InvalidArgument("columns must be a list of column names")
    pick = []
    for c in columns:
        if c not in table.names:
            raise InvalidArgument(
                f"unknown column {c!r} for table {table.db}.{table.name}; "
                f"columns are {list(table.names)}"
            )
        pick.append((c, table.names.index(c)))
    return table.names, pick


def row_dict(proj: Projection, row: tuple) -> dict:
    """One row tuple (column order) as its dict under ``proj``: for a single row, where
    making a function per read would cost more than it saves."""
    names, pick = proj
    if pick is None:
        return dict(zip(names, row))
    return {n: row[i] for n, i in pick}


def row_maker(table: TableDef, columns: Sequence[str] | None) -> Callable[[tuple], dict]:
    """A function from a row tuple (column order) to its dict, projected on ``columns``."""
    names, pick = projection(table, columns)
    if pick is None:
        pick = [(n, i) for i, n in enumerate(names)]
    body = ", ".join(f"{n!r}: r[{i}]" for n, i in pick)
    return eval(f"lambda r: {{{body}}}", {})  # noqa: S307 - validated names, see above


def column_maker(
    table: TableDef, columns: Sequence[str] | None
) -> Callable[[list[list]], Iterator[dict]]:
    """:func:`row_maker` for rows given by column: a function from the table's columns (one
    list each, in column order; ``[]`` for no rows) to an iterator of the rows' dicts,
    projected on ``columns``, made with no tuple per row (``map`` over the columns of a dict
    display made once per read from source text)."""
    names, pick = projection(table, columns)
    if pick is None:
        pick = [(n, i) for i, n in enumerate(names)]
    if not pick:
        return lambda cols: ({} for _ in cols[0]) if cols else iter(())
    args = ", ".join(f"c{j}" for j in range(len(pick)))
    body = ", ".join(f"{n!r}: c{j}" for j, (n, _) in enumerate(pick))
    make = eval(f"lambda {args}: {{{body}}}", {})  # noqa: S307 - validated names, as above
    at = [i for _, i in pick]
    return lambda cols: map(make, *(cols[i] for i in at)) if cols else iter(())
