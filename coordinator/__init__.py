"""DN on a Ray cluster: deploy, connect, and the client.

Public API::

    import coordinator
    client = coordinator.deploy("cluster.yaml", shards=4)    # or deploy() for the defaults
    client = coordinator.connect(namespace="dn")             # from any driver or Ray task
    coordinator.shutdown(namespace="dn")

:class:`Client` has the methods of :class:`dn.Engine` (create_database, drop_database,
create_table, drop_table, write, get, scan, changes) across all shards, plus ``snapshot()``,
``status()`` and ``writer()`` (buffered ingest, :mod:`~coordinator.writer`).

Modules: :mod:`~coordinator.config` (cluster.yaml), :mod:`~coordinator.routing` (stable hash),
:mod:`~coordinator.catalog` (cluster record in the store), :mod:`~coordinator.service` (the
coordinator actor's body), :mod:`~coordinator.reads` (cross-shard snapshot reads),
:mod:`~coordinator.client`, :mod:`~coordinator.writer` (buffered ingest),
:mod:`~coordinator.deployment`, :mod:`~coordinator.handles` (the only Ray-facing module here),
:mod:`~coordinator.cli` (the ``dn`` command).
"""

from typing import Any

__all__ = ["Client", "ClusterConfig", "connect", "deploy", "load_config", "shutdown"]

_WHERE = {
    "Client": "coordinator.client",
    "ClusterConfig": "coordinator.config",
    "load_config": "coordinator.config",
    "connect": "coordinator.deployment",
    "deploy": "coordinator.deployment",
    "shutdown": "coordinator.deployment",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: the ``dn`` command must set Ray's
    # environment (loopback, token auth) before anything imports ray.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
