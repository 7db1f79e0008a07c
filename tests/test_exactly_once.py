"""Exactly-once writes (decision 0014): a write part sent again is applied once.

The whole client runs in-process against :class:`ShardService` objects, through
:class:`shards.group.ShardGroup`'s own retry loop (``call_each``) with its Ray calls replaced
(``InProcessGroup``): a shard call's response may be lost after the part committed, the shard
may be restarted (engine closed and opened again from the store) between an attempt and its
retry, or the original may be held and delivered late, after the retry and after a newer
write. Every argument, result and error is pickled, as Ray would. No Ray.

Each test checks the change feed (each write once, at one timestamp) or the state a late
original would overwrite. They do not depend on the token API, except where they say so.
"""

from __future__ import annotations

import pickle
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from coordinator.actor.service import CoordinatorService
from coordinator.client.client import Client
from coordinator.client.routing import shard_of
from coordinator.client.writes import WRITE_PART
from coordinator.config import ClusterConfig
from dn.backoff import Backoff
from dn.clock import ManualClock, SystemClock
from dn.errors import Closed, DNError, InvalidArgument, Unavailable
from dn.objects import checkpoint as ckpt
from dn.objects import codec
from dn.store.memory import shared_memory_store
from shards.group import ShardGroup
from shards.shard import ShardService
from tests.fakes import PassThroughStore, SleepClock
from tests.test_cluster_logic import LocalCoordinator

SCHEMA = {"k": "int64", "v": "string"}
SHARDS = 3


def _copy(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value))


class LogTap(PassThroughStore):
    """The shared memory store of a cluster's url, with hooks on the log's puts: ``gate``
    (block each log put until set) and ``lose_acks`` (that many log puts land, then raise as
    if their response was lost)."""

    def __init__(self, name: str) -> None:
        super().__init__(shared_memory_store(name))
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.lose_acks = 0

    def put_if_absent(self, key: str, data: bytes) -> None:
        if key.startswith("30/"):
            if self.gate is not None:
                self.entered.set()
                self.gate.wait(10.0)
            if self.lose_acks:
                self.lose_acks -= 1
                self.inner.put_if_absent(key, data)
                raise Unavailable(f"put {key}: the response was lost")
        self.inner.put_if_absent(key, data)


class InProcessGroup(ShardGroup):
    """ShardGroup's retry loop over in-process shards. ``rule(i, args)`` decides the fate of
    each write-part call: None (answered), "lose" (runs, its response is lost), "restart" (runs,
    then the shard restarts before answering), "hold" (not run yet: a call that timed out while
    still queued in the actor; :meth:`deliver` runs it later)."""

    def __init__(self, cluster: Cluster, backoff: Backoff) -> None:
        super().__init__("local", len(cluster.services), backoff=backoff)
        self.cluster = cluster
        self.rule: Callable[[int, tuple], str | None] = lambda i, args: None
        self.sent: list[tuple[int, tuple]] = []  # every write-part call, as sent
        self.held: list[tuple[int, tuple]] = []

    def _run(self, i: int, method: str, args: tuple) -> Any:
        svc = self.cluster.services[i]
        try:
            return _copy(getattr(svc, method)(*_copy(args)))
        except Closed as exc:
            if self.cluster.services[i] is svc and i not in self.cluster.restarting:
                return _copy(exc)
            # restarted under the call: Ray reports an actor that died mid-call as unavailable
            return Unavailable(f"shard {i}.{method}: the actor died ({exc})", outcome_unknown=True)
        except DNError as exc:
            return _copy(exc)

    def _submit(self, i: int, method: str, args: tuple) -> Any:
        if method != WRITE_PART:
            return self._run(i, method, args)
        self.sent.append((i, args))
        fate = self.rule(i, args)
        if fate == "hold":
            self.held.append((i, args))
            return Unavailable(f"shard {i}.{method} timed out", outcome_unknown=True)
        out = self._run(i, method, args)
        if fate == "lose":
            return Unavailable(f"shard {i}.{method}: the response was lost", outcome_unknown=True)
        if fate == "restart":
            self.cluster.restart(i)
            return Unavailable(f"shard {i}.{method}: the actor died", outcome_unknown=True)
        return out

    def _get(self, i: int, method: str, ref: Any) -> Any:
        if isinstance(ref, BaseException):
            raise ref
        return ref

    def start(self, i: int, method: str, args: tuple, done: Callable[[Any], None]) -> None:
        try:
            done(self._get(i, method, self._submit(i, method, args)))
        except DNError as exc:
            done(exc)

    def deliver(self, i: int, args: tuple) -> Any:
        """Run a held call now (the late original); its result or error."""
        return self._run(i, WRITE_PART, args)


class Cluster:
    """Three in-process shards over one memory store, a coordinator and a client."""

    def __init__(self, clock_ms: int | None = None) -> None:
        self.name = f"once-{uuid.uuid4().hex}"
        self.url = f"memory://{self.name}"
        self.clock = ManualClock(ms=clock_ms) if clock_ms is not None else SystemClock()
        cfg = ClusterConfig(store=self.url, shards=SHARDS)
        self.settings = cfg.engine.to_dict()
        self.taps = [LogTap(self.name) for _ in range(SHARDS)]
        self.services = [self._open(i) for i in range(SHARDS)]
        self.restarting: set[int] = set()  # shards between close and reopen
        t = SleepClock(100.0)
        backoff = Backoff(0.05, 1.0, 1.0, 1.0, sleep=t.sleep, rng=random.Random(1), clock=t.clock)
        self.group = InProcessGroup(self, backoff)
        coord = self.coordinator = CoordinatorService(cfg.to_dict(), self.group)
        self.client = Client(
            "local", coordinator=LocalCoordinator(coord), shards=self.group, backoff=backoff
        )
        self.client.create_database("db")
        self.client.create_table("db", "t", SCHEMA, "k")

    def _open(self, i: int) -> ShardService:
        return ShardService(self.url, i, self.settings, clock=self.clock, store=self.taps[i])

    def restart(self, i: int) -> None:
        """Shard ``i`` stops and starts again from the store (recovery)."""
        self.restarting.add(i)
        try:
            self.services[i].close()
            self.services[i] = self._open(i)
        finally:
            self.restarting.discard(i)

    def close(self) -> None:
        for s in self.services:
            s.close()

    def feed(self, from_ts: int) -> list[tuple[int, int, str, Any]]:
        changes = self.client.changes("db", "t", from_ts)
        return [(c.ts, c.pk, c.kind, c.row["v"] if c.row else None) for c in changes]

    def counter(self, name: str) -> int:
        return sum(s.engine.status()["counters"].get(name, 0) for s in self.services)


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.close()


def _first_time() -> Callable[[int, tuple], bool]:
    """True the first time it sees a call's arguments (a part's first attempt)."""
    seen: set[bytes] = set()

    def first(i: int, args: tuple) -> bool:
        key = pickle.dumps((i, args))
        if key in seen:
            return False
        seen.add(key)
        return True

    return first


def _rows(keys: range | list, tag: str) -> list[dict]:
    return [{"k": k, "v": f"{tag}{k}"} for k in keys]


def _assert_once(feed: list, acks: dict[int, int], keys: list, tag: str) -> None:
    """Each key once in the feed, at the timestamp its shard acknowledged."""
    assert sorted(pk for _, pk, _, _ in feed) == sorted(keys)
    for ts, pk, kind, v in feed:
        assert (ts, kind, v) == (acks[shard_of(pk, SHARDS)], "upsert", f"{tag}{pk}")


# -- the client's retries ---------------------------------------------------------------------


def test_a_lost_response_after_the_commit_and_the_clients_retry_apply_each_write_once(cluster):
    first = _first_time()
    cluster.group.rule = lambda i, args: "lose" if first(i, args) else None
    before = cluster.client.snapshot()
    keys = list(range(30))
    acks = cluster.client.write_each("db", "t", _rows(keys, "a"))
    assert sorted(acks) == [0, 1, 2]
    assert len(cluster.group.sent) == 2 * SHARDS  # each part sent twice: lost, then resent
    _assert_once(cluster.feed(before + 1), acks, keys, "a")
    assert cluster.counter("duplicate_parts") == SHARDS


def test_a_retry_after_the_shard_restarted_is_applied_once(cluster):
    # The part committed, then the shard died before answering; the retry reaches the new
    # incarnation, which recovered the part's token from the log.
    first = _first_time()
    cluster.group.rule = lambda i, args: "restart" if first(i, args) else None
    before = cluster.client.snapshot()
    keys = list(range(30))
    acks = cluster.client.write_each("db", "t", _rows(keys, "r"))
    assert len(cluster.group.sent) == 2 * SHARDS
    _assert_once(cluster.feed(before + 1), acks, keys, "r")
    assert cluster.counter("duplicate_parts") == SHARDS


def test_a_resend_after_a_log_write_of_unknown_outcome_is_applied_once(cluster):
    # Shard 0's log write lands but its acknowledgement is lost: the write fails with an
    # unknown outcome, and the retry must settle that outcome before deciding (it landed).
    keys = [k for k in range(100) if shard_of(k, SHARDS) == 0][:10]
    before = cluster.client.snapshot()
    cluster.taps[0].lose_acks = 1
    acks = cluster.client.write_each("db", "t", _rows(keys, "u"))
    assert list(acks) == [0] and len(cluster.group.sent) == 2
    _assert_once(cluster.feed(before + 1), acks, keys, "u")


def test_the_buffered_writers_resend_is_applied_once(cluster):
    first = _first_time()
    cluster.group.rule = lambda i, args: "lose" if first(i, args) else None
    before = cluster.client.snapshot()
    keys = list(range(60))
    with cluster.client.writer("db", "t", linger_s=60) as w:
        for k in range(0, 60, 10):
            w.write(_rows(range(k, k + 10), "w"))
        w.flush()
        assert w.stats["retries"] == w.stats["parts"] == SHARDS  # one part per shard, resent
    feed = cluster.feed(before + 1)
    acks = {shard_of(pk, SHARDS): ts for ts, pk, _, _ in feed}  # the one part's timestamp
    _assert_once(feed, acks, keys, "w")


# -- a late original --------------------------------------------------------------------------


def test_a_late_original_does_not_overwrite_the_clients_newer_write(cluster):
    # The first call to shard 0 times out while still queued in the actor; the client's retry
    # commits, the client writes the key again, and only then does the original run.
    key = next(k for k in range(100) if shard_of(k, SHARDS) == 0)
    first = _first_time()
    cluster.group.rule = lambda i, args: "hold" if first(i, args) else None
    before = cluster.client.snapshot()
    ts1 = cluster.client.write("db", "t", [{"k": key, "v": "old"}])
    ts2 = cluster.client.write("db", "t", [{"k": key, "v": "new"}])
    assert ts1 < ts2
    (i, late), second_held = cluster.group.held[0], cluster.group.held[1:]
    assert i == 0 and len(second_held) == 1  # the newer write's first attempt was held too
    assert cluster.group.deliver(i, late) == ts1  # the first commit's timestamp; nothing applied
    assert cluster.group.deliver(*second_held[0]) == ts2
    assert cluster.client.get("db", "t", key) == {"k": key, "v": "new"}
    assert cluster.feed(before + 1) == [(ts1, key, "upsert", "old"), (ts2, key, "upsert", "new")]


def test_two_identical_parts_submitted_concurrently_commit_once(cluster):
    # Every send of a part to shard 0 is held (the client gives up); then two copies of it
    # reach the shard at once: the second arrives while the first's log write is under way.
    keys = [k for k in range(100) if shard_of(k, SHARDS) == 0][:5]
    cluster.group.rule = lambda i, args: "hold"
    with pytest.raises(Unavailable):
        cluster.client.write("db", "t", _rows(keys, "c"))
    before = cluster.client.snapshot()
    (i, args), *resends = cluster.group.held
    assert resends and all(r == (i, args) for r in resends)
    tap = cluster.taps[i]
    tap.gate = threading.Event()
    results: list[Any] = [None, None]

    def send(n: int) -> None:
        results[n] = cluster.group.deliver(i, args)

    first = threading.Thread(target=send, args=(0,))
    first.start()
    assert tap.entered.wait(10.0)  # the first one is logging: its token is claimed
    second = threading.Thread(target=send, args=(1,))
    second.start()
    time.sleep(0.2)
    tap.gate.set()
    first.join(10.0)
    second.join(10.0)
    assert isinstance(results[0], int) and results[0] == results[1]
    _assert_once(cluster.feed(before + 1), {i: results[0]}, keys, "c")


# -- durable tokens and their window -------------------------------------------------------------


def test_tokens_survive_flush_checkpoint_and_reopen_and_are_forgotten_after_the_window():
    c = Cluster(clock_ms=time.time_ns() // 1_000_000)
    try:
        calls: list[tuple[int, tuple]] = []
        c.group.rule = lambda i, args: calls.append((i, args))  # record; answer as usual
        before = c.client.snapshot()
        acks: list[dict[int, int]] = []
        # the first parts end in a checkpoint, the second in a range after it, the third in
        # the log
        for n, step in enumerate(("checkpoint", "flush", None)):
            acks.append(c.client.write_each("db", "t", _rows(range(n * 10, n * 10 + 10), "d")))
            for s in c.services if step else ():
                getattr(s, step)()
        expected = {(i, ts) for a in acks for i, ts in a.items()}
        feed = c.feed(before + 1)
        for i in range(SHARDS):
            c.restart(i)
        # every part sent again to the new incarnations: the first timestamps, nothing applied
        again = {(i, c.services[i].write_part(*_copy(args))) for i, args in calls}
        assert again == expected
        assert c.feed(before + 1) == feed
        assert c.counter("duplicate_parts") == len(calls)
        # after the window: forgotten, and a part that old is refused rather than applied
        window_s = c.services[0].engine.settings.token_window_s
        c.clock.advance(window_s + 1)
        for s in c.services:
            s.engine.maintain()
            assert s.engine.status()["tokens"] == 0
        i, args = calls[0]
        with pytest.raises(InvalidArgument, match="token was minted"):
            c.services[i].write_part(*_copy(args))
        for s in c.services:  # a checkpoint now records no tokens
            s.engine.write("db", "t", [{"k": 1000 + s.shard, "v": "x"}])
            s.checkpoint()
            cp = s.engine.status()["last_checkpoint"]
            key = codec.checkpoint_key(s.shard, cp)
            assert ckpt.decode(c.taps[s.shard].get(key), key).tokens == b""
        for i in range(SHARDS):
            c.restart(i)
            assert c.services[i].engine.status()["tokens"] == 0
    finally:
        c.close()


# -- minting ------------------------------------------------------------------------------------


def test_every_copy_of_a_pickled_client_mints_tokens_of_its_own(cluster):
    from dn.write.tokens import TOKEN_BYTES, TokenMinter, minted_ms

    client = cluster.client
    blob = pickle.dumps(client)
    copies = [pickle.loads(blob), pickle.loads(blob)]
    tokens = [x._tokens.mint() for x in [client, *copies]]
    assert all(len(t) == TOKEN_BYTES for t in tokens)
    assert len({t[:16] for t in tokens}) == 3  # three client ids
    m = TokenMinter()
    a, b = m.mint(), m.mint()
    assert a[:16] == b[:16] == m.client_id and a != b
    assert abs(minted_ms(a) - time.time_ns() // 1_000_000) < 60_000
    assert pickle.loads(pickle.dumps(m)).mint()[:16] != a[:16]


def test_compaction_keeps_the_tokens_inside_the_window_and_recovery_reads_them():
    from dn import Engine, Settings
    from dn.write.part import WritePart
    from dn.write.tokens import make_token, unpack_entries

    clock = ManualClock(ms=time.time_ns() // 1_000_000)
    url = f"memory://once-{uuid.uuid4().hex}"
    settings = Settings(background=False, compaction_fanout=2, compaction_base_bytes=64)
    e = Engine.open(url, 0, settings, clock=clock)
    e.create_database("db")
    e.create_table("db", "t", SCHEMA, "k")
    window_s = settings.token_window_s
    parts, stamps = [], []
    for n in range(4):  # each part in a range of its own; the last two half a window later
        if n == 2:
            clock.advance(window_s / 2 + 1)
        token = make_token(b"\x07" * 16, clock.now_ms(), n + 1)
        t = e.live_table("db", "t")
        parts.append(WritePart.from_columns(t, [[n], [f"v{n}"]], [], token=token))
        stamps.append(e.write_packed_columns(parts[-1]))
        e.freeze()
        e.flush()
    clock.advance(window_s / 2)  # the first two tokens are now past the window
    while e.compact():
        pass
    (out,) = [r for r in e.status()["ranges"] if r[0] <= stamps[0] and stamps[-1] <= r[1]]
    kept = unpack_entries(e.reader.range(tuple(out)).tokens)
    assert kept == [(stamps[2], parts[2].token), (stamps[3], parts[3].token)]
    e.close()
    e = Engine.open(url, 0, settings, clock=clock)
    try:
        assert e.status()["tokens"] == 2
        assert [e.write_packed_columns(p) for p in parts[2:]] == stamps[2:]
        assert [c.ts for c in e.changes("db", "t", stamps[0])] == stamps
    finally:
        e.close()
