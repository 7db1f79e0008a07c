"""Tally: the figures every reliability trial adds to, and the summary the runner prints.

One :class:`Tally` lives for a whole run of ``python -m tests.trials``; trials add to its
counters as they go (faults injected, crashes, acknowledged writes checked, ...). Two of the
counters are promises rather than figures: ``writes_lost`` and ``applied_twice`` must end at 0,
and a trial that raises them also fails (see :mod:`tests.trials.checker`).

Invariant: counters only grow; ``failures`` lists every failing (trial, seed) with the command
that reproduces it.

Not here: running trials (:mod:`tests.trials.__main__`), checking data (``checker``).

Callers: trial code, from the runner's thread (the load trial adds from its own threads under
``lock``).
"""

from __future__ import annotations

import resource
import threading
from dataclasses import dataclass, field, fields

COUNTERS = (
    "trials",
    "faults_injected",
    "crashes",
    "acked_writes_checked",
    "writes_lost",
    "applied_twice",
    "fenced_zombies",
    "malformed_inputs",
)


@dataclass
class Tally:
    """Counters and figures of one run (see the module docstring)."""

    trials: int = 0
    faults_injected: int = 0
    crashes: int = 0
    acked_writes_checked: int = 0
    writes_lost: int = 0
    applied_twice: int = 0
    fenced_zombies: int = 0
    malformed_inputs: int = 0
    load_writes: int = 0
    load_refused: int = 0
    load_rss_growth_bytes: int = 0
    load_queue_high_water_bytes: int = 0
    load_queue_bound_bytes: int = 0
    moves_settled: int = 0  # slot moves settled into the shards' own objects (moves kind)
    write_latency_p50_ms: float | None = None
    write_latency_p99_ms: float | None = None
    per_kind: dict[str, dict] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def kind(self, name: str) -> dict:
        """Per-kind figures (trials, seconds, failures) for the summary table."""
        return self.per_kind.setdefault(name, {"trials": 0, "failed": 0, "seconds": 0.0})

    def summary(self, mode: str, command: str) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lock"}
        out["mode"] = mode
        out["command"] = command
        out["process_rss_high_water_bytes"] = rss_high_water_bytes()
        out["ok"] = not self.failures and self.writes_lost == 0 and self.applied_twice == 0
        return out


def rss_high_water_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now_bytes() -> int:
    """This process's current resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TrialFailure(AssertionError):
    """A trial found a broken promise; the message says which and how."""
