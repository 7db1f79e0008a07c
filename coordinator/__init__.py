"""DN on a Ray cluster: deploy, connect, and the client.

Public API::

    import coordinator
    client = coordinator.deploy("cluster.yaml", shards=4)    # or deploy() for the defaults
    client = coordinator.connect(namespace="dn")             # from any driver or Ray task
    coordinator.shutdown(namespace="dn")

:class:`Client` has the methods of :class:`dn.Engine` (create_database, drop_database,
create_table, drop_table, write, get, scan, changes) across all shards, plus ``snapshot()``,
``status()`` and ``writer()`` (buffered ingest, :mod:`~coordinator.client.writer`).
Ray Data: ``read_dn``, ``read_dn_changes`` and ``DNDatasink`` (:mod:`coordinator.client.raydata`).

Sub-packages, by role: :mod:`coordinator.client` (the client library that runs in drivers
and tasks), :mod:`coordinator.actor` (the coordinator actor: cluster catalog and shard map),
:mod:`coordinator.cli` (the ``dn`` command, deployments, the demo); and
:mod:`coordinator.config` (``cluster.yaml``'s settings), shared by all three.
"""

from typing import Any

from coordinator.cli.ray_env import keep_ray_on_loopback

# A script that imports coordinator and then calls ray.init (or connect) reaches a cluster on
# this machine's loopback address with nothing set in its environment (see ray_env).
keep_ray_on_loopback()

__all__ = [
    "Client",
    "ClusterConfig",
    "DNDatasink",
    "connect",
    "deploy",
    "load_config",
    "read_dn",
    "read_dn_changes",
    "shutdown",
]

_WHERE = {
    "Client": "coordinator.client.client",
    "ClusterConfig": "coordinator.config",
    "load_config": "coordinator.config",
    "connect": "coordinator.cli.deployment",
    "deploy": "coordinator.cli.deployment",
    "shutdown": "coordinator.cli.deployment",
    "read_dn": "coordinator.client.raydata",
    "read_dn_changes": "coordinator.client.raydata",
    "DNDatasink": "coordinator.client.raydata",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: the ``dn`` command must set Ray's
    # environment (loopback, token auth) before anything imports ray.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
