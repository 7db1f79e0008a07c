"""The Ray node this project starts or joins: a local in-process instance, a ``ray start``
head on loopback, or an existing cluster.

Used by the ``dn`` command, the demo, :func:`coordinator.connect` and the tests. Any thread,
but a process has one Ray session.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ray

from dn.errors import Unavailable


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
