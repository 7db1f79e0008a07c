"""Reliability trials: injected faults, crashes, zombies, fuzzed input and load, each checked
against a reference model, with nothing lost (DESIGN.md §5; issue 5).

Run them with ``python -m tests.trials`` (CI mode, seconds) or ``python -m tests.trials
--long`` (hundreds of crash trials, minutes of load); ``tests/test_trials.py`` runs the CI mode
under pytest. The figures of a long run are in ``docs/reliability.md``.

Modules: one per trial kind (``crashes``, ``simcrash``, ``faults``, ``zombies``, ``fuzz``,
``planted``, ``load``, ``txn``, ``bank``, ``clocks``, ``memory``, ``moves``, ``ray_trials``); the
in-process cluster of the transaction kinds (``txn``) and their history checker (``bank``);
the shared workload and model checker (``checker``); the store wrapper that stops a shard at a
chosen operation (``tripwire``) and the process it kills (``crash_child``); the counters
(``tally``); the runner (``__main__``).

Each kind exposes ``run(seed, long, tally)``: one trial, deterministic in its seed where the
kind allows (thread timing makes the threaded crash and load trials vary), raising
:class:`tests.trials.tally.TrialFailure` (or any exception) when a promise breaks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """A trial kind: its module and how many trials each mode runs."""

    module: str
    ci_count: int
    long_count: int
    long_only: bool = False

    @property
    def run(self) -> Callable:
        return importlib.import_module(f"tests.trials.{self.module}").run


REGISTRY: dict[str, Kind] = {
    "crashes": Kind("crashes", 4, 300),
    "simcrash": Kind("simcrash", 20, 1000),
    "faults": Kind("faults", 4, 200),
    "zombies": Kind("zombies", 12, 400),
    "fuzz": Kind("fuzz", 1, 10),
    "planted": Kind("planted", 60, 2000),
    "load": Kind("load", 1, 1),
    "txn": Kind("txn", 5, 100),
    "bank": Kind("bank", 5, 150),
    "clocks": Kind("clocks", 5, 100),
    "memory": Kind("memory", 1, 1),
    "moves": Kind("moves", 2, 100),
    "ray": Kind("ray_trials", 1, 3, long_only=True),
}
