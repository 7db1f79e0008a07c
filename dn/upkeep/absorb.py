"""Settling slot moves into a shard's own objects: the compaction that absorbs references
(issue 17; moves: :mod:`dn.moves`; the argument: decision 0018).

A move hands over references, not rows: the new owner reads the old owner's objects filtered
by slot and time, and the old owner keeps the given rows in its live objects, read by none of
its own reads. Once a move has been done for ``absorb_after_s``, each of its two shards
rewrites its history into a new first range object (:func:`dn.moves.absorbable` says what):

- the new owner copies in the rows its references hold (each source read through its filter,
  oldest first) and drops its own rows of those slots at or below ``H`` (older periods' rows,
  which the sources hold too); its in move is then *absorbed*: its references are dropped,
  and the slots are read from its own objects at every snapshot, unfiltered;
- the old owner drops the rows of the slots it gave away; its out move is then absorbed, and
  its own objects are read unfiltered again. The objects its move handed over stay, named by
  the move, until the peer absorbed its side (:func:`dn.moves.held`, garbage collection).

The rewrite covers every live range that starts at or below the newest ``H`` settled (the
rows it drops or copies are at or below it), from the first: its output replaces them as
the new first range ``[c..z]``, ``c`` below every ``from`` the shard ever wrote (so the key
was never used and no cache holds another object under it; written only if absent, as a
fenced incarnation may pick the same ``c``), ``z`` the last input's ``to``.
Versions the retention window no longer needs go as in compaction. A shard that copies rows
in waits until its ranges reach the newest ``H`` copied (a write after the move, written out:
a range holds only rows of its own time span); one that only drops rows never waits (every
row at or below ``H`` is in its ranges once its buffers are written out). Checkpoints name
the replaced ranges: they are dropped, and the next is written only at a newer range's end
(the manifest's ``checkpoint_floor``): a checkpoint's key is its timestamp, and one written
again under it with other contents would be read from the caches that hold the old one.

Crash safety: the output is written before the manifest commit that swaps it in and marks
the moves; a crash before the commit leaves an orphan (garbage), after it the new state.

Who calls: the shard's maintenance (:meth:`dn.upkeep.scheduler.Upkeep.maintain`), under the
compaction lock; tests and ``Engine.handoff.absorb``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dn import moves
from dn.errors import Internal, ObjectExists
from dn.moves import IN, Absorb
from dn.objects import codec, rangeobj
from dn.read.slotfilter import FilteredRange, SlotFilter, filter_run
from dn.state import ShardState
from dn.upkeep import compaction
from dn.write.tokens import unpack_entries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Drop:
    """A filter (:func:`dn.read.slotfilter.filter_run`'s) that drops each version whose ts is
    at or below its slot's bound (``-1``: none)."""

    count: int
    pk_pos: tuple[int, ...]
    bound: np.ndarray

    def mask(self, slots: Any, ts: Any) -> np.ndarray:
        return np.asarray(ts, dtype=np.int64) > self.bound[np.asarray(slots, dtype=np.intp)]


class Absorber:
    """Settles one shard's done moves into its own objects (module docstring)."""

    def __init__(self, state: ShardState, upkeep: Any) -> None:
        self._s = state
        self._up = upkeep
        self._seen: dict[int, float] = {}  # move id -> when first found settleable here
        self._waits_at: int | None = None  # the last range's end when a run had to wait

    def due(self) -> bool:
        """Whether a done move waited ``absorb_after_s`` to be settled (None: never)."""
        delay = self._s.settings.absorb_after_s
        with self._s.cv:
            ms = self._s.moves
        plan = moves.absorbable(ms) if ms else None
        if delay is None or plan is None:
            return False
        with self._s.cv:
            end = self._s.ranges[-1][1] if self._s.ranges else None
            if self._waits_at is not None and end == self._waits_at and self._s.mutable.empty:
                return False  # waiting for a write here: nothing new to settle with yet
        now = self._s.clock.monotonic()
        for mid in plan.marked:
            self._seen.setdefault(mid, now)
        return any(now - self._seen[mid] >= delay for mid in plan.marked)

    @staticmethod
    def pending(ms: tuple) -> dict:
        """What is left to settle of moves ``ms``, for status: moves, references still read."""
        left = [m for m in ms if not m.absorbed]
        return {
            "moves_to_absorb": len(left),
            "references": sum(len(g.sources) for m in left if m.kind == IN for g in m.groups),
        }

    def run(self) -> bool:
        """Settle every settleable move now; False when there was none, or when the ranges do
        not reach the newest ``H`` yet (module docstring)."""
        s = self._s
        s.check_usable()
        with s.compact_lock:
            self._up.freeze()
            self._up.flush()  # every row at or below each settled H is in a range object
            with s.flush_lock:
                self._up.settle_manifest()
            with s.cv:
                ranges = list(s.ranges)
                ms = s.moves
                tables = list(s.catalog.tables())
            plan = moves.absorbable(ms)
            if plan is None:
                self._release()
                return False
            if not ranges:  # nothing committed here, so no table to copy into: nothing to do
                self._up.commit_moves(lambda ms: moves.absorbed(ms, plan.marked))
                self._release()
                return True
            if ranges[-1][1] < plan.h_copy:  # rows dropped need no more: none is newer
                if self._waits_at != ranges[-1][1]:
                    log.info("shard %d: settling moves waits for a write past %d",
                             s.shard, plan.h_copy)  # fmt: skip
                self._waits_at = ranges[-1][1]
                return False
            self._waits_at = None
            run = [r for r in ranges if r[0] <= plan.h]
            c = min([run[0][0]] + [x[1] for _, x, _ in plan.copy]) - 1  # may be negative
            later = any(m.kind == IN and not m.absorbed and m.id not in plan.marked for m in ms)
            data, stats, ncommits, copied = self._rewrite(plan, run, tables, not later, c)
            out = self._put(c, run[-1][1], data, plan, run, tables, not later)
            with s.cv:
                s.stats[out] = stats  # before the commit: adoption needs them
                s.sizes[out] = len(data)
                s.commits[out] = ncommits

            def swap(m):
                if tuple(m.ranges[: len(run)]) != tuple(run):
                    if m.ranges and m.ranges[0] == out:
                        return m  # this very swap landed already (a lost acknowledgement)
                    raise Internal(f"the ranges {run[0]}..{run[-1]} settled are no longer live")
                return replace(
                    m,
                    ranges=(out, *m.ranges[len(run) :]),
                    checkpoints=(),  # they name the ranges replaced
                    # and their keys are not written again with other contents: a reader
                    # that cached one would read the ranges replaced, not the rows copied in
                    checkpoint_floor=max((m.checkpoint_floor, *m.checkpoints)),
                    moves=moves.absorbed(m.moves, plan.marked),
                )

            with s.flush_lock:
                self._up.commit(swap)
                with s.cv:
                    for r in run:
                        s.stats.pop(r, None)
                        s.sizes.pop(r, None)
                        s.commits.pop(r, None)
            s.counters["absorbed_moves"] = s.counters.get("absorbed_moves", 0) + len(plan.marked)
            s.counters["absorbed_rows"] = s.counters.get("absorbed_rows", 0) + copied
            log.info("shard %d: settled moves %s into %s: %d rows copied in, %d ranges rewritten",
                     s.shard, sorted(plan.marked), out, copied, len(run))  # fmt: skip
        self._release()
        self._up.checkpoint()  # record the new live set
        return True

    def _release(self) -> None:
        """Once every move here is settled, background compaction goes on now (it waited for
        them: :meth:`dn.upkeep.handoff.Handoff.hold_compaction`)."""
        s = self._s
        with s.cv:
            if moves.absorbable(s.moves) is None and all(m.done for m in s.moves):
                s.compaction_hold_until = 0.0

    def _put(self, c: int, z: int, data: bytes, *again: Any) -> tuple[int, int]:
        """Write the new first range under a key no object has: ``[c..z]``, else a lower
        ``c`` (each rewritten for it). Another incarnation of this shard (one a restart
        fenced, not knowing it yet) computes the same ``c`` from the same ranges, and may have
        written other rows under it: a plain put could replace what the live one committed."""
        s = self._s
        for _ in range(64):
            try:
                s.store.put_if_absent(codec.range_key(s.shard, c, z), data)
                return (c, z)
            except ObjectExists:
                c -= 1
                data = self._rewrite(*again, c)[0]
        raise Internal(f"shard {s.shard}: no free key below range ({c}, {z}) to settle into")

    def _rewrite(
        self, plan: Absorb, run: list[tuple[int, int]], tables: list, oldest: bool, c: int
    ) -> tuple[bytes, dict, int, int]:
        """The new first range: ``run``'s rows without those ``plan`` drops, with the rows
        its sources hold; returns (encoded object, stats, commits, rows copied)."""
        s = self._s
        n = s.slot_count
        bound = np.full(max(n, 1), -1, dtype=np.int64)
        for x, ts in plan.drop.items():
            bound[x] = ts
        own = [s.reader.range_uncached(r) for r in run]
        fetched: dict[tuple[int, int, int], Any] = {}
        horizon = s.oldest_readable()
        out_tables: dict[int, dict] = {}
        stats: dict = {}
        copied = 0
        for t in tables:
            if t.drop_ts is not None and t.drop_ts <= horizon:
                continue
            runs = []
            for slots, (q, f, to, lo, hi), m in plan.copy:  # each key's sources oldest first
                theirs = m.source_table(q, s.shard, t.id)
                if theirs is None:
                    continue
                ro = fetched.get((q, f, to))
                if ro is None:
                    key = codec.range_key(q, f, to)
                    ro = fetched[(q, f, to)] = rangeobj.decode(s.store.get(key), key)
                flt = SlotFilter(n, slots, True, lo, hi, q, t.id, theirs, t.pk_pos)
                r = FilteredRange(ro, flt).run(t.id, t.pk_pos)
                if r is not None:
                    copied += len(r.ts) + len(r.del_ts)
                    runs.append(r)
            drop = _Drop(n, t.pk_pos, bound)
            for ro in own:  # then the own rows, newer than every source's of the same key
                r = ro.run(t.id, t.pk_pos)
                if r is not None:
                    runs.append(filter_run(r, drop) if plan.drop else r)
            merged = compaction.merge_table(runs, horizon, oldest)
            if merged is not None:
                out_tables[t.id], stats[t.id] = merged
        commands = [[ts, cmd] for ro in own for ts, cmd in ro.commands]
        floor = s.tokens.floor(s.clock.now_ms())
        tokens = [e for ro in own for e in unpack_entries(ro.tokens) if e[0] >= floor]
        keys = {tid: next(t.pk_pos for t in tables if t.id == tid) for tid in out_tables}
        ncommits = compaction.commits(own)
        data = rangeobj.encode(s.shard, c, run[-1][1], ncommits, commands, out_tables, tokens, keys)
        return data, stats, ncommits, copied
