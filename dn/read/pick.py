"""Picking: which versions of a read's runs are visible at a snapshot, in primary-key order.

Given a read's runs (:data:`dn.read.run.Runs`: oldest first, a key's versions in ascending ts
within each run, runs over disjoint timestamp intervals), the row visible at snapshot S for a
key is its newest version with ts <= S, unless that version is a delete. :func:`picks` finds
those versions for a key range as *positions* into the runs' upserts, concatenated in order,
sorted by key; :func:`pick_rows` and :func:`pick_columns` then take the rows at those positions,
as tuples or by column. :func:`lookup` does the same for one key.

Everything is done with whole-list operations: for the common primary key, one int64 column,
numpy sorts over the keys (:func:`int_picks`: no dict entry or Python comparison per version);
otherwise one ``dict.update`` per run and one sort. When every run keeps its rows by column (a
buffer's tail), the columns are merged and only the rows picked become tuples.

Not here: fetching runs (:mod:`dn.read.reader`), making dicts (:mod:`dn.read.rows`), change
feeds (:mod:`dn.read.feed`). Pure functions over runs that are never mutated: any thread.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import chain
from typing import Any

import numpy as np

from dn.read.collector import paused_gc
from dn.read.run import Runs

#: A delete's position: it hides the key.
TOMB = -1

#: Below this many versions the dict path of :func:`picks` is as fast as numpy's (also read by
#: :mod:`dn.read.feed`, through this module, so tests may lower it).
INT_PICKS_MIN = 2048


def sorted_rows(snapshot: int, runs: Runs, start: Any = None, end: Any = None) -> list[tuple]:
    """The rows with start <= pk < end visible at ``snapshot``, in primary-key order, as one
    list of row tuples, with the garbage collector paused."""
    with paused_gc():
        return pick_rows(runs, picks(snapshot, runs, start, end)[0])


def sorted_columns(
    snapshot: int, runs: Runs, start: Any = None, end: Any = None
) -> tuple[list[list], np.ndarray | None]:
    """:func:`sorted_rows` by column: the table's columns of those rows (``[]`` when there
    are none), and their keys as a numpy int64 array when the keys are ints (else None). No
    tuple is made per row, so nothing is left for the collector to walk."""
    with paused_gc():
        found, keys = picks(snapshot, runs, start, end)
        return pick_columns(runs, found), keys


def picks(
    snapshot: int, runs: Runs, start: Any = None, end: Any = None
) -> tuple[list[int], np.ndarray | None]:
    """Positions into the runs' upserts (concatenated in order) of the rows with start <= pk
    < end visible at ``snapshot``, in primary-key order, and for int keys those keys (numpy;
    else None). For int keys by :func:`int_picks`; else the newest version of each key is
    found by updating a dict key -> position (runs oldest first, so later versions overwrite)
    and the keys are sorted once."""
    found = int_picks(snapshot, runs, start, end)
    if found is not None:
        return found
    best: dict[Any, int] = {}  # key -> position into the runs' upserts, concatenated
    base = 0
    tombs = False
    for run, hi in runs:
        n = len(run.ts)
        if n:
            if hi <= snapshot:
                best.update(zip(run.pks, range(base, base + n)))
            else:
                ts = run.ts
                best.update((pk, base + i) for i, pk in enumerate(run.pks) if ts[i] <= snapshot)
        for pk, t in zip(run.del_pks, run.del_ts):
            if t > snapshot:
                continue
            cur = best.get(pk)
            if cur is not None and cur >= base and run.ts[cur - base] > t:
                continue  # re-inserted after the delete within this run
            best[pk] = TOMB
            tombs = True
        base += n
    if tombs:
        best = {k: v for k, v in best.items() if v >= 0}
    keys = sorted(best)
    lo = 0 if start is None else bisect_left(keys, start)
    hi_i = len(keys) if end is None else bisect_left(keys, end)
    if lo or hi_i < len(keys):
        keys = keys[lo:hi_i]
    return list(map(best.__getitem__, keys)), None


def int_picks(
    snapshot: int, runs: Runs, start: Any, end: Any
) -> tuple[list[int], np.ndarray] | None:
    """:func:`picks` for runs whose primary keys are all ints (one int64 column): the
    positions of the newest version at or before ``snapshot`` of each key with start <= key <
    end that is not deleted, in key order, and those keys (a numpy int64 array). None when
    the keys are not all ints, or there are too few to be worth it: then the dict path runs.

    A key's versions, in the order the runs are concatenated (oldest run first, each run in
    ascending ts per key), are in ascending ts; so a stable sort by key puts each key's
    newest version last. Deletes take part as versions of their own, placed by ts."""
    n_versions = sum(len(run.ts) + len(run.del_ts) for run, _ in runs)
    if (
        n_versions < INT_PICKS_MIN
        or (start is not None and type(start) is not int)
        or (end is not None and type(end) is not int)
    ):
        return None
    deletes = any(run.del_ts for run, _ in runs)
    need_ts = deletes or any(hi > snapshot for run, hi in runs if run.ts)
    keys, stamps, places = [], [], []
    base = 0
    for run, _ in runs:
        n = len(run.ts)
        if n:
            if set(map(type, run.pks)) != {int}:
                return None
            keys.append(run.pks)
            stamps.append(run.ts)
            places.append(np.arange(base, base + n, dtype=np.int64))
        if run.del_ts:
            if set(map(type, run.del_pks)) != {int}:
                return None
            keys.append(run.del_pks)
            stamps.append(run.del_ts)
            places.append(np.full(len(run.del_ts), TOMB, dtype=np.int64))
        base += n
    if not keys:
        return [], np.empty(0, dtype=np.int64)
    try:
        k = np.concatenate([np.asarray(x, dtype=np.int64) for x in keys])
    except OverflowError:
        return None
    pos = np.concatenate(places)
    if need_ts:
        ts = np.concatenate([np.asarray(x, dtype=np.int64) for x in stamps])
        visible = ts <= snapshot
        if not visible.all():
            k, pos, ts = k[visible], pos[visible], ts[visible]
        order = np.lexsort((ts, k)) if deletes else np.argsort(k, kind="stable")
    else:
        order = np.argsort(k, kind="stable")
    k, pos = k[order], pos[order]
    if len(k):
        newest = np.empty(len(k), dtype=bool)
        newest[-1] = True
        np.not_equal(k[1:], k[:-1], out=newest[:-1])
        k, pos = k[newest], pos[newest]
        live = pos >= 0
        if not live.all():
            k, pos = k[live], pos[live]
    lo = 0 if start is None else int(np.searchsorted(k, start, "left"))
    hi_i = len(k) if end is None else int(np.searchsorted(k, end, "left"))
    return pos[lo:hi_i].tolist(), k[lo:hi_i]


def pick_rows(runs: Runs, found: list[int]) -> list[tuple]:
    """The row tuples at ``found``, positions into the runs' upserts concatenated in order.
    When every run has its rows by column (a buffer's tail), the columns are concatenated
    instead, and only the rows picked become tuples."""
    if not found:
        return []
    if not all(run.cols is not None for run, _ in runs):
        rows = (
            runs[0][0].rows
            if len(runs) == 1
            else list(chain.from_iterable(run.rows for run, _ in runs))
        )
        return list(map(rows.__getitem__, found))
    return list(zip(*pick_columns(runs, found)))


def pick_columns(runs: Runs, found: list[int]) -> list[list]:
    """:func:`pick_rows` by column: one list per column (``[]`` when nothing is picked)."""
    if not found:
        return []
    if not all(run.cols is not None for run, _ in runs):
        return [list(c) for c in zip(*pick_rows(runs, found))]
    parts = [run.cols for run, _ in runs if run.ts]
    cols = (
        parts[0]
        if len(parts) == 1
        else [list(chain.from_iterable(p[i] for p in parts)) for i in range(len(parts[0]))]
    )
    return [list(map(col.__getitem__, found)) for col in cols]


def lookup(runs: Runs, pk: Any, snapshot: int) -> tuple | None:
    """The row tuple of ``pk`` visible at ``snapshot``, or None (no version, or deleted):
    the newest run with a version at or before ``snapshot`` decides."""
    for run, _ in reversed(runs):
        found = run.lookup(pk, snapshot)
        if found is not None:
            return found[1]
    return None
