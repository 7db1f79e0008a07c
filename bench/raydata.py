"""Part 8: Ray Data and the live feed on a 4-shard cluster (issue 15's 4f and 4g).

- **4f-sink** — ``ray.data.range(N).map_batches(...)`` (int64 ``k``, string ``v``, float64
  ``w``) written with ``ds.write_datasink(DNDatasink(...))``: rows/s from the call to its return
  (every row durable then). Target ≥ 300k rows/s.
- **4f-read** — ``coordinator.read_dn(...)`` of those N rows, ``ds.materialize()``: rows/s.
  Target ≥ 2M rows/s.
- **4g** — the live feed: 16 Ray tasks write batches of 100 rows for a few seconds while the
  driver follows ``client.subscribe``; each change's latency is the wall time it is emitted
  minus the wall-clock part of its commit timestamp. p50 ≤ 100 ms, p99 ≤ 500 ms.

Ray on loopback with 2 CPUs (as part 4), a fresh deployment per run, a local-directory store.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from bench.harness import Figure, progress, rmtree, tempdir

NAMESPACE = "dn-bench-raydata"
SCHEMA = {"k": "int64", "v": "string", "w": "float64"}


def _rows(batch: dict) -> dict:
    ids = batch["id"]
    return {"k": ids, "v": [f"r{i % 1000}" for i in ids], "w": ids * 0.5}


def _writer(client: Any, task: int, seconds: float) -> int:
    end, n = time.time() + seconds, 0
    while time.time() < end:
        base = (task * 1_000_000) + n * 100
        client.write_columns("b", "feed", {"k": list(range(base, base + 100)), "v": ["x"] * 100})
        n += 1
    return n


def _one_run(n: int, feed_s: float) -> tuple[float, float, list[float]]:
    import ray
    import ray.data

    import coordinator
    from coordinator.client.raydata import DNDatasink

    d = tempdir("dn-raydata")
    client = coordinator.deploy(shards=4, store=d, namespace=NAMESPACE)
    try:
        client.create_database("b")
        client.create_table("b", "t", SCHEMA, "k")
        client.create_table("b", "feed", {"k": "int64", "v": "string"}, "k")
        time.sleep(2)
        ds = ray.data.range(n, override_num_blocks=8).map_batches(_rows, batch_format="numpy")
        t0 = time.perf_counter()
        ds.write_datasink(DNDatasink("b", "t", namespace=NAMESPACE))
        sink = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = coordinator.read_dn("b", "t", namespace=NAMESPACE).materialize()
        read = got.count() / (time.perf_counter() - t0)
        assert got.count() == n
        start = client.snapshot() + 1
        task = ray.remote(num_cpus=0.01)(_writer)
        refs = [task.remote(client, t, feed_s) for t in range(16)]
        lat: list[float] = []
        stop_at = time.time() + feed_s + 2
        for tbl in client.subscribe("b", "feed", start, stop=lambda: time.time() > stop_at):
            now_ms = time.time() * 1000
            lat.extend(now_ms - (ts >> 16) for ts in tbl.column("_commit_ts").to_pylist())
        ray.get(refs)
        return sink, read, lat
    finally:
        coordinator.shutdown(namespace=NAMESPACE)
        rmtree(d)


def run(quick: bool, ray_ok: bool = True) -> list[Figure]:
    n = 500_000 if quick else 2_000_000
    runs = 2 if quick else 5  # full runs: 5, as parts 2-7 (part 9: 3)
    sink = Figure(
        "4f-sink",
        "raydata",
        f"DNDatasink writing {n:,} rows from ray.data.range",
        "rows/s",
        target=300_000,
        absolute=True,
    )
    read = Figure(
        "4f-read",
        "raydata",
        f"read_dn of {n:,} rows on 4 shards, materialized",
        "rows/s",
        target=2_000_000,
        absolute=True,
    )
    p50 = Figure(
        "4g-p50",
        "raydata",
        "live feed, commit to emit, p50 (16 writers)",
        "ms",
        higher_is_better=False,
        target=100,
        absolute=True,
    )
    p99 = Figure("4g-p99", "raydata", "live feed, commit to emit, p99 (16 writers)", "ms",
                 higher_is_better=False, target=500, absolute=True)  # fmt: skip
    figs = [sink, read, p50, p99]
    if not ray_ok:
        for f in figs:
            f.skipped = "--no-ray"
        return figs
    import ray
    import ray.cloudpickle

    from coordinator.cli.ray_node import start_local_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start_local_ray(num_cpus=2)
    try:
        for r in range(runs):
            progress(f"8 run {r + 1}/{runs}: sink, read_dn, live feed")
            s, rd, lat = _one_run(n, 3.0 if quick else 6.0)
            sink.ours.append(s)
            read.ours.append(rd)
            lat.sort()
            p50.ours.append(statistics.median(lat))
            p99.ours.append(lat[int(0.99 * (len(lat) - 1))])
    finally:
        ray.shutdown()
    return figs


if __name__ == "__main__":
    for f in run(quick="--quick" in sys.argv):
        print(f.to_json())
