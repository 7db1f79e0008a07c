"""Version chains: a point read's index over the versions of one table block.

A :class:`dn.write.buffer.TableBlock` holds its versions in append (commit) order. A point read
(``get``, ``get_many``) of a few keys must not copy the whole block: :class:`Chains` keeps, for
each key, the position of its newest row version (``last``) and for each position that of the
version before it (``prev``; -1: none), and the same for deletes (``dlast``, ``dprev``). It is
built on the block's first point read (no cost to writes) and extended by each later one over
what was appended since; appends only add positions. An aborted intent's removal drops it.

The engine's lock guards it (``TableBlock.lookup``). Memory: an 8-byte slot per version and a
dict entry per key (:meth:`Chains.memory`, counted in the buffer's estimate).
"""

from __future__ import annotations

import sys
from array import array
from typing import Any


class Chains:
    """Version chains of one block, for point reads: ``last[key]`` is the position of the
    key's newest row version and ``prev[i]`` that of the version before position ``i`` (-1:
    none); ``dlast``/``dprev`` the same for deletes. Built over the block's versions on the
    first point read, then extended by each read over what was appended since (appends only
    add positions; an aborted intent's removal drops the chains)."""

    __slots__ = ("last", "prev", "dlast", "dprev")

    def __init__(self) -> None:
        self.last: dict = {}
        self.prev = array("q")
        self.dlast: dict = {}
        self.dprev = array("q")

    def extend(self, block: Any) -> None:
        n, d = len(block.ts), len(block.del_ts)
        if len(self.prev) < n:
            a, pos = len(self.prev), block.pk_pos
            if len(pos) == 1:
                pks = block.cols[pos[0]][a:n]
            else:
                pks = list(zip(*(block.cols[p][a:n] for p in pos)))
            _link(self.last, self.prev, pks, a)
        if len(self.dprev) < d:
            _link(self.dlast, self.dprev, block.del_pks[len(self.dprev) : d], len(self.dprev))

    @staticmethod
    def find(keys: list, ts: list, last: dict, prev: array, lo: int, hi: int) -> list[int]:
        out: list[int] = []
        for k in keys:
            i = last.get(k, -1)
            while i >= 0 and ts[i] > hi:
                i = prev[i]
            while i >= 0 and ts[i] >= lo:
                out.append(i)
                i = prev[i]
        out.sort()
        return out

    def memory(self) -> int:
        return (
            sys.getsizeof(self.last)
            + sys.getsizeof(self.dlast)
            + 8 * (len(self.prev) + len(self.dprev))
            + 32 * (len(self.last) + len(self.dlast))  # the positions, as ints
        )


def _link(last: dict, prev: array, pks: list, first: int) -> None:
    get = last.get
    for i, k in enumerate(pks, first):
        prev.append(get(k, -1))
        last[k] = i
