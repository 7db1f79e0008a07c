"""Compaction: merge consecutive range objects into one larger sorted object.

A compaction takes K or more *consecutive* live ranges ``[a..b], [b+1..c], ...`` and writes one
object covering ``[a..z]`` at ``20/<shard>/<a>_<z>``, in the range-object format
(:mod:`dn.objects.rangeobj`). Because the output is just a bigger range, plans
(:mod:`dn.read.plan`) and readers need no change. The manifest swaps the inputs for the output
in one commit.

What the output keeps, per table and primary key, with ``horizon`` = the oldest timestamp any
read may still ask for (now - retention):

- every version with ts >= horizon (snapshot reads and change feeds inside the window);
- the newest version with ts < horizon (the state at the horizon), unless it is a delete and
  the inputs begin with the shard's oldest object, so that nothing older remains to hide;
- nothing of a table dropped at or before the horizon (no permitted read can name it);
- every DDL command (recovery rebuilds the catalog from them when no checkpoint follows);
- the count of commits: the sum of the inputs' (:func:`commits`);
- the idempotency tokens committed at or after ``token_floor`` (those still inside the token
  window, decision 0014); older ones can no longer be asked for.

Policy (:class:`Policy`): with ``n`` live objects below ``max_bytes`` holding ``total`` bytes,
the bound is ``(K - 1) * (1 + ceil(log_K(total / base)))``. While ``n`` is above it, merge the
K consecutive objects (none at or over ``max_bytes``) with the smallest total size. Each merge
removes K - 1 objects, so a scan of the latest state reads at most the bound, plus one object
per ``max_bytes`` of data. Within the bound, a second rule bounds the *versions* a scan reads:
once the objects hold more than ``AMPLIFICATION`` times the bytes of the largest, their whole
run is merged, dropping versions that newer ones shadow (what the window no longer needs).

The merge runs in Arrow (:mod:`dn.upkeep.arrowmerge`: one sort, no Python object per
version) when every input holding a table holds it in format 4 or 5, as every object written
since has it; otherwise over Python lists (:func:`merge_table`, also what settling moves
uses). Both keep the same versions.

Pure functions over decoded objects; the engine does the I/O and the manifest commit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dn.objects import rangeobj
from dn.objects.rangeobj import RangeObject, TableStats
from dn.upkeep import arrowmerge
from dn.write.tokens import unpack_entries

#: Merge a whole run of objects once it holds this many times the bytes of its largest.
AMPLIFICATION = 2.0


@dataclass(frozen=True, slots=True)
class Policy:
    fanout: int  # K: objects merged at once
    base_bytes: int  # the size of a typical freshly flushed range object
    max_bytes: int  # objects this large are not merged again

    def bound(self, total_bytes: int) -> int:
        """Most objects below ``max_bytes`` the policy lets stand."""
        levels = 1 + max(0, math.ceil(math.log(max(total_bytes, 1) / self.base_bytes, self.fanout)))
        return (self.fanout - 1) * levels

    def pick(self, ranges: list[tuple[tuple[int, int], int]]) -> list[tuple[int, int]] | None:
        """The ranges to merge next (consecutive, oldest first), or None."""
        small = [r for r, size in ranges if size < self.max_bytes]
        total = sum(size for r, size in ranges if size < self.max_bytes)
        if len(small) <= self.bound(total):
            return self._pick_shadowed(ranges)
        best: tuple[int, int] | None = None  # (total bytes, start index)
        k = self.fanout
        for i in range(len(ranges) - k + 1):
            window = ranges[i : i + k]
            if any(size >= self.max_bytes for _, size in window):
                continue
            t = sum(size for _, size in window)
            if best is None or t < best[0]:
                best = (t, i)
        if best is None:
            return None
        return [r for r, _ in ranges[best[1] : best[1] + k]]

    def _pick_shadowed(
        self, ranges: list[tuple[tuple[int, int], int]]
    ) -> list[tuple[int, int]] | None:
        """Read amplification: when the objects below ``max_bytes`` hold more than
        ``AMPLIFICATION`` times the bytes of the largest of them, merge their whole run (from
        the oldest), so that versions shadowed by newer ones and deletes go. Each such merge at
        least doubles the largest object, so data is rewritten O(log) times, as in tiering."""
        run: list[tuple[tuple[int, int], int]] = []
        for r, size in ranges:  # the oldest consecutive run of objects below max_bytes
            if size >= self.max_bytes:
                if len(run) >= 2:
                    break
                run = []
                continue
            run.append((r, size))
        if len(run) < 2:
            return None
        sizes = [size for _, size in run]
        if sum(sizes) <= AMPLIFICATION * max(sizes):
            return None
        return [r for r, _ in run]

    def debt(self, ranges: list[tuple[tuple[int, int], int]]) -> int:
        """How many merges the policy wants to run now."""
        small = [size for _, size in ranges if size < self.max_bytes]
        over = len(small) - self.bound(sum(small))
        return 0 if over <= 0 else math.ceil(over / (self.fanout - 1))


def merge(
    shard: int,
    inputs: list[RangeObject],
    tables: dict[int, tuple[tuple[int, ...], int | None]],
    horizon: int,
    oldest: bool,
    token_floor: int = 0,
) -> tuple[bytes, dict[int, TableStats]]:
    """Merge consecutive range objects (oldest first) into one encoded range object.

    ``tables`` maps each table id to (primary-key positions, drop timestamp or None);
    ``oldest`` says the inputs begin with the shard's oldest live object; the tokens committed
    before ``token_floor`` are left out.
    """
    ids = [
        tid
        for tid in sorted({tid for ro in inputs for tid in ro.table_ids})
        if tables[tid][1] is None or tables[tid][1] > horizon  # a table dropped: no read names it
    ]
    commands = [[ts, cmd] for ro in inputs for ts, cmd in ro.commands]
    tokens = [e for ro in inputs for e in unpack_entries(ro.tokens) if e[0] >= token_floor]
    head = (shard, inputs[0].from_ts, inputs[-1].to_ts, commits(inputs), commands)
    arrow = _merge_arrow(inputs, ids, tables, horizon, oldest)
    if arrow is not None:  # every table in Arrow (:mod:`dn.upkeep.arrowmerge`)
        streams, stats = arrow
        keys = {tid: tables[tid][0] for tid in streams}
        return rangeobj.encode(*head, {}, tokens, keys, streams), stats
    out_tables: dict[int, dict] = {}
    stats = {}
    for tid in ids:
        pk_pos, _ = tables[tid]
        merged = merge_table([ro.run(tid, pk_pos) for ro in inputs], horizon, oldest)
        if merged is None:
            continue
        out_tables[tid], stats[tid] = merged
    keys = {tid: tables[tid][0] for tid in out_tables}
    return rangeobj.encode(*head, out_tables, tokens, keys), stats


def _merge_arrow(
    inputs: list[RangeObject],
    ids: list[int],
    tables: dict[int, tuple[tuple[int, ...], int | None]],
    horizon: int,
    oldest: bool,
) -> tuple[dict[int, dict], dict[int, TableStats]] | None:
    """Each table merged in Arrow (:func:`dn.upkeep.arrowmerge.merge_table`), or None when
    one cannot be: an input of format 3 holds it, or the inputs' columns do not line up."""
    streams: dict[int, dict] = {}
    stats: dict[int, TableStats] = {}
    for tid in ids:
        pk_pos, _ = tables[tid]
        held = [ro.arrow(tid) for ro in inputs]
        if any(t is False for t in held):
            return None
        try:
            merged = arrowmerge.merge_table(
                [t for t in held if t is not None], pk_pos, horizon, oldest
            )
        except arrowmerge.NotArrow:
            return None
        if merged is not None:
            streams[tid], stats[tid] = merged
    return streams, stats


def commits(inputs: list[RangeObject]) -> int:
    """The commits the output of merging ``inputs`` records: the sum of theirs. It counts
    the commits the output covers, not the versions it keeps, so that the commits after a
    checkpoint (seed 003's trigger) do not depend on which compactions ran."""
    return sum(ro.ncommits for ro in inputs)


def merge_table(runs, horizon: int, oldest: bool):
    # (pk, ts, row or None) for every version; inputs are ts-ordered and disjoint, so a stable
    # sort by pk of their concatenation gives (pk, ts) order.
    pks: list[Any] = []
    ts: list[int] = []
    rows: list[tuple | None] = []
    for run in runs:
        if run is None:
            continue
        # within one run upserts and deletes of a key share no timestamp, so sorting the run's
        # two lists together by (pk, ts) keeps each key's versions in ts order
        both = sorted(
            zip(run.pks + run.del_pks, run.ts + run.del_ts, run.rows + [None] * len(run.del_ts)),
            key=_pk_ts,
        )
        for p, t, r in both:
            pks.append(p)
            ts.append(t)
            rows.append(r)
    order = sorted(range(len(pks)), key=pks.__getitem__)
    keep_pk: list = []
    keep_ts: list[int] = []
    keep_rows: list[tuple] = []
    del_pk: list = []
    del_ts: list[int] = []
    n = len(order)
    i = 0
    while i < n:
        j = i
        key = pks[order[i]]
        while j < n and pks[order[j]] == key:
            j += 1
        group = order[i:j]  # one key's versions, ascending ts
        # the first version inside the window; the one before it is the state at the horizon
        k = next((g for g, idx in enumerate(group) if ts[idx] >= horizon), len(group))
        for g in range(max(k - 1, 0), len(group)):
            idx = group[g]
            if rows[idx] is None:
                if g < k and oldest:
                    continue  # a delete before the horizon with nothing older left to hide
                del_pk.append(key)
                del_ts.append(ts[idx])
            else:
                keep_pk.append(key)
                keep_ts.append(ts[idx])
                keep_rows.append(rows[idx])
        i = j
    if not keep_ts and not del_ts:
        return None
    ncols = len(keep_rows[0]) if keep_rows else 0
    cols = [[r[c] for r in keep_rows] for c in range(ncols)]  # no rows: no column lists
    table = {"ts": keep_ts, "cols": cols, "del_pks": del_pk, "del_ts": del_ts}
    bounds = ([keep_pk[0], keep_pk[-1]] if keep_pk else []) + (
        [del_pk[0], del_pk[-1]] if del_pk else []
    )
    return table, TableStats(len(keep_ts), len(del_ts), min(bounds), max(bounds))


def _pk_ts(v):
    return (v[0], v[1])
