"""Transactions on Ray under SIGKILL (decision 0015): Ray tasks run bank transfers in
snapshot-isolation transactions and atomic batches tagged with one value per batch while a
shard actor's process and the coordinator actor's process are killed (Ray restarts both).
Afterwards: the bank's total is the same at every commit timestamp, each atomic batch is on
all of its keys or none at every snapshot and in the change feed, and each acknowledged one is
there at its timestamp, once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
import ray
import ray.cloudpickle

from coordinator.actor.handle import CoordinatorHandle

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEMA = {"k": "int64", "v": "string", "w": "int64"}
ACCOUNTS = list(range(8))


def _bank(client, seed: int, count: int) -> dict:
    import random

    from dn.errors import Conflict, DNError

    rng = random.Random(seed)
    out = {"committed": 0, "failed": 0}
    for _ in range(count):
        a, b = rng.sample(ACCOUNTS, 2)
        try:
            with client.transaction() as tx:
                va, vb = tx.get("kill", "bank", a)["w"], tx.get("kill", "bank", b)["w"]
                tx.write("kill", "bank", [{"k": a, "v": "", "w": va - 1}])
                tx.write("kill", "bank", [{"k": b, "v": "", "w": vb + 1}])
            out["committed"] += 1
        except (Conflict, DNError):
            out["failed"] += 1
    return out


def _keys(task: int, i: int) -> list[int]:
    return sorted({1000 + (task * 7919 + i * 31 + j * 131) % 5000 for j in range(6)})


def _batches(client, task: int, count: int) -> list:
    from dn.errors import DNError

    acked = []
    for i in range(count):
        tag = f"t{task}.{i}"
        keys = _keys(task, i)
        try:
            ts = client.write(
                "kill", "tags", [{"k": k, "v": tag, "w": 0} for k in keys], atomic=True
            )
            acked.append((tag, keys, ts))
        except DNError:
            pass  # not acknowledged: all or nothing, checked below
    return acked


def test_transactions_keep_their_promises_while_shards_and_the_coordinator_are_killed(cluster):
    c = cluster
    c.create_database("kill")
    c.create_table("kill", "bank", SCHEMA, "k")
    c.create_table("kill", "tags", SCHEMA, "k")
    start = c.write("kill", "bank", [{"k": a, "v": "", "w": 100} for a in ACCOUNTS], atomic=True)
    bank = ray.remote(num_cpus=0.01, max_retries=0)(_bank)
    tags = ray.remote(num_cpus=0.01, max_retries=0)(_batches)
    refs = [bank.remote(c, s, 25) for s in range(4)] + [tags.remote(c, t, 25) for t in range(4)]

    def kill() -> None:
        time.sleep(1.0)
        os.kill(c.shards.call(1, "pid"), signal.SIGKILL)
        time.sleep(1.5)
        os.kill(CoordinatorHandle(c.namespace).call("pid"), signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    results = ray.get(refs, timeout=600)
    killer.join()
    committed = sum(r["committed"] for r in results[:4])
    assert committed > 0
    acked = [a for r in results[4:] for a in r]
    # the bank: the total at every commit timestamp (and now)
    feed = list(c.changes("kill", "bank", from_ts=start))
    stamps = sorted({ch.ts for ch in feed})
    assert len(stamps) >= committed
    for s in [*stamps, c.snapshot()]:
        assert sum(r["w"] for r in c.scan("kill", "bank", snapshot=s)) == 100 * len(ACCOUNTS)
    # the batches: each tag on all its keys or none, at one timestamp, once; acked ones there
    by_tag: dict[str, list] = {}
    for ch in c.changes("kill", "tags", from_ts=start):
        by_tag.setdefault(ch.row["v"], []).append((ch.ts, ch.pk))
    for tag, keys, ts in acked:
        assert sorted(by_tag.get(tag, [])) == [(ts, k) for k in keys], tag
    for tag, seen in by_tag.items():  # acknowledged or not: whole, at one timestamp
        task, i = (int(x) for x in tag[1:].split("."))
        assert len({ts for ts, _ in seen}) == 1, tag
        assert sorted(k for _, k in seen) == _keys(task, i), tag
