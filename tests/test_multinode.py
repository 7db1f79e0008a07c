"""The multi-node tier: a Ray cluster of three nodes simulated on one machine, S3 on moto, and
a worker node hosting shards removed mid-ingest (``tests/multinode_scenario.py``).

The scenario runs in a subprocess: this session's driver is connected to the shared local Ray
of ``ray_session``, and a driver can be connected to one cluster only. The subprocess gets a
temporary directory of its own for Ray's files (sessions, sockets, the address ``ray start``
records), so nothing of the session's Ray, or of one a user started, is touched; it stops
every process it starts (``cluster.shutdown()``, ``server.stop()``), also when terminated.

What would fail without idempotency tokens (decision 0014): each write waits 200 ms after its
commit before it answers (``clock_skew_ms``), so when the node goes, parts that the lost shards
had committed are nearly always still unanswered; the client resends them to the restarted
shards, which answer them from their tokens (``duplicate_parts_answered``: 1 to 6 a run, at
least one in each of 9 runs). Without the tokens each of those parts would be applied a second
time, at a second timestamp, and its keys would be twice in the change feed
(``rows_applied_twice``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("multinode_scenario.py")
TIMEOUT_S = 240


def _run_scenario() -> tuple[int, str, str]:
    ray_dir = tempfile.mkdtemp(prefix="dn-mn-")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(RAY_TMPDIR=ray_dir, TMPDIR=ray_dir)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)],
        cwd=SCRIPT.parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script shuts its cluster and server down on SIGTERM
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the scenario ran over {TIMEOUT_S} s:\n{out}\n{err[-4000:]}")
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    return proc.returncode, out, err


def test_a_node_lost_mid_ingest_loses_nothing_and_applies_nothing_twice():
    code, out, err = _run_scenario()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no figures (exit {code}):\n{out}\n{err[-4000:]}"
    figures = json.loads(lines[-1])
    print(json.dumps(figures))  # the figures of docs/reliability.md
    checks = figures["checks"]
    assert checks["spread_over_nodes"] and checks["victim"], figures  # shards on 2+ nodes
    assert checks["on_every_node"], figures  # SPREAD: each of the 3 nodes hosts a shard
    assert checks["moved_to_survivors"], figures  # the lost node's shards restarted elsewhere
    assert figures["moved_shards"] >= 1 and figures["writes_waiting_for_recovery"] >= 1
    assert figures["writes_failed"] == 0, figures  # every write waited out the recovery
    assert figures["rows_acknowledged"] == 4 * 40 * 40
    assert figures["rows_lost"] == 0, figures
    assert figures["rows_applied_twice"] == 0, figures
    assert figures["feed_changes"] == figures["rows_acknowledged"], figures
    assert checks["feed_has_acked_keys"], figures
    assert checks["task_reads_equal"], figures  # reads of Ray tasks == the client's own
    assert checks["read_tasks_spread"], figures  # read tasks on more than one node
    assert 0 < figures["seconds_to_recover"] < 60, figures
    assert code == 0, err[-4000:]
