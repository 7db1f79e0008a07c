"""Slot-move trials (issue 17, decision 0018): writers and readers go on while slots move and
the cluster reshards, under lost answers, shard restarts and a coordinator that dies in the
middle of a move; then the history is checked.

The cluster: 3 shards in this process over one memory store, reached through
:class:`LossyShards` (every argument and answer pickled; a call's answer may be lost after it
ran, and the call is then sent again with the same arguments, as the shard group's retry loop
does; a call to a shard that is restarting is sent again), a coordinator, and a client per
thread. One trial (one seed):

- writer threads write a value ``w<t>.<j>`` into 1-6 keys of ``KEYS`` (deletes now and
  then), keeping each write's outcome: acknowledged, or failed (then it may or may not have
  been applied);
- a reader thread takes snapshots and scans them, keeping what it read;
- the driver moves random slot sets, reshards to 2-5 shards, restarts shards, and now and
  then kills the coordinator after a seeded number of its shard calls during a move (a new
  coordinator over the same store takes over and settles the move).

Then the faults stop, the move left in progress is settled, and the history is checked: the
change feed holds every acknowledged write exactly once and no write twice (each value is
written once), the current state is the feed's last value per key, every snapshot read during
the trial reads the same again (repeatable reads across moves), each row is on the shard the
map says, and no shard has a move pending.

Callers: the runner, from one thread (the trial starts and joins its own).
"""

from __future__ import annotations

import pickle
import random
import threading
import time
import uuid
from typing import Any

from coordinator.actor.service import CoordinatorService
from coordinator.client.client import Client
from coordinator.client.routing import shard_of
from coordinator.config import ClusterConfig
from dn.errors import Closed, DNError, Fenced, Unavailable
from dn.settings import Settings
from dn.store import open_store
from shards.shard import ShardService
from tests.test_cluster_logic import LocalCoordinator
from tests.trials.tally import Tally, TrialFailure

SCHEMA, KEYS = {"k": "int64", "v": "string"}, 300
GRACE_S = 2.0
#: Calls whose answer may be lost after they ran (then sent again, as the retry loop does).
LOSSY = ("write_part", "give_slots", "take_slots", "settle_move", "read_view")


def _copy(x: Any) -> Any:
    return pickle.loads(pickle.dumps(x))


class Died(BaseException):
    """The coordinator's process died (a trial kills it mid-move)."""


class LossyShards:
    """In-process shards with lost answers and restarts (module docstring)."""

    def __init__(self, url: str, cfg: ClusterConfig, n: int, seed: int) -> None:
        self.url, self.cfg = url, cfg
        self.services = [self._open(i) for i in range(n)]
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.loss = 0.0
        self.lost = 0
        self.die_after: int | None = None  # the coordinator's calls left before it dies
        self.retired: list[ShardService] = []

    def _open(self, i: int) -> ShardService:
        return ShardService(self.url, i, self.cfg.engine.to_dict())

    def __len__(self) -> int:
        return len(self.services)

    def resize(self, n: int) -> None:
        with self.lock:
            while len(self.services) < n:
                self.services.append(self._open(len(self.services)))
            while len(self.services) > n:
                self.retired.append(self.services.pop())

    def restart(self, i: int) -> None:
        with self.lock:
            if i >= len(self.services):
                return
            old = self.services[i]
            self.services[i] = self._open(i)  # a new epoch: the old one is fenced
        old.close()

    def call_each(self, calls: dict, retry_s: float = 0.0) -> dict:
        return {i: self._call(i, m, a) for i, (m, a) in calls.items()}

    def _call(self, i: int, method: str, args: tuple) -> Any:
        for _ in range(400):
            with self.lock:
                svc = self.services[i] if i < len(self.services) else None
                lose = method in LOSSY and self.rng.random() < self.loss
            if svc is None:
                return Unavailable(f"shard {i} is retired")
            try:
                result = _copy(getattr(svc, method)(*_copy(args)))
            except (Closed, Fenced):
                time.sleep(0.005)  # restarting: sent again
                continue
            except DNError as exc:
                return _copy(exc)
            if lose:
                with self.lock:
                    self.lost += 1
                continue  # the answer was lost: sent again, the same call
            return result
        return Unavailable(f"shard {i}: no answer", outcome_unknown=True)


class CoordinatorShards:
    """The coordinator's view of the shards: the same calls, and its death on cue."""

    def __init__(self, shards: LossyShards) -> None:
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def resize(self, n: int) -> None:
        self.shards.resize(n)

    def call_each(self, calls: dict, retry_s: float = 0.0) -> dict:
        s = self.shards
        if s.die_after is not None:
            s.die_after -= 1
            if s.die_after < 0:
                s.die_after = None
                raise Died()
        return s.call_each(calls, retry_s)


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    url = f"memory://trial-moves-{uuid.uuid4().hex}"
    # moves settle into the shards' objects as soon as they are done, and garbage collection
    # deletes what no move holds GRACE_S after, while everything else goes on (the grace must
    # outlast a read's fetches: a read of the whole history on a loaded machine takes seconds)
    engine = Settings(background=False, absorb_after_s=0.0, gc_references_s=0.0, gc_grace_s=GRACE_S)
    cfg = ClusterConfig(store=url, shards=3, engine=engine)
    shards = LossyShards(url, cfg, 3, seed)
    coord = LocalCoordinator(CoordinatorService(cfg.to_dict(), CoordinatorShards(shards)))
    client = Client("trial", coordinator=coord, shards=shards)
    client.create_database("db")
    client.create_table("db", "t", SCHEMA, "k")
    t0 = client.snapshot()
    shards.loss = 0.05
    stop = threading.Event()
    outcomes: list[tuple[str, list, list, bool]] = []  # (value, keys, deleted, acknowledged)
    reads: list[tuple[int, dict]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        c = Client("trial", coordinator=coord, shards=shards)
        r = random.Random(seed * 100 + w)
        j = 0
        while not stop.is_set():
            value = f"w{w}.{j}"
            keys = r.sample(range(KEYS), r.randint(1, 6))
            dels = [keys.pop()] if len(keys) > 1 and r.random() < 0.2 else []
            try:
                c.write("db", "t", [{"k": k, "v": value} for k in keys], dels)
                ok = True
            except DNError:
                ok = False
            with lock:
                outcomes.append((value, keys, dels, ok))
            j += 1

    def reader() -> None:
        c = Client("trial", coordinator=coord, shards=shards)
        while not stop.is_set():
            try:
                s = c.snapshot()
                got = {row["k"]: row["v"] for row in c.scan("db", "t", snapshot=s)}
            except DNError:
                continue
            with lock:
                reads.append((s, got))
            time.sleep(0.01)

    crashed: list[BaseException] = []  # an exception no client call may raise (untyped)

    def guarded(fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - the trial fails on it below
            crashed.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(writer, w)) for w in range(3)]
    threads.append(threading.Thread(target=guarded, args=(reader,)))
    for t in threads:
        t.start()
    steps = 12 if long else 5
    moves = reshards = restarts = deaths = 0
    try:
        for _ in range(steps):
            roll = rng.random()
            try:
                if roll < 0.2:
                    shards.restart(rng.randrange(len(shards)))
                    restarts += 1
                elif roll < 0.45:
                    reshards += 1
                    coord.service.reshard(rng.randint(2, 5))
                else:
                    smap = coord.service._catalog.state.slot_map
                    count = smap.slots
                    if rng.random() < 0.3:
                        shards.die_after = rng.randint(0, 6)
                    moves += 1
                    coord.service.move_slots(
                        rng.sample(range(count), rng.randint(1, count // 3)),
                        rng.randrange(len(shards)),
                    )
            except Died:
                deaths += 1
                coord.service = CoordinatorService(cfg.to_dict(), CoordinatorShards(shards))
            except DNError as exc:  # a step refused (e.g. shards down): the trial goes on
                errors.append(exc)
            finally:
                shards.die_after = None
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    if crashed:
        for svc in shards.services + shards.retired:
            svc.close()
        raise TrialFailure(f"a client call raised an untyped error: {crashed[0]!r}")
    shards.loss = 0.0
    coord.service = CoordinatorService(cfg.to_dict(), CoordinatorShards(shards))
    coord.service.settle_moves()
    tally.add("faults_injected", shards.lost + restarts + deaths)
    tally.add("crashes", restarts + deaths)
    try:
        _check(client, shards, t0, outcomes, reads, tally)
    finally:
        for svc in shards.services + shards.retired:
            svc.close()
        store = open_store(url)  # the trial's objects go: a long run keeps its memory flat
        for key in store.list(""):
            store.delete(key)


def _check(
    client: Client, shards: LossyShards, t0: int, outcomes: list, reads: list, tally: Tally
) -> None:
    client.refresh_route()
    end = client.snapshot()
    feed = list(client.changes("db", "t", t0 + 1, end))
    seen: dict[tuple, int] = {}
    for ch in feed:
        key = (ch.pk, None if ch.row is None else ch.row["v"], ch.kind)
        seen[key] = seen.get(key, 0) + 1
    by_value = {}
    for value, keys, dels, ok in outcomes:
        by_value[value] = (keys, dels, ok)
    twice = [k for k, n in seen.items() if n > 1 and k[1] is not None]
    if twice:
        tally.add("applied_twice", len(twice))
        raise TrialFailure(f"writes applied twice: {twice[:5]}")
    lost = [
        (k, value)
        for value, (keys, _, ok) in by_value.items()
        if ok
        for k in keys
        if (k, value, "upsert") not in seen
    ]
    if lost:
        tally.add("writes_lost", len(lost))
        raise TrialFailure(f"acknowledged writes missing from the feed: {lost[:5]}")
    tally.add("acked_writes_checked", sum(1 for _, _, _, ok in outcomes if ok))
    last: dict = {}
    for ch in sorted(feed, key=lambda c: c.ts):
        if ch.row is None:
            last.pop(ch.pk, None)
        else:
            last[ch.pk] = ch.row["v"]
    now = {r["k"]: r["v"] for r in client.scan("db", "t", snapshot=end)}
    if now != last:
        raise TrialFailure("the state is not the change feed's end state")
    # settle what is left, collect, read again (the live incarnations only: a retired one may
    # be a zombie of a shard grown back since, whose memory names objects the live one freed)
    for svc in shards.services:
        svc.engine.handoff.absorb()
    time.sleep(GRACE_S + 0.1)
    for svc in shards.services:
        for _ in range(2):
            svc.engine.collect_garbage(force=True)
    tally.add("moves_settled", sum(s.engine.counters.get("absorbed_moves", 0)
                                   for s in shards.services))  # fmt: skip
    for s, got in reads:
        again = {r["k"]: r["v"] for r in client.scan("db", "t", snapshot=s)}
        if again != got:
            raise TrialFailure(f"a read at snapshot {s} is not repeatable across the moves")
    route = client._tables().route
    for i, svc in enumerate(shards.services):
        if svc.moves()["pending_moves"]:
            raise TrialFailure(f"shard {i} has a move pending: {svc.moves()['pending_moves']}")
        for row in svc.engine.scan("db", "t", end):
            if shard_of(row["k"], route) != i:
                raise TrialFailure(f"key {row['k']} is on shard {i}, not where the map says")
