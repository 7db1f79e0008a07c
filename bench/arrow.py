"""Part 7: Arrow on the embedded engine against Delta Lake (issue 15's 2g, 2i, 3d, 3e, 2h).

Workloads, the same on both sides, fresh temp directory per run:

- **2g / 2i** — N rows of (int64 ``id``, string ``user`` = ``u<id % 97>``, float64 ``amount``)
  written in 10 batches, then read whole into Arrow with a cold cache. Ours:
  ``write_columns`` from Arrow tables, the buffers written out (untimed: background work),
  the engine reopened, ``scan_arrow``. Delta: ``write_deltalake(mode="append")`` per batch,
  ``DeltaTable(path).to_pyarrow_table()``. 2i: bytes stored per row once flushed (our range
  objects; Delta's Parquet files), lower is better.
- **3d / 3e** — C commits of 100 rows (as part 3, into Arrow). 3d: the change feed of commits
  C/5 to 4C/5 into Arrow (``changes_arrow`` vs ``load_cdf(...).read_all()``); 3e: time travel
  at commit C/2 into Arrow (``scan_arrow(snapshot=)`` vs ``DeltaTable(path, version=C/2)
  .to_pyarrow_table()``). Cold caches (engine reopened).
- **2h** — point gets with 300k rows still in the mutable buffer, against gets of the same
  keys once flushed, in the same run (ours only: the target is our own flushed rate).

Each figure: median over the runs, ours and Delta interleaved (:mod:`bench.harness`).
"""

from __future__ import annotations

import os
import random
import time

import pyarrow as pa

import dn
from bench.harness import Figure, progress, rmtree, tempdir

SCHEMA = {"id": "int64", "user": "string", "amount": "float64"}


def _batch(lo: int, hi: int) -> pa.Table:
    ids = pa.array(range(lo, hi), pa.int64())
    return pa.table(
        {"id": ids, "user": [f"u{i % 97}" for i in range(lo, hi)], "amount": [i * 0.5 for i in range(lo, hi)]}  # noqa: E501
    )  # fmt: skip


def _bytes_under(path: str, suffix: str = "") -> int:
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(path)
        for f in files
        if f.endswith(suffix)
    )


def _settings() -> dn.Settings:
    return dn.Settings(background=False, freeze_interval_s=None, compaction=False)


def _ours_scan(n: int) -> tuple[float, float]:
    d = tempdir("dn-arrow")
    try:
        e = dn.Engine.open(d, 0, _settings())
        e.create_database("b")
        e.create_table("b", "t", SCHEMA, "id")
        step = n // 10
        for lo in range(0, n, step):
            e.write_columns("b", "t", _batch(lo, lo + step))
        e.freeze()
        e.flush()
        e.close()
        stored = _bytes_under(os.path.join(d, "20"))
        e = dn.Engine.open(d, 0, _settings())
        t0 = time.perf_counter()
        got = e.scan_arrow("b", "t")
        dt = time.perf_counter() - t0
        assert got.num_rows == n
        e.close()
        return n / dt, stored / n
    finally:
        rmtree(d)


def _delta_scan(n: int) -> tuple[float, float]:
    from deltalake import DeltaTable, write_deltalake

    d = tempdir("delta-arrow")
    try:
        step = n // 10
        for lo in range(0, n, step):
            write_deltalake(d, _batch(lo, lo + step), mode="append")
        stored = _bytes_under(d, ".parquet")
        t0 = time.perf_counter()
        got = DeltaTable(d).to_pyarrow_table()
        dt = time.perf_counter() - t0
        assert got.num_rows == n
        return n / dt, stored / n
    finally:
        rmtree(d)


def _ours_feed(commits: int) -> tuple[float, float]:
    d = tempdir("dn-arrow-feed")
    try:
        e = dn.Engine.open(d, 0, _settings())
        e.create_database("b")
        e.create_table("b", "t", SCHEMA, "id")
        ts = [e.write_columns("b", "t", _batch(c * 100, c * 100 + 100)) for c in range(commits)]
        e.freeze()
        e.flush()
        e.close()
        lo, hi, at = ts[commits // 5 - 1], ts[4 * commits // 5 - 1], ts[commits // 2 - 1]
        e = dn.Engine.open(d, 0, _settings())
        t0 = time.perf_counter()
        feed = e.changes_arrow("b", "t", lo, snapshot=hi)
        t_feed = time.perf_counter() - t0
        e.close()
        e = dn.Engine.open(d, 0, _settings())
        t0 = time.perf_counter()
        tt = e.scan_arrow("b", "t", snapshot=at)
        t_tt = time.perf_counter() - t0
        e.close()
        return feed.num_rows / t_feed, tt.num_rows / t_tt
    finally:
        rmtree(d)


def _delta_feed(commits: int) -> tuple[float, float]:
    from deltalake import DeltaTable, write_deltalake

    d = tempdir("delta-arrow-feed")
    try:
        schema = pa.schema([("id", pa.int64()), ("user", pa.string()), ("amount", pa.float64())])
        DeltaTable.create(d, schema, configuration={"delta.enableChangeDataFeed": "true"})
        for c in range(commits):
            write_deltalake(d, _batch(c * 100, c * 100 + 100), mode="append")
        t0 = time.perf_counter()
        feed = DeltaTable(d).load_cdf(commits // 5, 4 * commits // 5).read_all()
        t_feed = time.perf_counter() - t0
        t0 = time.perf_counter()
        tt = DeltaTable(d, version=commits // 2).to_pyarrow_table()
        t_tt = time.perf_counter() - t0
        return feed.num_rows / t_feed, tt.num_rows / t_tt
    finally:
        rmtree(d)


def _gets(rows: int, gets: int) -> tuple[float, float]:
    """Gets/s with ``rows`` rows in the mutable buffer, then with them flushed."""
    e = dn.Engine.open(f"memory://bench-gets-{random.random()}", 0, _settings())
    e.create_database("b")
    e.create_table("b", "t", SCHEMA, "id")
    step = 50_000
    for lo in range(0, rows, step):
        e.write_columns("b", "t", _batch(lo, lo + step))
    keys = [random.randrange(rows) for _ in range(gets)]
    e.get("b", "t", 0)  # the buffer's key index, built once
    t0 = time.perf_counter()
    for k in keys:
        e.get("b", "t", k)
    in_memory = gets / (time.perf_counter() - t0)
    e.freeze()
    e.flush()
    e.get("b", "t", 0)  # the object in the cache, as a warm reader has it
    t0 = time.perf_counter()
    for k in keys:
        e.get("b", "t", k)
    flushed = gets / (time.perf_counter() - t0)
    e.close()
    return in_memory, flushed


def run(quick: bool) -> list[Figure]:
    n = 200_000 if quick else 1_000_000
    commits = 200 if quick else 1000
    runs = 3 if quick else 5
    f2g = Figure(
        "2g",
        "arrow",
        f"scan of {n:,} flushed rows into Arrow",
        "rows/s",
        peer_name="Delta Lake",
        target=1.5,
        note="cold cache; Delta: DeltaTable(path).to_pyarrow_table()",
    )
    f2i = Figure(
        "2i",
        "arrow",
        f"bytes stored per row ({n:,} rows, flushed)",
        "bytes/row",
        higher_is_better=False,
        peer_name="Delta Lake",
        target=1.0,
        note="our range objects (zstd-compressed bodies) vs Delta's Parquet files",
    )
    f3d = Figure(
        "3d",
        "arrow",
        f"change feed into Arrow, commits {commits // 5}-{4 * commits // 5} of {commits}",
        "changes/s",
        peer_name="Delta Lake",
        target=3.0,
        note="changes_arrow vs load_cdf(...).read_all(), cold caches",
    )
    f3e = Figure(
        "3e",
        "arrow",
        f"time travel into Arrow at commit {commits // 2}",
        "rows/s",
        peer_name="Delta Lake",
        target=1.5,
        note="scan_arrow(snapshot=) vs load_as_version + to_pyarrow_table",
    )
    f2h = Figure("2h", "arrow", "point gets, 300k rows in the mutable buffer", "gets/s",
                 peer_name="ours, flushed", target=0.5,
                 note="the same keys once flushed, same run (the peer column is ours)")  # fmt: skip
    for r in range(runs):
        progress(f"7 run {r + 1}/{runs}: scans ({n:,} rows)")
        rate, per_row = _ours_scan(n)
        f2g.ours.append(rate)
        f2i.ours.append(per_row)
        rate, per_row = _delta_scan(n)
        f2g.peer.append(rate)
        f2i.peer.append(per_row)
        progress(f"7 run {r + 1}/{runs}: feeds ({commits} commits)")
        feed, tt = _ours_feed(commits)
        f3d.ours.append(feed)
        f3e.ours.append(tt)
        feed, tt = _delta_feed(commits)
        f3d.peer.append(feed)
        f3e.peer.append(tt)
        progress(f"7 run {r + 1}/{runs}: point gets")
        in_memory, flushed = _gets(60_000 if quick else 300_000, 2_000)
        f2h.ours.append(in_memory)
        f2h.peer.append(flushed)
    return [f2g, f2i, f3d, f3e, f2h]


if __name__ == "__main__":
    import json

    print(json.dumps([f.to_json() for f in run(quick=True)], indent=1))
