"""The DN shard metrics, through ``ray.util.metrics`` (Prometheus on Ray's metrics port).

Every series is named ``dn_...`` and tagged ``shard`` (the shard number); Ray adds its own
tags (``SessionName``, ``NodeAddress``...). ``docs/metrics.md`` lists them and
``docs/grafana-dn.json`` draws them.

Two sources:

- **The shard's calls** (:mod:`shards.shard`): one histogram observation per write call
  (:meth:`ShardMetrics.write_done`), one per read view (:meth:`ShardMetrics.read_done`), and a
  counter per failed call by error kind. No per-row work on the write path.
- **The engine's own figures** (:meth:`dn.Engine.status`, its counters and its store's retry
  statistics), published by the maintenance loop (:mod:`shards.loop`) at most once every
  :data:`PUBLISH_INTERVAL_S`: gauges are set, and the engine's cumulative counts become
  counter increments (the difference since the last publish).

dn/ stays Ray-free: this module is the only place the shard imports ``ray.util.metrics``.
Thread: ``write_done``/``read_done``/``error`` from any thread (Ray's metric objects are
thread-safe); ``publish`` from the maintenance loop's thread only.
"""

from __future__ import annotations

import time
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

#: How often the maintenance loop turns the engine's status into metrics (Ray exports them
#: every few seconds anyway; ``status()`` takes the shard's lock, so not every round).
PUBLISH_INTERVAL_S = 1.0

_TAGS = ("shard",)

# Latency buckets in seconds: a group commit on a local disk takes about a millisecond, one on
# S3 tens of milliseconds; the commit wait adds the configured clock skew.
_LATENCY_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
_OBJECTS = [0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5, 128.5]  # counts: le="0.5" is zero objects

# -- updated by the shard's calls (shards/shard.py) -----------------------------------------

#: Seconds a write call (``write``, ``write_part``, ``ddl``) takes on the shard, from arrival
#: to return: validation, admission, the group commit and the commit wait.
COMMIT_LATENCY = Histogram(
    "dn_commit_latency_seconds",
    description="Seconds a write call takes on the shard (group commit and commit wait).",
    boundaries=_LATENCY_S,
    tag_keys=_TAGS,
)
#: Objects (a checkpoint and ranges) the plan of each read view names; the rest of a read is
#: the shard's buffers, copied into the view.
OBJECTS_PER_READ = Histogram(
    "dn_objects_per_read",
    description="Stored objects (checkpoint and ranges) the plan of one read view names.",
    boundaries=_OBJECTS,
    tag_keys=_TAGS,
)
#: Failed shard calls, by ``kind`` (the exception's class name, e.g. ``Unavailable``).
ERRORS = Counter(
    "dn_errors_total",
    description="Failed shard calls, by error kind (the exception class name).",
    tag_keys=("shard", "kind"),
)

# -- published from the engine's status by the maintenance loop (shards/loop.py) ------------

#: Log writes (group commits) and the commands they carried; their rate ratio is the mean
#: group-commit size.
GROUP_COMMITS = Counter(
    "dn_group_commits_total", description="Log writes (group commits).", tag_keys=_TAGS
)
COMMANDS = Counter(
    "dn_commands_total", description="Commands committed (writes and DDL).", tag_keys=_TAGS
)
#: Mean commands per group commit over the last publish interval (0 when none).
GROUP_COMMIT_SIZE = Gauge(
    "dn_group_commit_size",
    description="Mean commands per group commit over the last publish interval.",
    tag_keys=_TAGS,
)
ROWS_WRITTEN = Counter(
    "dn_rows_written_total", description="Rows written (upserts and deletes).", tag_keys=_TAGS
)
#: Bytes of log objects written (the durable write traffic).
BYTES_WRITTEN = Counter(
    "dn_bytes_written_total", description="Bytes of log objects written.", tag_keys=_TAGS
)
#: Encoded bytes in the shard's in-memory buffers (the mutable one and the frozen ones).
BUFFER_BYTES = Gauge(
    "dn_buffer_bytes", description="Bytes in the in-memory buffers.", tag_keys=_TAGS
)
#: Encoded bytes of frozen buffers waiting for their buffer checkpoint.
CHECKPOINT_QUEUE_BYTES = Gauge(
    "dn_checkpoint_queue_bytes",
    description="Bytes of frozen buffers waiting to be checkpointed.",
    tag_keys=_TAGS,
)
#: Estimated heap bytes the in-memory buffers hold (the mutable one and the frozen ones): the
#: figure backpressure bounds by ``queue_slow_bytes`` and ``queue_stop_bytes``
#: (dn/write/backpressure.py); 1 to 10 times ``dn_buffer_bytes``, which counts encoded bytes.
BUFFER_MEMORY_BYTES = Gauge(
    "dn_buffer_memory_bytes",
    description="Estimated heap bytes in the in-memory buffers (what backpressure bounds).",
    tag_keys=_TAGS,
)
#: Estimated heap bytes of the frozen buffers waiting for their buffer checkpoint.
CHECKPOINT_QUEUE_MEMORY_BYTES = Gauge(
    "dn_checkpoint_queue_memory_bytes",
    description="Estimated heap bytes of frozen buffers waiting to be checkpointed.",
    tag_keys=_TAGS,
)
#: Object-store requests, retries and give-ups of the shard's (retrying) store.
STORE_REQUESTS = Counter(
    "dn_store_requests_total", description="Object-store request attempts.", tag_keys=_TAGS
)
STORE_RETRIES = Counter(
    "dn_store_retries_total", description="Object-store requests retried.", tag_keys=_TAGS
)
STORE_FAILURES = Counter(
    "dn_store_failures_total",
    description="Object-store requests given up after their retries.",
    tag_keys=_TAGS,
)
#: Failed maintenance rounds (the loop retries them).
MAINTENANCE_ERRORS = Counter(
    "dn_maintenance_errors_total", description="Failed maintenance rounds.", tag_keys=_TAGS
)
#: The compaction policy's debt over the live ranges (dn/upkeep/compaction.py).
COMPACTION_DEBT = Gauge(
    "dn_compaction_debt", description="Compaction debt of the live ranges.", tag_keys=_TAGS
)
#: Objects no longer referenced and waiting for GC (past their grace, then deleted).
GC_BACKLOG = Gauge(
    "dn_gc_backlog_objects", description="Objects awaiting garbage collection.", tag_keys=_TAGS
)
#: Seconds the shard's last open (recovery: manifest, checkpoint, ranges, log) took; set at
#: the open and again at each publish (Ray forgets a gauge not set within its TTL).
RECOVERY_SECONDS = Gauge(
    "dn_recovery_seconds", description="Seconds the shard's last recovery took.", tag_keys=_TAGS
)


def _store_stats(store: Any) -> dict[str, int]:
    """The retry statistics of a :class:`dn.store.RetryingStore` (empty for another store)."""
    stats = getattr(store, "stats", None)
    return dict(stats) if isinstance(stats, dict) else {}


class ShardMetrics:
    """The metrics of one shard: its tag, and the engine figures last published."""

    def __init__(self, shard: int, recovery_s: float) -> None:
        self.tags = {"shard": str(shard)}
        self._last: dict[str, float] = {}
        self._next_publish = 0.0
        self._recovery_s = recovery_s
        RECOVERY_SECONDS.set(recovery_s, tags=self.tags)

    def write_done(self, seconds: float) -> None:
        COMMIT_LATENCY.observe(seconds, tags=self.tags)

    def read_done(self, objects: int) -> None:
        OBJECTS_PER_READ.observe(objects, tags=self.tags)

    def error(self, exc: BaseException) -> None:
        ERRORS.inc(1, tags={"shard": self.tags["shard"], "kind": type(exc).__name__})

    def publish(self, engine: Any, loop_failures: int = 0, force: bool = False) -> None:
        """Set the gauges and advance the counters from ``engine.status()`` (at most once
        every :data:`PUBLISH_INTERVAL_S` unless ``force``)."""
        now = time.monotonic()
        if not force and now < self._next_publish:
            return
        self._next_publish = now + PUBLISH_INTERVAL_S
        st = engine.status()
        tags = self.tags
        # Ray drops a gauge value not set again within its TTL: every gauge is set each time.
        RECOVERY_SECONDS.set(self._recovery_s, tags=tags)
        buffers = st.get("buffers") or []
        BUFFER_BYTES.set(sum(b.get("bytes", 0) for b in buffers), tags=tags)
        CHECKPOINT_QUEUE_BYTES.set(st.get("queue_bytes", 0), tags=tags)
        BUFFER_MEMORY_BYTES.set(st.get("buffer_memory_bytes", 0), tags=tags)
        CHECKPOINT_QUEUE_MEMORY_BYTES.set(st.get("queue_memory_bytes", 0), tags=tags)
        objects = st.get("objects") or {}
        COMPACTION_DEBT.set(objects.get("compaction_debt", 0), tags=tags)
        GC_BACKLOG.set(objects.get("awaiting_gc", 0), tags=tags)
        counters = st.get("counters") or {}
        log_status = st.get("log") or {}
        stats = _store_stats(engine.store)
        totals = {
            "groups": st.get("group_commits", 0),
            "commands": st.get("commits", 0),
            "rows": counters.get("rows_written", 0),
            "bytes": log_status.get("bytes_written", 0),
            "attempts": stats.get("attempts", 0),
            "retries": stats.get("retries", 0),
            "failures": stats.get("failures", 0),
            "maintenance": counters.get("maintain_errors", 0) + loop_failures,
        }
        d = {k: v - self._last.get(k, 0) for k, v in totals.items()}
        self._last = dict(totals)
        GROUP_COMMIT_SIZE.set(d["commands"] / d["groups"] if d["groups"] > 0 else 0, tags=tags)
        for metric, key in (
            (GROUP_COMMITS, "groups"),
            (COMMANDS, "commands"),
            (ROWS_WRITTEN, "rows"),
            (BYTES_WRITTEN, "bytes"),
            (STORE_REQUESTS, "attempts"),
            (STORE_RETRIES, "retries"),
            (STORE_FAILURES, "failures"),
            (MAINTENANCE_ERRORS, "maintenance"),
        ):
            if d[key] > 0:  # a counter only rises; a restarted shard starts from its own zero
                metric.inc(d[key], tags=tags)
