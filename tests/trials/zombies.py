"""Zombie trials: two incarnations of one shard race (DESIGN.md §5 promise 2).

One trial (one seed): incarnation A opens the shard and writes. Then, from a thread, A starts
one of its commits — a write (log put), a buffer checkpoint (range put, then manifest commit),
or a checkpoint — and is *paused* inside it by a :class:`tests.trials.tripwire.Tripwire` whose
action waits on an event, before the chosen store operation or just after it landed.
Meanwhile incarnation B opens the same shard (sometimes through stale listings of the manifest
and the log, ``FaultyStore`` kind ``stale_list``), writes, flushes and checkpoints. Then A
resumes, and keeps trying to write, flush and checkpoint.

Promises checked: B keeps committing; A's paused commit either fails ``Fenced`` or (when it
had landed before B opened) is acknowledged and recovered by B; every later call of A fails
``Fenced``; nothing A tried after the fence is visible; and a third incarnation recovers
exactly the model of what was acknowledged (:func:`tests.trials.checker.check`).

Variant (one seed in four): no pause, two threads — A writing continuously while B opens —
so the fence lands at whatever moment the race decides.

Not here: processes (a paused thread is the zombie; the crash trials kill processes).
"""

from __future__ import annotations

import random
import threading

from dn import Engine, Fenced, ManualClock
from dn.store import FaultyStore, MemoryStore
from tests.trials.checker import History, Workload, check, create_table
from tests.trials.crash_child import crash_settings
from tests.trials.tally import Tally, TrialFailure
from tests.trials.tripwire import Point, Tripwire

ACTIONS = {"log": "write", "range": "flush", "manifest": "flush", "checkpoint": "checkpoint"}


def _open(store) -> Engine:
    return Engine.open(store=store, settings=crash_settings(), clock=ManualClock())


def _b_store(inner: MemoryStore, rng: random.Random, seed: int, tally: Tally) -> FaultyStore:
    faulty = FaultyStore(inner, seed)
    if rng.random() < 0.5:
        for prefix in ("00/", "30/"):
            faulty.add_rule("list", prefix, kind="stale_list", count=rng.randint(1, 3))
    return faulty


def _zombie_calls(a: Engine, work: Workload, hist: History, next_i: int, tally: Tally) -> int:
    """A, resumed, keeps trying: every call must fail Fenced, and nothing may land."""
    fenced = 0
    for call in ("write", "flush", "checkpoint", "write"):
        try:
            if call == "write":
                next_i += 1
                hist.forbidden.add(next_i - 1)
                work.write(a, next_i - 1)
            else:
                a.freeze()
                getattr(a, call)()
        except Fenced:
            fenced += 1
            continue
        raise TrialFailure(f"the zombie's {call} succeeded after the fence")
    if a.status()["state"] != "fenced":
        raise TrialFailure(f"the zombie is {a.status()['state']}, not fenced")
    tally.add("fenced_zombies")
    return next_i


def _paused_race(seed: int, rng: random.Random, tally: Tally) -> None:
    work = Workload(seed)
    inner = MemoryStore(f"zombie-{seed}")
    phase = rng.choice(sorted(ACTIONS))
    when = rng.choice(["before", "after"])
    go, paused = threading.Event(), threading.Event()

    def pause() -> None:
        paused.set()
        if not go.wait(30):
            raise TrialFailure("the zombie was never resumed")

    wire = Tripwire(inner, Point(phase, 10**9, when), pause)
    a = _open(wire)
    create_table(a)
    hist = History()
    i = 0
    for _ in range(rng.randint(3, 40)):
        hist.acked[i] = work.write(a, i)
        hist.tried.add(i)
        i += 1
    if phase != "log":
        a.freeze()
    if phase == "checkpoint":
        a.flush()
    wire.point = Point(phase, wire.seen + 1, when)  # the very next such operation pauses A
    outcome: dict = {}
    paused_i = i
    hist.tried.add(paused_i)
    i += 1

    def zombie() -> None:
        try:
            if ACTIONS[phase] == "write":
                outcome["ts"] = work.write(a, paused_i)
            else:
                getattr(a, ACTIONS[phase])()
                outcome["ok"] = True
        except Fenced as exc:
            outcome["fenced"] = exc
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    t = threading.Thread(target=zombie, daemon=True)
    t.start()
    if not paused.wait(10):
        raise TrialFailure(f"A never reached its {phase} operation: {outcome}")
    b = _open(_b_store(inner, rng, seed, tally))
    for _ in range(rng.randint(1, 20)):
        hist.tried.add(i)
        hist.acked[i] = work.write(b, i)
        i += 1
        if rng.random() < 0.2:
            b.freeze()
            b.flush()
        if rng.random() < 0.1:
            b.checkpoint()
    go.set()
    t.join(30)
    if "error" in outcome:
        raise TrialFailure(f"the paused zombie failed with {outcome['error']!r}, not Fenced")
    if "ts" in outcome:
        if when == "before":
            raise TrialFailure(
                "a write paused before its log put was acknowledged after "
                "a newer incarnation opened"
            )
        hist.acked[paused_i] = outcome["ts"]
    if "fenced" in outcome and when == "before" and phase == "log":
        hist.forbidden.add(paused_i)
    i = _zombie_calls(a, work, hist, i, tally)
    hist.tried.add(i)
    hist.acked[i] = work.write(b, i)  # B still commits, after the zombie's attempts
    b.freeze()
    b.flush()
    b.checkpoint()
    check(b, work, hist, tally, rng)
    b.close()
    a.close()
    c = _open(inner)
    try:
        check(c, work, hist, tally, rng)
    finally:
        c.close()


def _free_race(seed: int, rng: random.Random, tally: Tally) -> None:
    """A writes continuously from a thread; B opens at a random moment."""
    work = Workload(seed)
    inner = MemoryStore(f"zombie-free-{seed}")
    a = _open(inner)
    create_table(a)
    hist = History()
    lock = threading.Lock()
    stop = threading.Event()
    fenced = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            with lock:
                hist.tried.add(i)
            try:
                ts = work.write(a, i)
            except Fenced:
                fenced.set()
                return
            with lock:
                hist.acked[i] = ts
            if i % 7 == 3:
                try:
                    a.freeze()
                    a.flush()
                except Fenced:
                    fenced.set()
                    return
            i += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    threading.Event().wait(rng.uniform(0.001, 0.05))
    b = _open(_b_store(inner, rng, seed, tally))
    base = 1_000_000
    for j in range(rng.randint(1, 10)):
        with lock:
            hist.tried.add(base + j)
        hist.acked[base + j] = work.write(b, base + j)
    stop.set()
    t.join(30)
    if not fenced.is_set():
        _zombie_calls(a, work, hist, 2_000_000, tally)
    else:
        tally.add("fenced_zombies")
    check(b, work, hist, tally, rng)
    b.close()
    a.close()


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    if seed % 4 == 3:
        _free_race(seed, rng, tally)
    else:
        _paused_race(seed, rng, tally)
