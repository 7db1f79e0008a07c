"""Part 4: the Ray cluster, and the shard-level figures that bound it.

With ``dn.Engine`` directly (no Ray), fresh temp directory per run, ``background=False``:

- recovery: write N rows in batches of 1,000 without flushing (N/1,000 log objects), close,
  then time ``Engine.open`` (which replays the log): rows replayed per second, for several N;
- buffer checkpoint: on that reopened engine, time ``freeze()`` + ``flush()`` of the N rows
  (merge-sort, encode, write the range object, commit the manifest): rows/s.

Through the coordinator (``coordinator.deploy(shards=N, store=...)`` and its ``Client``, see
issue 3), Ray started on loopback with 2 CPUs as the project starts it
(``coordinator.cli.ray_node.start_local_ray``) and shut down at the end:

- ingest: 16 Ray tasks each write B batches of 1,000 rows into 1, 2 and 4 shards, three ways:
  through one ``client.writer`` per task with batches of row dicts (4a-N: buffered, parts of
  256 KiB per shard, the task ends with everything durable; latency is from ``write()`` to
  the batch being durable), the same with batches by column (4a-cols-N: ``write_columns``
  with a dict of column lists, the form of a Ray Data batch), and with ``client.write``
  (4a-sync-N: each batch durable before the next; latency is one call). The 300,000 rows/s
  target is checked on both 4-shard writer figures. Aggregate rows/s is wall time from
  launching the tasks to the last acknowledgement. The full run makes a fresh deployment for
  every run (new shard processes, empty buffers); ``--quick`` makes one per shard count and
  a fresh table for every run (deployments are most of a short run's time);
- snapshot scan of the 4-shard writer runs' rows into one client (rows/s), right after the
  ingest, so the rows are still in the shards' memory (the slowest case for a read: every
  row crosses from a shard to the client);
- change feed over all of them (changes/s).

When ``coordinator.deploy`` is not there yet, the Ray figures are reported as skipped with the
reason; they never fake a number.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import dn
from bench.harness import Figure, progress, rmtree, tempdir

VALUE = b"v" * 100
SCHEMA = {"k": "int64", "v": "bytes"}
NAMESPACE = "dnbench"


def _load_unflushed(d: str, n: int) -> None:
    e = dn.Engine.open(d, 0, dn.Settings(background=False))
    e.create_database("bench")
    e.create_table("bench", "t", SCHEMA, "k")
    for start in range(0, n, 1000):
        e.write("bench", "t", upserts=[{"k": k, "v": VALUE} for k in range(start, start + 1000)])
    e.close()


def shard_figures(quick: bool) -> list[Figure]:
    sizes = [50_000, 200_000] if quick else [100_000, 300_000, 1_000_000]
    runs = 3 if quick else 5
    top = sizes[-1]
    fr = Figure(
        "4d",
        "cluster",
        f"recovery: log replay of {top:,} rows",
        "rows/s",
        target=200_000,
        absolute=True,
        note="time of Engine.open on a log of N/1,000 objects of 1,000 rows; "
        "extra.series holds the other N",
    )
    fb = Figure(
        "4e",
        "cluster",
        f"buffer checkpoint of {top:,} rows",
        "rows/s",
        note="freeze + flush: merge-sort, encode, put the range object, commit the manifest",
    )
    series: dict[int, list[float]] = {}
    for n in sizes:
        for r in range(runs):
            progress(f"4d/4e: N={n:,} run {r + 1}/{runs}")
            d = tempdir("dn-recover")
            try:
                _load_unflushed(d, n)
                t0 = time.perf_counter()
                e = dn.Engine.open(d, 0, dn.Settings(background=False))
                t_open = time.perf_counter() - t0
                assert e.status()["rows_in_memory"] == n
                t0 = time.perf_counter()
                e.freeze()
                e.flush()
                t_flush = time.perf_counter() - t0
                e.close()
            finally:
                rmtree(d)
            series.setdefault(n, []).append(t_open)
            if n == top:
                fr.ours.append(n / t_open)
                fb.ours.append(n / t_flush)
    fr.extra["series"] = [
        {"rows": n, "open_s_median": statistics.median(v), "open_s": [round(x, 4) for x in v]}
        for n, v in series.items()
    ]
    return [fr, fb]


def _ray_figures(quick: bool, ray_ok: bool) -> list[Figure]:
    # batches of 1,000 per task: 16 tasks x 64 = 1,024,000 rows (the 4-shard scan reads them).
    # Every shard count writes as many: in shorter runs a task's start and its last flush
    # weigh more (16 batches per task measured ~80k rows/s into 1 shard, 64 ~250k).
    per_task = {1: 16, 2: 16, 4: 16} if quick else {1: 64, 2: 64, 4: 64}
    sync_batches = 4 if quick else 16  # client.write: one durable call per shard per batch
    fi = {
        s: Figure(
            f"4a-{s}",
            "cluster",
            f"ingest from 16 Ray tasks, batches of 1,000, {s} shard(s), client.writer",
            "rows/s",
            target=300_000 if s == 4 else None,
            absolute=s == 4,
            note="each task writes its batches through one client.writer (parts of "
            "256 KiB per shard, durable on flush); latency: write() to durable",
        )
        for s in (1, 2, 4)
    }
    fk = {
        s: Figure(
            f"4a-cols-{s}",
            "cluster",
            f"ingest from 16 Ray tasks, batches of 1,000 by column, {s} shard(s), client.writer",
            "rows/s",
            target=300_000 if s == 4 else None,
            absolute=s == 4,
            note="each task writes its batches as a dict of column lists (the form of "
            "a Ray Data batch) through one client.writer's write_columns; "
            "latency: write_columns() to durable",
        )
        for s in (1, 2, 4)
    }
    fw = {
        s: Figure(
            f"4a-sync-{s}",
            "cluster",
            f"ingest from 16 Ray tasks, batches of 1,000, {s} shard(s), client.write",
            "rows/s",
            note="each batch durable before the next: one Ray call per shard per "
            "batch; 16 batches per task (the writer figures: 64); latency: one "
            "write() call",
        )
        for s in (1, 2, 4)
    }
    fs = Figure(
        "4b",
        "cluster",
        "snapshot scan over 4 shards into one client",
        "rows/s",
        target=500_000,
        absolute=True,
    )
    fc = Figure("4c", "cluster", "change feed over 4 shards into one client", "changes/s")
    figs = [*fi.values(), *fk.values(), *fw.values(), fs, fc]
    if not ray_ok:
        for f in figs:
            f.skipped = "--no-ray given: the Ray cluster figures were not run"
        return figs
    try:
        import coordinator
        from coordinator.cli.ray_node import start_local_ray
        from coordinator.client.tasks import warm_workers

        deploy = coordinator.deploy
        shutdown = coordinator.shutdown
    except (ImportError, AttributeError) as exc:
        reason = (
            f"coordinator.deploy is not available yet ({exc}); the Ray cluster layer "
            "(issue 3) is still being built"
        )
        for f in figs:
            f.skipped = reason
        return figs

    import ray

    runs = 3 if quick else 5

    def _buffered(client, table: str, task: int, nbatches: int, by_column: bool) -> list[float]:
        sent: dict[int, float] = {}
        durable: dict[int, float] = {}
        with client.writer(
            "bench", table, on_durable=lambda q: durable.__setitem__(q, time.perf_counter())
        ) as w:
            for b in range(nbatches):
                base = (task * nbatches + b) * 1000
                t0 = time.perf_counter()
                if by_column:
                    seq = w.write_columns(
                        {"k": list(range(base, base + 1000)), "v": [b"v" * 100] * 1000}
                    )
                else:
                    seq = w.write(
                        upserts=[{"k": k, "v": b"v" * 100} for k in range(base, base + 1000)]
                    )
                sent[seq] = t0
        return [durable[q] - t0 for q, t0 in sent.items()]

    @ray.remote(num_cpus=0)
    def buffered(client, table: str, task: int, nbatches: int) -> list[float]:
        return _buffered(client, table, task, nbatches, False)

    @ray.remote(num_cpus=0)
    def by_column(client, table: str, task: int, nbatches: int) -> list[float]:
        return _buffered(client, table, task, nbatches, True)

    @ray.remote(num_cpus=0)
    def synchronous(client, table: str, task: int, nbatches: int) -> list[float]:
        lat = []
        for b in range(nbatches):
            base = (task * nbatches + b) * 1000
            t0 = time.perf_counter()
            client.write(
                "bench",
                table,
                upserts=[{"k": k, "v": b"v" * 100} for k in range(base, base + 1000)],
            )
            lat.append(time.perf_counter() - t0)
        return lat

    def ingest(fig: Figure, task: Any, client: Any, table: str, nb: int) -> None:
        t0 = time.perf_counter()
        lats = ray.get([task.remote(client, table, t, nb) for t in range(16)])
        dt = time.perf_counter() - t0
        flat = sorted(x for lat in lats for x in lat)
        fig.ours.append(16 * nb * 1000 / dt)
        fig.extra.setdefault("p50_s", []).append(flat[len(flat) // 2])
        fig.extra.setdefault("p99_s", []).append(flat[min(len(flat) - 1, int(len(flat) * 0.99))])

    start_local_ray(num_cpus=2)  # on loopback, with the node config the project uses
    try:
        # start the 16 writer workers once (Python start-up and imports are seconds of CPU
        # each); the node keeps them for every run, so runs measure writing
        warm_workers(16)
        for shards in (1, 2, 4):
            # full: a fresh deployment (new shard processes, empty buffers) for every run;
            # quick: one deployment per shard count, a fresh table for every run
            client = None
            d = None
            try:
                for r in range(runs):
                    for kind, fig, task in (
                        ("client.writer", fi[shards], buffered),
                        ("client.writer by column", fk[shards], by_column),
                        ("client.write", fw[shards], synchronous),
                    ):
                        progress(
                            f"4a: ingest into {shards} shard(s) with {kind}, run {r + 1}/{runs}"
                        )
                        if client is None:
                            d = tempdir("dn-cluster")
                            client = deploy(shards=shards, store=d, namespace=NAMESPACE)
                            client.create_database("bench")
                            fresh = True
                        table = f"t{r}{'wcs'[[buffered, by_column, synchronous].index(task)]}"
                        client.create_table("bench", table, SCHEMA, "k")
                        if fresh:
                            time.sleep(SETTLE_S)
                            fresh = False
                        before = client.snapshot()  # the change feed starts here
                        nb = sync_batches if task is synchronous else per_task[shards]
                        ingest(fig, task, client, table, nb)
                        if shards == 4 and task is buffered:
                            _read_figures(client, table, before, 16 * nb * 1000, fs, fc)
                        if not quick:
                            shutdown(namespace=NAMESPACE)
                            client = None
                            rmtree(d)
            finally:
                if client is not None:
                    shutdown(namespace=NAMESPACE)
                    rmtree(d)
    finally:
        ray.shutdown()
    for f in (fs, fc):
        f.note = (
            f"{16 * per_task[4] * 1000:,} rows written by the 4-shard client.writer "
            "runs, read right after (in the shards' memory, not yet flushed)"
        )
    return figs


#: Seconds to let a new deployment settle before a timed run: Ray starts replacement idle
#: workers for the actors it placed, and their start-up would be timed otherwise.
SETTLE_S = 2.0


def _read_figures(client: Any, table: str, before: int, total: int, fs: Figure, fc: Figure) -> None:
    snap = client.snapshot()
    t0 = time.perf_counter()
    n = sum(1 for _ in client.scan("bench", table, snapshot=snap))
    fs.ours.append(n / (time.perf_counter() - t0))
    assert n == total, (n, total)
    t0 = time.perf_counter()
    n = sum(1 for _ in client.changes("bench", table, before, snapshot=snap))
    fc.ours.append(n / (time.perf_counter() - t0))


def run(quick: bool, ray_ok: bool = True) -> list[Figure]:
    figs = shard_figures(quick)
    return _ray_figures(quick, ray_ok) + figs
