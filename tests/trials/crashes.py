"""Crash trials: a shard process killed with SIGKILL at seeded points, then recovered and checked
(DESIGN.md §5 promise 1, and promise 3 for the reads after recovery).

One trial (one seed) runs one to three rounds over a fresh store directory. Each round starts a
:mod:`tests.trials.crash_child` process that writes batches and is killed at a seeded point —
the n-th log write, range-object put, manifest commit, checkpoint put or delete, before the
operation, after it landed, or half-way through it (a torn object; a log write into the local
segment files is torn in its slot, at the file level: :mod:`tests.trials.tear`) — with one
writer thread and seeded maintenance, or several writer threads and the engine's background
thread. Sometimes a second child is then killed at a random operation of its own recovery.
Finally this process recovers the shard and :func:`tests.trials.checker.check` compares it with
the reference model: every acknowledged batch present at its timestamp, none applied twice,
snapshot and range reads at random timestamps equal to the model.

Stores live under /dev/shm when it exists (the trials test crash points, not fsync speed).

Not here: in-process simulated crashes (:mod:`tests.trials.simcrash`), Ray actors
(:mod:`tests.trials.ray_trials`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from dn import Engine, ManualClock
from dn.store import LocalStore
from tests.trials.checker import History, Workload, check
from tests.trials.crash_child import crash_settings
from tests.trials.tally import Tally, TrialFailure
from tests.trials.tripwire import WHENS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
#: How far into a run each phase's tripwire may be set (the n-th matching operation).
REACH = {"log": 80, "range": 8, "manifest": 12, "checkpoint": 3, "delete": 10}


def scratch_dir(prefix: str) -> str:
    """A fresh directory for one trial's store, on tmpfs when there is one."""
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def run_child(cfg: dict, timeout: float = 120.0) -> tuple[History, bool, str]:
    """Run one crash child to its death; returns what it was told, whether its tripwire
    fired, and its stderr. Raises TrialFailure if it died of anything but SIGKILL."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.trials.crash_child", json.dumps(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    hist, tripped = History(), False
    for line in proc.stdout.splitlines():
        word, *rest = line.split(" ", 1)
        if word == "try":
            hist.tried.add(int(rest[0]))
        elif word == "ack":
            i, ts = rest[0].split()
            hist.acked[int(i)] = int(ts)
        elif word == "trip":
            tripped = True
        elif word == "error":
            raise TrialFailure(f"crash child: a write failed: {rest[0]}\n{proc.stderr[-3000:]}")
    if proc.returncode != -signal.SIGKILL:
        raise TrialFailure(
            f"crash child exited with {proc.returncode}, not by SIGKILL:\n{proc.stderr[-3000:]}"
        )
    return hist, tripped, proc.stderr


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    work = Workload(seed)
    root = scratch_dir(f"dn-crash-{seed}-")
    hist = History()
    first = 0
    stats = tally.kind("crashes")
    try:
        for _ in range(rng.randint(1, 3 if long else 2)):
            phase = rng.choice(sorted(REACH))
            point = [phase, rng.randint(1, REACH[phase]), rng.choice(WHENS)]
            threaded = rng.random() < 0.3
            n = rng.randint(20, 120)
            cfg = {
                "url": root,
                "seed": seed,
                "first": first,
                "last": first + n,
                "point": point,
                "mode": "write",
                "threads": 4 if threaded else 1,
                "background": threaded,
            }
            got, tripped, _ = run_child(cfg)
            tally.add("crashes")
            key = f"killed at {phase}/{point[2]}" if tripped else "killed after last batch"
            stats[key] = stats.get(key, 0) + 1
            hist.merge(got)
            if rng.random() < 0.35:
                cfg = {
                    "url": root,
                    "seed": seed,
                    "first": 0,
                    "last": 0,
                    "mode": "recover",
                    "point": ["any", rng.randint(1, 40), rng.choice(WHENS)],
                }
                _, tripped, _ = run_child(cfg)
                tally.add("crashes")
                if tripped:
                    stats["killed in recovery"] = stats.get("killed in recovery", 0) + 1
            eng = Engine.open(
                store=LocalStore(root), settings=crash_settings(), clock=ManualClock()
            )
            try:
                check(eng, work, hist, tally, rng)
            finally:
                eng.close()
            first = max(hist.tried | set(hist.acked), default=-1) + 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
