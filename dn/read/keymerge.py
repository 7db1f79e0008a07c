"""The k-way merge by key windows that streaming scans share (:mod:`dn.read.stream` over
Python values, :mod:`dn.read.arrowstream` over Arrow tables).

A scan's sources are each sorted by (pk, ts): the table in each range object the plan names,
oldest first, then the in-memory tail. :func:`planned_ranges` lists the ranges with the smallest
key their statistics give (the checkpoint's, or the view's ``range_stats``), so that a range is
fetched only when the merge reaches that key. :func:`merge` walks the sources: each step cuts at
the smallest of the live sources' ``step``-th next keys, takes every version at or below the
cut from every source, and hands the takes on; a source the merge has passed is dropped, so its
object goes as soon as nothing else holds it.

A source is any object with ``order`` (its place, oldest first: later versions win), ``hi_ts``
(the newest ts it may hold), ``lo`` (its smallest key; None: opened at the start), and
``open(start, end)``, ``live()``, ``cut(step)``, ``take(cut)`` and ``drop()``. Pure functions;
a generator is used by one thread at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dn.errors import Internal
from dn.read.reader import Reader
from dn.read.view import ReadView

#: The fewest versions a source gives a window (however many sources are live).
MIN_STEP = 1024

#: A range's statistics when the view does not carry them (the range is fetched at the start).
_UNKNOWN = object()


def planned_ranges(
    reader: Reader, view: ReadView, start: Any, end: Any
) -> tuple[list[tuple[int, tuple[int, int], Any]], int]:
    """The view's ranges oldest first, as :meth:`Reader.runs` lists them: ``(place, range,
    smallest key)`` (None when unknown: fetched at the start), leaving out a range whose
    statistics show no key of the table in [start, end); and how many ranges the view has
    (the tail's runs come after them)."""
    if view.from_ts is not None:
        raise Internal("a change feed's view (a range plan) cannot serve a snapshot scan")
    t, plan = view.table, view.plan
    ranges: list[tuple[tuple[int, int], Any]] = []  # (range, its statistics or _UNKNOWN)
    if plan.checkpoint is not None:
        ranges.extend(reader.checkpoint(plan.checkpoint).tables.get(t.id, ()))
    stats = view.range_stats
    ranges.extend(zip(plan.ranges, stats if stats is not None else [_UNKNOWN] * len(plan.ranges)))
    out = []
    for i, (r, st) in enumerate(ranges):
        if st is _UNKNOWN:
            out.append((i, r, None))
        elif st is not None and st.pk_min is not None:
            if (start is not None and st.pk_max < start) or (end is not None and st.pk_min >= end):
                continue
            out.append((i, r, st.pk_min))
    return out, len(ranges)


def merge(
    waiting: list[Any], live: list[Any], start: Any, end: Any, step: int
) -> Iterator[list[tuple[Any, int]]]:
    """Each window's takes, ``[(take, hi_ts)]`` per live source in source order, over the
    sources ``live`` (open from the start) and ``waiting`` (opened when the merge reaches their
    ``lo``); each window takes at most about ``step`` versions (``step`` // live sources from
    each, at least :data:`MIN_STEP`)."""
    for src in live:
        src.open(start, end)
    live = [s for s in live if s.live()]
    waiting = sorted(waiting, key=lambda s: s.lo)
    nxt = 0
    while True:
        cut = _cut(live, step)
        while nxt < len(waiting) and (cut is None or waiting[nxt].lo <= cut):
            src = waiting[nxt]
            nxt += 1
            src.open(start, end)
            if src.live():
                live.append(src)
                live.sort(key=lambda s: s.order)
                cut = _cut(live, step)
        if cut is None:
            return
        takes = [(src.take(cut), src.hi_ts) for src in live]
        for src in live:
            if not src.live():
                src.drop()  # passed: the object goes as soon as nothing else holds it
        live = [s for s in live if s.live()]
        yield takes


def _cut(live: list[Any], step: int) -> Any:
    """The window's last key: the smallest of the live sources' ``step``-th next keys."""
    each = max(MIN_STEP, step // max(1, len(live)))
    cuts = [c for s in live if (c := s.cut(each)) is not None]
    return min(cuts) if cuts else None
