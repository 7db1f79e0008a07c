"""The DN metrics (shards/metrics.py) on the node's real Prometheus endpoint: write and read
through the shared deployment, then scrape Ray's metrics export port on 127.0.0.1 until every
DN series is there (Ray exports every few seconds; the wait is bounded).

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

_SAMPLE = re.compile(r"^(?:ray_)?(dn_[a-z_]+)\{([^}]*)\}\s+(\S+)$")


def _metrics_url() -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    assert nodes, "no live Ray node"
    port = nodes[0]["MetricsExportPort"]
    assert nodes[0]["NodeManagerAddress"] == "127.0.0.1"
    return f"http://127.0.0.1:{port}/metrics"


def _scrape(url: str) -> dict[str, dict[str, float]]:
    """``{series: {shard: sum of its samples over other tags}}`` for the DN series."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        shard = re.search(r'(?:^|,)shard="([^"]*)"', labels)
        key = shard.group(1) if shard else ""
        per = out.setdefault(name, {})
        per[key] = per.get(key, 0.0) + float(value)
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
