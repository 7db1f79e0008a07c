"""Change feeds: every version of a read's runs in a timestamp window, in (ts, pk) order.

A range read from_ts <= ts <= S returns every upsert and delete committed in the window as a
:class:`dn.read.change.Change`, ordered by (ts, pk). :func:`changes` does it for one shard's
runs: the versions are chosen and ordered with whole-list operations (numpy for int keys), the
upserts' dicts are made from the picked columns (:func:`dn.read.rows.column_maker`), and the
records with ``map``: no Python step per change but for a feed with deletes.
:func:`merge_changes` merges several shards' feeds with one C-level sort.

Invariant: within a shard no two versions share (ts, pk) (a batch names each key once), so the
order is total; across shards keys are disjoint. Not here: which runs a window needs (the range
plan, :mod:`dn.read.plan`) or fetching them (:mod:`dn.read.reader`). Pure functions: any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np

from dn.read import pick
from dn.read.change import Change, new_change
from dn.read.collector import paused_gc
from dn.read.rows import column_maker
from dn.read.run import Runs
from dn.schema import TableDef


def changes(
    table: TableDef, from_ts: int, snapshot: int, runs: Runs, columns: Sequence[str] | None = None
) -> Iterator[Change]:
    """Every version with from_ts <= ts <= snapshot as a :class:`Change`, in (ts, pk)
    order, rows projected on ``columns`` (validated now)."""
    make = column_maker(table, columns)
    with paused_gc():
        ts_l, pk_l, pos_l = feed_order(from_ts, snapshot, runs)
        found = [p for p in pos_l if p >= 0] if any(run.del_ts for run, _ in runs) else pos_l
        dicts = list(make(pick.pick_columns(runs, found)))
    if len(found) == len(pos_l):
        return map(new_change, zip(ts_l, repeat("upsert"), pk_l, dicts, repeat(None)))
    rows = iter(dicts)
    kinds = ["upsert" if p >= 0 else "delete" for p in pos_l]
    out = [next(rows) if p >= 0 else None for p in pos_l]
    return map(new_change, zip(ts_l, kinds, pk_l, out, repeat(None)))


def feed_order(from_ts: int, snapshot: int, runs: Runs) -> tuple[list[int], list, list[int]]:
    """The versions with from_ts <= ts <= snapshot in (ts, pk) order: their timestamps, keys
    and positions (into the runs' upserts, concatenated in order; -1 for a delete). With at
    least :data:`dn.read.pick.INT_PICKS_MIN` versions and int keys, ordered by numpy."""
    keys: list = []
    stamps: list[int] = []
    places: list[int] = []
    base = 0
    for run, _ in runs:
        n = len(run.ts)
        keys.extend(run.pks)
        stamps.extend(run.ts)
        places.extend(range(base, base + n))
        keys.extend(run.del_pks)
        stamps.extend(run.del_ts)
        places.extend(repeat(pick.TOMB, len(run.del_ts)))
        base += n
    if len(keys) >= pick.INT_PICKS_MIN and set(map(type, keys)) == {int}:
        try:
            k = np.asarray(keys, dtype=np.int64)
        except OverflowError:
            k = None
        if k is not None:
            t = np.asarray(stamps, dtype=np.int64)
            pos = np.asarray(places, dtype=np.int64)
            inside = (t >= from_ts) & (t <= snapshot)
            if not inside.all():
                k, t, pos = k[inside], t[inside], pos[inside]
            order = np.lexsort((k, t))
            return t[order].tolist(), k[order].tolist(), pos[order].tolist()
    chosen = [i for i, t in enumerate(stamps) if from_ts <= t <= snapshot]
    chosen.sort(key=list(zip(stamps, keys)).__getitem__)
    return ([stamps[i] for i in chosen], [keys[i] for i in chosen], [places[i] for i in chosen])


_TS_PK = itemgetter(0, 2)  # a Change's (ts, pk)


def merge_changes(feeds: Sequence[Iterable[Any]], key: Any = _TS_PK) -> Iterator[Any]:
    """Feeds of disjoint keys (one per shard), each in (ts, pk) order, as one feed in (ts, pk)
    order. A C-level sort of their concatenation merges them (a heap step per change in
    Python cost several times more); it holds every change, as each shard's feed does.
    ``key``: the (ts, pk) of an item, for feeds of other items than Changes."""
    if len(feeds) == 1:
        return iter(feeds[0])
    with paused_gc():
        return iter(sorted(chain.from_iterable(feeds), key=key))
