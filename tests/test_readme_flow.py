"""The README's flow as a user runs it, each step a fresh process with nothing set in its
environment but PATH and HOME: ``dn up`` (a Ray head on loopback, port chosen free), a plain
script that imports ``coordinator``, connects and writes from Ray tasks, another that calls
``ray.init()`` itself first, ``dn scan``, and ``dn down --stop-ray``, which stops that head
and nothing else (the test session's own Ray keeps running). The scripts name the head's
address, since the test session's own Ray runs on this machine too (a user's machine with one
cluster needs no address: the one ``ray start`` recorded is found).

Regression: after ``dn up``, a plain script's ``coordinator.connect()`` waited for minutes
(Ray turned the loopback address into the machine's other address).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray


def _clean_env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]}


def _run(args: list[str], cwd: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )


def _dn(*args: str, cwd: str) -> subprocess.CompletedProcess:
    exe = shutil.which("dn")
    cmd = [exe] if exe else [sys.executable, "-m", "coordinator.cli"]
    return _run([*cmd, *args], cwd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WRITE_FROM_TASKS = textwrap.dedent(
    """
    import ray
    import coordinator

    client = coordinator.connect("readme", address=ADDRESS)
    client.create_database("shop")
    client.create_table("shop", "orders", {"id": "int64", "user": "string"}, "id")

    @ray.remote
    def ingest(client, lo, hi):
        return client.write("shop", "orders", [{"id": i, "user": f"u{i}"} for i in range(lo, hi)])

    ray.get([ingest.remote(client, i, i + 50) for i in range(0, 200, 50)])
    print("rows", len(list(client.scan("shop", "orders"))))
    """
)

RAY_INIT_FIRST = textwrap.dedent(
    """
    import coordinator
    import ray

    ray.init(address=ADDRESS)
    client = coordinator.connect("readme")
    print("rows", len(list(client.scan("shop", "orders"))))
    """
)


def test_dn_up_then_plain_scripts_connect_write_and_read(ray_session, tmp_path):
    cwd = str(tmp_path)
    port = _free_port()
    up = _dn(
        "up",
        "--namespace",
        "readme",
        "--shards",
        "2",
        "--num-cpus",
        "2",
        "--port",
        str(port),
        "--store",
        str(tmp_path / "data"),
        cwd=cwd,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{port}" in up.stdout
        assert "starting 2 shard actors" in up.stderr  # progress while dn up waits
        assert 'coordinator.connect("readme")' in up.stdout.replace("'", '"')

        script = tmp_path / "ingest.py"
        script.write_text(f"ADDRESS = '127.0.0.1:{port}'\n" + WRITE_FROM_TASKS)
        out = _run([sys.executable, str(script)], cwd)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "rows 200" in out.stdout

        script = tmp_path / "ray_init_first.py"
        script.write_text(f"ADDRESS = '127.0.0.1:{port}'\n" + RAY_INIT_FIRST)
        out = _run([sys.executable, str(script)], cwd)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "rows 200" in out.stdout

        scan = _dn(
            "scan",
            "shop",
            "orders",
            "--namespace",
            "readme",
            "--address",
            f"127.0.0.1:{port}",
            cwd=cwd,
        )
        assert scan.returncode == 0, scan.stderr
        rows = [json.loads(line) for line in scan.stdout.splitlines() if line.strip()]
        assert [r["id"] for r in rows] == list(range(200))
    finally:
        down = _dn("down", "--namespace", "readme", "--stop-ray", cwd=cwd)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped the Ray head" in down.stdout
    # only that head stopped: the session's own Ray still answers
    import ray

    assert ray.is_initialized()
    assert ray.get(ray.put(7)) == 7
