"""Part 3: the embedded engine against Delta Lake (PyPI ``deltalake``, delta-rs).

Workload, the same on both sides, fresh temp directory per run:

1. C commits of 100 rows each (int64 key, 100-byte value; keys never repeat), timed as a
   whole: commits/s. Ours: ``Engine.write`` (durable on return). Delta: ``write_deltalake(...,
   mode="append")`` on a table created empty (version 0) with
   ``delta.enableChangeDataFeed=true``, so commit i is version i.
2. A time-travel read at the commit C/2: all rows as of that commit. Ours:
   ``scan(snapshot=ts of that commit)``, consumed as dicts; Delta:
   ``DeltaTable(path, version=C/2).to_pyarrow_table()``.
3. The change feed between commits C/5 and 4C/5, both included. Ours:
   ``changes(from_ts=ts of commit C/5, snapshot=ts of commit 4C/5)``; Delta:
   ``load_cdf(starting_version=C/5, ending_version=4C/5).read_all()``.

Before the reads our buffer is frozen and checkpointed to the store (a range object plus a
checkpoint, untimed: that is background work) and the engine is reopened before each read,
so both reads start with a cold object cache and fetch from the store, as Delta's do.
"""

from __future__ import annotations

import time

import dn
from bench.harness import Figure, progress, rmtree, tempdir

VALUE = b"v" * 100
ROWS = 100


def _ours(commits: int) -> tuple[float, float, float, int, int, float]:
    d = tempdir("dn-delta")
    try:
        e = dn.Engine.open(d, 0, dn.Settings())
        e.create_database("bench")
        e.create_table("bench", "t", {"k": "int64", "v": "bytes"}, "k")
        ts: list[int] = []
        t0 = time.perf_counter()
        for c in range(commits):
            base = c * ROWS
            ts.append(
                e.write(
                    "bench", "t", upserts=[{"k": k, "v": VALUE} for k in range(base, base + ROWS)]
                )
            )
        t_commit = time.perf_counter() - t0
        t0 = time.perf_counter()
        e.freeze()
        e.flush()
        e.checkpoint()
        t_flush = time.perf_counter() - t0
        e.close()
        tt_at, lo, hi = ts[commits // 2 - 1], ts[commits // 5 - 1], ts[4 * commits // 5 - 1]

        e = dn.Engine.open(d, 0, dn.Settings())
        t0 = time.perf_counter()
        n_tt = sum(1 for _ in e.scan("bench", "t", snapshot=tt_at))
        t_tt = time.perf_counter() - t0
        e.close()

        e = dn.Engine.open(d, 0, dn.Settings())
        t0 = time.perf_counter()
        n_cdf = sum(1 for _ in e.changes("bench", "t", lo, snapshot=hi))
        t_cdf = time.perf_counter() - t0
        e.close()
        return t_commit, t_tt, t_cdf, n_tt, n_cdf, t_flush
    finally:
        rmtree(d)


def _delta(commits: int) -> tuple[float, float, float, int, int]:
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    d = tempdir("delta")
    try:
        schema = pa.schema([("k", pa.int64()), ("v", pa.binary())])
        DeltaTable.create(d, schema, configuration={"delta.enableChangeDataFeed": "true"})
        values = pa.array([VALUE] * ROWS, pa.binary())
        t0 = time.perf_counter()
        for c in range(commits):
            base = c * ROWS
            write_deltalake(
                d,
                pa.table({"k": pa.array(range(base, base + ROWS), pa.int64()), "v": values}),
                mode="append",
            )
        t_commit = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_tt = DeltaTable(d, version=commits // 2).to_pyarrow_table().num_rows
        t_tt = time.perf_counter() - t0
        t0 = time.perf_counter()
        cdf = (
            DeltaTable(d)
            .load_cdf(starting_version=commits // 5, ending_version=4 * commits // 5)
            .read_all()
        )
        t_cdf = time.perf_counter() - t0
        return t_commit, t_tt, t_cdf, n_tt, cdf.num_rows
    finally:
        rmtree(d)


def run(quick: bool) -> list[Figure]:
    commits = 200 if quick else 1000
    runs = 3 if quick else 5
    c1, c2, c3 = commits // 2, commits // 5, 4 * commits // 5
    fc = Figure(
        "3a",
        "delta",
        f"{commits:,} commits of {ROWS} rows",
        "commits/s",
        peer_name="Delta Lake",
        target=20.0,
    )
    ft = Figure(
        "3b",
        "delta",
        f"time-travel read at commit {c1} ({c1 * ROWS:,} rows)",
        "rows/s",
        peer_name="Delta Lake",
        target=1.0,
        note="read from the store with a cold cache (engine reopened); ours as "
        "dicts, Delta as an Arrow table",
    )
    ff = Figure(
        "3c",
        "delta",
        f"change feed, commits {c2} to {c3}",
        "changes/s",
        peer_name="Delta Lake",
        target=1.0,
        note="read from the store with a cold cache (engine reopened); ours as "
        "Change records, Delta's change data feed as an Arrow table",
    )
    flush_s: list[float] = []
    for r in range(runs):
        progress(f"3 run {r + 1}/{runs}: ours ({commits} commits)")
        t_commit, t_tt, t_cdf, n_tt, n_cdf, t_flush = _ours(commits)
        assert n_tt == c1 * ROWS and n_cdf == (c3 - c2 + 1) * ROWS, (n_tt, n_cdf)
        fc.ours.append(commits / t_commit)
        ft.ours.append(n_tt / t_tt)
        ff.ours.append(n_cdf / t_cdf)
        flush_s.append(t_flush)
        progress(f"3 run {r + 1}/{runs}: Delta Lake ({commits} commits)")
        t_commit, t_tt, t_cdf, n_tt, n_cdf = _delta(commits)
        assert n_tt == c1 * ROWS and n_cdf == (c3 - c2 + 1) * ROWS, (n_tt, n_cdf)
        fc.peer.append(commits / t_commit)
        ft.peer.append(n_tt / t_tt)
        ff.peer.append(n_cdf / t_cdf)
    fc.extra["ours_buffer_checkpoint_s"] = flush_s
    fc.note = (
        "ours: each commit durable in the log on return; the buffer checkpoint that "
        "later writes the range object is background work, timed separately in "
        "extra.ours_buffer_checkpoint_s"
    )
    return [fc, ft, ff]
