"""Compaction, garbage collection and retention: reads and storage stay bounded over time.

- A long ingest of small batches with frequent freezes: a latest-state scan never reads more
  range objects than the policy's bound.
- A crash at any store operation during compaction or GC loses nothing, and the next GC leaves
  the bucket holding exactly what the manifest references.
- GC's grace keeps the objects of a plan handed out before a compaction readable.
- Checkpoints that fell out of the retention window are dropped and collected.
- Recovery replays a bounded log; an idle shard makes no store requests.
"""

from __future__ import annotations

import random
import time

import pytest

from dn import Engine, ManualClock, Settings
from dn.objects import codec
from dn.read.cache import ObjectCache
from dn.read.reader import Reader
from dn.read.view import materialize
from dn.store import FaultyStore, MemoryStore, SimulatedCrash
from tests.fakes import CountingStore

SCHEMA = {"k": "int64", "v": "string"}


def _settings(**kw) -> Settings:
    base = dict(
        background=False,
        freeze_interval_s=None,
        checkpoint_interval_s=None,
        log_delete_grace_s=0,
        gc_grace_s=0,
        freeze_bytes=3_000,
        compaction_fanout=4,
        compaction_base_bytes=4_000,
        checkpoint_delta=200,
    )
    base.update(kw)
    return Settings(**base)


def _open(store, clock=None, **kw) -> Engine:
    eng = Engine.open(settings=_settings(**kw), store=store, clock=clock or ManualClock())
    return eng


def _range_objects_read_by_latest_scan(eng: Engine, store: MemoryStore) -> int:
    counting = CountingStore(store)
    reader = Reader(counting, 0, ObjectCache(1 << 30))
    view = eng.read_view("db", "t")
    rows = list(materialize(reader, view))
    assert rows == list(eng.scan("db", "t"))
    return sum(1 for k in counting.gets if k.startswith("20/"))


def test_long_ingest_keeps_latest_scan_under_the_policy_bound():
    store = MemoryStore()
    eng = _open(store, freeze_bytes=1_200)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    rng = random.Random(1)
    flushes = 0
    for i in range(1500):
        eng.write("db", "t", [{"k": k, "v": f"v{i}"} for k in rng.sample(range(5000), 8)])
        if i % 5 == 4:
            eng.maintain()
            flushes = eng.counters["buffer_checkpoints"]
        if i % 250 == 249:
            st = eng.status()
            bound = st["objects"]["compaction_bound"]
            assert st["objects"]["live_ranges"] <= bound
            assert _range_objects_read_by_latest_scan(eng, store) <= bound
            eng._check()
    assert flushes >= 100, "the test should freeze and flush often"
    assert eng.counters["compactions"] > 20
    assert eng.status()["objects"]["compaction_debt"] == 0
    eng.close()


def _bucket_is_exactly_referenced(eng: Engine) -> None:
    st = eng.status()
    want = {codec.range_key(0, a, b) for a, b in st["ranges"]}
    want |= {codec.checkpoint_key(0, c) for c in st["checkpoints"]}
    have = set(eng.store.list("20/")) | set(eng.store.list("10/"))
    assert have == want, (sorted(have - want), sorted(want - have))
    low = st["log"]["low_seq"]
    assert all(codec.last_number(k) >= low for k in eng.store.list("30/"))


def _workload(eng: Engine, acked: list) -> None:
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for i in range(24):
        ts = eng.write(
            "db",
            "t",
            [{"k": i % 7, "v": f"v{i}"}, {"k": 100 + i, "v": "x"}],
            deletes=[i % 5 + 50] if i % 3 else [],
        )
        acked.append(i)
        eng.freeze()
        eng.flush()
        if i % 4 == 3:
            eng.maintain()  # compaction, checkpoint, GC
        assert ts


def _expected(n: int) -> dict:
    state = {}
    for i in range(n):
        state[i % 7] = f"v{i}"
        state[100 + i] = "x"
    return state


@pytest.mark.parametrize("lands", [False, True], ids=["before-op", "after-op"])
def test_crash_during_compaction_or_gc_loses_nothing_and_leaves_no_lasting_garbage(lands):
    # count the store operations of the whole workload once, then crash at each of them
    probe = FaultyStore(MemoryStore())
    ops = []
    probe.on_op = lambda op, key: ops.append(op)
    eng = _open(probe, compaction_fanout=2)
    _workload(eng, [])
    assert eng.counters["compactions"] >= 3
    eng.close()
    for n in range(0, len(ops), 3):
        inner = MemoryStore()
        faulty = FaultyStore(inner)
        faulty.crash_after(n, lands=lands)
        acked: list = []
        with pytest.raises(SimulatedCrash):
            _workload(_open(faulty, compaction_fanout=2), acked)
        eng = _open(inner, compaction_fanout=2)
        try:
            eng._check()
            if acked:
                rows = {r["k"]: r["v"] for r in eng.scan("db", "t")}
                assert rows in (_expected(len(acked)), _expected(len(acked) + 1))
            eng.maintain()
            eng.collect_garbage(force=True)
            _bucket_is_exactly_referenced(eng)
        finally:
            eng.close()


def test_gc_grace_keeps_a_plans_objects_readable():
    store = MemoryStore()
    clock = ManualClock()
    eng = _open(store, clock, gc_grace_s=60, compaction_fanout=2)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for i in range(6):
        eng.write("db", "t", [{"k": i, "v": "a"}])
        eng.freeze()
        eng.flush()
    view = eng.read_view("db", "t")  # a plan handed out before the compaction
    while eng.compact():
        pass
    eng.collect_garbage()
    clock.advance(30)
    assert eng.collect_garbage() == 0
    reader = Reader(store, 0, ObjectCache(1 << 20))
    assert [r["k"] for r in materialize(reader, view)] == list(range(6))
    clock.advance(31)
    assert eng.collect_garbage() > 0
    assert [r["k"] for r in eng.scan("db", "t")] == list(range(6))
    eng.close()


def test_checkpoints_outside_the_window_are_dropped_and_collected():
    store = MemoryStore()
    clock = ManualClock(ms=1_000_000)
    eng = _open(store, clock, retention_s=10.0, compaction=False)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for i in range(5):
        eng.write("db", "t", [{"k": i, "v": "a"}])
        eng.freeze()
        eng.flush()
        eng.checkpoint()
        clock.advance(5)
    assert len(eng.status()["checkpoints"]) == 5
    eng.collect_garbage(force=True)
    floor = eng.oldest_readable()
    cps = eng.status()["checkpoints"]
    assert len(cps) < 5
    assert sum(1 for c in cps if c <= floor) <= 1  # one checkpoint at most before the window
    assert set(store.list("10/")) == {codec.checkpoint_key(0, c) for c in cps}
    assert [r["k"] for r in eng.scan("db", "t")] == list(range(5))
    eng.close()


def test_recovery_replays_a_bounded_log():
    store = MemoryStore()
    eng = _open(store, freeze_bytes=5_000)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for i in range(3000):
        eng.write("db", "t", [{"k": i, "v": "x" * 20}])
        if i % 50 == 0:
            eng.maintain()
    eng.close()
    again = _open(store)
    assert again.counters["replayed_commands"] < 300  # about one freeze_bytes worth
    assert again.status()["log"]["live_objects"] < 300
    assert sum(1 for _ in again.scan("db", "t")) == 3000
    again.close()


def test_an_idle_shard_makes_no_store_requests():
    faulty = FaultyStore(MemoryStore())
    ops = []
    eng = Engine.open(
        settings=Settings(
            background=True,
            background_interval_s=0.005,
            freeze_interval_s=0.05,
            checkpoint_interval_s=0.1,
            log_delete_grace_s=0,
            gc_grace_s=0,
        ),
        store=faulty,
    )
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for i in range(20):
        eng.write("db", "t", [{"k": i, "v": "a"}])
    time.sleep(0.6)  # freeze, flush, checkpoint and GC settle
    faulty.on_op = lambda op, key: ops.append((op, key))
    time.sleep(0.5)
    assert ops == []
    assert eng.status()["queue_length"] == 0
    eng.close()


def test_policy_merges_a_run_whose_shadowed_bytes_outgrow_its_largest_object():
    from dn.upkeep.compaction import Policy

    p = Policy(fanout=4, base_bytes=100, max_bytes=10_000)
    r = [((i, i), size) for i, size in enumerate([100, 30, 30, 30])]
    assert p.pick(r) is None  # 190 <= 2 x 100: within the bound, little to drop
    r = [((i, i), size) for i, size in enumerate([100, 60, 60])]
    assert p.pick(r) == [(0, 0), (1, 1), (2, 2)]  # 220 > 2 x 100: merge the whole run
    r = [((0, 0), 20_000), ((1, 1), 60), ((2, 2), 60), ((3, 3), 20)]
    assert p.pick(r) == [(1, 1), (2, 2), (3, 3)]  # objects at max_bytes are left alone


def test_a_compaction_leaves_its_inputs_out_of_the_object_cache():
    """The inputs of a merge go once it lands: read through the cache, they pushed out what
    readers use and held their decoded columns, which the cache does not count."""
    store = MemoryStore()
    eng = _open(store, freeze_bytes=1_200)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for i in range(40):
        eng.write("db", "t", [{"k": k, "v": f"v{i}"} for k in range(i * 8, i * 8 + 8)])
        eng.freeze()
        eng.flush()
    before = set(eng._state.ranges)
    eng._state.cache = type(eng._state.cache)(1 << 30)  # empty
    eng._state.reader.cache = eng._state.cache
    assert eng.compact()
    merged = before - set(eng._state.ranges)
    assert merged
    assert all(eng._state.cache.peek(codec.range_key(0, *r)) is None for r in merged)
