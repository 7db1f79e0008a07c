"""Read views and their materialization: what a shard hands a reader, and what a read returns.

A :class:`ReadView` is made by the shard under its lock (:mod:`dn.read.snapshots`): the table as
of the snapshot S, S, the plan of seed 001 and the tail runs copied out of memory; for a change
feed also ``from_ts`` (then the plan is a range plan, which names no checkpoint). It is all a
reader in any process needs; it pickles (Ray passes it to clients and read tasks). Immutable.

Materializing a view is done here and only here, for the engine, the cluster's client and its
read tasks alike:

- :func:`view_runs` — the view's plan and tail as runs, fetched through a
  :class:`dn.read.reader.Reader` (the only place a view becomes runs);
- :func:`materialize` — what a read returns: for a snapshot view, row dicts with start <= pk <
  end in primary-key order; for a feed view, :class:`dn.read.change.Change` records in (ts, pk)
  order;
- :func:`materialize_many` — the rows of some keys (a point read), or None for each missing;
- :func:`scan_columns`, :func:`scan_rows` — a snapshot view's rows by column (with numpy int
  keys) or as tuples, for merges across shards and for read-task pages.

Keys (``key``, ``start``, ``end``) come normalized (:meth:`dn.schema.TableDef.check_key`);
``columns`` are validated here, before any work. :func:`materialize` and :func:`scan_columns`
take ``runs=`` when the caller has already fetched the view's runs (the client fetches shards in
parallel). Not here: resolving snapshots or making plans (the shard), merging across shards
(the client). Any thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dn.errors import Internal, InvalidArgument, NotFound
from dn.objects.rangeobj import TableStats
from dn.read import feed, pick
from dn.read.change import Change
from dn.read.plan import Plan
from dn.read.reader import Reader
from dn.read.rows import column_maker, projection, row_dict
from dn.read.run import Run, Runs
from dn.schema import TableDef


@dataclass(frozen=True, slots=True)
class ReadView:
    """Everything a reader needs for one read: the table as of the snapshot, the snapshot,
    the plan, and the tail runs copied out of memory; ``from_ts`` for a change feed.
    ``range_stats``: the table's statistics in each of ``plan.ranges`` (None for a range that
    holds none of its versions), or None when unknown; a streaming scan fetches each range
    object only when its merge reaches the object's smallest key (:mod:`dn.read.stream`)."""

    table: TableDef
    snapshot: int
    plan: Plan
    tail: tuple[Run, ...]
    from_ts: int | None = None
    range_stats: tuple[TableStats | None, ...] | None = None
    #: The tail as Arrow instead of ``tail`` (which is then empty), for the Arrow read paths
    #: (:func:`dn.read.arrowscan.arrow_tail`): (versions, deletes, sorted by pk) per run. On
    #: its way to a Ray Data read task, the reference to that tuple in Ray's object store
    #: (``coordinator.client.fanout.fetch_views`` ``by_ref``), fetched by the task.
    arrow_tail: Any = None
    #: The slot map version the reader routes by (:mod:`dn.moves`; None: the moves done).
    map_version: int | None = None


def view_runs(reader: Reader, view: ReadView, key: Any = None) -> Runs:
    """The view's runs, oldest first, each with its newest ts. ``key``: a point read's key
    (ranges a checkpoint lists outside it are skipped)."""
    return reader.runs(view.table, view.plan, view.tail, key)


def materialize(
    reader: Reader,
    view: ReadView,
    *,
    columns: Sequence[str] | None = None,
    start: Any = None,
    end: Any = None,
    runs: Runs | None = None,
) -> Iterator[dict] | Iterator[Change]:
    """What a read of ``view`` returns, rows projected on ``columns``: for a snapshot view,
    the rows with start <= pk < end visible at its snapshot, as dicts in primary-key order;
    for a feed view (``from_ts`` set), every change with from_ts <= ts <= snapshot, in (ts,
    pk) order. The versions are picked now; the dicts are made as the iterator is read."""
    if view.from_ts is None:
        make = column_maker(view.table, columns)  # checks the columns before any fetch
        return make(scan_columns(reader, view, start, end, runs=runs)[0])
    if start is not None or end is not None:
        raise Internal("a change feed has no key bounds")
    projection(view.table, columns)  # checks the columns before any fetch
    if runs is None:
        runs = view_runs(reader, view)
    return feed.changes(view.table, view.from_ts, view.snapshot, runs, columns)


def materialize_many(
    reader: Reader, view: ReadView, keys: Sequence[Any], columns: Sequence[str] | None = None
) -> list[dict | None]:
    """The rows of ``keys`` visible at the view's snapshot (None for a key without one), in
    the order given, as dicts projected on ``columns``."""
    _snapshot_only(view)
    proj = projection(view.table, columns)
    runs = view_runs(reader, view, keys[0] if len(keys) == 1 else None)
    out = []
    for key in keys:
        row = pick.lookup(runs, key, view.snapshot)
        out.append(None if row is None else row_dict(proj, row))
    return out


def scan_columns(
    reader: Reader, view: ReadView, start: Any = None, end: Any = None, *, runs: Runs | None = None
) -> tuple[list[list], np.ndarray | None]:
    """The table's columns of the rows with start <= pk < end visible at the view's snapshot,
    in primary-key order (``[]`` for no rows), and their keys as a numpy int64 array when
    they are ints (else None): no tuple per row."""
    _snapshot_only(view)
    if runs is None:
        runs = view_runs(reader, view)
    return pick.sorted_columns(view.snapshot, runs, start, end)


def scan_rows(reader: Reader, view: ReadView, start: Any = None, end: Any = None) -> list[tuple]:
    """:func:`scan_columns` as one list of row tuples in column order (to ship rows on)."""
    _snapshot_only(view)
    return pick.sorted_rows(view.snapshot, view_runs(reader, view), start, end)


def before_view(read_view: Any, view: ReadView) -> ReadView | None:
    """For a feed ``view``: the snapshot view of its table at ``from_ts - 1`` (the state its
    change types are decided from, :mod:`dn.read.cdc`), made by ``read_view(db, table,
    snapshot)``; None when there is no state before (``from_ts`` <= 1, the table did not exist
    then or was another table of its name, or that time is past the retention window: every
    key then counts as new)."""
    assert view.from_ts is not None
    if view.from_ts <= 1:
        return None
    t = view.table
    # once slots moved, by the slot map the feed was read by (dn.moves)
    routing = {} if view.map_version is None else {"map_version": view.map_version}
    try:
        before = read_view(t.db, t.name, view.from_ts - 1, **routing)
    except (NotFound, InvalidArgument):
        return None
    return before if before.table.id == t.id else None


def _snapshot_only(view: ReadView) -> None:
    if view.from_ts is not None:
        raise Internal("a change feed's view (a range plan) cannot serve a snapshot read")
