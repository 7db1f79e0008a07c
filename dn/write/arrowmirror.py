"""A buffer block's row versions as Arrow, converted once: what the Arrow reads of fresh data
take their tail from (:meth:`dn.read.arrowscan.Sources.run_tables`).

A block (:class:`dn.write.buffer.TableBlock`) holds its rows as Python lists, one per column,
appended in commit order. An Arrow read of the tail (a shard's view for ``scan_arrow``,
``scan_batches``, ``read_dn``, the change feed's Arrow paths) used to convert every row of it
to Arrow on every read: 85 ms of a shard's CPU for 500,000 rows of (int64, string, float64),
most of an Arrow read of fresh data. The mirror holds them converted, as record batches of at
most :data:`PIECE` rows (columns ``c0`` .. ``c<n-1>`` typed as the table's Arrow types, then
``ts``), and a read takes a zero-copy slice of them. The shard's background round converts the
rows as they come (:meth:`dn.upkeep.scheduler.Upkeep.mirror_tails`, every
``background_interval_s``), so a read finds at most one round's rows not held yet, and
converts those itself without keeping them.

Why it is safe without the engine's lock (a read copies its tail outside it,
:mod:`dn.read.snapshots`): a read converts only rows below its own end ``b``, the rows at or
below its resolved snapshot, and the background only rows below every undecided intent
(:func:`stable_rows`, found under the lock). Those never change: later commits append above
them, and the one change below the newest commit, an aborted intent's rows going
(:meth:`TableBlock.remove`), takes rows above every snapshot served so far (no read at or above
an undecided intent's timestamp is served) and above every row the background converted, and
drops the mirror under the engine's lock; a read that held the old mirror finishes its slice of
rows that did not move. The mirror's lock orders the background's extension and the reads'
look at what it holds.

Memory: a cache beside the buffer's rows, not counted in the memory backpressure bounds (the
rows are; their copy could always be dropped): the background stops converting once a shard's
mirrors hold ``arrow_mirror_bytes`` (128 MiB by default; past it, reads convert as they did
before the mirror). ``Buffer.mirror_bytes`` counts them (``status()``, per buffer); they go
with the buffer when it is written out.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

import pyarrow as pa

#: Rows converted per record batch: each conversion holds the GIL, so a large tail is converted
#: in pieces (the other threads of a shard run between them) and kept as batches of this size.
PIECE = 65_536
#: A kept batch under this many rows is joined with the next: under steady writes a background
#: round converts a few hundred rows, which would otherwise be kept as thousands of batches.
SMALL = 16_384


def schema_of(types: list[pa.DataType]) -> pa.Schema:
    """A mirror's schema: ``c0`` .. ``c<n-1>`` typed ``types``, then ``ts``."""
    names = [f"c{i}" for i in range(len(types))] + ["ts"]
    return pa.schema([pa.field(n, t) for n, t in zip(names, [*types, pa.int64()])])


def convert(cols: list[list], ts: list[int], lo: int, hi: int, schema: pa.Schema) -> list:
    """Rows ``[lo, hi)`` of a block's ``cols`` and ``ts`` as record batches of ``schema``, in
    pieces of at most :data:`PIECE` rows."""
    types = schema.types
    out = []
    for a in range(lo, hi, PIECE):
        b = min(hi, a + PIECE)
        arrays = [pa.array(c[a:b], type=t) for c, t in zip(cols, types)]
        arrays.append(pa.array(ts[a:b], type=pa.int64()))
        out.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return out


class ArrowMirror:
    """The rows ``[0, done)`` of one block as record batches (see the module docstring)."""

    __slots__ = ("schema", "batches", "done", "nbytes", "_lock")

    def __init__(self, types: list[pa.DataType]) -> None:
        self.schema = schema_of(types)
        self.batches: list[pa.RecordBatch] = []
        self.done = 0
        self.nbytes = 0
        self._lock = threading.Lock()

    @property
    def types(self) -> list[pa.DataType]:
        return self.schema.types[:-1]

    def rows(self, cols: list[list], ts: list[int], a: int, b: int) -> pa.Table:
        """Rows ``[a, b)`` of the block whose columns and timestamps are ``cols`` and ``ts``
        (rows below ``b`` never change): the mirror's, and those it does not hold yet
        converted here, not kept (the background keeps what its bound lets it)."""
        with self._lock:
            batches, done = list(self.batches), self.done
        if a >= done:  # none of them held yet
            return pa.Table.from_batches(convert(cols, ts, a, b, self.schema), self.schema)
        if done < b:
            batches += convert(cols, ts, done, b, self.schema)
        return pa.Table.from_batches(batches, self.schema).slice(a, b - a)

    def extend(self, cols: list[list], ts: list[int], b: int) -> int:
        """Convert and keep the rows not held yet below ``b`` (which never change); how
        many. The background's (:meth:`dn.upkeep.scheduler.Upkeep.mirror_tails`)."""
        with self._lock:
            if b <= self.done:
                return 0
            new = convert(cols, ts, self.done, b, self.schema)
            if self.batches and self.batches[-1].num_rows < SMALL and new[0].num_rows < PIECE:
                last = self.batches.pop()
                self.nbytes -= last.nbytes
                new[0] = pa.Table.from_batches([last, new[0]]).combine_chunks().to_batches()[0]
            self.batches.extend(new)
            self.nbytes += sum(x.nbytes for x in new)
            n, self.done = b - self.done, b
            return n


def block_rows(block: Any, types: list, a: int, b: int) -> pa.Table:
    """Rows ``[a, b)`` of a buffer block (:class:`dn.write.buffer.TableBlock`) as an Arrow
    table of :func:`schema_of` ``types``: its mirror's, and what that does not hold
    converted now. Rows below ``b`` must be at or below a resolved snapshot."""
    m = block.mirror
    if m is None or m.types != list(types):
        schema = schema_of(list(types))
        return pa.Table.from_batches(convert(block.cols, block.ts, a, b, schema), schema)
    return m.rows(block.cols, block.ts, a, b)


def block_mirror(block: Any, types: list) -> ArrowMirror:
    """A block's mirror, made if it has none or if the table's types differ from the ones
    it was made with (the background's)."""
    m = block.mirror
    if m is None or m.types != list(types):
        m = block.mirror = ArrowMirror(list(types))
    return m


def stable_rows(block: Any, pending: dict) -> int:
    """How many of ``block``'s rows lie below every undecided intent of its buffer
    (``pending``: {ts: token}): rows that never change, which the background may convert.
    Under the engine's lock."""
    return bisect_left(block.ts, min(pending)) if pending else len(block.ts)
