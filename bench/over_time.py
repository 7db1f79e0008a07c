"""Scan speed over a long ingest, with and without compaction.

    python -m bench.over_time [--batches N] [--every M] [--out bench/over_time.json]

One shard on a local directory ingests ``N`` small batches (100 rows, 100-byte values, keys
drawn from a fixed key space so versions pile up), freezing and flushing often (a range object
every few batches, as a busy shard under a short ``freeze_interval_s`` would). Every ``M``
batches it reports: live range objects, range objects a latest-state scan reads, and the
scan's speed from a cold reader (fresh cache: objects fetched from the store and merged) —
once with compaction on (the default policy, and a 1 s retention window so that merges also
drop versions no permitted read can see) and once with it off. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dn import Engine, Settings
from dn.read.cache import ObjectCache
from dn.read.reader import Reader
from dn.read.view import materialize, view_runs

KEYS = 20_000


def run(compaction: bool, batches: int, every: int) -> list[dict]:
    root = tempfile.mkdtemp(prefix="dn-over-time-")
    try:
        settings = Settings(
            background=False,
            freeze_bytes=256 * 1024,
            freeze_interval_s=None,
            checkpoint_interval_s=None,
            compaction=compaction,
            compaction_base_bytes=256 * 1024,
            gc_grace_s=0,
            retention_s=1.0 if compaction else None,
        )
        eng = Engine.open(root, settings=settings)
        eng.create_database("db")
        eng.create_table("db", "t", {"k": "int64", "v": "bytes"}, "k")
        rng = random.Random(0)
        value = b"x" * 100
        points = []
        for i in range(1, batches + 1):
            eng.write("db", "t", [{"k": k, "v": value} for k in rng.sample(range(KEYS), 100)])
            eng.maintain()
            if i % every == 0:
                eng.freeze()
                eng.flush()
                points.append(_measure(eng, root, i))
                p = points[-1]
                print(
                    f"  compaction={'on ' if compaction else 'off'} batch {i}/{batches}: "
                    f"{p['live_ranges']} objects, scan reads {p['objects_read']}, "
                    f"{p['scan_rows_per_s']:,.0f} rows/s",
                    file=sys.stderr,
                    flush=True,
                )
        eng.close()
        return points
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(eng: Engine, root: str, batch: int) -> dict:
    view = eng.read_view("db", "t")
    reader = Reader(eng.store, 0, ObjectCache(1 << 34))
    t0 = time.perf_counter()
    runs = view_runs(reader, view)
    n = sum(1 for _ in materialize(reader, view, runs=runs))
    dt = time.perf_counter() - t0
    st = eng.status()
    return {
        "batch": batch,
        "live_ranges": st["objects"]["live_ranges"],
        "objects_read": len(runs),
        "rows": n,
        "scan_s": round(dt, 4),
        "scan_rows_per_s": round(n / dt),
        "bytes_live": st["objects"]["live_range_bytes"],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--out", default=str(Path(__file__).with_name("over_time.json")))
    args = ap.parse_args(argv)
    result = {}
    for compaction in (True, False):
        print(f"ingest with compaction {'on' if compaction else 'off'}", file=sys.stderr)
        result["on" if compaction else "off"] = run(compaction, args.batches, args.every)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(
        "| batches | objects (on) | read by scan (on) | scan rows/s (on) | objects (off) | "
        "scan rows/s (off) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(result["on"], result["off"]):
        print(
            f"| {a['batch']} | {a['live_ranges']} | {a['objects_read']} | "
            f"{a['scan_rows_per_s']:,} | {b['live_ranges']} | {b['scan_rows_per_s']:,} |"
        )


if __name__ == "__main__":
    main()
