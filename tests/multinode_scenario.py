"""A node lost mid-ingest on a multi-node Ray cluster simulated on one machine, over S3 (moto).

Run as a script in a process of its own (``tests/test_multinode.py`` does, with a private
temporary directory for Ray's files): a driver can be connected to one Ray cluster only, and
the test session has its own. It starts a moto S3 server and a three-node Ray cluster on
127.0.0.1 (``ray.cluster_utils.Cluster``: the head and two worker nodes, one CPU each),
deploys four shards, and:

1. checks that the shards landed on at least two nodes (the ``SPREAD`` strategy of
   ``shards.group.start_shards``);
2. picks a worker node hosting a shard as the victim and runs the ingest in Ray tasks on the
   other two nodes, each writing batches of new keys with ``client.write`` and keeping the keys
   of every acknowledged write;
3. once a third of the rows are written, removes the victim node (its processes killed, no
   graceful drain): its shards restart on the nodes left and recover from S3, and the writes
   to them are resent by the client until they answer;
4. checks every acknowledged key is present (lost), and counts each key in the change feed
   from before the ingest (applied twice);
5. checks the reads of Ray tasks equal the client's in-process reads, and that read tasks run
   on more than one node.

Prints one JSON line of figures, then shuts everything down. Exit status 0 when every check
passed. The credentials of the fake S3 server are in the nodes' own environment; the shards
get only where the store is (``env``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

SHARDS = 4
TASKS = 4
BATCHES = 40  # per ingest task
ROWS = 40  # per batch
REMOVE_AT = TASKS * BATCHES * ROWS // 3  # rows written when the node goes
NAMESPACE = "dn-multinode"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: The head node's health checks: a node whose raylet stops answering is declared dead after
#: about 3 s (Ray's defaults take longer; the figure "to recover" includes this).
HEAD_SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def ingest(client: Any, task: int, batches: int, rows: int) -> dict[str, Any]:
    """Write ``batches`` batches of ``rows`` new keys; the keys of acknowledged writes."""
    from dn.errors import DNError

    acked: list[int] = []
    failed = 0
    stalls: list[float] = []  # seconds of each write that waited over a second
    for b in range(batches):
        keys = [(task * batches + b) * rows + i for i in range(rows)]
        t0 = time.time()
        try:
            client.write("db", "t", [{"k": k, "v": f"t{task}b{b}"} for k in keys])
        except DNError:
            failed += 1  # not acknowledged: it may or may not have been applied
            continue
        finally:
            if time.time() - t0 > 1.0:
                stalls.append(time.time() - t0)
        acked.extend(keys)
    return {"acked": acked, "failed": failed, "stalls": stalls}


def node_of_task() -> Any:
    import ray

    time.sleep(0.5)  # held, so that the tasks run at once, each in a worker of its own
    yield ray.get_runtime_context().get_node_id().encode()


def shard_nodes() -> dict[int, str]:
    """The node of each live shard actor (the cluster runs one deployment)."""
    from ray._private import state

    out = {}
    for a in state.actors().values():
        name = a.get("Name") or ""
        if a.get("State") == "ALIVE" and name.startswith("dn-shard-"):
            out[int(name.rsplit("-", 1)[1])] = a["Address"]["NodeID"]
    return out


def scenario(cluster: Any, workers: list[Any], endpoint: str) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import coordinator
    from coordinator.client.tasks import stream_tasks
    from dn.errors import DNError

    bucket = "dn-multinode"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": CREDENTIALS["AWS_DEFAULT_REGION"]}
    client = coordinator.deploy(
        None,
        namespace=NAMESPACE,
        shards=SHARDS,
        store=f"s3://{bucket}/dn",
        env=env,
        shard_num_cpus=0.25,  # a node of one CPU holds them all after another node is lost
        clock_skew_ms=200,  # each write waits this long after its commit before it answers
        retry_s=90.0,
        call_timeout_s=60.0,
        engine={"freeze_bytes": 256 * 1024, "freeze_interval_s": 1.0, "checkpoint_delta": 100},
    )
    out: dict[str, Any] = {"shards": SHARDS, "nodes": len(ray.nodes())}
    placed = shard_nodes()
    assert len(placed) == SHARDS, placed
    out["shard_nodes_before"] = len(set(placed.values()))
    head_id = cluster.head_node.node_id
    by_id = {w.node_id: w for w in workers}
    victims = [n for n in by_id if n in placed.values()]
    out["checks"] = {
        "spread_over_nodes": out["shard_nodes_before"] >= 2,
        # Ray's default placement put four such shards on two of the three nodes here
        "on_every_node": out["shard_nodes_before"] == min(SHARDS, out["nodes"]),
        "victim": bool(victims),
    }
    if not victims:
        return out
    victim = max(victims, key=lambda n: sum(1 for v in placed.values() if v == n))
    moved = sorted(i for i, n in placed.items() if n == victim)
    survivors = [head_id] + [n for n in by_id if n != victim]

    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    start = client.snapshot()
    remote = ray.remote(ingest)
    refs = [
        remote.options(
            num_cpus=0.01,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(survivors[i % 2], soft=False),
        ).remote(client, i, BATCHES, ROWS)
        for i in range(TASKS)
    ]

    def written() -> int:
        return sum(
            client.shards.call(i, "status")["counters"]["rows_written"] for i in range(SHARDS)
        )

    deadline = time.monotonic() + 60
    while written() < REMOVE_AT:
        assert time.monotonic() < deadline, "the ingest did not start"
        time.sleep(0.1)
    old_pids = {i: client.shards.call(i, "pid") for i in moved}
    t0 = time.monotonic()
    cluster.remove_node(by_id[victim], allow_graceful=False)
    out["moved_shards"] = len(moved)
    recovered: dict[str, float] = {}

    def wait_recovered() -> None:  # until every moved shard answers from its new process
        for i in moved:
            while True:
                try:
                    if client.shards.call(i, "pid") != old_pids[i]:
                        break
                except DNError:
                    pass  # gone, or restarting
                time.sleep(0.05)
        recovered["s"] = time.monotonic() - t0

    watcher = threading.Thread(target=wait_recovered, daemon=True)
    watcher.start()
    results = ray.get(refs, timeout=180)
    watcher.join(timeout=120)
    out["seconds_to_recover"] = round(recovered.get("s", -1.0), 1)
    out["ingest_seconds_after_loss"] = round(time.monotonic() - t0, 1)
    after = shard_nodes()
    out["checks"]["moved_to_survivors"] = len(after) == SHARDS and victim not in after.values()

    acked = [k for r in results for k in r["acked"]]
    out["rows_acknowledged"] = len(acked)
    out["writes_failed"] = sum(r["failed"] for r in results)
    stalls = [d for r in results for d in r["stalls"]]
    out["writes_waiting_for_recovery"] = len(stalls)
    out["longest_write_stall_s"] = round(max(stalls, default=0.0), 1)
    snap = client.snapshot()
    rows = list(client.scan("db", "t", snapshot=snap, tasks=False))
    present = {r["k"] for r in rows}
    out["rows_lost"] = len(set(acked) - present)
    feed = Counter(c.pk for c in client.changes("db", "t", start + 1, snapshot=snap))
    out["rows_applied_twice"] = sum(1 for n in feed.values() if n > 1)
    out["feed_changes"] = sum(feed.values())
    statuses = [client.shards.call(i, "status") for i in range(SHARDS)]
    out["duplicate_parts_answered"] = sum(s["counters"]["duplicate_parts"] for s in statuses)
    from_tasks = list(client.scan("db", "t", snapshot=snap, tasks=True))
    out["checks"]["task_reads_equal"] = from_tasks == rows
    nodes = stream_tasks(node_of_task, {i: () for i in range(2 * SHARDS)})
    out["read_task_nodes"] = len({b for it in nodes.values() for b in it})
    out["checks"]["read_tasks_spread"] = out["read_task_nodes"] >= 2
    out["checks"]["feed_has_acked_keys"] = all(feed[k] == 1 for k in acked)
    coordinator.shutdown(NAMESPACE)
    return out


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(f"terminated by signal {signum}")  # so that the finally blocks run


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's line per request
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by raylets and workers
    os.environ.update(CREDENTIALS)  # the nodes' own environment, as on a real node
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    import ray
    from moto.server import ThreadedMotoServer
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    from ray.cluster_utils import Cluster

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        t0 = time.monotonic()
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "node_ip_address": "127.0.0.1",
                "include_dashboard": False,
                "_system_config": HEAD_SYSTEM_CONFIG,
            },
        )
        try:
            workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
            ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
            cluster.wait_for_nodes()
            out = scenario(cluster, workers, endpoint)
            out["seconds_total"] = round(time.monotonic() - t0, 1)
        finally:
            ray.shutdown()
            cluster.shutdown()
    finally:
        server.stop()
    print(json.dumps(out), flush=True)
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
