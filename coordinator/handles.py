"""The Ray shell of the coordinator side: the coordinator actor, Ray sessions and tasks.

Every Ray API call of the ``coordinator`` package lives here (``ray.init``, ``ray.remote``,
``.remote()``, ``ray.get``, ``ray.wait``, ``ray.get_actor``, ``ray.kill``); errors are mapped
by :func:`shards.handle.map_error`, so callers only see :mod:`dn.errors`.

The coordinator actor is ``dn-coordinator`` in the deployment's namespace: detached, restarted
by Ray without limit, threaded. It is :class:`coordinator.service.CoordinatorService` with a
:class:`shards.handle.ShardGroup` plugged in. Ray retries none of its calls; the client
retries the idempotent ones (``info``, ``table``, ``status``) itself. A DDL call whose
coordinator died mid-call fails with ``Unavailable(outcome_unknown=True)``; the restarted
coordinator finishes a DDL it had begun.

Any thread. :class:`CoordinatorHandle` pickles as its namespace only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import ray

from coordinator.config import ClusterConfig
from coordinator.service import CoordinatorService
from dn.errors import DNError, NotFound, Unavailable
from shards.handle import ShardGroup, kill_actor, map_error, shard_name, start_shards

log = logging.getLogger(__name__)

COORDINATOR_NAME = "dn-coordinator"


class CoordinatorActor(CoordinatorService):
    """The coordinator as it runs inside its actor: shards reached through Ray."""

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = ClusterConfig.from_dict(config)
        super().__init__(config, ShardGroup(cfg.namespace, cfg.shards, cfg.call_timeout_s))

    def pid(self) -> int:
        return os.getpid()


_remote_coordinator: Any = None


def ensure_ray(address: str | None = None, namespace: str | None = None) -> None:
    """Connect this process to Ray unless it is already (``address=None``: the cluster named
    by RAY_ADDRESS or a running local one, else a new local instance)."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    ray.init(**kwargs)


def ray_is_connected() -> bool:
    return ray.is_initialized()


def start_deployment(cfg: ClusterConfig) -> None:
    """Create (or find) the shard actors and the coordinator of ``cfg``, and wait until the
    coordinator has opened the cluster record."""
    global _remote_coordinator
    start_shards(
        cfg.namespace,
        cfg.shards,
        cfg.store,
        cfg.engine.to_dict(),
        cfg.clock_skew_ms,
        cfg.shard_num_cpus,
        cfg.shard_max_concurrency,
        cfg.env,
    )
    if _remote_coordinator is None:
        _remote_coordinator = ray.remote(CoordinatorActor)
    opts: dict[str, Any] = dict(
        name=COORDINATOR_NAME,
        namespace=cfg.namespace,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=16,
        num_cpus=0,
        get_if_exists=True,
    )
    if cfg.env:
        opts["runtime_env"] = {"env_vars": dict(cfg.env)}
    actor = _remote_coordinator.options(**opts).remote(cfg.to_dict())
    try:
        ray.get(actor.info.remote(), timeout=cfg.call_timeout_s)
    except Exception as exc:
        raise map_error(exc, "starting the coordinator") from exc
    group = ShardGroup(cfg.namespace, cfg.shards, cfg.call_timeout_s)
    for r in group.call_each(
        {i: ("pid", ()) for i in range(cfg.shards)}, cfg.call_timeout_s
    ).values():
        if isinstance(r, BaseException):
            raise r


def stop_deployment(namespace: str, shards: int | None) -> list[str]:
    """Kill the coordinator and shard actors of a namespace (no restart); returns the names
    killed. Shards are asked to close first, so their maintenance stops cleanly."""
    killed = []
    if shards is None:
        try:
            shards = CoordinatorHandle(namespace).call("info")["shards"]
        except DNError:
            shards = 0
    group = ShardGroup(namespace, shards, 30.0)
    group.call_each({i: ("close", ()) for i in range(shards)})
    for name in [COORDINATOR_NAME] + [shard_name(i) for i in range(shards)]:
        if kill_actor(name, namespace):
            killed.append(name)
    return killed


class CoordinatorHandle:
    """Calls to the coordinator actor of one namespace."""

    def __init__(self, namespace: str, call_timeout_s: float = 120.0) -> None:
        self.namespace = namespace
        self.call_timeout_s = call_timeout_s
        self._actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "call_timeout_s": self.call_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["namespace"], state["call_timeout_s"])

    def _get_actor(self) -> Any:
        if self._actor is None:
            try:
                self._actor = ray.get_actor(COORDINATOR_NAME, namespace=self.namespace)
            except ValueError:
                raise NotFound(
                    f"no DN deployment in Ray namespace {self.namespace!r} "
                    "(deploy one with coordinator.deploy or `dn up`)",
                    namespace=self.namespace,
                ) from None
        return self._actor

    def call(self, method: str, *args: Any, retry_s: float = 0.0) -> Any:
        deadline = time.monotonic() + retry_s
        delay = 0.05
        while True:
            try:
                ref = getattr(self._get_actor(), method).remote(*args)
                return ray.get(ref, timeout=self.call_timeout_s)
            except Exception as exc:
                err = map_error(exc, f"coordinator.{method}")
                if isinstance(err, Unavailable):
                    self._actor = None
                    if time.monotonic() < deadline:
                        time.sleep(delay * (1 + random.random()))
                        delay = min(delay * 2, 1.0)
                        continue
                raise err from None

    def kill(self, restart: bool) -> bool:
        return kill_actor(COORDINATOR_NAME, self.namespace, restart=restart)


def _hold(seconds: float) -> None:
    import coordinator.client  # noqa: F401 - imported once per worker, before any timed work

    time.sleep(seconds)  # held, so that every task of the burst gets a worker of its own


def warm_workers(n: int, num_cpus: float = 0.01) -> float:
    """Make sure ``n`` worker processes for Ray tasks exist (``n`` short tasks held at once),
    so that a following burst of ``n`` tasks does not wait for Python start-ups (about a
    CPU-second each; the node keeps idle workers, see :data:`WARM_WORKERS`). Returns the
    seconds it took."""
    t0 = time.monotonic()
    remote = ray.remote(_hold).options(num_cpus=num_cpus, max_retries=0)
    try:
        ray.get([remote.remote(0.3) for _ in range(n)])
    except Exception as exc:
        raise map_error(exc, "starting workers") from exc
    return time.monotonic() - t0


def run_tasks(
    fn: Callable[..., Any],
    arg_lists: Iterable[tuple],
    num_cpus: float = 0.01,
    on_result: Callable[[Any], None] | None = None,
    env: Mapping[str, str] | None = None,
    max_in_flight: int = 16,
) -> list[Any]:
    """Run ``fn(*args)`` as one Ray task per argument tuple, at most ``max_in_flight`` at a
    time (so Ray starts that many worker processes, not one per task); results in
    submission order. ``on_result`` sees each result as it arrives (progress bars)."""
    opts: dict[str, Any] = {"num_cpus": num_cpus, "max_retries": 0}
    if env:
        opts["runtime_env"] = {"env_vars": dict(env)}
    remote = ray.remote(fn).options(**opts)
    todo = list(enumerate(arg_lists))
    todo.reverse()
    out: list[Any] = [None] * len(todo)
    index: dict[Any, int] = {}
    waiting: list[Any] = []
    while todo or waiting:
        while todo and len(waiting) < max_in_flight:
            i, args = todo.pop()
            ref = remote.remote(*args)
            index[ref] = i
            waiting.append(ref)
        done, waiting = ray.wait(waiting, num_returns=1)
        for ref in done:
            try:
                out[index[ref]] = ray.get(ref)
            except Exception as exc:
                raise map_error(exc, f"task {fn.__name__}") from exc
            if on_result is not None:
                on_result(out[index[ref]])
    return out


# The Ray node's worker pool, as this project starts it (a local node, or `dn up` without an
# address):
# - Keep idle worker processes around. Ray's default soft limit is the CPU count, so on a
#   small machine it kills the workers of Ray tasks as soon as they go idle, and the next wave
#   of writer tasks pays a Python start-up (seconds of CPU each) before it writes anything.
# - One lease request in flight per kind of task. With several in flight, each request reports
#   a backlog that does not count the others, so on every burst of tasks the raylet starts
#   spare workers it never uses: two or three per burst of 16, each a Python start-up of about
#   a CPU-second, taken from the writers on a 2-core node. Leasing one at a time costs a
#   burst about a millisecond per task to ramp up; leased workers are reused for later tasks.
WARM_WORKERS = {
    "num_workers_soft_limit": 64,
    "max_pending_lease_requests_per_scheduling_category": 1,
}


_NODES: tuple[float, int] = (0.0, 0)


def alive_nodes() -> int:
    """How many nodes the Ray cluster has (asked at most once a minute)."""
    global _NODES
    checked, n = _NODES
    if time.monotonic() - checked > 60:
        n = sum(1 for node in ray.nodes() if node.get("Alive"))
        _NODES = (time.monotonic(), n)
    return n


def _pages_task(fn: Callable[..., Iterator[bytes]], *args: Any) -> Iterator[bytes]:
    yield from fn(*args)


def stream_tasks(fn: Callable[..., Iterator[bytes]], arg_lists: Mapping[int, tuple],
                 env: Mapping[str, str] | None = None) -> dict[int, Iterator[bytes]]:
    """Run the generator ``fn(*args)`` as one streaming Ray task per entry; each entry's
    iterator yields the task's items as they are produced (pages of a large read)."""
    opts: dict[str, Any] = {"num_cpus": 0, "max_retries": 1}
    if env:
        opts["runtime_env"] = {"env_vars": dict(env)}
    remote = ray.remote(_pages_task).options(**opts)
    gens = {i: remote.remote(fn, *args) for i, args in arg_lists.items()}

    def items(gen: Any) -> Iterator[bytes]:
        try:
            for ref in gen:
                yield ray.get(ref)
        except Exception as exc:
            raise map_error(exc, "a read task") from exc

    return {i: items(g) for i, g in gens.items()}


def start_local_ray(num_cpus: int | None = None, namespace: str | None = None) -> None:
    """An in-process local Ray instance on loopback, stopped by :func:`stop_local_ray`.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough: Ray turns a loopback
    address into the machine's first other address unless it was told it runs a single-node
    cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), and it reads that variable once, when
    it is imported, which in this process happened before this call. So the variable is set
    for the processes Ray starts, and the loaded module is told as well. Raises
    :class:`Unavailable` (after shutting Ray down) if the node still is not on loopback."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the raylet and workers inherit it
    ray_constants.ENABLE_RAY_CLUSTER = False  # read when ray.init resolves the node address
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        namespace=namespace,
        _system_config=WARM_WORKERS,
    )
    address = ray.get_runtime_context().gcs_address
    if not address.startswith("127.0.0.1:"):
        ray.shutdown()
        raise Unavailable(f"the local Ray node came up on {address}, not on loopback")


def stop_local_ray() -> None:
    ray.shutdown()


def start_ray_head(num_cpus: int | None, port: int = 6379) -> str:
    """``ray start --head`` on loopback: a Ray cluster that outlives this process. Returns
    its address. A head already running on ``port`` is reused."""
    import subprocess

    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    cmd = [
        "ray",
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    cmd.append(f"--system-config={json.dumps(WARM_WORKERS)}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 and "already" not in (proc.stdout + proc.stderr).lower():
        raise Unavailable(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()[-2000:]}")
    return f"127.0.0.1:{port}"


def stop_ray_head() -> None:
    """``ray stop``: stops every Ray process of this user on this machine."""
    import subprocess

    subprocess.run(["ray", "stop"], capture_output=True, text=True)
