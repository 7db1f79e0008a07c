"""Deploying, finding and removing a DN deployment on the Ray cluster this process uses.

- :func:`deploy` creates the shard actors and the coordinator of a config (or finds them,
  when they run already) and returns a :class:`coordinator.client.client.Client`;
- :func:`connect` finds a running deployment by namespace, from a driver or inside any Ray
  task or actor;
- :func:`shutdown` kills a deployment's actors. The data stays in the store: deploying the
  same config again recovers every shard from it.

A store already holding a cluster fixes the shard count: deploying another count over it is
refused (``InvalidArgument``) before any actor is created.

Callers: drivers and the ``dn`` command line; one deployment per namespace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from coordinator.actor.cluster_catalog import ClusterCatalog
from coordinator.actor.handle import CoordinatorHandle, start_deployment, stop_deployment
from coordinator.cli.ray_env import keep_ray_on_loopback
from coordinator.cli.ray_node import ensure_ray
from coordinator.client.client import Client
from coordinator.client.readerpool import ReaderPool
from coordinator.client.routing import HASH_NAME
from coordinator.config import ClusterConfig, load_config
from dn.errors import DNError, InvalidArgument
from dn.store import open_store

log = logging.getLogger(__name__)


def deploy(
    config: str | os.PathLike[str] | Mapping[str, Any] | ClusterConfig | None = None,
    *,
    address: str | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Client:
    """Deploy DN into the Ray cluster this process is connected to (or ``address``; or a new
    local Ray instance) and return a client.

    ``config``: a cluster-launcher file such as ``"cluster.yaml"`` (its ``metadata.dn``
    section), a mapping of the same keys, a :class:`ClusterConfig`, or None for the embedded
    defaults (4 shards, a local directory store at ``./data``). ``overrides`` win over it,
    e.g. ``deploy("cluster.yaml", shards=8, store="s3://bucket/prefix")``. ``progress`` hears
    what the deployment waits for while shards start and recover (``dn up`` prints it).
    """
    cfg = load_config(config, overrides)
    keep_ray_on_loopback(address)
    ensure_ray(address, cfg.namespace)
    _check_store(cfg)
    log.info("deploying %d shards in namespace %r over %s", cfg.shards, cfg.namespace, cfg.store)
    start_deployment(cfg, progress)
    return connect(cfg.namespace)


def connect(namespace: str = "dn", *, address: str | None = None) -> Client:
    """A client of the deployment running in ``namespace``; NotFound if there is none.
    Connects this process to Ray first unless it is (``address``, ``RAY_ADDRESS``, or the
    cluster ``ray start`` left on this machine; a loopback one works with nothing set)."""
    keep_ray_on_loopback(address)
    ensure_ray(address, namespace)
    client = Client(namespace)
    client.info  # noqa: B018 - fetch the shard map now: fail here, not on first use
    return client


def shutdown(namespace: str = "dn", *, address: str | None = None) -> list[str]:
    """Kill the deployment's actors (its data stays in the store); returns their names. This
    process's cache of the deployment's objects goes too (``ReaderPool.forget``)."""
    ensure_ray(address, namespace)
    try:
        info = CoordinatorHandle(namespace).call("info")
    except DNError:  # no coordinator: the shard actors left, if any, are still stopped
        info = None
    killed = stop_deployment(namespace, info["shards"] if info is not None else 0)
    if info is not None:
        ReaderPool.forget(info["store"])
    return killed


def _check_store(cfg: ClusterConfig) -> None:
    if cfg.env:
        # the driver reads the store too (and checks it here); give it the same environment
        for k, v in cfg.env.items():
            os.environ.setdefault(k, v)
    state = ClusterCatalog(open_store(cfg.store)).load()
    if state is not None and (state.shards != cfg.shards or state.hash != HASH_NAME):
        raise InvalidArgument(
            f"the store {cfg.store} holds a cluster of {state.shards} shards; cannot deploy "
            f"{cfg.shards} over it (shard count is fixed when a cluster is created)"
        )
