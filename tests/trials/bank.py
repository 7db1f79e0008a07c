"""Bank trial: transfers between accounts on different shards in snapshot-isolation
transactions, with shard restarts (DESIGN.md §5 promise 9; decision 0015); and the history
checker every transaction trial shares (:class:`Work`, what a trial's threads record, and
:func:`check_history`).

One trial (one seed): 6 to 16 accounts spread over 3 or 4 shards (the in-process cluster of
:mod:`tests.trials.txn`), 100 each, written in one atomic batch. Worker threads move random
amounts between two random accounts in ``client.transaction()``: read both at the snapshot,
write both (read-modify-write), commit; now and then a third account is read as well. Each
written value is ``<balance>|<transaction>``, so the change feed says which transaction wrote
it. Faults: shards restarted by a thread of their own and right after a prepare or resolve
(seeded), answers lost. An auditor thread sums every snapshot it reads.

Check: :func:`check_history` (every transaction all or nothing at one timestamp, acknowledged
ones present, refused ones absent, no value twice, snapshot reads and change-feed windows equal
to the feed's state); the total is the same at every commit timestamp and at random
snapshots; and the history, replayed in commit-timestamp order: every committed transaction
read the state at its snapshot, and no other commit wrote one of its keys between its snapshot
and its commit (no lost update). Conflicts are counted (the conflict rate of the figures).

Callers: the runner, from one thread (the trial starts and joins its own).
"""

from __future__ import annotations

import random
import threading
import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from coordinator.client.client import Client
from coordinator.client.routing import shard_of
from dn.errors import DNError, Unavailable
from tests.trials.tally import Tally, TrialFailure

DB, TABLE = "db", "t"
#: Error kinds of a commit that was refused: nothing of it was applied.
REFUSALS = ("conflict", "timestamp_passed", "invalid_argument", "future_snapshot", "stale_table")
TOTAL_EACH = 100


@dataclass
class Rec:
    """One write of a value of its own into ``keys``, at one timestamp: its outcome, and
    ``ts`` once acknowledged (``acked``; ``invisible``: refused or decided aborted;
    ``unknown``: an unknown outcome)."""

    keys: list[int]
    outcome: str
    ts: int | None = None
    why: str = ""  # the error of a failed commit


def outcome_of(exc: Exception) -> str:
    """What a failed commit may have done: ``unknown`` or ``invisible``; anything that is
    neither a refusal nor an unavailable store or shard is a broken promise."""
    if isinstance(exc, Unavailable):
        return "unknown" if exc.outcome_unknown else "invisible"
    if isinstance(exc, DNError) and exc.code in REFUSALS:
        return "invisible"
    raise TrialFailure(f"a commit failed with {exc!r}, neither refused nor unavailable")


def feed(client: Client, from_ts: int, snapshot: int | None = None) -> list[tuple]:
    got = client.changes(DB, TABLE, from_ts, snapshot=snapshot)
    return [(c.ts, c.pk, c.kind, c.row["v"] if c.row else None) for c in got]


def rows(client: Client, s: int) -> dict[int, str]:
    return {r["k"]: r["v"] for r in client.scan(DB, TABLE, snapshot=s)}


class Model:
    """Every key's versions from a change feed: the rows at any timestamp."""

    def __init__(self, entries: list[tuple]) -> None:
        self.versions: dict[int, list[tuple[int, str | None]]] = {}
        for ts, k, kind, v in sorted(entries, key=lambda e: e[0]):
            self.versions.setdefault(k, []).append((ts, v if kind == "upsert" else None))

    def at(self, s: int) -> dict[int, str]:
        out = {}
        for k, vs in self.versions.items():
            i = bisect_right(vs, (s, "\uffff"))
            if i and vs[i - 1][1] is not None:
                out[k] = vs[i - 1][1]
        return out


@dataclass
class Work:
    """What the threads of one trial share: the writes (:class:`Rec` by value), the reads to
    check (see :func:`check_history`), counters, the stop signal and the threads' errors."""

    cl: Any  # tests.trials.txn.TxnCluster
    recs: dict[str, Rec] = field(default_factory=dict)
    reads: list = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.seen[key] += n

    def spawn(self, fn, *args) -> threading.Thread:
        """A thread running ``fn(self, *args)``; an exception of it goes to ``errors``."""

        def guard() -> None:
            try:
                fn(self, *args)
            except BaseException as exc:  # noqa: BLE001 - the trial raises it
                self.errors.append(exc)
                self.stop.set()

        t = threading.Thread(target=guard, daemon=True)
        t.start()
        return t

    def join(self, front: list[threading.Thread], back: list[threading.Thread]) -> None:
        """Wait for ``front``, then stop and wait for ``back``; raise a thread's error."""
        for t in front:
            t.join()
        self.stop.set()
        for t in back:
            t.join()
        if self.errors:
            raise self.errors[0]


def check_history(
    cl,
    client: Client,
    start: int,
    recs: dict[str, Rec],
    reads: list,
    rng: random.Random,
    stats: dict,
    samples: int,
    tag=lambda v: v,
) -> tuple[list[tuple], Model]:
    """Check every promise (module docstring) against the final change feed from ``start``;
    ``reads``: ("scan", S, rows), ("feed", from, S, entries) and ("get", S, key, value) reads
    made during the trial; ``tag(value)``: the name of the write in ``recs``. Returns the
    feed and its model."""
    f = feed(client, start)
    pairs = Counter((tag(v), k) for _, k, _, v in f)
    problems, twice = [], [p for p, n in pairs.items() if n > 1]
    if twice:
        problems.append(f"applied twice (write, key): {twice[:5]}")
    found: dict[str, dict[int, set[int]]] = {}
    per_stamp: dict[tuple[int, int], set[str]] = {}
    for ts, k, _, v in f:
        found.setdefault(tag(v), {}).setdefault(ts, set()).add(k)
        per_stamp.setdefault((shard_of(k, cl.n), ts), set()).add(tag(v))
    for v, at in found.items():
        rec = recs.get(v)
        if rec is None:
            problems.append(f"{v} was never written, yet is visible")
        elif rec.outcome == "invisible":
            problems.append(f"{v} failed ({rec.why}), yet is visible at {sorted(at)}")
        elif len(at) > 1 or set(next(iter(at.values()))) != set(rec.keys):
            problems.append(f"{v} partly applied or at several timestamps: {at} of {rec.keys}")
    for v, rec in recs.items():
        if rec.outcome != "acked":
            continue
        at = found.get(v, {})
        if set(rec.keys) - at.get(rec.ts, set()):
            problems.append(f"acknowledged {v} at {rec.ts} is not there in full: {at}")
    shared = {key: vs for key, vs in per_stamp.items() if len(vs) > 1}
    if shared:
        problems.append(f"two commits at one timestamp on one shard: {list(shared.items())[:3]}")
    if problems:
        stats["anomalies"] = stats.get("anomalies", 0) + len(problems)
        raise TrialFailure("; ".join(problems[:6]))
    model = Model(f)
    stamps = sorted({e[0] for e in f}) or [start]
    end = client.snapshot()
    picks = stamps if len(stamps) <= samples else rng.sample(stamps, samples)
    picks = [*picks, *(s - 1 for s in picks[:8]), *(rng.randint(start, end) for _ in range(8))]
    for s in picks:
        if rows(client, s) != model.at(s):
            raise TrialFailure(f"snapshot read at {s} differs from the change feed's state")
    for _ in range(max(4, samples // 8)):
        a, b = sorted(rng.sample([start, end, *stamps], 2) if len(stamps) > 1 else [start, end])
        if feed(client, a, b) != [e for e in f if a <= e[0] <= b]:
            raise TrialFailure(f"change-feed window [{a}, {b}] differs from the whole feed")
    for r in reads:
        if r[0] == "scan" and r[2] != model.at(r[1]):
            raise TrialFailure(f"a read at {r[1]} made during the trial differs from the feed")
        if r[0] == "feed" and r[3] != [e for e in f if r[1] <= e[0] <= r[2]]:
            raise TrialFailure(f"a change feed [{r[1]}, {r[2]}] read during the trial differs")
        if r[0] == "get" and r[3] != model.at(r[1]).get(r[2]):
            raise TrialFailure(f"a transaction read key {r[2]} at {r[1]}: {r[3]}, not the feed's")
    undecided = sum(len(s.engine._state.intents) for s in cl.services)
    if undecided:
        raise TrialFailure(f"{undecided} intents undecided after a read above them all")
    stats["snapshots re-read"] = stats.get("snapshots re-read", 0) + len(picks) + len(reads)
    return f, model


# -- the bank ---------------------------------------------------------------------------------


@dataclass
class Transfer:
    """One transfer tried: its snapshot, the balances it read, the accounts it wrote."""

    snapshot: int
    reads: dict[int, int]
    writes: list[int]


def _balance(row: dict | None) -> int:
    return int(row["v"].split("|")[0]) if row else 0


def _transfers(work, rng: random.Random, w: int, n: int, accounts: list[int], tried: dict) -> None:
    client = work.cl.client()
    for j in range(n):
        name, (a, b, c) = f"t{w}.{j}", rng.sample(accounts, 3)
        try:
            tx = client.transaction()
            got = {k: _balance(tx.get(DB, TABLE, k)) for k in ([a, b, c] if j % 3 else [a, b])}
            amount = rng.randint(1, 30)
            rows = [{"k": a, "v": f"{got[a] - amount}|{name}"}]
            tx.write(DB, TABLE, [*rows, {"k": b, "v": f"{got[b] + amount}|{name}"}])
            tried[name] = Transfer(tx.snapshot, got, [a, b])
            work.recs[name] = Rec([a, b], "acked", tx.commit())
        except Exception as exc:
            work.recs[name] = Rec([a, b], outcome_of(exc), why=repr(exc)[:300])
            work.count(f"transfer: {type(exc).__name__}")
        work.count("transfers tried")


def _auditor(work, rng: random.Random, total: int) -> None:
    client = work.cl.client()
    while not work.stop.is_set():
        try:
            s = client.snapshot()
            got = rows(client, s)
        except Unavailable:
            continue
        work.reads.append(("scan", s, got))
        if sum(_balance({"v": v}) for v in got.values()) != total:
            raise TrialFailure(f"the total at snapshot {s} is not {total}: {got}")
        work.count("snapshots audited")
        time.sleep(rng.uniform(0, 0.02))


def _replay(f: list[tuple], model: Model, tried: dict, total: int) -> int:
    """Replay the committed transfers in commit-timestamp order (module docstring)."""
    committed = sorted({(ts, v.split("|")[1]) for ts, _, _, v in f if v.split("|")[1] in tried})
    for ts, name in committed:
        t = tried[name]
        state = model.at(t.snapshot)
        if {k: _balance({"v": state[k]}) for k in t.reads} != t.reads:
            raise TrialFailure(f"{name} read {t.reads}, not the state at its snapshot {t.snapshot}")
        for k in t.writes:
            vs = model.versions[k]
            before = vs[bisect_right(vs, (ts, "")) - 1][0]
            if before > t.snapshot:
                raise TrialFailure(
                    f"lost update: {name} (snapshot {t.snapshot}, commit {ts}) overwrote key "
                    f"{k}, written at {before} after its snapshot"
                )
    for ts in sorted({e[0] for e in f}):
        if sum(_balance({"v": v}) for v in model.at(ts).values()) != total:
            raise TrialFailure(f"the total at commit timestamp {ts} is not {total}")
    return len(committed)


def run(seed: int, long: bool, tally: Tally) -> None:
    from tests.trials.txn import TxnCluster, restarter, tally_up  # txn imports this module

    rng = random.Random(seed)
    n = rng.choice([3, 4])
    work = Work(TxnCluster(f"bank-{seed}-{time.time_ns()}", n, seed))
    cl, tried = work.cl, {}
    accounts = list(range(rng.choice([6, 10, 16])))
    while len({shard_of(k, n) for k in accounts}) < n:  # every shard holds an account
        accounts.append(len(accounts))
    total = TOTAL_EACH * len(accounts)
    try:
        client = cl.client()
        start = client.snapshot()
        init = [{"k": k, "v": f"{TOTAL_EACH}|init"} for k in accounts]
        work.recs["init"] = Rec(accounts, "acked", client.write(DB, TABLE, init, atomic=True))
        cl.group.rate = rng.choice([0.0, 0.03])
        back = [work.spawn(_auditor, random.Random(seed + 1), total)]
        back.append(work.spawn(restarter, random.Random(seed + 2), rng.choice([0.2, 0.5])))
        workers, per = (6, 60) if long else (4, 12)
        rngs = [random.Random(seed * 1000 + w) for w in range(workers)]
        front = [work.spawn(_transfers, rngs[w], w, per, accounts, tried) for w in range(workers)]
        work.join(front, back)
        cl.heal()
        for i in range(n):
            cl.restart(i)
        stats = tally.kind("bank")
        samples = 40 if long else 16
        tag = lambda v: v.split("|")[1]  # noqa: E731
        f, model = check_history(
            cl, cl.client(), start, work.recs, work.reads, rng, stats, samples, tag
        )
        work.count("transfers replayed", _replay(f, model, tried, total))
    finally:
        cl.close()
        stats = tally_up(work, tally, "bank")
    stats["conflict rate"] = round(
        stats.get("transfer: Conflict", 0) / max(1, stats.get("transfers tried", 0)), 3
    )
