"""The Ray node this project starts or joins: a local in-process instance, a ``ray start``
head on loopback, or an existing cluster.

Used by the ``dn`` command, the demo, :func:`coordinator.connect` and the tests. Any thread,
but a process has one Ray session.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import ray

from coordinator.cli.ray_env import recorded_address, recorded_address_file
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


#: The environment variable that marks every process of a head ``dn up`` started (the head's
#: own processes and the workers its raylet starts inherit it), so that ``dn down --stop-ray``
#: stops exactly those and no other Ray cluster of the user.
HEAD_MARKER_VAR = "DN_RAY_HEAD"


def _head_record() -> str:
    return os.path.join(tempfile.gettempdir(), "ray", "dn_head.json")


def _ray_command() -> list[str]:
    """The ``ray`` command of this Python installation (a virtual environment's own, even
    when it is not activated), else the one on ``PATH``, else Ray's module."""
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("ray")
    return [found] if found else [sys.executable, "-m", "ray.scripts.scripts"]


def start_ray_head(num_cpus: int | None, port: int = 6379, dashboard: bool = True) -> str:
    """``ray start --head`` on loopback: a Ray cluster that outlives this process. Returns
    its address. A head already running on ``port`` is reused. Every process of the head is
    marked (:data:`HEAD_MARKER_VAR`) for :func:`stop_ray_head`. With ``dashboard``, Ray's
    dashboard runs on 127.0.0.1 (port 8265): the cluster's state, the shard actors' logs and
    the DN metrics (``docs/metrics.md``); the metrics endpoint is there either way."""
    marker = uuid.uuid4().hex
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **{HEAD_MARKER_VAR: marker})
    cmd = [
        *_ray_command(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--include-dashboard={'true' if dashboard else 'false'}",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    cmd.append(f"--system-config={json.dumps(WARM_WORKERS)}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    address = f"127.0.0.1:{port}"
    if proc.returncode != 0:
        if "already" not in (proc.stdout + proc.stderr).lower():
            raise Unavailable(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()[-2000:]}")
        return address  # reused: the head's record, if dn up started it, stays as it was
    os.makedirs(os.path.dirname(_head_record()), exist_ok=True)
    with open(_head_record(), "w") as f:
        json.dump({"marker": marker, "address": address}, f)
    return address


def _marked_pids(marker: str) -> list[int]:
    """The processes whose environment carries ``marker`` (Linux ``/proc``)."""
    needle = f"{HEAD_MARKER_VAR}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue  # gone, or not ours to read
    return pids


def stop_ray_head(timeout_s: float = 15.0) -> int:
    """Stop the head :func:`start_ray_head` started (its processes and its workers, found by
    their marker; no other Ray cluster on the machine is touched). Returns how many
    processes were stopped; 0 when ``dn up`` started no head here."""
    try:
        with open(_head_record()) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return 0
    pids = _marked_pids(record["marker"])
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _marked_pids(record["marker"]):
        time.sleep(0.2)
    for pid in _marked_pids(record["marker"]):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if recorded_address() == record["address"]:
        with contextlib.suppress(OSError):
            os.remove(recorded_address_file())
    with contextlib.suppress(OSError):
        os.remove(_head_record())
    return len(pids)
