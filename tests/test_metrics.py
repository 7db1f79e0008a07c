"""The DN metrics (shards/metrics.py, coordinator/actor/metrics.py) on the node's real
Prometheus endpoint: write and read through the shared deployment, then scrape Ray's metrics
export port on 127.0.0.1 until every DN series is there (Ray exports every few seconds; the
wait is bounded). The coordinator's series are told apart by their ``namespace`` tag (the
session holds several deployments).

Ray prefixes exported names with ``ray_``: ``dn_rows_written_total`` is scraped as
``ray_dn_rows_written_total``.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
import ray

pytestmark = pytest.mark.ray

SCHEMA = {"k": "int64", "v": "string"}
ROWS = 2000
DEADLINE_S = 60.0

#: Every series a shard exports once it has written, read and run its maintenance loop.
SERIES = [
    "dn_commit_latency_seconds_bucket",
    "dn_commit_latency_seconds_count",
    "dn_objects_per_read_count",
    "dn_group_commits_total",
    "dn_commands_total",
    "dn_group_commit_size",
    "dn_rows_written_total",
    "dn_bytes_written_total",
    "dn_buffer_bytes",
    "dn_checkpoint_queue_bytes",
    "dn_store_requests_total",
    "dn_compaction_debt",
    "dn_gc_backlog_objects",
    "dn_recovery_seconds",
]

#: Every series the coordinator exports once it has served DDL (one refused) and published.
COORDINATOR_SERIES = [
    "dn_coordinator_requests_total",
    "dn_coordinator_request_latency_seconds_bucket",
    "dn_coordinator_request_latency_seconds_count",
    "dn_coordinator_request_errors_total",
    "dn_coordinator_catalog_version",
    "dn_coordinator_pending_ddl",
    "dn_coordinator_shard_restarts",
]

_SAMPLE = re.compile(r"^(?:ray_)?(dn_[a-z_]+)\{([^}]*)\}\s+(\S+)$")


def _metrics_url() -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    assert nodes, "no live Ray node"
    port = nodes[0]["MetricsExportPort"]
    assert nodes[0]["NodeManagerAddress"] == "127.0.0.1"
    return f"http://127.0.0.1:{port}/metrics"


def _samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every DN sample on the endpoint: ``(series, {tag: value}, value)``."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            name, labels, value = m.groups()
            out.append((name, dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', labels)), float(value)))
    return out


def _scrape(url: str) -> dict[str, dict[str, float]]:
    """``{series: {shard: sum of its samples over other tags}}`` for the DN series."""
    out: dict[str, dict[str, float]] = {}
    for name, tags, value in _samples(url):
        per = out.setdefault(name, {})
        key = tags.get("shard", "")
        per[key] = per.get(key, 0.0) + value
    return out


def _coordinator(url: str, namespace: str) -> dict[str, dict[tuple, float]]:
    """``{series: {(method or shard, kind): value}}`` for one deployment's coordinator (the
    newest value of a gauge, the sum over other tags of the rest)."""
    out: dict[str, dict[tuple, float]] = {}
    for name, tags, value in _samples(url):
        if not name.startswith("dn_coordinator_") or tags.get("namespace") != namespace:
            continue
        key = (tags.get("method") or tags.get("shard", ""), tags.get("kind", ""))
        per = out.setdefault(name, {})
        gauge = name in ("dn_coordinator_catalog_version", "dn_coordinator_shard_restarts")
        per[key] = value if gauge else per.get(key, 0.0) + value
    return out


def test_dn_series_on_the_metrics_endpoint(cluster):
    cluster.create_database("metrics")
    cluster.create_table("metrics", "t", SCHEMA, "k")
    for b in range(4):
        rows = [{"k": b * ROWS + i, "v": f"b{b}"} for i in range(ROWS)]
        cluster.write("metrics", "t", rows)
    assert len(list(cluster.scan("metrics", "t"))) == 4 * ROWS
    shards = {str(s) for s in range(cluster.info["shards"])}

    url = _metrics_url()
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = _scrape(url)
        missing = [s for s in SERIES if not shards <= set(found.get(s, {}))]
        rows_seen = sum(found.get("dn_rows_written_total", {}).values())
        if not missing and rows_seen >= 4 * ROWS:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"after {DEADLINE_S}s: missing {missing}, rows {rows_seen}")
        time.sleep(1.0)

    # Each shard took its share of the 4 writes: at least one observed write call each (the
    # DDL counts too), log bytes written, and a recovery time.
    for shard in shards:
        assert found["dn_commit_latency_seconds_count"][shard] >= 1
        assert found["dn_bytes_written_total"][shard] > 0
        assert found["dn_group_commits_total"][shard] >= 1
        assert found["dn_recovery_seconds"][shard] >= 0
    assert sum(found["dn_objects_per_read_count"].values()) >= len(shards)


def test_coordinator_series_on_the_metrics_endpoint(cluster):
    from dn.errors import AlreadyExists

    namespace = cluster.info["namespace"]
    cluster.create_database("coordmetrics")
    with pytest.raises(AlreadyExists):  # refused by the coordinator: counted as an error
        cluster.create_database("coordmetrics")
    cluster.create_table("coordmetrics", "t", SCHEMA, "k")
    cluster.write("coordmetrics", "t", [{"k": i, "v": "x"} for i in range(100)])
    assert len(list(cluster.scan("coordmetrics", "t"))) == 100
    assert cluster.databases()  # one more coordinator call, by method
    version = cluster.status()["coordinator"]["catalog_version"]
    shards = {str(s) for s in range(cluster.info["shards"])}

    url = _metrics_url()
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = _coordinator(url, namespace)
        missing = [s for s in COORDINATOR_SERIES if s not in found]
        requests = found.get("dn_coordinator_requests_total", {})
        restarts = found.get("dn_coordinator_shard_restarts", {})
        ready = (
            requests.get(("create_database", ""), 0) >= 2
            and requests.get(("create_table", ""), 0) >= 1
            and requests.get(("databases", ""), 0) >= 1
            and {k for k, _ in restarts} >= shards
            and found.get("dn_coordinator_catalog_version", {}).get(("", ""), 0) >= version
        )
        if not missing and ready:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"after {DEADLINE_S}s: missing {missing}, found {found}")
        time.sleep(1.0)

    errors = found["dn_coordinator_request_errors_total"]
    assert errors[("create_database", "AlreadyExists")] >= 1
    latency = found["dn_coordinator_request_latency_seconds_count"]
    assert latency[("create_table", "")] >= 1 and latency[("info", "")] >= 1
    assert found["dn_coordinator_pending_ddl"][("", "")] == 0
    assert all(v >= 0 for v in restarts.values())
