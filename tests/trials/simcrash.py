"""Simulated crash trials: the cheap, in-process sibling of :mod:`tests.trials.crashes`.

A :class:`dn.store.FaultyStore` over a :class:`dn.store.MemoryStore` lets a seeded number of
store operations run and then raises :class:`dn.store.SimulatedCrash` (a ``BaseException`` the
engine cannot catch) on every later one, optionally letting the first of them land; the
crashed engine is abandoned like a dead process. Sometimes the recovery that follows crashes
too, at a random operation of its own, once or several times. Then a clean recovery is checked
against the reference model (:func:`tests.trials.checker.check`).

Cheaper than a process per crash, so CI runs many; what it cannot show (a kill while a
background thread is mid-way, a real process death) the SIGKILL trials show.

Not here: faults other than the crash (:mod:`tests.trials.faults`).
"""

from __future__ import annotations

import random

from dn import AlreadyExists, Engine, ManualClock
from dn.store import FaultyStore, MemoryStore, SimulatedCrash
from tests.trials.checker import DB, SCHEMA, TABLE, History, Workload, check
from tests.trials.crash_child import crash_settings, maintain_step
from tests.trials.tally import Tally


def _open(store) -> Engine:
    return Engine.open(store=store, settings=crash_settings(), clock=ManualClock())


def _ingest(
    eng: Engine, work: Workload, hist: History, first: int, n: int, rng: random.Random
) -> None:
    for ddl in (lambda: eng.create_database(DB), lambda: eng.create_table(DB, TABLE, SCHEMA, "k")):
        try:
            ddl()
        except AlreadyExists:
            pass
    for i in range(first, first + n):
        hist.tried.add(i)
        hist.acked[i] = work.write(eng, i)
        maintain_step(eng, rng)


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    work = Workload(seed)
    inner = MemoryStore(f"simcrash-{seed}")
    hist = History()
    first = 0
    stats = tally.kind("simcrash")
    for _ in range(rng.randint(1, 4 if long else 2)):
        faulty = FaultyStore(inner, seed)
        faulty.crash_after(rng.randint(0, 250), lands=rng.random() < 0.5)
        n = rng.randint(10, 80)
        try:
            _ingest(_open(faulty), work, hist, first, n, rng)
        except SimulatedCrash:
            tally.add("crashes")
            stats["crashed"] = stats.get("crashed", 0) + 1
        else:
            stats["ran to the end"] = stats.get("ran to the end", 0) + 1
        first += n
        if rng.random() < 0.4:  # the recovery crashes too, perhaps several times
            for _ in range(rng.randint(1, 3)):
                again = FaultyStore(inner, seed)
                again.crash_after(rng.randint(0, 30), lands=rng.random() < 0.5)
                try:
                    _open(again)
                except SimulatedCrash:
                    tally.add("crashes")
                    stats["crashed in recovery"] = stats.get("crashed in recovery", 0) + 1
        eng = _open(inner)
        try:
            check(eng, work, hist, tally, rng)
        finally:
            eng.close()
