r"""The k-way merge by key windows that streaming scans share (:mod:`dn.read.stream` over
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
``open(start, end)``, ``live()``, ``cut(step)`` and ``take(cut)``: :class:`Source`
is the one both scans use. It reads its versions and its deletes as two :class:`KeyedStream`\ s,
chunk by chunk (a range object of format 5 part by part: its parts are cut between keys, so a
window never reaches past a chunk's last key; an older object or a tail as one chunk), and
hands each window's takes to its scan's ``make`` (Arrow slices, or a run of Python values).
Pure functions; a generator is used by one thread at a time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dn.errors import Corruption, Internal
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
    if plan.own is not None:  # slots moved (dn.moves): own objects read filtered, then refs
        ranges = [((r[0], r[1], plan.own), st) for r, st in ranges]
    ranges.extend((r, _UNKNOWN) for r in plan.refs)
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
        live = [s for s in live if s.live()]  # passed: its object goes once nothing holds it
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
        yield takes
        del takes


def _cut(live: list[Any], step: int) -> Any:
    """The window's last key: the smallest of the live sources' ``step``-th next keys (a
    source whose chunk the last window used up reads its next one here: see
    :meth:`KeyedStream.take`)."""
    each = max(MIN_STEP, step // max(1, len(live)))
    cuts = [c for s in live if (c := s.cut(each)) is not None]
    return min(cuts) if cuts else None


class ListKeys:
    """A sorted list of Python keys as :class:`KeyedStream` searches keys (Arrow's: the
    Arrow scan's own)."""

    __slots__ = ("keys",)

    def __init__(self, keys: list) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def at(self, i: int) -> Any:
        return self.keys[i]

    def bisect(self, x: Any, lo: int, hi: int, right: bool) -> int:
        return (bisect_right if right else bisect_left)(self.keys, x, lo, hi)


#: A stream's chunks and how to get a chunk's sorted keys (``len``, ``at``, ``bisect``; None
#: for an empty chunk).
Chunks = tuple[Iterable[Any], Callable[[Any], Any]]


class KeyedStream:
    """One sorted stream of a source (its versions, ``kind`` 0, or its deletes, 1), read chunk
    by chunk; ``[pos, stop)``: what is still to come of the current chunk."""

    __slots__ = ("kind", "_more", "_keys_of", "_end", "chunk", "keys", "pos", "stop", "last")

    def __init__(self, kind: int, chunks: Chunks, end: Any) -> None:
        self.kind, self._end = kind, end
        self._more, self._keys_of = iter(chunks[0]), chunks[1]
        self.chunk: Any = None
        self.keys: Any = None
        self.last: Any = None  # the previous chunk's last key
        self.pos = self.stop = 0

    def seek(self, start: Any) -> bool:
        """Move to the first key >= ``start``; False when there is none below end."""
        while self._next():
            n = len(self.keys)
            if start is not None and self.keys.at(n - 1) < start:
                continue
            self.pos = 0 if start is None else self.keys.bisect(start, 0, n, False)
            return self.pos < self.stop
        return False

    def _next(self) -> bool:
        """Read the next non-empty chunk below end (chunks are cut between keys: its keys all
        follow the last chunk's)."""
        self.chunk = None
        for chunk in self._more:
            keys = self._keys_of(chunk) if chunk is not None else None
            if keys is None or not len(keys):
                continue
            n, first = len(keys), keys.at(0)
            if self.last is not None and not first > self.last:
                raise Corruption("a stored table's parts are not in key order, or split a key")
            self.last = keys.at(n - 1)
            if self._end is not None and not first < self._end:
                break
            self.chunk, self.keys, self.pos = chunk, keys, 0
            self.stop = n if self._end is None else keys.bisect(self._end, 0, n, False)
            return True
        self._more = iter(())
        return False

    def take(self, cut: Any) -> tuple[Any, int, int] | None:
        """(its chunk, from, to): its rows with key <= ``cut`` (all in this chunk: ``cut`` is
        at most its last key), or None. A chunk used up is let go (the take may still hold
        it); the next one is read only when the merge next asks (:meth:`ready`), so a
        streaming scan does not decode part i+1 while its consumer still works on part i."""
        a = self.keys.bisect(cut, self.pos, self.stop, True)
        out = (self.chunk, self.pos, a) if a > self.pos else None
        self.pos = a
        if a == self.stop:
            if a < len(self.keys):  # reached ``end``: nothing more to read
                self._more = iter(())
            self.chunk = self.keys = None
        return out

    def ready(self) -> bool:
        """Whether rows are still to come: its current chunk, or the next one, read now."""
        return self.chunk is not None or self._next()


@dataclass(slots=True, eq=False)
class Source:
    """One sorted source of a view: loaded, or waiting for the merge to reach ``lo``.
    ``load(start, end)`` gives its versions' and its deletes' :data:`Chunks`; ``make`` turns a
    window's two takes (each ``(chunk, from, to)`` or None) into what the scan merges."""

    order: int  # place among the view's sources, oldest first (later versions win)
    hi_ts: int  # the newest ts it may hold
    make: Callable[[list], Any]
    lo: Any = None  # its smallest key for the table (None: unknown, loaded at the start)
    load: Callable[[Any, Any], Sequence[Chunks]] | None = None
    streams: list[KeyedStream] | None = None

    def open(self, start: Any, end: Any) -> None:
        chunks = self.load(start, end) if self.load is not None else ()
        self.load = None
        self.streams = []
        for kind, c in enumerate(chunks):
            stream = KeyedStream(kind, c, end)
            if stream.seek(start):
                self.streams.append(stream)

    def live(self) -> bool:
        return bool(self.streams)

    def cut(self, step: int) -> Any:
        """The key ``step`` rows ahead in its versions or deletes, whichever is smaller
        (within their current chunks); None when both are done."""
        self.streams = [st for st in self.streams or () if st.ready()]
        best = None
        for st in self.streams:
            k = st.keys.at(min(st.pos + step, st.stop) - 1)
            if best is None or k < best:
                best = k
        return best

    def take(self, cut: Any) -> Any:
        """Its rows with key <= ``cut`` still to come, made by ``make``; advances past them."""
        got: list = [None, None]
        for st in self.streams or ():
            got[st.kind] = st.take(cut)
        return self.make(got)
