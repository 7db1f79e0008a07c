"""Parts 2 and 5: the embedded engine against SlateDB, on a local directory and on S3 (moto).

Same data on both sides: int64 keys, 100-byte values. Ours is one ``dn.Engine`` (background
maintenance on, default settings) on a table ``{"k": "int64", "v": "bytes"}`` keyed by ``k``,
its store wrapped in :class:`bench.stores.CountingStore`; SlateDB is :mod:`bench.slate`.

Figures (see docs/benchmarks.md for what bounds each):

- 2a durable single-row writes, one writer (writes/s);
- 2b durable single-row writes from 100 concurrent writers: asyncio tasks on both sides
  (ours ``Engine.write_async``); 2b-threads: ours from 100 threads (writes/s);
- 2c durable batches of 1,000 rows (rows/s);
- 2d point gets on flushed data, cache warm (gets/s);
- 2e full scan of the table (rows/s);
- 2f objects and bytes written to the store per 1,000 writes in 2a-2c, and store requests per
  second while idle.

Each write run uses a fresh temp directory (or a fresh S3 prefix); 2d/2e load the data once
per side and time repeated passes over it, after one untimed warm-up pass.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from bench import slate
from bench.harness import Figure, progress
from bench.ours import DB, TABLE, WRITERS, Ours
from bench.slate import Slate
from bench.stores import MotoServer, objects_written

VALUE = slate.VALUE


@dataclass(frozen=True)
class Sizes:
    runs: int
    single: int  # 2a writes per run
    concurrent: int  # 2b writes per run
    batches: int  # 2c batches of 1,000 per run
    get_rows: int  # 2d rows loaded
    gets: int  # 2d gets per pass
    scan_rows: int  # 2e rows loaded
    idle_s: float  # 2f idle window


FULL = Sizes(
    runs=5,
    single=500,
    concurrent=3000,
    batches=20,
    get_rows=100_000,
    gets=5000,
    scan_rows=1_000_000,
    idle_s=3.0,
)
QUICK = Sizes(
    runs=3,
    single=150,
    concurrent=1000,
    batches=5,
    get_rows=20_000,
    gets=2000,
    scan_rows=100_000,
    idle_s=1.0,
)
S3_FULL = Sizes(
    runs=5, single=200, concurrent=1000, batches=5, get_rows=0, gets=0, scan_rows=0, idle_s=0
)
S3_QUICK = Sizes(
    runs=3, single=60, concurrent=400, batches=3, get_rows=0, gets=0, scan_rows=0, idle_s=0
)


# -- figures --------------------------------------------------------------------------------------


def _write_figures(sz: Sizes, where: str, s3) -> list[Figure]:
    pre = "2" if where == "local" else "5"
    sfx = "" if where == "local" else " (S3, moto)"
    fa = Figure(
        f"{pre}a",
        where,
        f"durable single-row writes, 1 writer{sfx}",
        "writes/s",
        peer_name="SlateDB",
        target=2.0 if where == "local" else 1.2,
    )
    fb = Figure(
        f"{pre}b",
        where,
        f"durable single-row writes, {WRITERS} writers{sfx}",
        "writes/s",
        peer_name="SlateDB",
        target=5.0 if where == "local" else None,
    )
    fc = Figure(
        f"{pre}c",
        where,
        f"durable batches of 1,000 rows{sfx}",
        "rows/s",
        peer_name="SlateDB",
        target=20.0 if where == "local" else None,
    )
    fb.note = "asyncio tasks on both sides: ours Engine.write_async, SlateDB put + await_durable"
    ft = Figure(
        f"{pre}b-threads",
        where,
        f"durable single-row writes, {WRITERS} threads (ours) vs {WRITERS} asyncio "
        f"tasks (SlateDB){sfx}",
        "writes/s",
        peer_name="SlateDB",
        note="ours with blocking Engine.write from threads; bounded by CPython thread "
        "wake-ups on 2 cores",
    )
    cost = {
        k: Figure(
            f"{pre}f-{k}-objects",
            where,
            f"objects written per 1,000 writes in {pre}{k}{sfx}",
            "objects",
            higher_is_better=False,
            peer_name="SlateDB",
            target=1.0 if (k == "b" and where == "local") else None,
        )
        for k in "abc"
    }
    size = {
        k: Figure(
            f"{pre}f-{k}-bytes",
            where,
            f"bytes written per 1,000 writes in {pre}{k}{sfx}",
            "bytes",
            higher_is_better=False,
            peer_name="SlateDB",
        )
        for k in "abc"
    }
    for run in range(sz.runs):
        for side in ("ours", "peer"):
            progress(f"{pre}a-c {where} run {run + 1}/{sz.runs}: {side}")
            if side == "ours":
                for k, fig, n, rows in (
                    ("a", fa, sz.single, sz.single),
                    ("b", fb, sz.concurrent, sz.concurrent),
                    ("t", ft, sz.concurrent, sz.concurrent),
                    ("c", fc, sz.batches, sz.batches * 1000),
                ):
                    o = Ours(f"w{run}{k}", s3)
                    try:
                        before = o.counts()
                        if k == "t":
                            dt = o.concurrent_threads(n)
                            fig.ours.append(rows / dt)
                            continue
                        if k == "b":
                            dt = o.concurrent(n)
                        else:
                            t0 = time.perf_counter()
                            o.single(n) if k == "a" else o.batches(n)
                            dt = time.perf_counter() - t0
                        objs, nbytes = objects_written(before, o.counts())
                        fig.ours.append(rows / dt)
                        cost[k].ours.append(objs / n * 1000)  # a write = one durable call
                        size[k].ours.append(nbytes / n * 1000)
                    finally:
                        o.close()
            else:
                for k, fig, n, rows in (
                    ("a", fa, sz.single, sz.single),
                    ("b", fb, sz.concurrent, sz.concurrent),
                    ("c", fc, sz.batches, sz.batches * 1000),
                ):
                    p = Slate(f"w{run}{k}", s3)
                    try:
                        p0, u0 = slate.puts(p.recorder), p.usage()
                        t0 = time.perf_counter()
                        if k == "a":
                            p.run(slate.single_writes(p.db, 0, n))
                        elif k == "b":
                            p.run(slate.concurrent_writes(p.db, 0, n, WRITERS))
                        else:
                            p.run(slate.batches(p.db, 0, n, 1000))
                        dt = time.perf_counter() - t0
                        p1, u1 = slate.puts(p.recorder), p.usage()
                        fig.peer.append(rows / dt)
                        if k == "b":
                            ft.peer.append(rows / dt)
                        cost[k].peer.append((p1 - p0) / n * 1000)
                        if p.dir:
                            size[k].peer.append(max(0, u1[1] - u0[1]) / n * 1000)
                    finally:
                        p.close()
    for k in "abc":
        cost[k].note = (
            "a write = one durable call (a row in a/b, a batch of 1,000 in c); "
            "ours counted by a store wrapper, SlateDB by its metrics recorder "
            "(successful PUTs)"
        )
        size[k].note = "ours: bytes put through the store wrapper; SlateDB: growth of its directory"
    out = [fa, fb, ft, fc, *cost.values()]
    if where == "local":
        out.extend(size.values())
    return out


def _read_figures(sz: Sizes) -> list[Figure]:
    fd = Figure(
        "2d",
        "local",
        "point gets on flushed data, cache warm",
        "gets/s",
        peer_name="SlateDB",
        target=3.0,
        note=f"{sz.get_rows:,} rows loaded and flushed once per side; each run is "
        f"{sz.gets:,} gets of random keys after one warm-up pass",
    )
    fe = Figure(
        "2e",
        "local",
        f"full scan of {sz.scan_rows:,} rows",
        "rows/s",
        peer_name="SlateDB",
        target=3.0,
        note="rows loaded and flushed once per side; one warm-up scan, then timed "
        "scans; ours yields a dict per row, SlateDB a KeyValue per row "
        "(next_batch(1000))",
    )
    rng = random.Random(7)
    keys = [rng.randrange(sz.get_rows) for _ in range(sz.gets)]

    progress(f"2d/2e: loading {sz.get_rows:,} + {sz.scan_rows:,} rows into our engine")
    og, os_ = Ours("gets"), Ours("scan")
    try:
        og.load(sz.get_rows)
        os_.load(sz.scan_rows)
        progress("2d/2e: loading the same into SlateDB")
        pg, ps = Slate("gets"), Slate("scan")
        try:
            pg.run(slate.load(pg.db, sz.get_rows))
            ps.run(slate.load(ps.db, sz.scan_rows))

            def our_gets():
                g = og.engine.get
                for k in keys:
                    g(DB, TABLE, k)

            def our_scan():
                return sum(1 for _ in os_.engine.scan(DB, TABLE))

            our_gets()
            pg.run(slate.gets(pg.db, keys))
            assert our_scan() == sz.scan_rows
            assert ps.run(slate.scan(ps.db)) == sz.scan_rows
            for run in range(sz.runs):
                progress(f"2d/2e run {run + 1}/{sz.runs}")
                t0 = time.perf_counter()
                our_gets()
                fd.ours.append(len(keys) / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                pg.run(slate.gets(pg.db, keys))
                fd.peer.append(len(keys) / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                our_scan()
                fe.ours.append(sz.scan_rows / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                ps.run(slate.scan(ps.db))
                fe.peer.append(sz.scan_rows / (time.perf_counter() - t0))
        finally:
            pg.close()
            ps.close()
    finally:
        og.close()
        os_.close()
    return [fd, fe]


def _idle_figure(sz: Sizes) -> Figure:
    f = Figure(
        "2f-idle",
        "local",
        "store requests per second while idle",
        "requests/s",
        higher_is_better=False,
        peer_name="SlateDB",
        target=0.0,
        absolute=True,
        note=f"after 100 durable writes and 0.5 s of settling, requests counted over "
        f"{sz.idle_s:g} s; ours with its background maintenance thread running",
    )
    for run in range(sz.runs):
        progress(f"2f idle run {run + 1}/{sz.runs}")
        o = Ours(f"idle{run}")
        try:
            for i in range(100):
                o.engine.write(DB, TABLE, upserts=[{"k": i, "v": VALUE}])
            time.sleep(0.5)
            r0 = o.requests()
            time.sleep(sz.idle_s)
            f.ours.append((o.requests() - r0) / sz.idle_s)
        finally:
            o.close()
        p = Slate(f"idle{run}")
        try:
            p.run(slate.single_writes(p.db, 0, 100))
            p.run(asyncio.sleep(0.5))
            r0 = slate.total_requests(p.recorder)
            p.run(asyncio.sleep(sz.idle_s))
            f.peer.append((slate.total_requests(p.recorder) - r0) / sz.idle_s)
        finally:
            p.close()
    return f


def run_local(quick: bool) -> list[Figure]:
    sz = QUICK if quick else FULL
    figs = _write_figures(sz, "local", None)
    figs.extend(_read_figures(sz))
    figs.append(_idle_figure(sz))
    return figs


def _floor_figure(sz: Sizes, moto: MotoServer, bucket: str) -> Figure:
    """5a-latency: the median latency of one durable single-row write against one bare
    conditional PUT of the same server (the wire floor), interleaved run by run."""
    import http.client
    import statistics
    from urllib.parse import urlsplit

    fig = Figure(
        "5a-latency", "s3", "latency of one durable single-row write (S3, moto)", "ms",
        higher_is_better=False, peer_name="one bare conditional PUT", target=1 / 1.2,
        note="ours: Engine.write of one row, durable; the floor: an unsigned http.client PUT "
        "with If-None-Match: * of the same ~150 bytes on a kept-alive connection; medians; "
        "target: ours within 1.2x of the floor",
    )  # fmt: skip
    u = urlsplit(moto.endpoint)
    for run in range(sz.runs):
        progress(f"5a-latency run {run + 1}/{sz.runs}")
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        lat = []
        for i in range(sz.single):
            t0 = time.perf_counter()
            conn.request("PUT", f"/{bucket}/floor-{run}/{i}", VALUE + b"x" * 50,
                         {"If-None-Match": "*"})  # fmt: skip
            resp = conn.getresponse()
            resp.read()
            lat.append(time.perf_counter() - t0)
            assert resp.status == 200, resp.status
        conn.close()
        fig.peer.append(statistics.median(lat) * 1000)
        o = Ours(f"floor{run}", (moto, bucket))
        try:
            lat = []
            for i in range(sz.single):
                t0 = time.perf_counter()
                o.engine.write(DB, TABLE, upserts=[{"k": i, "v": VALUE}])
                lat.append(time.perf_counter() - t0)
            fig.ours.append(statistics.median(lat) * 1000)
        finally:
            o.close()
    return fig


def run_s3(quick: bool) -> list[Figure]:
    sz = S3_QUICK if quick else S3_FULL
    progress("5: starting moto S3 server on 127.0.0.1")
    with MotoServer() as moto:
        bucket = moto.new_bucket()
        figs = _write_figures(sz, "s3", (moto, bucket))
        figs.append(_floor_figure(sz, moto, bucket))
    for f in figs:
        f.group = "s3"
    return figs
