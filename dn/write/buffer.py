"""Buffers: the mutable buffer and the frozen (immutable) buffers of one shard.

A buffer covers the commit timestamps ``[from_ts, to_ts]`` (``to_ts`` is the newest commit
applied; None while empty). It holds (seed 001):

- ``commands``: the DDL commands, as ``(ts, cmd)``;
- per table an appendable :class:`TableBlock`: columnar lists (one per column), the commit
  timestamp of each row version, and the block's delete nodes (primary key, timestamp).
  Reads copy versions out as runs (:mod:`dn.read.run`), which answer point lookups;
- ``tokens``: the idempotency tokens of its writes that carried one, as ``(ts, token)`` in
  commit order (:mod:`dn.write.tokens`); its range object keeps them;
- ``pending``: the transactions' intents applied here and not yet decided, ``{ts: token}``
  (:mod:`dn.write.txn`). Their rows sit at their commit timestamp like any others; no read
  at or above that timestamp is served until the intent is decided. A commit keeps the rows
  and notes the token; an abort takes them out again (the one change to a buffer below its
  newest commit). A buffer with pending intents is not written out.

Invariants: timestamps are appended in ascending order; a group commit is applied whole, so a
buffer boundary never splits one; a frozen buffer never changes again. ``nbytes`` counts the
encoded bytes of the commands applied (the same bytes the log wrote).

Memory: ``memory`` estimates what the buffer's Python objects cost on the heap, which is what
backpressure bounds; it runs 1 to 10 times ``nbytes``. Each write adds its encoded bytes
(which hold every string's and blob's bytes) plus, per column, the row count times a list
slot and the object header its values carry beyond their encoding
(:func:`dn.write.backpressure.column_cost`: an int 32 bytes, none for a cached small int; a
float 32; an ASCII string 57; a blob 41; a bool or null none; a composite key's tuple 48 and
more), from three samples per column, so a few microseconds per column whatever the row
count. An aborted intent takes its estimate back out; a transaction's key index adds its
dict's size.

Callers hold the engine's lock for every mutation. Frozen buffers may be read without it, and
so may the versions of a mutable buffer at or below a resolved snapshot: later commits only
append above them.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable

from dn.read.run import Run
from dn.write.arrowmirror import ArrowMirror
from dn.write.backpressure import COMMIT_COST, SLOT, TOKEN_COST, column_cost
from dn.write.keyindex import Chains


class TableBlock:
    """The appendable block of one table in one buffer."""

    __slots__ = (
        "pk_pos",
        "cols",
        "ts",
        "del_pks",
        "del_ts",
        "_index",
        "_rows_in",
        "_dels_in",
        "index_memory",
        "_index_bytes",
        "_chains",
        "mirror",
        "room",
    )

    def __init__(
        self, ncols: int, pk_pos: tuple[int, ...], room: Callable[[], int] | None = None
    ) -> None:
        self.pk_pos = pk_pos
        self.cols: list[list] = [[] for _ in range(ncols)]
        self.ts: list[int] = []
        self.del_pks: list = []
        self.del_ts: list[int] = []
        # {primary key: newest ts}, over the first _rows_in rows and _dels_in deletes: built
        # when a transaction first asks (no cost to writes), extended as versions append
        self._index: dict = {}
        self._rows_in = 0
        self._dels_in = 0
        self.index_memory = 0  # estimated heap bytes of _index and _chains
        self._index_bytes = 0  # _index's share of it
        self._chains: Chains | None = None  # point reads' version chains, built on first use
        #: The rows as Arrow, kept by the reads that converted them (:mod:`dn.write.arrowmirror`),
        #: while ``room()`` (the bytes the shard's mirrors may still take) is above 0
        self.mirror: ArrowMirror | None = None
        self.room = room

    def append(self, ts: int, rows: list[tuple], deletes: list) -> int:
        """Append ``rows`` (tuples in column order) and ``deletes`` at ``ts``; returns their
        estimated heap bytes beyond their encoding (:func:`column_cost`)."""
        cost = 0
        if rows:
            for i, col in enumerate(self.cols):
                values = [r[i] for r in rows]
                col.extend(values)
                cost += column_cost(values)
            self.ts.extend([ts] * len(rows))
            cost += len(rows) * SLOT
        return cost + self._append_deletes(ts, deletes)

    def append_columns(self, ts: int, chunks: list, deletes: list) -> int:
        """:meth:`append` for rows given by column: ``chunks`` is a list of column lists."""
        cols, cost = self.cols, 0
        for chunk in chunks:
            for col, values in zip(cols, chunk, strict=True):
                col.extend(values)
                cost += column_cost(values)
            self.ts.extend([ts] * len(chunk[0]))
            cost += len(chunk[0]) * SLOT
        return cost + self._append_deletes(ts, deletes)

    def _append_deletes(self, ts: int, deletes: list) -> int:
        if not deletes:
            return 0
        self.del_pks.extend(deletes)
        self.del_ts.extend([ts] * len(deletes))
        return column_cost(deletes) + len(deletes) * SLOT

    def newest(self, keys: list) -> int:
        """The newest commit timestamp of any version (row or delete) of ``keys`` here; 0 if
        none. Extends the block's key index over what was appended since the last call."""
        idx = self._index
        n, d = len(self.ts), len(self.del_ts)
        if self._rows_in < n:
            a, pos = self._rows_in, self.pk_pos
            if len(pos) == 1:
                pks = self.cols[pos[0]][a:n]
            else:
                pks = list(zip(*(self.cols[p][a:n] for p in pos)))
            idx.update(zip(pks, self.ts[a:n]))  # ascending: the newest version wins
            self._rows_in = n
        if self._dels_in < d:
            get = idx.get
            for k, t in zip(self.del_pks[self._dels_in : d], self.del_ts[self._dels_in : d]):
                if get(k, 0) < t:
                    idx[k] = t
            self._dels_in = d
        size = sys.getsizeof(idx)
        if len(self.pk_pos) > 1:  # the rows' key tuples are the index's own
            size += len(idx) * (48 + 8 * len(self.pk_pos))
        self.index_memory += size - self._index_bytes  # the chains' share is added apart
        self._index_bytes = size
        get = idx.get
        return max((get(k, 0) for k in keys), default=0)

    def remove(self, ts: int) -> None:
        """Take out every version at ``ts`` (an aborted intent's)."""
        a, b = bisect_left(self.ts, ts), bisect_right(self.ts, ts)
        if a < b:
            for col in self.cols:
                del col[a:b]
            del self.ts[a:b]
        a, b = bisect_left(self.del_ts, ts), bisect_right(self.del_ts, ts)
        if a < b:
            del self.del_pks[a:b]
            del self.del_ts[a:b]
        self._index, self._rows_in, self._dels_in, self.index_memory = {}, 0, 0, 0
        self._index_bytes = 0
        self._chains = None
        self.mirror = None  # its rows after ts moved up: converted again when next read

    def lookup(self, keys: list, lo_ts: int, hi_ts: int) -> Run:
        """The versions of ``keys`` with lo_ts <= ts <= hi_ts, in commit order: a point
        read's share of this block (:class:`Chains`), so a read of a few keys copies a few
        versions, not the block. Under the engine's lock (the chains grow here)."""
        if self._chains is None:
            self._chains = Chains()
        ch = self._chains
        before = ch.memory()
        ch.extend(self)
        self.index_memory += ch.memory() - before
        rows = ch.find(keys, self.ts, ch.last, ch.prev, lo_ts, hi_ts)
        dels = ch.find(keys, self.del_ts, ch.dlast, ch.dprev, lo_ts, hi_ts)
        cols = [[c[i] for i in rows] for c in self.cols]
        pos = self.pk_pos
        pks = cols[pos[0]] if len(pos) == 1 else list(zip(*(cols[p] for p in pos)))
        return Run(
            pks,
            [self.ts[i] for i in rows],
            None,
            [self.del_pks[i] for i in dels],
            [self.del_ts[i] for i in dels],
            pk_pos=pos,
            cols=cols,
        )

    def pks(self) -> list:
        pos = self.pk_pos
        if len(pos) == 1:
            return self.cols[pos[0]][:]
        return list(zip(*(self.cols[p] for p in pos)))

    def run(self, lo_ts: int, hi_ts: int) -> Run:
        """The versions with lo_ts <= ts <= hi_ts, in commit order."""
        a, b = bisect_left(self.ts, lo_ts), bisect_right(self.ts, hi_ts)
        cols = [c[a:b] for c in self.cols]
        pos = self.pk_pos
        pks = cols[pos[0]] if len(pos) == 1 else list(zip(*(cols[p] for p in pos)))
        da, db = bisect_left(self.del_ts, lo_ts), bisect_right(self.del_ts, hi_ts)
        run = Run(
            pks,
            self.ts[a:b],
            None,
            self.del_pks[da:db],
            self.del_ts[da:db],
            pk_pos=self.pk_pos,
            cols=cols,
        )
        run.block = (self, a, b)  # an Arrow read takes these rows from the block's mirror
        return run

    def __len__(self) -> int:
        return len(self.ts) + len(self.del_ts)


class Buffer:
    """A mutable buffer, or a frozen one once ``frozen`` is set."""

    __slots__ = (
        "from_ts",
        "to_ts",
        "commands",
        "tables",
        "tokens",
        "pending",
        "nbytes",
        "heap",
        "_intent_heap",
        "ncommits",
        "born",
        "frozen",
        "room",
    )

    def __init__(self, from_ts: int, born: float, room: Callable[[], int] | None = None) -> None:
        self.from_ts = from_ts
        self.to_ts: int | None = None
        self.commands: list[tuple[int, list]] = []
        self.tables: dict[int, TableBlock] = {}
        self.tokens: list[tuple[int, bytes]] = []
        self.pending: dict[int, bytes] = {}
        self.nbytes = 0
        self.heap = 0  # estimated heap bytes of the rows, commands and tokens (see memory)
        self._intent_heap: dict[int, int] = {}  # of each pending intent: an abort takes it out
        self.ncommits = 0
        self.born = born
        self.frozen = False
        self.room = room  # for its blocks' Arrow mirrors (ShardState.mirror_room); None: none

    @property
    def empty(self) -> bool:
        return self.to_ts is None

    @property
    def memory(self) -> int:
        """Estimated heap bytes the buffer holds (see the module docstring). Any thread,
        without the lock: an advisory figure (a copy of the blocks is atomic under the GIL)."""
        return self.heap + sum(b.index_memory for b in list(self.tables.values()))

    def _stamp(self, ts: int, nbytes: int) -> None:
        assert not self.frozen, "frozen buffers never change"
        assert ts >= self.from_ts and (self.to_ts is None or ts > self.to_ts), "ts out of order"
        self.to_ts = ts
        self.nbytes += nbytes
        self.heap += nbytes + COMMIT_COST
        self.ncommits += 1

    def apply_write(
        self,
        ts: int,
        table_id: int,
        ncols: int,
        pk_pos: tuple[int, ...],
        rows: list[tuple],
        deletes: list,
        nbytes: int,
    ) -> None:
        self.heap += self._block(ts, table_id, ncols, pk_pos, nbytes).append(ts, rows, deletes)

    def apply_columns(
        self,
        ts: int,
        table_id: int,
        ncols: int,
        pk_pos: tuple[int, ...],
        chunks: list,
        deletes: list,
        nbytes: int,
    ) -> None:
        block = self._block(ts, table_id, ncols, pk_pos, nbytes)
        self.heap += block.append_columns(ts, chunks, deletes)

    def _block(
        self, ts: int, table_id: int, ncols: int, pk_pos: tuple[int, ...], nbytes: int
    ) -> TableBlock:
        """Stamp a write at ``ts`` and return its table's block (made on first use)."""
        self._stamp(ts, nbytes)
        block = self.tables.get(table_id)
        if block is None:
            block = self.tables[table_id] = TableBlock(ncols, pk_pos, self.room)
        return block

    def note_token(self, ts: int, token: bytes) -> None:
        """The write just applied at ``ts`` carried ``token``."""
        assert ts == self.to_ts, "a token belongs to the newest write"
        self.tokens.append((ts, token))
        self.heap += TOKEN_COST

    def apply_intent(self, ts: int, token: bytes, writes: list, nbytes: int) -> None:
        """A transaction's intent at its commit timestamp ``ts``, undecided: ``writes`` is
        ``[(table_id, ncols, pk_pos, chunks, deletes), ...]``, one per table it writes here."""
        self._stamp(ts, nbytes)
        cost = nbytes + COMMIT_COST + TOKEN_COST  # the token: in pending, then in tokens
        for table_id, ncols, pk_pos, chunks, deletes in writes:
            block = self.tables.get(table_id)
            if block is None:
                block = self.tables[table_id] = TableBlock(ncols, pk_pos, self.room)
            cost += block.append_columns(ts, chunks, deletes)
        self.heap += cost - nbytes - COMMIT_COST  # _stamp counted those
        self._intent_heap[ts] = cost
        self.pending[ts] = token

    def commit_intent(self, ts: int) -> None:
        """The intent at ``ts`` committed: its rows stay, its token is noted."""
        token = self.pending.pop(ts)
        self._intent_heap.pop(ts, None)
        insort(self.tokens, (ts, token))

    def abort_intent(self, ts: int) -> None:
        """The intent at ``ts`` aborted: its rows go. It still counts as one of the buffer's
        commits: it took a timestamp and a log record (and a range object of aborted intents
        alone holds a count of at least 1, as its format requires)."""
        del self.pending[ts]
        self.heap -= self._intent_heap.pop(ts, 0)
        for block in self.tables.values():
            block.remove(ts)

    def apply_ddl(self, ts: int, cmd: list, nbytes: int) -> None:
        self._stamp(ts, nbytes)
        self.commands.append((ts, cmd))
        self.heap += 8 * nbytes  # a DDL command's small objects: rare, counted generously

    def freeze(self) -> None:
        self.frozen = True

    def run(self, table_id: int, lo_ts: int, hi_ts: int, keys: list | None = None) -> Run | None:
        """The table's versions with lo_ts <= ts <= hi_ts (only those of ``keys``, through
        the block's version chains: under the lock), or None if the buffer holds none."""
        block = self.tables.get(table_id)
        if block is None or self.to_ts is None or hi_ts < self.from_ts or lo_ts > self.to_ts:
            return None
        return block.run(lo_ts, hi_ts) if keys is None else block.lookup(keys, lo_ts, hi_ts)

    def rows(self) -> int:
        return sum(len(b) for b in self.tables.values())

    def mirror_bytes(self) -> int:
        """The Arrow bytes of its blocks' mirrors (:mod:`dn.write.arrowmirror`): a cache
        beside :attr:`memory`, bounded apart from it (``arrow_mirror_bytes``). Any thread."""
        return sum(b.mirror.nbytes for b in list(self.tables.values()) if b.mirror is not None)

    def describe(self) -> dict:
        return {
            "from": self.from_ts,
            "to": self.to_ts,
            "bytes": self.nbytes,
            "memory": self.memory,
            "commits": self.ncommits,
            "rows": self.rows(),
            "pending": len(self.pending),
            "frozen": self.frozen,
            "mirror_bytes": self.mirror_bytes(),
        }

    def _check(self) -> None:
        for block in self.tables.values():
            n = len(block.ts)
            assert all(len(c) == n for c in block.cols), "columns of unequal length"
            assert block.ts == sorted(block.ts), "row timestamps out of order"
            assert block.del_ts == sorted(block.del_ts), "delete timestamps out of order"
            assert len(block.del_pks) == len(block.del_ts)
            if n or block.del_ts:
                lo = min(block.ts[:1] + block.del_ts[:1])
                hi = max(block.ts[-1:] + block.del_ts[-1:])
                assert self.from_ts <= lo and hi <= (self.to_ts or -1), "versions outside range"
        ts = [t for t, _ in self.commands]
        assert ts == sorted(ts)
        ts = [t for t, _ in self.tokens]
        assert ts == sorted(set(ts)), "token timestamps out of order"
        assert not ts or (self.from_ts <= ts[0] and ts[-1] <= (self.to_ts or -1))
        assert set(self._intent_heap) <= set(self.pending), "estimate of a decided intent"
        assert self.heap >= 0, "memory estimate below zero"
