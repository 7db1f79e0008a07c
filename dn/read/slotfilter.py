"""Range objects read filtered by slot and time: how a shard reads its own objects once slots
moved, and the objects it references (:mod:`dn.moves`, decision 0018).

A :class:`SlotFilter` names one reading of one range object for one table: the object's shard
(its key is ``20/<shard>/<from>_<to>``), the table's id in that object (another shard's id of
the same table, for a reference), and which row versions count: those whose key's slot is in
``slots`` (``keep``) or not in it (not ``keep``), with ``lo < ts <= hi``. A read plan names a
filtered object as ``(from, to, SlotFilter)`` beside the plain ``(from, to)`` of an own object
(:class:`dn.read.plan.Plan`, ``own`` and ``refs``); :class:`dn.read.reader.Reader` reads it as a
:class:`FilteredRange`, which gives the same runs and Arrow tables as a range object, with only
the versions the filter keeps, under the reading shard's table id.

Filtering hashes each key (:mod:`dn.slots`): with numpy for one int64 key column, else one
``crc32`` of its msgpack per key. Pure functions over immutable objects; any thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dn.objects.rangecols import TS, table_dict
from dn.objects.rangeobj import RangeObject, to_run
from dn.read.run import Run
from dn.slots import arrow_slots, key_slots, pack_set

#: No upper bound on ts.
NO_HI = (1 << 63) - 1
#: Filters' slot lookup tables by digest (a few per shard's moves; cleared past 256).
_LUTS: dict[str, np.ndarray] = {}


@dataclass(frozen=True, slots=True)
class SlotFilter:
    """One filtered reading of a range object (module docstring)."""

    count: int
    slots: frozenset[int]
    keep: bool
    lo: int
    hi: int
    shard: int
    table_id: int  # the reading shard's id of the table
    object_table_id: int  # the object's id of it
    pk_pos: tuple[int, ...]
    digest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        h = hashlib.blake2b(digest_size=12)
        h.update(repr((self.count, pack_set(self.slots), self.keep, self.lo, self.hi)).encode())
        h.update(repr((self.shard, self.table_id, self.object_table_id, self.pk_pos)).encode())
        object.__setattr__(self, "digest", h.hexdigest())

    def __hash__(self) -> int:
        return hash(self.digest)

    def table(self) -> np.ndarray:
        """Slot -> kept, as a lookup table (made once): a mask is one gather."""
        lut = _LUTS.get(self.digest)
        if lut is None:
            lut = np.zeros(self.count, dtype=bool)
            lut[np.fromiter(self.slots, dtype=np.intp, count=len(self.slots))] = True
            if len(_LUTS) > 256:
                _LUTS.clear()
            _LUTS[self.digest] = lut
        return lut

    def mask(self, slots: Any, ts: Any) -> np.ndarray:
        """Which versions count, from their keys' slots and their ts (numpy arrays)."""
        member = self.table()[np.asarray(slots, dtype=np.intp)]
        ok = member if self.keep else ~member
        if self.lo > 0 or self.hi < NO_HI:
            ts = np.asarray(ts, dtype=np.int64)
            ok &= (ts > self.lo) & (ts <= self.hi)
        return ok


class FilteredRange:
    """A range object as a filter reads it: its table's runs and Arrow tables, keeping only
    the versions the filter keeps, under the reading shard's table id.

    Its Arrow tables are filtered on first use and kept with the view (cached as one entry,
    ``Reader.range``): the next scan through the same filter copies nothing again. The view
    then lets go of the object (its stored bytes), keeping only its header: what it holds is
    its share of the rows, as the cache counts it."""

    __slots__ = ("inner", "f", "_run", "_kept", "_has")

    def __init__(self, inner: Any, f: SlotFilter) -> None:
        self.inner, self.f = inner, f
        self._run: Run | None = None
        self._kept: KeptArrow | None = None
        self._has = f.object_table_id in inner.table_ids

    def __getattr__(self, name: str) -> Any:  # from_ts, to_ts, nbytes, ...
        return getattr(self.inner, name)

    @property
    def table_ids(self) -> list[int]:
        return [self.f.table_id] if self._has else []

    def arrow(self, table_id: int) -> Any:
        if table_id != self.f.table_id or not self._has:
            return None
        kept = self._kept
        if kept is None:
            t = self.inner.arrow(self.f.object_table_id)
            if t is False:  # format 3 or older: read through run()
                return t
            if t is None:  # another thread kept the tables and let the object go meanwhile
                return self._kept
            once = FilteredArrow(t, self.f)
            kept = self._kept = KeptArrow(once.rows(), once.dels(), once.composite)
            self.inner = header(self.inner)
        return kept

    def run(self, table_id: int, pk_pos: tuple[int, ...]) -> Run | None:
        if table_id != self.f.table_id or not self._has:
            return None
        if self._run is None:
            run = None if self._kept is not None else self.inner.run(self.f.object_table_id, pk_pos)
            if run is not None:
                self._run = filter_run(run, self.f)
            else:  # the object let go (here or by another thread): from the kept tables
                kept = self._kept
                assert kept is not None, "a view without its object keeps its tables"
                self._run = to_run(table_dict(kept.rows(), kept.dels(), kept.composite), pk_pos)
        return self._run


def header(ro: RangeObject) -> RangeObject:
    """``ro`` without its tables: its range, commits, commands and tokens."""
    return RangeObject(ro.from_ts, ro.to_ts, ro.ncommits, ro.commands, {}, ro.nbytes, ro.tokens)


class KeptArrow:
    """A filtered view's Arrow tables, as a stored table gives them."""

    __slots__ = ("_rows", "_dels", "composite")

    def __init__(self, rows: pa.Table, dels: pa.Table | None, composite: bool) -> None:
        self._rows, self._dels, self.composite = rows, dels, composite

    def rows(self) -> pa.Table:
        return self._rows

    def dels(self) -> pa.Table | None:
        return self._dels

    def row_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        return iter([self._rows] if self._rows.num_rows else [])

    def del_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        return iter([self._dels] if self._dels is not None and self._dels.num_rows else [])


def filter_run(run: Run, f: SlotFilter) -> Run:
    """The versions of ``run`` that ``f`` keeps, in the same order."""
    int64 = len(f.pk_pos) == 1 and bool(run.pks) and type(run.pks[0]) is int
    keep = f.mask(np.asarray(key_slots(run.pks, f.count, int64), dtype=np.int64), run.ts)
    idx = np.flatnonzero(keep).tolist()
    dkeep = f.mask(np.asarray(key_slots(run.del_pks, f.count), dtype=np.int64), run.del_ts)
    didx = np.flatnonzero(dkeep).tolist()
    cols = run.cols if run.cols is not None else [list(c) for c in zip(*run.rows)]
    return Run(
        [run.pks[i] for i in idx],
        [run.ts[i] for i in idx],
        None,
        [run.del_pks[i] for i in didx],
        [run.del_ts[i] for i in didx],
        sorted_by_pk=run.sorted_by_pk,
        cols=[[c[i] for i in idx] for c in cols] if idx else [[] for _ in cols],
    )


def filter_table(t: pa.Table, f: SlotFilter, rows: bool, memo: dict | None = None) -> pa.Table:
    """The rows of a stored table (row versions: the key at ``f.pk_pos``; deletes: the key's
    columns first) that ``f`` keeps; ``memo``: the decoded table's, where its keys' slots are
    kept for the next filter of the same object."""
    if not t.num_rows:
        return t
    pos = f.pk_pos if rows else tuple(range(len(f.pk_pos)))
    key = ("slots", rows, f.count, pos)
    slots = None if memo is None else memo.get(key)
    if slots is None:
        slots = arrow_slots([t.column(p).combine_chunks() for p in pos], f.count)
        if memo is not None:
            memo[key] = slots
    keep = f.mask(slots, t.column(TS).to_numpy())
    if keep.all():
        return t
    return t.filter(pa.array(keep))


class FilteredArrow:
    """A stored table (:class:`dn.objects.rangecols.ArrowTable`, or one read in parts) as a
    filter reads it."""

    __slots__ = ("t", "f", "composite")

    def __init__(self, t: Any, f: SlotFilter) -> None:
        self.t, self.f = t, f
        self.composite = getattr(t, "composite", len(f.pk_pos) > 1)

    def rows(self) -> pa.Table:
        return self._filtered(True)

    def dels(self) -> pa.Table | None:
        return self._filtered(False)

    def _filtered(self, rows: bool) -> Any:
        # not kept decoded in the object when it is not already: a view keeps its share
        once = getattr(self.t, "read_once", None)
        if once is not None:
            t = once(rows)
        else:
            t = self.t.rows() if rows else self.t.dels()
        return None if t is None else filter_table(t, self.f, rows, getattr(self.t, "memo", None))

    def row_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        for p in self.t.row_parts(start, end):
            yield filter_table(p, self.f, True)

    def del_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        for p in self.t.del_parts(start, end):
            yield filter_table(p, self.f, False)
