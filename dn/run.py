"""A run: the row versions of one table from one source (a range object or a buffer's tail).

A run holds upsert versions (``pks``, ``ts``, ``rows``) and delete versions (``del_pks``,
``del_ts``). Invariant: for any one primary key, its versions appear in ascending timestamp
order (range objects sort by (pk, ts); buffers append in commit order). Runs from different
sources cover disjoint timestamp intervals, so a reader that visits runs oldest first can let a
later version simply overwrite an earlier one.

``sorted_by_pk`` is True for runs from range objects: then ``pks`` is ascending and point
lookups bisect.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import chain, groupby, repeat
from operator import itemgetter
from typing import Any

from dn.codec import pack, unpack_tuples


@dataclass(slots=True)
class Run:
    pks: list
    ts: list[int]
    rows: list[tuple]
    del_pks: list
    del_ts: list[int]
    sorted_by_pk: bool = False
    #: Where ``pks`` come from in ``rows`` when they are exactly the rows' primary keys (a
    #: buffer's tail): then they are not pickled, the reader takes them from the rows.
    pk_pos: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.ts) + len(self.del_ts)

    def lookup(self, pk: Any, snapshot: int) -> tuple[int, tuple | None] | None:
        """Newest version of ``pk`` at or before ``snapshot``: (ts, row) or (ts, None) for a
        delete; None when this run has no such version."""
        best_ts = -1
        best_row = None
        if self.sorted_by_pk:
            lo, hi = bisect_left(self.pks, pk), bisect_right(self.pks, pk)
            for i in range(lo, hi):
                t = self.ts[i]
                if t <= snapshot and t > best_ts:
                    best_ts, best_row = t, self.rows[i]
            lo, hi = bisect_left(self.del_pks, pk), bisect_right(self.del_pks, pk)
            for i in range(lo, hi):
                t = self.del_ts[i]
                if t <= snapshot and t > best_ts:
                    best_ts, best_row = t, None
        else:
            for i, p in enumerate(self.pks):
                if p == pk:
                    t = self.ts[i]
                    if t <= snapshot and t > best_ts:
                        best_ts, best_row = t, self.rows[i]
            for i, p in enumerate(self.del_pks):
                if p == pk:
                    t = self.del_ts[i]
                    if t <= snapshot and t > best_ts:
                        best_ts, best_row = t, None
        if best_ts < 0:
            return None
        return best_ts, best_row

    def __reduce__(self) -> tuple:
        """Pickled (a shard's tail on its way to a reader in another process) with the rows
        as one msgpack blob and the timestamps run-length encoded (a commit's rows share
        one): pickle memoizes every row tuple and value, which made it several times slower
        on the shard and slower on the reader."""
        ts_vals: list[int] = []
        ts_counts: list[int] = []
        for t, group in groupby(self.ts):
            ts_vals.append(t)
            ts_counts.append(sum(1 for _ in group))
        pks = None if self.pk_pos is not None else self.pks
        return (_run_from_parts, (pks, ts_vals, ts_counts, pack(self.rows), self.del_pks,
                                  self.del_ts, self.sorted_by_pk, self.pk_pos))

    def _check(self) -> None:
        assert len(self.pks) == len(self.ts) == len(self.rows)
        assert len(self.del_pks) == len(self.del_ts)
        if self.sorted_by_pk:
            keys = list(zip(self.pks, self.ts))
            assert keys == sorted(keys), "run not sorted by (pk, ts)"
            dkeys = list(zip(self.del_pks, self.del_ts))
            assert dkeys == sorted(dkeys), "deletes not sorted by (pk, ts)"


def _run_from_parts(pks: list | None, ts_vals: list[int], ts_counts: list[int], blob: bytes,
                    del_pks: list, del_ts: list[int], sorted_by_pk: bool,
                    pk_pos: tuple[int, ...] | None) -> Run:
    ts = list(chain.from_iterable(map(repeat, ts_vals, ts_counts)))
    rows = list(unpack_tuples(blob))
    if pks is None and pk_pos is not None:
        pks = list(map(itemgetter(*pk_pos), rows))  # one position: the value; more: tuples
    return Run(pks, ts, rows, del_pks, del_ts, sorted_by_pk, pk_pos)
