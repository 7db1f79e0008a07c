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

import pickle
from bisect import bisect_left, bisect_right
from itertools import chain, groupby, repeat
from operator import itemgetter
from typing import Any

from dn.objects.codec import pack, unpack, unpack_tuples


class Run:
    """See the module docstring. A buffer's tail keeps its rows by column (``cols``, the
    table's columns in order) and makes the row tuples only when something asks for
    ``rows``; a scan merges the columns without them (:func:`dn.read.pick.pick_columns`)."""

    __slots__ = (
        "pks", "ts", "_rows", "cols", "del_pks", "del_ts", "sorted_by_pk", "pk_pos", "block"
    )  # fmt: skip

    def __init__(
        self,
        pks: list,
        ts: list[int],
        rows: list[tuple] | None,
        del_pks: list,
        del_ts: list[int],
        sorted_by_pk: bool = False,
        pk_pos: tuple[int, ...] | None = None,
        cols: list[list] | None = None,
    ) -> None:
        self.pks = pks
        self.ts = ts
        self._rows = rows
        #: The rows by column, when the run was made from columns (else None).
        self.cols = cols
        self.del_pks = del_pks
        self.del_ts = del_ts
        self.sorted_by_pk = sorted_by_pk
        #: Where ``pks`` come from in ``rows`` when they are exactly the rows' primary keys
        #: (a buffer's tail): then they are not pickled, the reader takes them from the rows.
        self.pk_pos = pk_pos
        #: A buffer's tail: (its block, first row, end), whose Arrow mirror an Arrow read in
        #: the same process takes the rows from (:mod:`dn.write.arrowmirror`); not pickled.
        self.block: tuple | None = None

    @property
    def rows(self) -> list[tuple]:
        """The row tuples (made from ``cols`` on first use)."""
        if self._rows is None:
            self._rows = list(zip(*self.cols)) if self.cols and self.ts else []
        return self._rows

    def __repr__(self) -> str:
        return (
            f"Run({len(self.ts)} versions, {len(self.del_ts)} deletes, "
            f"sorted_by_pk={self.sorted_by_pk})"
        )

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

    def __reduce_ex__(self, protocol: int) -> tuple:  # type: ignore[override]
        """Pickled (a shard's tail on its way to a reader in another process) with the rows
        as one msgpack blob, by column when the run has its columns, and the timestamps
        run-length encoded (a commit's rows share one): pickle memoizes every row tuple and
        value, which made it several times slower on the shard and slower on the reader;
        columns pack and unpack faster than row arrays, and need no tuple per row."""
        ts_vals: list[int] = []
        ts_counts: list[int] = []
        for t, group in groupby(self.ts):
            ts_vals.append(t)
            ts_counts.append(sum(1 for _ in group))
        pks = None if self.pk_pos is not None else self.pks
        by_column = self._rows is None and self.cols is not None
        blob: Any = pack(self.cols if by_column else self.rows)
        if protocol >= 5:  # Ray's pickling: the blob goes out of band, copied once
            blob = pickle.PickleBuffer(blob)
        return (
            _run_from_parts,
            (
                pks,
                ts_vals,
                ts_counts,
                blob,
                self.del_pks,
                self.del_ts,
                self.sorted_by_pk,
                self.pk_pos,
                by_column,
            ),
        )

    def _check(self) -> None:
        assert len(self.pks) == len(self.ts) == len(self.rows)
        assert len(self.del_pks) == len(self.del_ts)
        if self.sorted_by_pk:
            keys = list(zip(self.pks, self.ts))
            assert keys == sorted(keys), "run not sorted by (pk, ts)"
            dkeys = list(zip(self.del_pks, self.del_ts))
            assert dkeys == sorted(dkeys), "deletes not sorted by (pk, ts)"


#: A read's runs, oldest first, each with the newest timestamp it may hold (its range's ``to``;
#: for the in-memory tail, the tail's end).
Runs = list[tuple[Run, int]]


def _run_from_parts(
    pks: list | None,
    ts_vals: list[int],
    ts_counts: list[int],
    blob: bytes,
    del_pks: list,
    del_ts: list[int],
    sorted_by_pk: bool,
    pk_pos: tuple[int, ...] | None,
    by_column: bool = False,
) -> Run:
    ts = list(chain.from_iterable(map(repeat, ts_vals, ts_counts)))
    if by_column:
        cols = unpack(blob)
        if pks is None and pk_pos is not None:
            pks = cols[pk_pos[0]] if len(pk_pos) == 1 else list(zip(*(cols[p] for p in pk_pos)))
        return Run(pks, ts, None, del_pks, del_ts, sorted_by_pk, pk_pos, cols=cols)
    rows = list(unpack_tuples(blob))
    if pks is None and pk_pos is not None:
        pks = list(map(itemgetter(*pk_pos), rows))  # one position: the value; more: tuples
    return Run(pks, ts, rows, del_pks, del_ts, sorted_by_pk, pk_pos)
