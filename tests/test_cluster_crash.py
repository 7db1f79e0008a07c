"""A shard actor killed (SIGKILL of its process) in the middle of an ingest from Ray tasks:
Ray restarts it, it recovers from the store, every acknowledged write is present, nothing is
applied twice, and the writers either retried transparently or got a typed retryable error.

Runs in its own deployment so the kill disturbs no other test.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import ray
import ray.cloudpickle

from coordinator.client.routing import shard_of
from dn.errors import Unavailable

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

VICTIM = 1


def _writer(client, task: int, batches: int, size: int) -> dict:
    """Upsert fresh keys batch by batch; record acknowledged parts and retryable failures."""
    n = client.info["shards"]
    acked, failed = [], []
    for b in range(batches):
        base = (task * batches + b) * size
        rows = [{"k": base + i, "v": f"t{task}b{b}"} for i in range(size)]
        try:
            per_shard = client.write_each("db", "t", rows)
        except Unavailable as exc:  # retryable; the parts in exc.details["committed"] landed
            failed.append((base, size, exc.details.get("committed", {})))
            continue
        for s, ts in per_shard.items():
            acked.append((s, ts, [r["k"] for r in rows if shard_of(r["k"], n) == s]))
        time.sleep(0.01)
    return {"acked": acked, "failed": failed}


def _wait_rows_written(group, rows: int) -> None:
    """Until the victim shard has taken ``rows`` rows: the ingest is under way."""
    deadline = time.time() + 60
    while group.call(VICTIM, "status")["counters"]["rows_written"] < rows:
        assert time.time() < deadline, "ingest did not start"
        time.sleep(0.05)


def test_shard_killed_mid_ingest_recovers_everything_acknowledged(deploy_cluster):
    client = deploy_cluster("crash", shards=4)
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    before = client.snapshot()
    group = client.shards
    old_pid = group.call(VICTIM, "pid")
    old_epoch = group.call(VICTIM, "status")["epoch"]

    task = ray.remote(num_cpus=0.01)(_writer)
    refs = [task.remote(client, i, 40, 200) for i in range(8)]
    _wait_rows_written(group, 3000)
    os.kill(old_pid, signal.SIGKILL)  # mid-ingest: writers have calls in flight on it
    results = ray.get(refs, timeout=240)

    st = group.call(VICTIM, "status")
    assert group.call(VICTIM, "pid") != old_pid, "the shard actor was not restarted"
    assert st["epoch"] > old_epoch, "the restarted shard did not take a new epoch"
    assert st["counters"]["replayed_commands"] > 0 or st["ranges"], "nothing was recovered"

    acked = [a for r in results for a in r["acked"]]
    failed = [f for r in results for f in r["failed"]]
    rows = {r["k"]: r["v"] for r in client.scan("db", "t")}
    acked_keys = [k for _, _, keys in acked for k in keys]
    assert len(acked_keys) == len(set(acked_keys))
    missing = [k for k in acked_keys if k not in rows]
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {missing[:5]}"
    attempted = set(acked_keys) | {base + i for base, size, _ in failed for i in range(size)}
    assert set(rows) <= attempted, "rows appeared that nobody wrote"

    # applied once: every acknowledged (ts, key) appears exactly once in the change feed;
    # a key may show a second upsert only if its part was retried (same values, other ts)
    feed = list(client.changes("db", "t", before))
    stamps = [(c.ts, c.pk) for c in feed]
    assert len(stamps) == len(set(stamps)), "a change was applied twice"
    feed_keys = {(c.ts, c.pk) for c in feed}
    for s, ts, keys in acked:
        assert all((ts, k) in feed_keys for k in keys), f"part at {ts} on shard {s} missing"
    extra = len(feed) - len(acked_keys)
    per_key = {}
    for c in feed:
        per_key.setdefault(c.pk, []).append(c.row["v"])
    assert all(len(set(vs)) == 1 for vs in per_key.values()), "a retry changed a value"
    assert extra >= 0
    print(
        f"crash: {len(acked)} parts acknowledged, {len(failed)} batches failed retryably, "
        f"{extra} changes from retried parts, victim epoch {old_epoch}->{st['epoch']}"
    )
    for s in client.status()["shards"].values():
        assert s["state"] == "open"


def _buffered_writer(client, task: int, batches: int, size: int) -> dict:
    """Fresh keys through one client.writer; the batches on_durable reported, with their
    keys. The writer retries parts on a restarting shard for retry_s."""
    keys: dict[int, list[int]] = {}
    durable: list[int] = []
    with client.writer(
        "db", "w", part_bytes=8 * 1024, linger_s=0.01, on_durable=durable.append
    ) as w:
        for b in range(batches):
            base = (task * batches + b) * size
            seq = w.write([{"k": base + i, "v": f"t{task}b{b}"} for i in range(size)])
            keys[seq] = list(range(base, base + size))
            time.sleep(0.005)
    return {"durable": [keys[q] for q in durable], "all": len(keys)}


def test_shard_killed_mid_buffered_ingest_loses_no_durable_batch(deploy_cluster):
    client = deploy_cluster("crash-writer", shards=4)
    client.create_database("db")
    client.create_table("db", "w", {"k": "int64", "v": "string"}, "k")
    group = client.shards
    old_pid = group.call(VICTIM, "pid")
    task = ray.remote(num_cpus=0.01)(_buffered_writer)
    refs = [task.remote(client, i, 60, 100) for i in range(6)]
    _wait_rows_written(group, 2000)
    os.kill(old_pid, signal.SIGKILL)  # parts are in flight to it
    results = ray.get(refs, timeout=240)
    assert group.call(VICTIM, "pid") != old_pid, "the shard actor was not restarted"
    rows = {r["k"]: r["v"] for r in client.scan("db", "w")}
    for r in results:
        assert len(r["durable"]) == r["all"], "flush returned before every batch was durable"
    durable_keys = [k for r in results for batch in r["durable"] for k in batch]
    missing = [k for k in durable_keys if k not in rows]
    assert not missing, f"{len(missing)} rows of durable batches lost, e.g. {missing[:5]}"
    assert len(rows) == len(durable_keys) == 6 * 60 * 100
