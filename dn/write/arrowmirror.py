"""A buffer block's row versions as Arrow, converted once: what the Arrow reads of fresh data
take their tail from (:meth:`dn.read.arrowscan.Sources.run_tables`).

A block (:class:`dn.write.buffer.TableBlock`) holds its rows as Python lists, one per column,
appended in commit order. An Arrow read of the tail (a shard's view for ``scan_arrow``,
``scan_batches``, ``read_dn``, the change feed's Arrow paths) used to convert every row of it
to Arrow on every read: 85 ms of a shard's CPU for 500,000 rows of (int64, string, float64).
Now the first read that reaches a row converts it and keeps it in the block's mirror, as record
batches of at most :data:`PIECE` rows (columns ``c0`` .. ``c<n-1>`` typed as the table's Arrow
types, then ``ts``); the reads after it take a zero-copy slice and convert only the rows
written since. Reads convert, not the writes: converting every row as it came, in the shard's
background round, cost the shard's write path about a third more CPU (500k rows written
in-process: 0.43-0.69 s of CPU without, 0.69-0.93 s with; on Ray, ``DNDatasink`` fell from
about 400k to 280k rows/s and the live feed's p50 rose by a quarter).

Why it is safe without the engine's lock (a read copies its tail outside it,
:mod:`dn.read.snapshots`): a read converts only rows below its own end ``b``, all at or below
its resolved snapshot. Those never change: later commits append above them, and the one change
below the newest commit, an aborted intent's rows going (:meth:`TableBlock.remove`), takes rows
above every snapshot served so far (no read at or above an undecided intent's timestamp is
served); so the rows a mirror holds keep their positions. An abort drops the block's mirror all
the same, under the engine's lock; a read that held the old mirror finishes its slice of rows
that did not move. The mirror's lock orders the reads that extend it.

Memory: a cache beside the buffer's rows, not counted in the memory backpressure bounds (the
rows are; their copy can always be dropped). A read keeps what it converts only while the
shard's mirrors hold under ``arrow_mirror_bytes`` (``ShardState.mirror_room``, asked through
the block's ``room``); past it, reads convert what they read and keep nothing, as before the
mirror. ``Buffer.mirror_bytes`` counts them (``status()``, per buffer); they go with the buffer
when it is written out.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

#: Rows converted per record batch: each conversion holds the GIL, so a large tail is converted
#: in pieces (the other threads of a shard run between them) and kept as batches of this size.
PIECE = 65_536
#: A kept batch under this many rows is joined with the next: a tail read often (a live feed)
#: converts a few rows each time, which would otherwise be kept as thousands of batches.
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

    def rows(self, cols: list[list], ts: list[int], a: int, b: int, keep: bool) -> pa.Table:
        """Rows ``[a, b)`` of the block whose columns and timestamps are ``cols`` and ``ts``
        (rows below ``b`` never change): the mirror's, and those it does not hold yet
        converted here, and kept if ``keep`` and they follow on from the mirror's (a read
        of a window further on, a change feed's, converts only its window)."""
        with self._lock:
            if keep and a <= self.done < b:
                self._extend(cols, ts, b)
            batches, done = list(self.batches), self.done
        if a >= done:  # none of them held
            return pa.Table.from_batches(convert(cols, ts, a, b, self.schema), self.schema)
        if done < b:
            batches += convert(cols, ts, done, b, self.schema)
        return pa.Table.from_batches(batches, self.schema).slice(a, b - a)

    def _extend(self, cols: list[list], ts: list[int], b: int) -> None:
        new = convert(cols, ts, self.done, b, self.schema)
        if self.batches and self.batches[-1].num_rows < SMALL and new[0].num_rows < PIECE:
            last = self.batches.pop()
            self.nbytes -= last.nbytes
            new[0] = pa.Table.from_batches([last, new[0]]).combine_chunks().to_batches()[0]
        self.batches.extend(new)
        self.nbytes += sum(x.nbytes for x in new)
        self.done = b


def block_rows(block: Any, types: list, a: int, b: int) -> pa.Table:
    """Rows ``[a, b)`` of a buffer block (:class:`dn.write.buffer.TableBlock`) as an Arrow
    table of :func:`schema_of` ``types``: its mirror's, and what that does not hold converted
    now and kept while the shard's mirrors have room (the mirror made on first use, and made
    again if the table's types differ from the ones it was made with). Rows below ``b`` must
    be at or below a resolved snapshot."""
    keep = block.room is not None and block.room() > 0
    m = block.mirror
    if m is None or m.types != list(types):
        if not keep:
            schema = schema_of(list(types))
            return pa.Table.from_batches(convert(block.cols, block.ts, a, b, schema), schema)
        m = block.mirror = ArrowMirror(list(types))
    return m.rows(block.cols, block.ts, a, b, keep)
