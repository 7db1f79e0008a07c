"""Fault trials: a shard working through a storm of injected object-store faults
(DESIGN.md §5 promises 1, 3 and 6).

One trial (one seed) opens a shard over ``RetryingStore(FaultyStore(MemoryStore))`` and adds a
seeded set of rules: errors, lost acknowledgements and torn writes on log, range, manifest and
checkpoint keys, definite refusals of log writes (a 403, also on the retry of a put whose
acknowledgement was lost: an unknown outcome all the same), failing reads, latency, and stale
listings. It then writes batches with
seeded freezes, buffer checkpoints, checkpoints, compactions and garbage collection in
between, and now and then reads at a random timestamp (the rows are kept, to be checked once
the truth is known). A write that fails must fail with a retryable ``Unavailable``; nothing
else may escape. Then the store heals: the same engine must catch up and pass
:func:`tests.trials.checker.check`, and so must a fresh incarnation recovering from what the
faults left behind.

Not here: crashes (:mod:`tests.trials.crashes`), zombies (:mod:`tests.trials.zombies`).
"""

from __future__ import annotations

import random

from dn import Engine, ManualClock, Unavailable
from dn.store import FaultyStore, MemoryStore, RetryingStore, RetryPolicy
from tests.trials.checker import DB, TABLE, History, Workload, check, create_table
from tests.trials.crash_child import crash_settings, maintain_step
from tests.trials.tally import Tally, TrialFailure

PREFIXES = ("30/", "20/", "00/", "10/")


def add_rules(faulty: FaultyStore, rng: random.Random, long: bool) -> list[str]:
    """A seeded set of fault rules; returns their descriptions."""
    made = []
    for prefix in PREFIXES:
        for kind in ("error", "lost_ack", "torn"):
            if rng.random() < 0.6:
                rate = rng.choice([0.05, 0.15, 0.3, 0.5])
                faulty.add_rule(None, prefix, error_rate=rate, kind=kind)
                made.append(f"{kind}@{prefix}:{rate}")
        if prefix == "30/" and rng.random() < 0.5:
            rate = rng.choice([0.05, 0.15, 0.3])
            faulty.add_rule("put_if_absent", prefix, error_rate=rate, kind="denied")
            made.append(f"denied@{prefix}:{rate}")
        if rng.random() < 0.3:
            faulty.add_rule("get", prefix, error_rate=0.2, kind="error")
            made.append(f"get-error@{prefix}")
        if rng.random() < 0.3:
            faulty.add_rule(
                "list",
                prefix,
                error_rate=0.3,
                kind="stale_list",
                count=rng.randint(1, 20 if long else 5),
            )
            made.append(f"stale_list@{prefix}")
    faulty.add_rule(None, "", error_rate=0.1, kind="latency", latency_s=0.01)
    return made


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    work = Workload(seed)
    inner = MemoryStore(f"faults-{seed}")
    faulty = FaultyStore(inner, seed=seed, sleep=lambda s: None)
    policy = RetryPolicy(max_attempts=rng.choice([1, 2, 4, 8]), sleep=lambda s: None)
    eng = Engine.open(
        store=RetryingStore(faulty, policy), settings=crash_settings(), clock=ManualClock()
    )
    create_table(eng)
    rules = add_rules(faulty, rng, long)
    hist = History()
    stats = tally.kind("faults")
    for i in range(rng.randint(150, 600) if long else rng.randint(60, 150)):
        hist.tried.add(i)
        try:
            hist.acked[i] = work.write(eng, i)
        except Unavailable as exc:
            key = "write failed, outcome unknown" if exc.outcome_unknown else "write failed"
            stats[key] = stats.get(key, 0) + 1
        try:
            maintain_step(eng, rng)
            if rng.random() < 0.1:
                s = rng.choice(list(hist.acked.values()) or [eng.snapshot()])
                hist.reads.append((s, list(eng.scan(DB, TABLE, snapshot=s))))
        except Unavailable:
            stats["maintenance or read failed"] = stats.get("maintenance or read failed", 0) + 1
        if eng.status()["state"] in ("fenced", "broken", "closed"):
            raise TrialFailure(
                f"the shard stopped under faults: {eng.status()['state']} (rules {rules})"
            )
    fired = sum(faulty.fired.values())
    tally.add("faults_injected", fired)
    faulty.clear_rules()
    try:
        eng.flush()  # healed: the same engine catches up
        check(eng, work, hist, tally, rng)
    finally:
        eng.close()
    again = Engine.open(store=inner, settings=crash_settings(), clock=ManualClock())
    try:
        check(again, work, hist, tally, rng)
    finally:
        again.close()
