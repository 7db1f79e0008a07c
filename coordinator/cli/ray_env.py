"""Ray's environment for a cluster on this machine's loopback address, set before Ray needs it.

A Ray head that ``dn up`` starts listens on 127.0.0.1 (decision 0011). Ray, left alone, turns
a loopback address into the machine's first other address when a driver connects (it assumes
a multi-node cluster), so a plain script's ``ray.init()`` or ``coordinator.connect()`` would
wait for a GCS that is not there. Ray reads the switch for that, the environment variable
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, once, when it is imported, and consults the loaded
value (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) when it resolves addresses.

:func:`keep_ray_on_loopback` sets both, only when the cluster this process would connect to
(an explicit address, ``RAY_ADDRESS``, or the one ``ray start`` recorded on this machine) is
on loopback; it also asks for Ray's token authentication when ``ray start`` left a token.
``import coordinator`` calls it, and so do :func:`coordinator.connect`, ``deploy`` and the
``dn`` command, so a script that imports ``coordinator`` before it calls ``ray.init`` works
with nothing set in its environment. A script that calls ``ray.init`` without importing
``coordinator`` first needs ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (``dn up`` prints it).

Never imports Ray (the ``dn`` command calls it before Ray may be imported). Any thread, but
it should run before the process's first ``ray.init``.
"""

from __future__ import annotations

import os
import sys
import tempfile

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: The variable Ray reads at import to treat this machine as a single-node cluster.
SINGLE_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def recorded_address_file() -> str:
    """The file in which ``ray start`` records the address of the cluster it started on this
    machine (the one Ray's own ``address="auto"`` reads)."""
    return os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")


def recorded_address() -> str | None:
    """The address ``ray start`` recorded for the cluster running on this machine, if any."""
    try:
        with open(recorded_address_file()) as f:
            return f.read().strip() or None
    except OSError:
        return None


def cluster_address(address: str | None = None) -> str | None:
    """The address a ``ray.init`` of this process would connect to: ``address``, else
    ``RAY_ADDRESS``, else the recorded one (``"auto"`` means the recorded one)."""
    addr = address or os.environ.get("RAY_ADDRESS") or "auto"
    return recorded_address() if addr == "auto" else addr


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def keep_ray_on_loopback(address: str | None = None) -> bool:
    """Make this process's Ray stay on loopback if the cluster it would join is on loopback
    (see the module docstring). Returns whether it did."""
    if not is_loopback(cluster_address(address)):
        return False
    os.environ.setdefault(SINGLE_NODE_VAR, "0")
    if "ray" in sys.modules:  # imported already: the loaded switch is the one Ray consults
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        # Ray took its authentication mode at import: turn token authentication on now if
        # ``ray start`` left a token and the mode was not chosen explicitly
        from ray._private.authentication import authentication_token_setup as auth

        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        return True
    if os.path.exists(os.path.expanduser("~/.ray/auth_token")) or os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    return True


def connect_lines(address: str, namespace: str) -> list[str]:
    """What a user runs to reach a deployment at ``address`` (printed by ``dn up``)."""
    lines = [
        "connect from any Python process on this machine:",
        "    import coordinator",
        f"    client = coordinator.connect({namespace!r})",
    ]
    if is_loopback(address):
        lines.append(
            f"(a script that calls ray.init before importing coordinator: set {SINGLE_NODE_VAR}=0)"
        )
    return lines
