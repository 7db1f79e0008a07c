"""Time and snapshots (decision 0013): no commit ever gets a timestamp at or below a snapshot
that was already served, across restarts, clocks behind, and crashes in the middle of the
timestamp ceiling's extension; floors never push a clock further ahead of the wall clock than
``snapshot_future_s``; a snapshot beyond it is refused with :class:`dn.errors.FutureSnapshot`;
and the durable ceiling costs one manifest commit per lease window, not one per commit.

Each test here fails without the durable ceiling or without the wall-clock future bound. The
cluster's version of the restart (shards on clocks set apart) is in tests/test_cluster_logic.py.
No Ray; the clocks are manual.
"""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from dn import AlreadyExists, Engine, InvalidArgument, ManualClock, NotFound, Settings
from dn.clock import LOGICAL_BITS
from dn.errors import FutureSnapshot, Unavailable
from dn.objects.manifest import Manifest
from dn.store import FaultyStore, MemoryStore, SimulatedCrash

T0 = 1_767_225_600_000  # the wall clock's start, Unix ms
SECOND = 1000 << LOGICAL_BITS  # a second of timestamps
SCHEMA = {"k": "int64", "v": "string"}


def _settings(**kw) -> Settings:
    base = {
        "background": False,
        "freeze_interval_s": None,
        "checkpoint_interval_s": None,
        "retention_s": None,
        "log_delete_grace_s": 0,
    }
    return Settings(**{**base, **kw})


def _open(store, clock: ManualClock, **kw) -> Engine:
    return Engine.open(settings=_settings(**kw), store=store, clock=clock)


def _rows(eng: Engine, snapshot: int) -> list[dict]:
    return list(eng.scan("db", "t", snapshot=snapshot))


def _durable_ceiling(store) -> int:
    state = Manifest(store, 0).load()
    return state.ceiling if state else 0


class Tap:
    """A store that counts manifest commits (those made during an engine write apart) and can
    crash at the next one, before it lands or after."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.url = inner.url
        self.manifest_puts = 0
        self.in_write = False
        self.puts_in_writes = 0
        self.crash_next: bool | None = None  # None: no crash; else whether the put lands
        self.on_manifest_put = lambda: None  # called before each manifest commit
        self.max_manifest_puts = 10_000  # a guard against a livelock: more is an error

    def get(self, key):
        return self.inner.get(key)

    def put(self, key, data):
        self.inner.put(key, data)

    def put_if_absent(self, key, data):
        if key.startswith("00/"):
            if self.crash_next is not None:
                lands, self.crash_next = self.crash_next, None
                if lands:
                    self.inner.put_if_absent(key, data)
                raise SimulatedCrash(f"crash at the manifest commit {key}")
            self.manifest_puts += 1
            self.puts_in_writes += self.in_write
            if self.manifest_puts > self.max_manifest_puts:
                raise Unavailable("too many manifest commits")
            self.on_manifest_put()
        self.inner.put_if_absent(key, data)

    def list(self, prefix):
        return self.inner.list(prefix)

    def delete(self, key):
        self.inner.delete(key)

    def close(self):
        pass


# -- the scenario ---------------------------------------------------------------------


@pytest.mark.parametrize("later_ms", [1_000, -5_000], ids=["a-second-later", "clock-behind"])
def test_a_snapshot_stays_the_same_across_a_restart(later_ms):
    """Write, read at S = snapshot() + 30 s, close, reopen on a wall clock behind S, write,
    read at S again: the same rows (the new write lands above S)."""
    store = MemoryStore()
    eng = _open(store, ManualClock(ms=T0))
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.write("db", "t", [{"k": 1, "v": "a"}])
    s = eng.snapshot() + 30 * SECOND
    before = _rows(eng, s)
    assert before == [{"k": 1, "v": "a"}]
    eng.close()
    again = _open(store, ManualClock(ms=T0 + later_ms))
    assert again.clock() >= s  # recovery starts above the ceiling, not at the wall clock
    ts = again.write("db", "t", [{"k": 2, "v": "b"}], deletes=[1])
    assert ts > s
    assert _rows(again, s) == before
    assert [r["k"] for r in again.scan("db", "t")] == [2]
    again._check()
    again.close()


# -- the future bound -------------------------------------------------------------------------


def test_future_reads_do_not_ratchet_the_clock():
    """Ten reads, each at the shard's snapshot() + 30 s: the bound is measured from the wall
    clock, so the clock ends at most snapshot_future_s ahead of it, not ten times 30 s."""
    clock = ManualClock(ms=T0)
    eng = _open(MemoryStore(), clock)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    served = refused = 0
    for _ in range(10):
        s = eng.snapshot() + 30 * SECOND
        try:
            _rows(eng, s)
            served += 1
        except InvalidArgument:
            refused += 1
    assert (served, refused) == (2, 8)
    assert eng.clock() <= ((T0 + 60_000 + 1) << LOGICAL_BITS) - 1
    eng.close()


def test_a_snapshot_past_the_bound_is_refused_with_the_bound_named():
    clock = ManualClock(ms=T0)
    store = MemoryStore()
    eng = _open(store, clock)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    last_ok = ((T0 + 60_000 + 1) << LOGICAL_BITS) - 1  # the wall's millisecond plus 60 s
    for call in (
        lambda: eng.advance_floor(last_ok + 1),
        lambda: _rows(eng, last_ok + 1),
        lambda: eng.get("db", "t", 1, snapshot=last_ok + 1),
    ):
        with pytest.raises(FutureSnapshot, match=r"snapshot_future_s = 60\.0 s") as err:
            call()
        assert isinstance(err.value, InvalidArgument)
        assert err.value.details == {"snapshot": last_ok + 1, "limit": last_ok, "bound_s": 60.0}
        again = pickle.loads(pickle.dumps(err.value))  # it crosses Ray's process boundaries
        assert type(again) is FutureSnapshot and again.details == err.value.details
    assert eng.clock() < last_ok  # nothing was promised
    assert eng.advance_floor(last_ok) == last_ok
    clock.advance(1)  # the limit moves with the wall clock
    assert eng.advance_floor(last_ok + 1) == last_ok + 1
    eng.close()
    # after a restart on a node two minutes behind, the shard's own clock is still served
    slow = _open(store, ManualClock(ms=T0 - 120_000))
    assert slow.snapshot() == slow.clock() >= last_ok + 1
    assert _rows(slow, slow.clock()) == []
    with pytest.raises(FutureSnapshot):
        slow.advance_floor(slow.clock() + 1)
    slow.close()


# -- crashes and restarts ---------------------------------------------------------------------


@pytest.mark.parametrize("lands", [False, True], ids=["not-landed", "landed"])
def test_a_crash_during_a_ceiling_extension_resolves_safely(lands):
    """The read at S needs the ceiling extended; the process dies at that manifest commit.
    Either the ceiling landed (recovery starts above it) or it did not (S was never served);
    then a snapshot served afterwards stays the same across another restart."""
    inner = MemoryStore()
    tap = Tap(inner)
    eng = _open(tap, ManualClock(ms=T0))
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.write("db", "t", [{"k": 1, "v": "a"}])
    s = eng.snapshot() + 30 * SECOND
    tap.crash_next = lands
    with pytest.raises(SimulatedCrash):
        _rows(eng, s)  # never served: the promise was not durable
    assert (_durable_ceiling(inner) >= s) == lands
    behind = _open(inner, ManualClock(ms=T0 - 5_000))
    assert (behind.clock() >= s) == lands
    before = _rows(behind, s)  # served now, by the new incarnation
    assert before == [{"k": 1, "v": "a"}]
    behind.close()
    last = _open(inner, ManualClock(ms=T0 - 10_000))
    assert last.write("db", "t", [{"k": 1, "v": "b"}, {"k": 2, "v": "b"}]) > s
    assert _rows(last, s) == before
    last._check()
    last.close()


def _served_workload(eng: Engine, clock: ManualClock, served: list) -> None:
    """Writes (one every half second of the manual clock, so the ceiling's lease runs out and
    writers extend it), buffer checkpoints, a checkpoint, and reads 20 s past the wall clock;
    every snapshot served goes to ``served`` with its rows."""
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for i in range(8):
        eng.write("db", "t", [{"k": i, "v": f"w{i}"}], deletes=[i - 2] if i >= 2 else [])
        clock.advance(0.5)
        if i % 2:
            s = (clock.now_ms() + 20_000) << LOGICAL_BITS
            served.append((s, _rows(eng, s)))
        if i in (3, 6):
            eng.freeze()
            eng.flush()
        if i == 6:
            eng.checkpoint()


def _count_ops() -> int:
    probe = FaultyStore(MemoryStore())
    ops: list = []
    probe.on_op = lambda op, key: ops.append(op)
    clock = ManualClock(ms=T0)
    eng = _open(probe, clock)
    _served_workload(eng, clock, [])
    eng.close()
    return len(ops)


@pytest.mark.parametrize("lands", [False, True], ids=["before-op", "after-op"])
def test_a_crash_at_every_store_operation_keeps_every_served_snapshot(lands):
    total = _count_ops()
    assert total > 20
    for n in range(total):
        inner = MemoryStore()
        faulty = FaultyStore(inner)
        faulty.crash_after(n, lands=lands)
        clock = ManualClock(ms=T0)
        served: list = []
        with pytest.raises(SimulatedCrash):
            eng = _open(faulty, clock)
            _served_workload(eng, clock, served)
        eng = _open(inner, ManualClock(ms=T0 - 60_000))  # a node a minute behind
        try:
            try:
                eng.write("db", "t", [{"k": k, "v": "late"} for k in range(10)])
                eng.write("db", "t", deletes=[3])
            except NotFound:
                assert not served, f"crash at {n}: the table is gone although reads were served"
                continue
            for s, rows in served:
                assert _rows(eng, s) == rows, f"crash at op {n}: the snapshot {s} changed"
            eng._check()
        finally:
            eng.close()


# -- the cost ---------------------------------------------------------------------------------


def test_manifest_commits_per_commit_are_bounded_by_lease_windows():
    """2,000 commits over 20 s of a steady rate, the background round every 50 ms: the
    ceiling is always durable above every commit, the manifest gets one commit per half lease
    (about 20), and only the first write waited for one."""
    inner = MemoryStore()
    tap = Tap(inner)
    clock = ManualClock(ms=T0)
    eng = _open(tap, clock, freeze_bytes=1 << 30)
    opened = tap.manifest_puts
    tap.in_write = True
    eng.create_database("db")  # the first commit after opening extends the ceiling itself
    eng.create_table("db", "t", SCHEMA, "k")
    top = 0
    for i in range(2000):
        tap.in_write = True
        top = eng.write("db", "t", [{"k": i % 100, "v": "x"}])
        tap.in_write = False
        assert top <= eng.status()["ceiling"]
        clock.advance(0.01)
        if i % 5 == 4:
            eng.maintain()
    assert _durable_ceiling(inner) >= top
    extensions = tap.manifest_puts - opened
    lease_s = eng.settings.timestamp_lease_s
    assert 20 / (lease_s / 2) - 1 <= extensions <= 20 / (lease_s / 2) + 2
    assert eng.counters["ceiling_extensions"] == extensions
    assert tap.puts_in_writes == 1  # the first commit; from then on the round kept ahead
    eng.close()


def test_commits_after_a_future_read_do_not_extend_the_ceiling_each():
    """A read 50 s ahead leaves the clock running ahead of the wall clock; the commits after it
    count on up from there, and an extension reaches a millisecond of timestamps past what is
    needed, so 1,000 commits need one extension, not 1,000."""
    inner = MemoryStore()
    tap = Tap(inner)
    clock = ManualClock(ms=T0)
    eng = _open(tap, clock)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    s = eng.snapshot() + 50 * SECOND
    assert _rows(eng, s) == []
    before = tap.manifest_puts
    for i in range(1000):
        assert eng.write("db", "t", [{"k": i, "v": "x"}]) > s
    assert tap.manifest_puts - before <= 1
    assert _durable_ceiling(inner) >= eng.clock()
    eng.close()


def test_an_extension_slower_than_the_lease_is_checked_again_at_the_stamp():
    """Each manifest commit takes 3 s of the wall clock, longer than the 2 s lease: by the time
    the leader stamps, the wall clock has overtaken the ceiling just written. The stamp checks
    again under the lock, the leader extends again with a window of twice the time the last
    extension took, and every commit lands at or below the durable ceiling; no writer is stuck
    extending for ever."""
    inner = MemoryStore()
    tap = Tap(inner)
    clock = ManualClock(ms=T0)
    eng = _open(tap, clock)
    tap.on_manifest_put = lambda: clock.advance(3)
    tap.max_manifest_puts = 200
    assert eng.create_database("db") <= _durable_ceiling(inner)
    assert eng.create_table("db", "t", SCHEMA, "k") <= _durable_ceiling(inner)
    for i in range(20):
        ts = eng.write("db", "t", [{"k": i, "v": "x"}])
        assert ts >= clock.now_ms() << LOGICAL_BITS  # a timestamp from the wall clock
        assert ts <= _durable_ceiling(inner)
        clock.advance(0.5)
    assert tap.manifest_puts < 40
    eng._check()
    eng.close()


def test_a_very_slow_extension_leaves_the_ceiling_a_lease_past_its_duration():
    """Found by the transaction trials: under injected store faults an extension took 20 s,
    the next window was twice that, and a restart started the clock 40 s ahead of the wall
    clock, close to snapshot_future_s. The window is the lease plus the last extension's
    time: room for the next extension, and no more."""
    inner = MemoryStore()
    tap = Tap(inner)
    clock = ManualClock(ms=T0)
    eng = _open(tap, clock)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    tap.on_manifest_put = lambda: clock.advance(20)  # a store under faults: 20 s a commit
    tap.max_manifest_puts = 1_000
    lease_ms = eng.settings.timestamp_lease_s * 1000
    for i in range(3):
        clock.advance(3)  # past the lease: the write extends (twice: the first is overtaken)
        eng.write("db", "t", [{"k": i, "v": "x"}])
        lead_ms = (_durable_ceiling(inner) >> LOGICAL_BITS) - clock.now_ms()
        assert lead_ms <= lease_ms + 1  # was the 20 s the extension took
    eng.close()
    eng = _open(inner, clock)  # a restart starts its clock at the ceiling
    assert (eng.clock() >> LOGICAL_BITS) - clock.now_ms() <= lease_ms + 1
    eng.close()


def test_a_refused_call_extends_nothing():
    """Calls refused for their arguments make no promise and so write nothing, even when the
    ceiling has run out (an idle shard): the request is checked before the promise is made
    durable, and the background round does not count it as use. The first read that is served
    extends the ceiling."""
    store = MemoryStore()
    clock = ManualClock(ms=T0)
    eng = _open(store, clock)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.maintain()
    clock.advance(60)  # the ceiling ran out long ago
    eng.maintain()
    before = store.snapshot()
    for call in (
        lambda: eng.scan("db", "t", columns=["zz"]),
        lambda: eng.scan("db", "t", start="x"),
        lambda: eng.get("db", "t", "x"),
        lambda: eng.get("db", "t", 1, columns=["zz"]),
        lambda: eng.changes("db", "t", 1, columns=["zz"]),
        lambda: eng.read_view("db", "t", columns=["zz"]),
        lambda: eng.scan("db", "nope"),
        lambda: eng.table("db", "nope"),
        lambda: eng.drop_table("db", "nope"),
        lambda: eng.create_table("db", "t", SCHEMA, "k"),
        lambda: eng.write("db", "t", [{"k": "x"}]),
        lambda: eng.advance_floor((T0 + 200_000) << LOGICAL_BITS),
    ):
        with pytest.raises((InvalidArgument, NotFound, AlreadyExists)) as err:
            call()
        eng.maintain()  # nor does the background round count a refused read as use
        assert store.snapshot() == before, err.value
    assert _rows(eng, eng.snapshot()) == []
    assert store.snapshot() != before  # served: the promise was made durable
    eng.close()


def test_a_shard_that_only_serves_reads_keeps_few_manifest_versions():
    """200 s of steady reads and no writes: one extension per half lease, and garbage
    collection still removes the manifest versions they leave behind."""
    store = MemoryStore()
    clock = ManualClock(ms=T0)
    eng = _open(store, clock, gc_grace_s=1)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for _ in range(2000):
        assert _rows(eng, eng.snapshot()) == []
        clock.advance(0.1)
        eng.maintain()
    assert 160 <= eng.counters["ceiling_extensions"] <= 210
    assert len(store.list("00/0/")) <= 8 + 32 + 15  # kept, awaiting a scan, awaiting grace
    eng.close()


def test_an_idle_shard_extends_nothing():
    inner = MemoryStore()
    tap = Tap(inner)
    clock = ManualClock(ms=T0)
    eng = _open(tap, clock)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.write("db", "t", [{"k": 1, "v": "x"}])
    eng.maintain()
    before = tap.manifest_puts
    for _ in range(100):  # 100 s without a write or a read
        clock.advance(1)
        eng.maintain()
    assert tap.manifest_puts == before
    eng.close()


# -- concurrency ------------------------------------------------------------------------------


def test_writers_and_future_readers_on_a_short_lease():
    """A 5 ms lease on the real clock: writers run out of room all the time and extend the
    ceiling themselves (the stamp stops a group at the ceiling, the leader extends and stamps
    the rest), while readers promise snapshots up to a second ahead. Every commit is at or
    below the durable ceiling, and every snapshot served stays the same after a restart."""
    store = MemoryStore()
    eng = Engine.open(
        settings=Settings(background=True, background_interval_s=0.002, timestamp_lease_s=0.005),
        store=store,
    )
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    stamps: list[int] = []
    served: list = []
    stop = threading.Event()

    errors: list = []

    def writer(w: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                stamps.append(eng.write("db", "t", [{"k": w * 100_000 + i, "v": "x"}]))
                i += 1
        except Exception as exc:  # the test fails on it
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                ahead = (time.time_ns() // 1_000_000 + 1000) << LOGICAL_BITS  # a second ahead
                s = ahead if len(served) % 2 else eng.snapshot()
                served.append((s, len(_rows(eng, s))))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    eng._check()
    assert eng.counters["ceiling_extensions"] > 10
    assert max(stamps) <= _durable_ceiling(store)
    assert len(stamps) == len(set(stamps))
    eng.close()
    again = Engine.open(settings=Settings(background=False), store=store)
    again.write("db", "t", [{"k": -1, "v": "late"}])
    for s, n in served[-50:]:
        assert len(_rows(again, s)) == n
    again.close()
