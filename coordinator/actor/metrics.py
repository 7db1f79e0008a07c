"""The DN coordinator metrics, through ``ray.util.metrics`` (Prometheus on Ray's metrics port).

Every series is named ``dn_coordinator_...`` and tagged ``namespace`` (the deployment's Ray
namespace: one Ray cluster may hold several deployments, each with its own coordinator); Ray
adds its own tags (``SessionName``, ``NodeAddress``, ``WorkerId``...). ``docs/metrics.md``
lists them and ``docs/grafana-dn.json`` draws them. The shards' series are in
:mod:`shards.metrics`.

Three sources:

- **The coordinator's calls** (:mod:`coordinator.actor.service`): each public call is counted
  and timed by :meth:`CoordinatorMetrics.request`, by ``method``, and a failed one is counted by
  error kind. Clients cache ``info()`` and table definitions, so this is DDL and the occasional
  refresh, never the write path. Snapshots are not among them: a client chooses its snapshot
  from the shards' clocks (:func:`coordinator.client.fanout.choose_snapshot`) without asking
  the coordinator.
- **What the coordinator sees of the shards**: the outcome of each shard's part of a DDL
  (:meth:`CoordinatorMetrics.shard_error`: one count per failed shard per DDL attempt, by
  error kind; a shard that is dead or restarting shows as ``Unavailable``), and the number of
  times Ray has restarted each shard actor (:meth:`CoordinatorMetrics.shard_restarts`, read
  from Ray's actor table by the actor's publisher thread, :mod:`coordinator.actor.handle`).
- **The cluster record**: its version and whether a DDL is pending
  (:meth:`CoordinatorMetrics.catalog`), set after each DDL and again by the publisher thread
  at least every :data:`PUBLISH_INTERVAL_S` (Ray drops a gauge value not set again within its
  TTL).

This module is the only place the coordinator imports ``ray.util.metrics``; without a Ray
session (the service used in-process by tests) the updates are recorded nowhere. Thread: any
(Ray's metric objects are thread-safe).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from ray.util.metrics import Counter, Gauge, Histogram

#: How often the coordinator actor sets its gauges again (the cluster record, shard restarts).
PUBLISH_INTERVAL_S = 2.0

_NS = ("namespace",)

# Latency buckets in seconds: ``info``/``table``/``status`` answer from memory in well under a
# millisecond; a DDL writes the cluster record twice and waits for every shard's commit.
_LATENCY_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30]

# -- updated by the coordinator's calls (coordinator/actor/service.py) ----------------------

#: Calls to the coordinator, by ``method`` (``info``, ``table``, ``create_table``...), counted
#: when they end, failed or not.
REQUESTS = Counter(
    "dn_coordinator_requests_total",
    description="Calls to the coordinator, by method.",
    tag_keys=("namespace", "method"),
)
#: Seconds a coordinator call takes, by ``method`` (a DDL: validation, two cluster-record
#: writes and every shard's commit).
REQUEST_LATENCY = Histogram(
    "dn_coordinator_request_latency_seconds",
    description="Seconds a call to the coordinator takes, by method.",
    boundaries=_LATENCY_S,
    tag_keys=("namespace", "method"),
)
#: Failed coordinator calls, by ``method`` and ``kind`` (the exception's class name).
REQUEST_ERRORS = Counter(
    "dn_coordinator_request_errors_total",
    description="Failed calls to the coordinator, by method and error kind.",
    tag_keys=("namespace", "method", "kind"),
)
#: Shards whose part of a DDL failed, by ``shard`` and ``kind``; ``Unavailable`` is a shard
#: that is dead, restarting or not answering (the DDL stays pending and is retried).
SHARD_ERRORS = Counter(
    "dn_coordinator_shard_errors_total",
    description="Shard calls of the coordinator (DDL) that failed, by shard and error kind.",
    tag_keys=("namespace", "shard", "kind"),
)

# -- set by the actor's publisher thread (coordinator/actor/handle.py) ----------------------

#: Times Ray has restarted each shard actor since it was created (Ray's actor table).
SHARD_RESTARTS = Gauge(
    "dn_coordinator_shard_restarts",
    description="Times Ray has restarted each shard actor (from Ray's actor table).",
    tag_keys=("namespace", "shard"),
)
#: The version of the cluster record (it rises by one with each committed change).
CATALOG_VERSION = Gauge(
    "dn_coordinator_catalog_version",
    description="Version of the cluster record (cluster catalog).",
    tag_keys=_NS,
)
#: 1 while a DDL is pending (begun, not yet on every shard), else 0.
PENDING_DDL = Gauge(
    "dn_coordinator_pending_ddl",
    description="1 while a DDL has begun but has not reached every shard, else 0.",
    tag_keys=_NS,
)


class CoordinatorMetrics:
    """The metrics of one deployment's coordinator: its namespace tag."""

    def __init__(self, namespace: str) -> None:
        self.tags = {"namespace": namespace}

    @contextmanager
    def request(self, method: str) -> Iterator[None]:
        """Count and time the call ``method`` around the ``with`` body; an exception out of
        it is counted by kind and goes on."""
        tags = {"namespace": self.tags["namespace"], "method": method}
        t0 = time.monotonic()
        try:
            yield
        except BaseException as exc:
            REQUEST_ERRORS.inc(1, tags={**tags, "kind": type(exc).__name__})
            raise
        finally:
            REQUESTS.inc(1, tags=tags)
            REQUEST_LATENCY.observe(time.monotonic() - t0, tags=tags)

    def shard_error(self, shard: int, exc: BaseException) -> None:
        tags = {"namespace": self.tags["namespace"], "shard": str(shard)}
        SHARD_ERRORS.inc(1, tags={**tags, "kind": type(exc).__name__})

    def shard_restarts(self, shard: int, restarts: int) -> None:
        tags = {"namespace": self.tags["namespace"], "shard": str(shard)}
        SHARD_RESTARTS.set(restarts, tags=tags)

    def catalog(self, version: int, pending: bool) -> None:
        CATALOG_VERSION.set(version, tags=self.tags)
        PENDING_DDL.set(1 if pending else 0, tags=self.tags)
