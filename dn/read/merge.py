"""Merging shards' sorted rows by primary key: whole (one set of columns per shard) or streamed.

Shards partition a table's keys, so a key is in one shard's rows at most and a merge only has
to order them. Rows are by column (the table's columns in order, as
:func:`dn.read.pick.sorted_columns` gives them), with int keys ordered by numpy and any other
key by one Python sort, as :func:`dn.read.pick.picks` orders a shard's keys:

- :func:`merge_by_int_key` — every shard's columns at once, by their int keys (the cluster
  client's ``scan``/``scan_arrow``);
- :func:`merge_chunks` — streams of chunks, one stream per shard (:func:`dn.read.stream.windows`),
  merged chunk by chunk: each step cuts at the smallest of the shards' current chunks' last keys
  and orders what is at or below it, so it holds one chunk per shard and the step's output
  (``Client.scan_batches``).

Not here: fetching or picking (:mod:`dn.read.stream`), Arrow (:mod:`dn.read.arrow`). Pure
functions; a merge's generator is used by one thread at a time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from itertools import chain
from typing import Any

import numpy as np

from dn.schema import TableDef

#: Sorted columns and their keys: a numpy int64 array for int keys, else None.
Chunk = tuple[list[list], Any]


def merge_by_int_key(parts: list[Chunk]) -> list[list]:
    """Shards' sorted columns (each with its int keys, unique across shards) as one set of
    columns in key order."""
    if len(parts) <= 1:
        return parts[0][0] if parts else []
    order = np.argsort(np.concatenate([keys for _, keys in parts]), kind="stable").tolist()
    return _gather(parts, order)


def _gather(parts: list[Chunk], order: list[int]) -> list[list]:
    """The parts' columns, concatenated, at ``order``."""
    width = len(parts[0][0])
    return [
        list(map(list(chain.from_iterable(cols[i] for cols, _ in parts)).__getitem__, order))
        for i in range(width)
    ]


def merge_chunks(table: TableDef, streams: list[Iterator[Chunk]]) -> Iterator[list[list]]:
    """The rows of ``streams`` (one per shard, each of chunks in key order, keys unique across
    streams) as chunks of columns in primary-key order (none empty)."""
    ints = len(table.pk_pos) == 1 and dict(table.columns)[table.names[table.pk_pos[0]]] == "int64"
    heads: list[_Head] = []
    for s in streams:
        h = _Head(s, table.pk_pos, ints)
        if h.next():
            heads.append(h)
    while len(heads) > 1:
        cut = min(h.last() for h in heads)
        parts = [p for h in heads if (p := h.take(cut)) is not None]
        if ints:
            yield merge_by_int_key(parts)
        else:
            keys = list(chain.from_iterable(k for _, k in parts))
            yield _gather(parts, sorted(range(len(keys)), key=keys.__getitem__))
        heads = [h for h in heads if not h.done() or h.next()]
    if heads:  # one stream left: its chunks as they come
        h = heads[0]
        yield [c[h.off :] for c in h.cols] if h.off else h.cols
        while h.next():
            yield h.cols


class _Head:
    """One stream's current chunk and how far the merge has taken it."""

    __slots__ = ("_it", "_pk_pos", "_ints", "cols", "keys", "off")

    def __init__(self, it: Iterator[Chunk], pk_pos: tuple[int, ...], ints: bool) -> None:
        self._it, self._pk_pos, self._ints = it, pk_pos, ints
        self.cols: list[list] = []
        self.keys: Any = []
        self.off = 0

    def next(self) -> bool:
        """Move to the stream's next non-empty chunk; False at its end."""
        for cols, keys in self._it:
            if cols and cols[0]:
                self.cols, self.off = cols, 0
                pk = self._pk_pos
                if self._ints:
                    self.keys = keys if keys is not None else np.asarray(cols[pk[0]], np.int64)
                else:
                    self.keys = cols[pk[0]] if len(pk) == 1 else list(zip(*(cols[p] for p in pk)))
                return True
        self.cols, self.keys = [], []
        return False

    def done(self) -> bool:
        return self.off >= len(self.keys)

    def last(self) -> Any:
        return self.keys[-1]

    def take(self, cut: Any) -> Chunk | None:
        """Its rows with key <= ``cut`` not taken yet; None when there are none."""
        if self._ints:
            j = int(np.searchsorted(self.keys, cut, "right"))
        else:
            j = bisect_right(self.keys, cut, self.off)
        if j <= self.off:
            return None
        i, self.off = self.off, j
        return [c[i:j] for c in self.cols], self.keys[i:j]
