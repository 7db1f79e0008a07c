"""A buffer block's row versions as Arrow, converted once: what the Arrow reads of fresh data
take their tail from (:meth:`dn.read.arrowscan.Sources.run_tables`).

A block (:class:`dn.write.buffer.TableBlock`) holds its rows as Python lists, one per column,
appended in commit order. An Arrow read of the tail (a shard's view for ``scan_arrow``,
``scan_batches``, ``read_dn``, the change feed's Arrow paths) used to convert every row of it
to Arrow on every read: 85 ms of a shard's CPU for 500,000 rows of (int64, string, float64),
most of an Arrow read of fresh data. The mirror converts each row once and keeps the result as
record batches of at most :data:`PIECE` rows (columns ``c0`` .. ``c<n-1>`` typed as the table's
Arrow types, then ``ts``); a read takes a zero-copy slice of them. The rows are converted by
the shard's background round as they come (:meth:`dn.upkeep.scheduler.Upkeep.mirror_tails`,
up to the setting ``arrow_mirror_bytes``), so a read finds at most the last round's rows still
to convert, and converts those itself.

Why it is safe without the engine's lock (a read copies its tail outside it,
:mod:`dn.read.snapshots`): a read converts only rows below its own end ``b``, the rows at or
below its resolved snapshot, and the background only rows below every undecided intent
(:func:`stable_rows`, found under the lock). Those never change: later commits append above
them, and the one change below the newest commit, an aborted intent's rows going
(:meth:`TableBlock.remove`), takes rows above every snapshot served so far (no read at or above
an undecided intent's timestamp is served) and above every row the background converted, and
drops the mirror under the engine's lock; a read that held the old mirror finishes its slice of
rows that did not move. The mirror's own lock orders the reads
that extend it.

Memory: a cache beside the buffer's rows, not counted in the memory backpressure bounds (the
rows are; their copy can always be dropped): the background keeps the mirrors of a shard under
``arrow_mirror_bytes``; a read converts what is left and keeps it, so the mirrors hold at most
one Arrow copy of the rows in memory (about half their heap). ``Buffer.mirror_bytes`` counts
them (``status()`` per buffer); they go with the buffer when it is written out.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

import pyarrow as pa

#: Rows converted per record batch: each conversion holds the GIL, so a large tail is converted
#: in pieces (the other threads of a shard run between them) and kept as batches of this size.
PIECE = 65_536
#: A batch under this many rows is joined with the one after it: a tail read often (a live
#: feed) would otherwise be kept as thousands of tiny batches.
SMALL = 16_384


class ArrowMirror:
    """The rows ``[0, done)`` of one block as record batches (see the module docstring)."""

    __slots__ = ("schema", "batches", "done", "nbytes", "_lock")

    def __init__(self, types: list[pa.DataType]) -> None:
        names = [f"c{i}" for i in range(len(types))] + ["ts"]
        self.schema = pa.schema([pa.field(n, t) for n, t in zip(names, [*types, pa.int64()])])
        self.batches: list[pa.RecordBatch] = []
        self.done = 0
        self.nbytes = 0
        self._lock = threading.Lock()

    @property
    def types(self) -> list[pa.DataType]:
        return self.schema.types[:-1]

    def rows(self, cols: list[list], ts: list[int], a: int, b: int) -> pa.Table:
        """Rows ``[a, b)`` of the block whose columns and timestamps are ``cols`` and ``ts``
        (rows below ``b`` never change), converting those not converted yet."""
        with self._lock:
            if self.done < b:
                self._extend(cols, ts, b)
            batches = list(self.batches)
        return pa.Table.from_batches(batches, self.schema).slice(a, b - a)

    def extend(self, cols: list[list], ts: list[int], b: int) -> int:
        """Convert the rows not converted yet below ``b`` (which never change); how many."""
        with self._lock:
            n = max(0, b - self.done)
            if n:
                self._extend(cols, ts, b)
            return n

    def _extend(self, cols: list[list], ts: list[int], b: int) -> None:
        types = self.schema.types
        new = []
        for lo in range(self.done, b, PIECE):
            hi = min(b, lo + PIECE)
            arrays = [pa.array(c[lo:hi], type=t) for c, t in zip(cols, types)]
            arrays.append(pa.array(ts[lo:hi], type=pa.int64()))
            new.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        if self.batches and self.batches[-1].num_rows < SMALL and new[0].num_rows < PIECE:
            last = self.batches.pop()
            self.nbytes -= last.nbytes
            new[0] = pa.Table.from_batches([last, new[0]]).combine_chunks().to_batches()[0]
        self.batches.extend(new)
        self.nbytes += sum(x.nbytes for x in new)
        self.done = b


def stable_rows(block: Any, pending: dict) -> int:
    """How many of ``block``'s rows lie below every undecided intent of its buffer
    (``pending``: {ts: token}): rows that never change, which the background may convert.
    Under the engine's lock."""
    return bisect_left(block.ts, min(pending)) if pending else len(block.ts)
