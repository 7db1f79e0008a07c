"""The cluster on S3 (moto's server on 127.0.0.1): shard actors and the coordinator get the
endpoint and test credentials through ``env`` (Ray runtime_env env_vars); writes from Ray
tasks, snapshot reads, and a shard restart that recovers from S3.
"""

from __future__ import annotations

import sys
import time

import pytest
import ray
import ray.cloudpickle
from conftest import S3_TEST_CREDENTIALS

pytestmark = [pytest.mark.ray, pytest.mark.s3]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _write(client, task: int) -> list[int]:
    return [
        client.write(
            "db", "t", [{"k": task * 1000 + b * 100 + i, "v": f"{task}"} for i in range(100)]
        )
        for b in range(5)
    ]


def _rewrite(client, keys: list) -> int:
    return client.write("db", "t", [{"k": k, "v": "moved"} for k in keys])


def test_cluster_on_s3_writes_reads_and_recovers(deploy_cluster, s3_url):
    url, opts = s3_url
    c = S3_TEST_CREDENTIALS
    # where the store is; the credentials are the node's own (see conftest's ray_session)
    env = {"AWS_ENDPOINT_URL": opts["endpoint_url"], "AWS_DEFAULT_REGION": c["region"]}
    client = deploy_cluster("s3", shards=2, store=url, env=env)
    assert client.info["store"] == url
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    task = ray.remote(num_cpus=0.01)(_write)
    ray.get([task.remote(client, i) for i in range(4)])
    snap = client.snapshot()
    for i in range(2):
        client.shards.call(i, "checkpoint")  # range objects and checkpoints on S3
    client.write("db", "t", [{"k": 10**6, "v": "tail"}])  # one more, in memory and the log
    rows = list(client.scan("db", "t", snapshot=snap))
    assert len(rows) == 4 * 500 and [r["k"] for r in rows] == sorted(r["k"] for r in rows)

    old = client.shards.call(1, "status")
    assert old["ranges"] and old["checkpoints"]
    from shards.group import kill_actor, shard_name

    old_pid = client.shards.call(1, "pid")
    kill_actor(shard_name(1), client.namespace, restart=True)
    deadline = time.time() + 60
    while client.shards.call(1, "pid", retry_s=60) == old_pid:  # ray.kill is asynchronous
        assert time.time() < deadline, "shard 1 was not restarted"
        time.sleep(0.1)
    new = client.shards.call(1, "status", retry_s=60)
    assert new["epoch"] > old["epoch"]
    assert len(list(client.scan("db", "t", snapshot=snap))) == 2000
    assert client.get("db", "t", 10**6)["v"] == "tail"
    assert sum(1 for _ in client.scan("db", "t")) == 2001

    # slots move on S3 too, by reference (decision 0018): reads before and after agree, and a
    # Ray task whose client was pickled before the move writes through the new map
    from coordinator.client.routing import shard_of

    stale = ray.put(client)  # its slot map is the one before the move
    before = {r["k"]: r["v"] for r in client.scan("db", "t")}
    old_route = client._tables().route
    assert client.move_slots(old_route.slots_of(0)[:256], 1) == old_route.version + 1
    route = client._tables().route
    moved = [k for k in before if shard_of(k, old_route) == 0 and shard_of(k, route) == 1]
    assert moved
    assert {r["k"]: r["v"] for r in client.scan("db", "t")} == before
    assert len(list(client.scan("db", "t", snapshot=snap))) == 2000
    ray.get(ray.remote(num_cpus=0.01)(_rewrite).remote(stale, moved))
    after = {r["k"]: r["v"] for r in client.scan("db", "t")}
    assert after == {**before, **dict.fromkeys(moved, "moved")}
    assert client.shards.call(1, "status")["moves"]["moves"][0]["kind"] == "in"
