"""``dn logs`` (coordinator/cli/logs.py) against the session's Ray instance.

A one-shard deployment has its shard fenced (a second incarnation opened on its store, here in
the test process), so the shard logs why it stops; ``read_log`` and ``dn logs`` must find that
line in the shard's stderr. The session's Ray runs without a dashboard (conftest), so Ray's log
API is not served and ``--source auto`` reads this node's worker log files; the API source is
only checked to fail with a clear error here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dn import Engine
from dn.errors import DNError, InvalidArgument, NotFound, Unavailable

pytestmark = pytest.mark.ray

DEADLINE_S = 60.0
ROOT = Path(__file__).resolve().parent.parent


def _wait_for(pred, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"after {DEADLINE_S}s: {what}")
        time.sleep(0.5)


def _lines(target: str, namespace: str, **kw) -> list[tuple[str, str]]:
    from coordinator.cli.logs import read_log

    return list(read_log(target, namespace, **kw))


def test_dn_logs_shows_why_a_shard_stopped(deploy_cluster, ray_session, tmp_path, capsys):
    from coordinator.cli.logs import dashboard_url
    from coordinator.cli.main import main

    store = tmp_path / "store"
    client = deploy_cluster("logs", shards=1, store=str(store))
    ns = client.info["namespace"]
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    client.write("db", "t", [{"k": k, "v": "x"} for k in range(10)])
    assert dashboard_url() is None  # the session's Ray (conftest) runs without its dashboard

    # a second incarnation of shard 0 takes over the store: the actor is fenced and says so
    Engine.open(str(store), 0).close()
    with pytest.raises(DNError):
        client.write("db", "t", [{"k": 99, "v": "zombie"}])

    def stopped():  # the write path's line, then the maintenance loop's on its next round
        lines = [ln for s, ln in _lines("0", ns, tail=-1) if s == "err" and "shard 0" in ln]
        return lines if any("maintenance stops" in ln for ln in lines) else None

    lines = _wait_for(stopped, "no line of shard 0 and of its maintenance loop in its stderr")
    assert any("fenced" in ln.lower() or "stops" in ln for ln in lines), lines

    # --tail: only the last lines of each stream, and nothing of the other stream asked for;
    # the fenced actor logs nothing more of its own now
    every = _lines("0", ns, tail=-1, streams=("err",))
    assert _lines("0", ns, tail=1, streams=("err",)) == every[-1:]
    assert _lines("0", ns, tail=0) == []
    assert not any(ln.startswith(":actor_name:") for _, ln in every)  # Ray's markers are gone

    # --follow: the tail first, then a line the actor's process writes after the reader started
    import ray

    from coordinator.cli.logs import read_log
    from shards.group import shard_name

    follow = read_log("0", ns, tail=1, follow=True, streams=("err",))
    try:
        assert next(follow) == every[-1]
        probe = f"probe line {time.time_ns()}"
        actor = ray.get_actor(shard_name(0), namespace=ns)
        # a lambda travels by value (the test module is not importable in the actor)
        say = lambda _, text: print(text, file=sys.stderr, flush=True)  # noqa: E731
        ray.get(actor.__ray_call__.remote(say, probe))
        assert next(follow) == ("err", probe)
    finally:
        follow.close()

    # the command: headers per stream, the shard's line under stderr
    assert main(["logs", "0", "--namespace", ns, "--address", ray_session, "--tail", "-1"]) == 0
    out = capsys.readouterr().out
    assert "==> stderr <==" in out and lines[0] in out


def test_dn_logs_of_the_coordinator_and_bad_targets(cluster, ray_session):
    from coordinator.actor.handle import actor_record
    from coordinator.cli.logs import log_files, read_log

    ns = cluster.info["namespace"]
    rec = actor_record("dn-coordinator", ns)
    paths = log_files(rec)
    assert set(paths) == {"out", "err"}
    assert all(p.endswith(f"-{rec['Pid']}.{s}") for s, p in paths.items())
    assert all(s in ("out", "err") for s, _ in read_log("coordinator", ns, tail=5))
    with pytest.raises(InvalidArgument):
        list(read_log("shard-x", ns))
    with pytest.raises(NotFound):
        list(read_log("7", ns))  # the shared deployment has 4 shards
    with pytest.raises(Unavailable, match="dashboard"):
        list(read_log("0", ns, tail=1, source="api"))  # no dashboard in this session


def test_dn_logs_as_a_command(cluster, ray_session):
    """``dn logs`` in its own process: it connects, finds the actor and exits 0."""
    cmd = [sys.executable, "-m", "coordinator.cli"]
    ns = cluster.info["namespace"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    args = ["logs", "coordinator", "--namespace", ns, "--address", ray_session, "--tail", "3"]
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    bad = subprocess.run(
        [*cmd, "logs", "9", "--namespace", ns, "--address", ray_session],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert bad.returncode == 1 and "NotFound" in bad.stderr
