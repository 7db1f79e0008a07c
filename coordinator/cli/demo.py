"""``dn demo``: the README's main job, end to end, on the embedded defaults.

Deploys 4 shards (in the Ray cluster at ``address``, or in a local Ray instance it starts and
stops itself) over a local directory store (a fresh temporary directory unless ``store`` is
given; its path is printed), creates a table, writes ``rows`` rows from many Ray tasks with a
progress bar on stderr, updates and deletes a few, then reads a snapshot and a change feed and
prints a summary on stdout. The deployment is removed at the end unless ``keep``.

Small freeze and checkpoint thresholds are used so that the run exercises the whole life
cycle (buffers, buffer checkpoints into ranges, checkpoints), and ``dn status`` afterwards
(with ``--keep``) has something to show.

Callers: :mod:`coordinator.cli.main` only. Progress goes to stderr via ``sys.stderr.write``
(a user-facing command, not library logging).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from coordinator.cli.deployment import deploy, shutdown
from coordinator.client.client import Client

DB, TABLE = "demo", "events"
SCHEMA = {"id": "int64", "user": "string", "amount": "float64", "payload": "bytes"}


def _write_chunk(client: Client, lo: int, hi: int, batch: int) -> tuple[int, int, float]:
    """A Ray task: upsert ids [lo, hi) in batches; returns (rows, newest ts, seconds)."""
    t0 = time.monotonic()
    newest = 0
    for start in range(lo, hi, batch):
        rows = [
            {
                "id": i,
                "user": f"user{i % 97}",
                "amount": i * 0.25,
                "payload": i.to_bytes(8, "little"),
            }
            for i in range(start, min(hi, start + batch))
        ]
        newest = max(newest, client.write(DB, TABLE, rows))
    return hi - lo, newest, time.monotonic() - t0


class Progress:
    """A plain text progress bar on stderr."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.t0 = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        frac = self.done / self.total if self.total else 1.0
        rate = self.done / max(1e-9, time.monotonic() - self.t0)
        bar = "#" * int(frac * 30)
        sys.stderr.write(
            f"\r{self.label} [{bar:<30}] {frac:6.1%} {self.done}/{self.total} "
            f"rows, {rate:,.0f} rows/s"
        )
        sys.stderr.flush()
        if self.done >= self.total:
            sys.stderr.write("\n")


@dataclass
class DemoResult:
    rows: int
    write_s: float
    scanned: int
    changes: int
    store: str
    summary: dict[str, Any]


def run_demo(
    address: str | None = None,
    shards: int = 4,
    tasks: int = 16,
    rows: int = 100_000,
    store: str | None = None,
    keep: bool = False,
    namespace: str | None = None,
) -> DemoResult:
    from coordinator.cli import ray_node
    from coordinator.client import tasks as ray_tasks

    started_ray = False
    if not ray_node.ray_is_connected():
        if address is None:
            ray_node.start_local_ray()  # on loopback
            started_ray = True
        else:
            ray_node.ensure_ray(address)
    store = store or tempfile.mkdtemp(prefix="dn-demo-")
    namespace = namespace or f"dn-demo-{os.getpid()}"
    print(f"store: {store}\nnamespace: {namespace}")
    client = deploy(
        None,
        namespace=namespace,
        shards=shards,
        store=store,
        freeze_bytes=1 << 20,
        freeze_interval_s=2.0,
        checkpoint_delta=50,  # each shard takes ~128 commits: checkpoints happen in the run
    )
    try:
        client.create_database(DB)
        client.create_table(DB, TABLE, SCHEMA, "id")
        before = client.snapshot()
        workers = max(tasks, 1)
        chunks = workers * 4
        bounds = [(rows * i // chunks, rows * (i + 1) // chunks) for i in range(chunks)]
        sys.stderr.write(f"starting {workers} Ray worker processes (once per node)... ")
        sys.stderr.write(f"{ray_tasks.warm_workers(workers):.1f} s\n")
        bar = Progress(rows, f"writing from {tasks} Ray tasks")
        t0 = time.monotonic()
        ray_tasks.run_tasks(
            _write_chunk,
            [(client, lo, hi, 1000) for lo, hi in bounds],
            on_result=lambda r: bar.add(r[0]),
            max_in_flight=workers,
        )
        write_s = time.monotonic() - t0
        after_insert = client.snapshot()
        client.write(
            DB,
            TABLE,
            [{"id": i, "user": "updated", "amount": -1.0} for i in range(0, min(rows, 100))],
            deletes=list(range(100, min(rows, 150))),
        )
        now = client.snapshot()
        t1 = time.monotonic()
        scanned = sum(len(p) for p in client.scan_pages(DB, TABLE, snapshot=after_insert))
        scan_s = time.monotonic() - t1
        live = sum(1 for _ in client.scan(DB, TABLE, snapshot=now, columns=["id"]))
        feed = list(client.changes(DB, TABLE, from_ts=after_insert + 1, snapshot=now))
        inserted = sum(
            1
            for _ in client.changes(
                DB, TABLE, from_ts=before + 1, snapshot=after_insert, columns=["id"]
            )
        )
        st = client.status()["shards"]
        summary = {
            "rows written": rows,
            "write seconds": round(write_s, 2),
            "rows/s": round(rows / max(write_s, 1e-9)),
            "rows at snapshot after insert": scanned,
            "scan seconds": round(scan_s, 2),
            "changes in (before, after insert]": inserted,
            "changes after insert (100 updates, 50 deletes)": len(feed),
            "rows now": live,
            "row 0 now": client.get(DB, TABLE, 0),
            "ranges per shard": [len(s.get("ranges", [])) for s in st.values()],
            "checkpoints per shard": [len(s.get("checkpoints", [])) for s in st.values()],
        }
        print("summary:")
        for k, v in summary.items():
            print(f"  {k}: {v}")
        return DemoResult(rows, write_s, scanned, inserted, store, summary)
    finally:
        if not keep:
            shutdown(namespace)
        if started_ray:
            ray_node.stop_local_ray()
