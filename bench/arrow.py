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
- **2j / 2k** — the client's resident-set peak growth during ``scan_batches`` over 10M rows
  (quick: 2M) of the 2g rows on the embedded engine, in a fresh process, against the whole-table
  ``scan_arrow`` then ``to_batches`` (what ``scan_batches`` did before); target: 2x one batch's
  Arrow bytes. 2j: the objects the engine writes by itself (``maintain`` after each 100k-row
  write: frozen at ``freeze_bytes``, no compaction); 2k: objects of one batch's rows (65,536).
  The consumer lets each batch go before it asks for the next, so the figure is what the scan
  holds: a plain ``for`` loop holds batch i while batch i+1 is made, two batches before the
  scan holds anything, and that figure is reported too (``held_mib``). One run each (a peak,
  not a rate); the growth is measured after a warm-up scan of a small table (one-off imports:
  pyarrow imports pandas on first use) with the peak reset (``/proc/self/clear_refs``).

Each figure: median over the runs, ours and Delta interleaved (:mod:`bench.harness`).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pyarrow as pa

import dn
from bench.harness import Figure, progress, rmtree, tempdir

SCHEMA = {"id": "int64", "user": "string", "amount": "float64"}
MiB = 1024 * 1024


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


def write_scan_table(path: str, rows: int, object_rows: int | None) -> int:
    """Table b.t of ``rows`` 2g rows at ``path``, in objects of ``object_rows`` (None: as the
    engine freezes by itself, ``maintain`` after each 100k-row write), then a table b.w of ten
    rows in an object of its own (to warm up on) and a checkpoint (so opening reads no range
    object). Returns the number of range objects."""
    e = dn.Engine.open(path, 0, _settings())
    e.create_database("b")
    e.create_table("b", "t", SCHEMA, "id")
    step = min(100_000, object_rows or 100_000)
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        e.write_columns("b", "t", _batch(lo, hi))
        if object_rows is None:
            e.maintain()
        elif hi % object_rows == 0 or hi == rows:
            e.freeze()
            e.flush()
    e.create_table("b", "w", SCHEMA, "id")
    e.write_columns("b", "w", _batch(0, 10))
    e.freeze()
    e.flush()
    e.checkpoint()
    e.close()
    return len(os.listdir(os.path.join(path, "20", "0"))) - 1  # b.w's own object


def scan_peak(path: str, how: str, batch_rows: int) -> tuple[int, int, int]:
    """In this process: the resident set's peak growth (bytes) over one scan of b.t at
    ``path`` (``how``: "stream", ``scan_batches`` with a consumer that lets each batch go
    before it asks for the next; "held", the same with a plain ``for`` loop, which holds batch
    i while batch i+1 is made; "whole", ``scan_arrow`` then ``to_batches``), the rows read and
    the largest batch's Arrow bytes (``nbytes``, taken in a second scan once the peak is read:
    taking it in the measured scan adds a quarter MiB of its own). The peak is reset after a
    warm-up scan of b.w, so one-off imports and the opening do not count; where
    ``/proc/self/clear_refs`` refuses, ``ru_maxrss`` is used (an overestimate)."""
    import gc
    import resource

    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) * 1024 for x in f if x.startswith(field))

    e = dn.Engine.open(path, 0, _settings())
    list(e.scan_batches("b", "w"))
    e.scan_arrow("b", "w").to_batches()
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak = lambda: status("VmHWM:")  # noqa: E731
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
    start = status("VmRSS:")
    if how == "whole":
        batches = iter(e.scan_arrow("b", "t").to_batches(max_chunksize=batch_rows))
    else:
        batches = e.scan_batches("b", "t", batch_rows=batch_rows)
    rows = 0
    if how == "held":
        for b in batches:
            rows += b.num_rows
    else:
        for b in batches:
            rows += b.num_rows
            del b  # let go before the next is made
    del batches
    grown = peak() - start
    biggest = max(b.nbytes for b in e.scan_batches("b", "t", batch_rows=batch_rows))
    e.close()
    return grown, rows, biggest


def measure_scan_peak(path: str, how: str, batch_rows: int) -> tuple[int, int, int]:
    """:func:`scan_peak` in a fresh Python process (run from the checkout's root)."""
    code = f"from bench.arrow import scan_peak; print(*scan_peak({path!r}, {how!r}, {batch_rows}))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    grown, rows, biggest = map(int, out.stdout.split())
    return grown, rows, biggest


def _scan_memory(fig: Figure, n: int, object_rows: int | None, batch_rows: int) -> None:
    d = tempdir("dn-scan-memory")
    try:
        objects = write_scan_table(d, n, object_rows)
        grown, rows, batch = measure_scan_peak(d, "stream", batch_rows)
        assert rows == n
        held, rows, _ = measure_scan_peak(d, "held", batch_rows)
        assert rows == n
        whole, rows, _ = measure_scan_peak(d, "whole", batch_rows)
        assert rows == n
        fig.ours.append(grown / MiB)
        fig.peer.append(whole / MiB)
        fig.target = 2 * batch / MiB
        fig.extra.update(
            objects=objects,
            batch_bytes=batch,
            batch_rows=batch_rows,
            rows=n,
            held_mib=round(held / MiB, 2),
        )
    finally:
        rmtree(d)


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
        note="our range objects (format 4: Arrow IPC, zstd per buffer) vs Delta's Parquet files",
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
    big = 2_000_000 if quick else 10_000_000
    batch_rows = 65_536
    f2j, f2k = (
        Figure(
            fid,
            "arrow",
            f"scan_batches peak RSS growth, {big:,} rows, {layout}",
            "MiB",
            higher_is_better=False,
            peer_name="whole table (scan_arrow)",
            absolute=True,
            note=f"{batch_rows:,}-row batches; target: 2x one batch's Arrow bytes"
            + ("; quick mode: 2M rows, not 10M" if quick else ""),
        )
        for fid, layout in (
            ("2j", "objects as the engine freezes them"),
            ("2k", f"objects of {batch_rows:,} rows"),
        )
    )
    progress(f"7: scan_batches memory, {big:,} rows, the engine's own objects")
    _scan_memory(f2j, big, None, batch_rows)
    progress(f"7: scan_batches memory, {big:,} rows, objects of one batch")
    _scan_memory(f2k, big, batch_rows, batch_rows)
    return [f2g, f2i, f3d, f3e, f2h, f2j, f2k]


if __name__ == "__main__":
    import json

    print(json.dumps([f.to_json() for f in run(quick=True)], indent=1))
