"""Clock trials: repeatable reads and commits above every served snapshot, on shards whose
wall clocks disagree (DESIGN.md §5 promises 3 and 9; decisions 0013 and 0015).

One trial (one seed) runs the in-process cluster of :mod:`tests.trials.txn` with each shard on
a wall clock of its own, offset by up to ``drift`` milliseconds either way. The bound is
decision 0013's: node clocks within ``snapshot_future_s / 2`` of each other (30 s by
default), so offsets within a quarter of ``snapshot_future_s`` either way; a seed picks 1 s,
``timestamp_lease_s`` or that bound. A restart puts the shard on a new offset (a node of its
own), and once a trial the coordinator restarts too. Writer threads, a client each, write
plain batches (each on one shard: one timestamp), atomic batches and transactions, each a
value of its own; reader threads take snapshots (some at a time up to 2 s ahead of the wall
clock: within half of ``snapshot_future_s``), read them, read an earlier one again, and
record the rows and the change feed up to each.

Check, after every shard restarted once more on a new offset: :func:`check_history` (all or
nothing at one timestamp, acknowledged writes present, refused ones absent); every recorded
snapshot read gives the same rows again, and the change feed up to it is the one recorded when
it was served: no commit landed at or below a served snapshot afterwards.

Callers: the runner, from one thread (the trial starts and joins its own).
"""

from __future__ import annotations

import random
import time

from coordinator.client.routing import shard_of
from dn.clock import LOGICAL_BITS
from dn.errors import Unavailable
from dn.settings import Settings
from tests.trials.bank import DB, TABLE, Rec, Work, check_history, feed, outcome_of, rows
from tests.trials.tally import Tally, TrialFailure
from tests.trials.txn import KEYS, TxnCluster, restarter, tally_up

#: Decision 0013: node clocks within snapshot_future_s / 2 of each other: each within half
#: of that of the true time.
BOUND_MS = int(Settings().snapshot_future_s * 1000 / 4)
DRIFTS_MS = (1000, int(Settings().timestamp_lease_s * 1000), BOUND_MS)


def _writer(work: Work, rng: random.Random, w: int, n: int) -> None:
    client, cl = work.cl.client(), work.cl
    by_shard = [[k for k in range(KEYS) if shard_of(k, cl.n) == s] for s in range(cl.n)]
    for j in range(n):
        v, kind = f"c{w}.{j}", rng.choice(["plain", "atomic batch", "transaction"])
        keys = rng.sample(range(KEYS), rng.randint(2, 6))
        if kind == "plain":  # on one shard: one part, one timestamp
            own = by_shard[rng.randrange(cl.n)]
            keys = rng.sample(own, min(len(own), rng.randint(1, 4)))
        try:
            data = [{"k": k, "v": v} for k in keys]
            if kind == "transaction":
                tx = client.transaction()
                for k in rng.sample(range(KEYS), 2):
                    row = tx.get(DB, TABLE, k)
                    work.reads.append(("get", tx.snapshot, k, row and row["v"]))
                tx.write(DB, TABLE, data)
                rec = Rec(keys, "acked", tx.commit())
            else:
                rec = Rec(keys, "acked", client.write(DB, TABLE, data, atomic=kind != "plain"))
        except Exception as exc:
            rec = Rec(keys, outcome_of(exc), why=f"{kind}: {exc!r}"[:300])
            work.count(f"{kind}: {type(exc).__name__}")
        work.recs[v] = rec
        work.count(kind)


def _reader(work: Work, rng: random.Random, start: int, served: list) -> None:
    """Serve snapshots (now, or a time up to 2 s ahead), record their rows and change feed,
    and read an earlier one again."""
    client = work.cl.client()
    while not work.stop.is_set():
        try:
            s = client.snapshot()
            if rng.random() < 0.3:  # a time up to 2 s ahead of this wall clock, if later
                s = max(s, (time.time_ns() // 1_000_000 + rng.randint(1, 2000)) << LOGICAL_BITS)
            got = rows(client, s)
            served.append((s, got, feed(client, start, s)))
            work.reads += [("scan", s, got), ("feed", start, s, served[-1][2])]
            old = rng.choice(served)
            if rows(client, old[0]) != old[1]:
                raise TrialFailure(f"a read at served snapshot {old[0]} changed")
            work.count("snapshots served")
        except Unavailable:
            work.count("reads unavailable")
        time.sleep(rng.uniform(0, 0.02))


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    drift = DRIFTS_MS[seed % len(DRIFTS_MS)]
    n = rng.choice([3, 4])
    offsets = [rng.randint(-drift, drift) for _ in range(n)]
    work = Work(TxnCluster(f"clocks-{seed}-{time.time_ns()}", n, seed, offsets))
    cl, served = work.cl, []
    stats = tally.kind("clocks")
    try:
        start = cl.client().snapshot()
        back = [work.spawn(_reader, random.Random(seed + 1 + r), start, served) for r in range(2)]
        cl.group.rate = rng.choice([0.0, 0.03])  # some restarts mid-commit, on the same clock
        back.append(work.spawn(restarter, random.Random(seed + 9), 0.1, drift))
        workers, per = (4, 120) if long else (3, 10)
        rngs = [random.Random(seed * 1000 + w) for w in range(workers)]
        front = [work.spawn(_writer, rngs[w], w, per) for w in range(workers)]
        time.sleep(0.2)
        cl.coord.service = cl.coordinator()  # the coordinator restarts
        work.count("coordinator restarts")
        work.join(front, back)
        for i in range(n):  # each shard on a new offset before the final check
            cl.restart(i, rng.randint(-drift, drift))
        work.count("shard restarts on a drifted clock", n)
        _, _ = check_history(
            cl, cl.client(), start, work.recs, work.reads, rng, stats, 40 if long else 16
        )
        client = cl.client()
        for s, got, changes in served:
            if rows(client, s) != got or feed(client, start, s) != changes:
                raise TrialFailure(f"served snapshot {s}: other rows or changes after restarts")
        work.count("served snapshots re-read after the last restarts", len(served))
    finally:
        cl.close()
        tally_up(work, tally, "clocks")
    key = f"trials with clock offsets up to {drift} ms either way"
    stats[key] = stats.get(key, 0) + 1
