"""Transaction trials: atomic batches and snapshot-isolation transactions across shards, with
shards restarted mid-commit, clients killed at each step of the protocol, lost responses and
store faults (DESIGN.md §5 promises 8 and 9; decision 0015).

The cluster (:class:`TxnCluster`, also the bank's and clock trials'): 3 or 4 shards in this
process over one memory store, each through a :class:`dn.store.FaultyStore` of its own, called
through ``InProcessGroup`` of ``tests/test_exactly_once.py`` (ShardGroup's retry loop, all
pickled; a closed shard answers as a dead actor). A restart closes a shard and opens it again
from the store (recovery), whatever its callers are doing.

Known failure (reported, not fixed here): a buffer holding only aborted intents is written
out as a range object of 0 commits, which every later read refuses as Corruption.

One trial (one seed): worker threads, a client each, write a value ``x<w>.<j>`` into 2–8 of
``KEYS`` keys: atomic batches, ``client.transaction()`` (reads at its snapshot), and killed
clients that prepare on all or some shards, decide, resolve on some, and stop at a seeded
step. Faults (seeded): restarts by a thread and right after a prepare or resolve ran (the
answer lost with the shard), lost answers, the coordinator's answer to a commit lost (after
the commit, or while it runs on), store errors, lost acknowledgements, torn and refused
writes on the shards' stores, lost acknowledgements and errors on the decision puts (the
coordinator's and the clients'). Readers read snapshots and change-feed windows, and earlier
snapshots again.
Then the faults stop, every shard restarts, and :func:`check_history` checks the promises.

Callers: the runner, from one thread (the trial starts and joins its own).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from coordinator.actor.service import CoordinatorService
from coordinator.client.client import Client
from coordinator.client.routing import split, validate_batch
from coordinator.config import ClusterConfig
from dn.backoff import Backoff
from dn.errors import Closed, DNError, Fenced, Unavailable
from dn.objects import decision
from dn.settings import ShellSettings
from dn.store import FaultyStore, RetryingStore, RetryPolicy
from dn.store.memory import shared_memory_store
from shards.shard import ShardService
from tests.test_cluster_logic import LocalCoordinator
from tests.test_exactly_once import InProcessGroup, _copy
from tests.trials.bank import DB, TABLE, Rec, Work, check_history, feed, outcome_of, rows
from tests.trials.tally import Tally, TrialFailure

SCHEMA, KEYS = {"k": "int64", "v": "string"}, 40


class OffsetClock:
    """The machine's wall clock, ``offset_ms`` off (a node whose clock drifted)."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def monotonic(self) -> float:
        return time.monotonic()


class FaultGroup(InProcessGroup):
    """The retry loop over in-process shards; with ``rate``, a prepare or resolve that ran
    loses its answer, or its shard restarts before answering (half each)."""

    def __init__(self, cluster: TxnCluster, backoff: Backoff, seed: int) -> None:
        super().__init__(cluster, backoff)
        self.rate = 0.0
        self.fired: Counter[str] = Counter()
        self._rng, self._lock = random.Random(seed), threading.Lock()

    def _run(self, i: int, method: str, args: tuple) -> object:
        try:
            return _copy(getattr(self.cluster.services[i], method)(*_copy(args)))
        except (Closed, Fenced) as exc:  # the actor is gone: Ray says "unavailable"
            return Unavailable(f"shard {i}.{method}: the actor died: {exc}", outcome_unknown=True)
        except DNError as exc:
            return _copy(exc)

    def _submit(self, i: int, method: str, args: tuple) -> object:
        if method not in ("prepare", "prepare_many", "resolve", "resolve_many") or not self.rate:
            return self._run(i, method, args)
        with self._lock:
            r = self._rng.random()
        out = self._run(i, method, args)
        if r >= self.rate:
            return out
        fate = "lost answer" if r < self.rate / 2 else "restart"
        with self._lock:
            self.fired[f"{fate} after {method}"] += 1
        if fate == "restart":
            self.cluster.restart(i)
        return Unavailable(f"shard {i}.{method}: {fate}", outcome_unknown=True)


class FaultCoordinator(LocalCoordinator):
    """The coordinator in this process; with ``rate``, the answer to a commit (or a client's
    group of commits) is lost: half the time after it ran, half while it runs on (a call that
    timed out in the actor)."""

    def __init__(self, service: CoordinatorService, seed: int) -> None:
        super().__init__(service)
        self.rate, self.fired = 0.0, Counter()
        self._rng, self._lock = random.Random(seed), threading.Lock()

    def call(self, method: str, *args: object, retry_s: float = 0.0) -> object:
        with self._lock:
            if method == "commit_many":
                self.fired["commits sent grouped"] += len(args[0])  # type: ignore[arg-type]
            r = self._rng.random() if method in ("commit", "commit_many") else 1.0
            if r < self.rate:
                self.fired[
                    "coordinator answer lost" if r < self.rate / 2 else "coordinator timed out"
                ] += 1
        if r >= self.rate:
            return super().call(method, *args, retry_s=retry_s)
        run = threading.Thread(target=_quietly, args=(super().call, method, *args), daemon=True)
        run.start()
        if r < self.rate / 2:
            run.join()
        raise Unavailable("the coordinator did not answer the commit", outcome_unknown=True)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except DNError:
        pass


class TxnCluster:
    """``shards`` in-process shards over the memory store ``name`` (see the module docstring);
    ``offsets``: each shard's clock offset in ms."""

    def __init__(
        self, name: str, shards: int, seed: int, offsets: list[int] | None = None, **engine: object
    ) -> None:
        self.name, self.n = name, shards
        self.inner = shared_memory_store(name)
        shell = ShellSettings(retry_s=20.0)
        self.cfg = ClusterConfig(store=f"memory://{name}", shards=shards, shell=shell)
        self.settings = {**self.cfg.engine.to_dict(), "txn_wait_s": 0.3, **engine}
        self.clocks = [OffsetClock(o) for o in offsets or [0] * shards]
        self.faulty = [
            FaultyStore(self.inner, seed * 31 + i, sleep=lambda s: None) for i in range(shards)
        ]
        self.policy = RetryPolicy(max_attempts=3, sleep=lambda s: None)
        self._locks = [threading.Lock() for _ in range(shards)]
        self.restarts, self.decided_before = 0, 0
        self.services = [self._open(i) for i in range(shards)]
        self.backoff = Backoff(0.002, 0.05, 1.0, 2.0, rng=random.Random(seed))
        self.group = FaultGroup(self, self.backoff, seed)
        self.decisions = FaultyStore(self.inner, seed + 7, sleep=lambda s: None)
        self.coord = FaultCoordinator(self.coordinator(), seed)
        c = self.client()
        c.create_database(DB)
        c.create_table(DB, TABLE, SCHEMA, "k")

    def _open(self, i: int) -> ShardService:
        store = RetryingStore(self.faulty[i], self.policy)
        return ShardService(self.cfg.store, i, self.settings, clock=self.clocks[i], store=store)

    def coordinator(self) -> CoordinatorService:
        """A new coordinator (as after a restart); its decisions go through :attr:`decisions`."""
        return CoordinatorService(self.cfg.to_dict(), self.group, store=self.decisions)

    def client(self) -> Client:
        """A new client (its own causality token and token minter); its decisions go through
        :attr:`decisions` (faults of the clients' puts)."""
        c = Client("local", coordinator=self.coord, shards=self.group, backoff=self.backoff)
        made = c.txn_context

        def ctx():  # the decision store of a client process
            out = made()
            out.store = self.decisions
            return out

        c.txn_context = ctx
        return c

    def restart(self, i: int, offset_ms: int | None = None) -> None:
        """Shard ``i`` stops and starts again from the store (recovery), on a clock
        ``offset_ms`` off if given (a node of its own). Recovery failing under store faults
        is tried again."""
        with self._locks[i]:
            old = self.services[i]
            self.decided_before += old.engine.counters.get("txn_decided_here", 0)
            old.close()
            if offset_ms is not None:
                self.clocks[i].offset_ms = offset_ms
            for _ in range(100):
                try:
                    self.services[i] = self._open(i)
                    break
                except Unavailable:
                    time.sleep(0.01)
            else:
                raise TrialFailure(f"shard {i} did not recover in 100 attempts")
            self.restarts += 1

    def decided_here(self) -> int:
        return self.decided_before + sum(
            s.engine.counters["txn_decided_here"] for s in self.services
        )

    def heal(self) -> None:
        self.group.rate = self.coord.rate = 0.0
        for f in [*self.faulty, self.decisions]:
            f.clear_rules()

    def faults_fired(self) -> Counter[str]:
        out = Counter(self.group.fired) + self.coord.fired
        for f in self.faulty:
            out.update({f"shard store {k}": n for k, n in f.fired.items()})
        out.update({f"decision store {k}": n for k, n in self.decisions.fired.items()})
        return out

    def close(self) -> None:
        for s in self.services:
            s.close()


def store_faults(cl: TxnCluster, rng: random.Random) -> None:
    """Seeded rules: on the shards' log, ranges and manifests, and the clients' decisions."""
    for f in cl.faulty:
        for prefix in ("30/", "20/", "00/"):
            for kind in ("error", "lost_ack", "torn"):
                if rng.random() < 0.5:
                    f.add_rule(None, prefix, error_rate=rng.choice([0.01, 0.03, 0.08]), kind=kind)
        if rng.random() < 0.3:
            f.add_rule("put_if_absent", "30/", error_rate=0.02, kind="denied")
    for kind in ("error", "lost_ack"):
        cl.decisions.add_rule(None, "40/", error_rate=rng.choice([0.0, 0.02, 0.05]), kind=kind)


# -- the threads of a trial ------------------------------------------------------------------


def reader(work: Work, rng: random.Random) -> None:
    """Read snapshots and change-feed windows until told to stop; read an earlier snapshot
    again each time (the same rows, whatever restarted meanwhile)."""
    client, mine = work.cl.client(), []
    while not work.stop.is_set():
        try:
            s = client.snapshot()
            mine.append((s, rows(client, s)))
            work.reads.append(("scan", *mine[-1]))
            if rng.random() < 0.3:  # the Arrow scan (shards' tails as Arrow) reads the same
                _same(work, "scan", s, mine[-1][1], arrow_rows(client, s))
            if rng.random() < 0.3:
                a = rng.choice(mine)[0]
                work.reads.append(("feed", a, s, feed(client, a, s)))
                if rng.random() < 0.5:  # and the Arrow feed the same changes
                    _same(work, "feed", s, work.reads[-1][3], arrow_feed(client, a, s))
            old, want = rng.choice(mine)
            if rows(client, old) != want:
                raise TrialFailure(f"a snapshot read at {old} changed between two reads")
            work.count("snapshots read and read again")
        except Unavailable:
            work.count("reads unavailable")
        time.sleep(rng.uniform(0, 0.02))


def arrow_rows(client: Client, s: int) -> dict[int, str]:
    t = client.scan_arrow(DB, TABLE, snapshot=s)
    return dict(zip(t.column("k").to_pylist(), t.column("v").to_pylist(), strict=True))


def arrow_feed(client: Client, from_ts: int, snapshot: int) -> list[tuple]:
    """``changes_arrow`` (dn/read/arrowfeed.py) in :func:`feed`'s terms."""
    t = client.changes_arrow(DB, TABLE, from_ts, snapshot=snapshot)
    cols = [t.column(n).to_pylist() for n in ("_commit_ts", "k", "_change_type", "v")]
    return [
        (ts, k, "delete", None) if kind == "delete" else (ts, k, "upsert", v)
        for ts, k, kind, v in zip(*cols, strict=True)
    ]


def _same(work: Work, what: str, s: int, want: object, got: object) -> None:
    if got != want:
        raise TrialFailure(f"the Arrow {what} at {s} differs from the dict {what}")
    work.count(f"Arrow {what}s checked against the dict {what}")


def restarter(work: Work, rng: random.Random, pause: float, drift_ms: int = 0) -> None:
    """Restart a random shard every ``pause`` seconds or so until told to stop; with
    ``drift_ms``, on a clock up to that far off (another node)."""
    while not work.stop.wait(rng.uniform(pause / 2, pause * 1.5)):
        off = rng.randint(-drift_ms, drift_ms) if drift_ms else None
        work.cl.restart(rng.randrange(work.cl.n), off)
        work.count("shard restarts" + (" on a drifted clock" if drift_ms else ""))


# -- the trial --------------------------------------------------------------------------------


def _txn(work: Work, client: Client, rng: random.Random, keys: list[int], v: str) -> Rec:
    tx = client.transaction()
    for k in rng.sample(range(KEYS), rng.randint(0, 3)):
        row = tx.get(DB, TABLE, k)
        work.reads.append(("get", tx.snapshot, k, row and row["v"]))
    tx.write(DB, TABLE, [{"k": k, "v": v} for k in keys])
    return Rec(keys, "acked", tx.commit())


def _killed(work: Work, client: Client, rng: random.Random, keys: list[int], v: str) -> Rec:
    """A client that stops at a seeded step of the protocol (decision 0015)."""
    ctx = client.txn_context()
    token, t = ctx.minter.mint(), ctx.tables.get(DB, TABLE)
    clocks = work.cl.group.call_each({i: ("clock", ()) for i in range(work.cl.n)}, ctx.retry_s)
    at = max([ctx.causality.token, *(c for c in clocks.values() if type(c) is int)]) + (5 << 16)
    batch = validate_batch(t.table, [{"k": k, "v": v} for k in keys], [], 1 << 20, 1000)
    calls = {
        s: ("prepare", (token, at, None, [t.part(s, share, 0).to_call()]))
        for s, share in split(batch, work.cl.n).items()
    }
    step = rng.choice(["prepared some", "prepared all", "decided", "resolved some"])
    sent = calls
    if step == "prepared some" and len(calls) > 1:
        sent = dict(rng.sample(sorted(calls.items()), rng.randint(1, len(calls) - 1)))
    got = work.cl.group.call_each(sent, ctx.retry_s)
    work.count(f"killed client: {step}")
    failed = any(isinstance(r, BaseException) for r in got.values())
    if step.startswith("prepared") or failed or len(sent) < len(calls):
        why = f"killed client, {step}: {got}"[:300]
        return Rec(keys, "invisible", why=why)  # no commit decision: a reader or the round aborts
    ts = decision.decide(ctx.store, token, at, list(calls))
    if step == "resolved some":
        some = rng.sample(sorted(calls), rng.randint(1, len(calls)))
        work.cl.group.call_each({s: ("resolve", (token, ts)) for s in some}, 0.0)
    return Rec(keys, "acked", ts) if ts else Rec(keys, "invisible", why="killed client: aborted")


def _worker(
    work: Work, rng: random.Random, w: int, n: int, weights: list[float], client: Client
) -> None:
    """``n`` commits of seeded kinds; two workers share each client (one process's commits in
    flight together go to the coordinator in one ``commit_many``)."""
    for j in range(n):
        v, keys = f"x{w}.{j}", rng.sample(range(KEYS), rng.randint(2, 8))
        kind = rng.choices(["atomic batch", "transaction", "killed client"], weights)[0]
        try:
            if kind == "atomic batch":
                rec = Rec(
                    keys,
                    "acked",
                    client.write(DB, TABLE, [{"k": k, "v": v} for k in keys], atomic=True),
                )
            elif kind == "transaction":
                rec = _txn(work, client, rng, keys, v)
            else:
                rec = _killed(work, client, rng, keys, v)
        except Exception as exc:
            rec = Rec(keys, outcome_of(exc), why=f"{kind}: {exc!r}"[:300])
            work.count(f"{kind}: {type(exc).__name__}")
        work.recs[v] = rec
        work.count(kind)


def tally_up(work: Work, tally: Tally, kind: str) -> dict:
    """Add a finished trial's figures to the run's; returns the kind's figures."""
    stats, fired = tally.kind(kind), work.cl.faults_fired()
    outcomes = Counter(r.outcome for r in work.recs.values())
    killed = sum(n for k, n in work.seen.items() if k.startswith("killed client:"))
    restarts = sum(n for k, n in work.seen.items() if k.startswith("shard restarts"))
    injected = sum(fired.values()) + restarts + killed
    tally.add("faults_injected", injected)
    tally.add("acked_writes_checked", outcomes["acked"])
    figures = {
        **work.seen,
        **fired,
        **{f"outcome {k}": n for k, n in outcomes.items()},
        "writes checked": len(work.recs),
        "faults injected": injected,
        "intents decided by shards from the store": work.cl.decided_here(),
        "anomalies": 0,
    }
    stats.update({k: stats.get(k, 0) + n for k, n in figures.items()})
    clock = work.cl.coord.service._committer.clock  # how far commits were aimed ahead
    ahead = max(0, (clock.floor >> 16) - time.time_ns() // 1_000_000) + clock.margin_ms
    stats["largest commit-clock lead over the wall clock (ms)"] = max(
        ahead, stats.get("largest commit-clock lead over the wall clock (ms)", 0)
    )
    return stats


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    engine = {}
    if rng.random() < 0.5:  # buffers written out mid-trial: conflicts found in range objects
        engine = {"freeze_bytes": rng.choice([8 << 10, 64 << 10]), "freeze_interval_s": 0.3}
    work = Work(TxnCluster(f"txn-{seed}-{time.time_ns()}", rng.choice([3, 4]), seed, **engine))
    cl = work.cl
    try:
        start = cl.client().snapshot()
        cl.group.rate = rng.choice([0.0, 0.03, 0.08])
        cl.coord.rate = rng.choice([0.0, 0.03, 0.08])
        if rng.random() < 0.6:
            store_faults(cl, rng)
        back = [work.spawn(reader, random.Random(seed + 100 + r)) for r in range(2)]
        if rng.random() < 0.8:
            back.append(work.spawn(restarter, random.Random(seed + 200), 0.3))
        weights = [0.4, 0.45, rng.choice([0.0, 0.1, 0.2])]
        workers, per = (6, 60) if long else (4, 8)
        rngs = [random.Random(seed * 1000 + w) for w in range(workers)]
        clients = [cl.client() for _ in range(workers // 2)]
        work.join(
            [
                work.spawn(_worker, rngs[w], w, per, weights, clients[w // 2])
                for w in range(workers)
            ],
            back,
        )
        cl.heal()
        for i in range(cl.n):  # every shard recovers once more before the check
            cl.restart(i)
        check_history(
            cl,
            cl.client(),
            start,
            work.recs,
            work.reads,
            rng,
            tally.kind("txn"),
            40 if long else 16,
        )
    finally:
        cl.close()
        tally_up(work, tally, "txn")
