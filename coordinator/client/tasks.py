"""Ray tasks for the client library: runs of tasks, streaming read tasks, warm workers.

Every ``.remote()`` the client library makes outside the shard and coordinator handles lives
here; errors are mapped by :func:`shards.group.map_error`, so callers only see
:mod:`dn.errors`. Streaming read tasks are spread over the cluster's nodes (Ray's ``SPREAD``
strategy), as the shards are. Any thread.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import ray

from shards.group import map_error


def _hold(seconds: float, preload: tuple[str, ...]) -> None:
    for name in preload:  # imported once per worker, before any timed work
        importlib.import_module(name)
    time.sleep(seconds)  # held, so that every task of the burst gets a worker of its own


#: The variables a read task needs to reach the store as this process does: where the store
#: is, never who may read it (credentials come from the node's own environment or instance
#: profile; a runtime environment is visible to anyone who can list tasks).
STORE_ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


def store_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's :data:`STORE_ENV_VARS` that are set: the environment of read tasks."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in STORE_ENV_VARS if env.get(k)}


def warm_workers(
    n: int, num_cpus: float = 0.01, preload: tuple[str, ...] = ("coordinator.client.client",)
) -> float:
    """Make sure ``n`` worker processes for Ray tasks exist (``n`` short tasks held at once),
    each with the modules ``preload`` names imported, so that a following burst of ``n``
    tasks does not wait for Python start-ups (about a CPU-second each; the node keeps idle
    workers, see :data:`coordinator.cli.ray_node.WARM_WORKERS`). Returns the seconds it
    took."""
    t0 = time.monotonic()
    remote = ray.remote(_hold).options(num_cpus=num_cpus, max_retries=0)
    try:
        ray.get([remote.remote(0.3, preload) for _ in range(n)])
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


def stream_tasks(
    fn: Callable[..., Iterator[bytes]],
    arg_lists: Mapping[int, tuple],
    env: Mapping[str, str] | None = None,
) -> dict[int, Iterator[bytes]]:
    """Run the generator ``fn(*args)`` as one streaming Ray task per entry; each entry's
    iterator yields the task's items as they are produced (pages of a large read). The tasks
    are spread over the cluster's nodes (Ray's ``SPREAD`` strategy; by default Ray would run
    them all on this process's node, which has room for tasks of no CPU)."""
    opts: dict[str, Any] = {"num_cpus": 0, "max_retries": 1, "scheduling_strategy": "SPREAD"}
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
