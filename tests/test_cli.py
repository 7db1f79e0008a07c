"""The ``dn`` command line, run as a subprocess against the session's Ray instance:
``dn up``/``dn down`` of a deployment, ``dn status``, ``dn scan``/``dn changes`` (JSON lines,
bytes as base64) and ``dn demo``. Everything it deploys is removed again.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


def dn(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    exe = shutil.which("dn")
    cmd = [exe] if exe else [sys.executable, "-m", "coordinator.cli"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_dn_up_status_scan_changes_down(ray_session, tmp_path):
    ns = "dn-test-cli"
    up = dn(
        "up",
        "--address",
        ray_session,
        "--namespace",
        ns,
        "--shards",
        "2",
        "--store",
        str(tmp_path / "store"),
    )
    assert up.returncode == 0, up.stderr
    assert "DN is up: 2 shards" in up.stdout
    try:
        import coordinator

        client = coordinator.connect(ns)
        client.create_database("db")
        client.create_table("db", "t", {"k": "int64", "b": "bytes"}, "k")
        t0 = client.snapshot()
        client.write("db", "t", [{"k": k, "b": bytes([k])} for k in range(5)])
        client.write("db", "t", deletes=[4])

        st = dn("status", "--address", ray_session, "--namespace", ns)
        assert st.returncode == 0, st.stderr
        for word in (
            "shard 0",
            "shard 1",
            "epoch",
            "buffers",
            "checkpoint queue",
            "ranges",
            "checkpoints",
            "last checkpoint",
            "log size",
            "rows",
            "db.t",
        ):
            assert word in st.stdout, f"{word!r} missing from dn status:\n{st.stdout}"
        watch = dn(
            "status", "--address", ray_session, "--namespace", ns, "--watch", "0.2", "--count", "2"
        )
        assert watch.returncode == 0, watch.stderr
        assert watch.stdout.count("shard 0  (pid") == 2 and "rows/s" in watch.stdout

        scan = dn("scan", "db", "t", "--address", ray_session, "--namespace", ns)
        assert scan.returncode == 0, scan.stderr
        rows = [json.loads(line) for line in scan.stdout.splitlines()]
        assert [r["k"] for r in rows] == [0, 1, 2, 3]
        assert [base64.b64decode(r["b"]) for r in rows] == [bytes([k]) for k in range(4)]

        ch = dn(
            "changes", "db", "t", "--from", str(t0), "--address", ray_session, "--namespace", ns
        )
        assert ch.returncode == 0, ch.stderr
        feed = [json.loads(line) for line in ch.stdout.splitlines()]
        assert [(c["kind"], c["pk"]) for c in feed][-1] == ("delete", 4)
        assert len(feed) == 6 and feed[-1]["type"] == "delete"

        # --follow: the same changes, then it waits for more (stopped after the first lines)
        exe = shutil.which("dn")
        cmd = [exe] if exe else [sys.executable, "-m", "coordinator.cli"]
        args = ["changes", "db", "t", "--from", str(t0), "--follow"]
        follow = subprocess.Popen(
            [*cmd, *args, "--address", ray_session, "--namespace", ns],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        )
        try:
            lines = [json.loads(follow.stdout.readline()) for _ in range(6)]
        finally:
            follow.kill()
            follow.wait()
        assert [(c["ts"], c["pk"]) for c in lines] == [(c["ts"], c["pk"]) for c in feed]

        # slots move and the shard count changes from the command line; reads stay the same
        where = ("--address", ray_session, "--namespace", ns)
        mv = dn("move-slots", "--slots", "0-99,4000", "--to", "1", *where)
        assert mv.returncode == 0, mv.stderr
        assert "slot map v1; slots per shard 0: 1997, 1: 2099" in mv.stdout  # 51 even slots
        rs = dn("reshard", "--shards", "3", *where)
        assert rs.returncode == 0, rs.stderr
        assert "per shard 0: 1366, 1: 1365, 2: 1365" in rs.stdout and "  shards: 3" in rs.stdout
        assert "1 new shard(s) started in " in rs.stdout, rs.stdout
        st = dn("status", *where)
        assert "shard 2" in st.stdout and "slot moves" in st.stdout, st.stdout
        again = dn("scan", "db", "t", *where)
        assert [json.loads(line) for line in again.stdout.splitlines()] == rows

        bad = dn("scan", "db", "nope", "--address", ray_session, "--namespace", ns)
        assert bad.returncode == 1 and "NotFound" in bad.stderr
    finally:
        down = dn("down", "--address", ray_session, "--namespace", ns)
    assert down.returncode == 0, down.stderr
    assert "dn-coordinator" in down.stdout
    gone = dn("status", "--address", ray_session, "--namespace", ns)
    assert gone.returncode == 1 and "no DN deployment" in gone.stderr


def test_dn_demo_runs_end_to_end(ray_session, tmp_path):
    out = dn(
        "demo",
        "--address",
        ray_session,
        "--rows",
        "8000",
        "--tasks",
        "4",
        "--store",
        str(tmp_path / "demo"),
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert "rows at snapshot after insert: 8000" in out.stdout
    assert "changes in (before, after insert]: 8000" in out.stdout
    assert "rows now: 7950" in out.stdout
    assert "100.0% 8000/8000 rows" in out.stderr  # the progress bar reached the end
