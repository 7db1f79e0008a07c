"""Seed fidelity: the checkpoint trigger counts commits (seed 003), and a read plan names no
range object that starts after its snapshot (seed 001). Regression tests of two findings, each
named after what broke:

- a flushed range counted as one commit, so with ``checkpoint_delta=100`` and compaction off,
  1,002 commits flushed in ranges of many commits each produced no checkpoint;
- ``snapshot_plan(S)`` with S equal to a checkpoint's timestamp named the first range after
  the checkpoint, which starts after S, and a read at that timestamp fetched it.

No Ray; fast.
"""

from __future__ import annotations

import pytest

from dn import Engine, ManualClock, Plan, Settings
from dn.objects import codec, rangeobj
from dn.read.cache import ObjectCache
from dn.read.plan import range_plan, snapshot_plan
from dn.read.reader import Reader
from dn.read.view import materialize
from dn.store import MemoryStore
from dn.upkeep import compaction
from tests.fakes import CountingStore

SCHEMA = {"k": "int64", "v": "string"}

# Seed 001's layout: checkpoints [130] --> [90] --> [20], and the ranges below.
SEED_RANGES = [(1, 20), (21, 30), (31, 50), (51, 90), (91, 110), (111, 130), (131, 140)]
SEED_CHECKPOINTS = [20, 90, 130]


def _settings(**kw) -> Settings:
    base = dict(
        background=False,
        freeze_interval_s=None,
        checkpoint_interval_s=None,
        log_delete_grace_s=0,
        gc_grace_s=0,
        retention_s=None,
        compaction=False,
        checkpoint_delta=100,
    )
    base.update(kw)
    return Settings(**base)


def _open(store: MemoryStore) -> Engine:
    return Engine.open(store=store, settings=_settings(), clock=ManualClock())


def _shard(store: MemoryStore) -> Engine:
    eng = _open(store)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    return eng


# -- finding 5: the checkpoint trigger counts commits --------------------------------------


def test_checkpoint_trigger_counts_the_commits_of_flushed_ranges_not_one_per_range():
    """1,002 commits, flushed every 50, with a background round after each: a flushed range
    counted as one commit, so the count never reached ``checkpoint_delta=100`` and no
    checkpoint was written. Counting commits (seed 003), one falls due every 100."""
    eng = _shard(MemoryStore())
    try:
        for i in range(1000):
            eng.write("db", "t", [{"k": i % 37, "v": f"v{i}"}])
            if i % 50 == 49:
                eng.freeze()  # the next round flushes it: a range of 50 commits
            eng.maintain()
            assert eng.status()["commits_since_checkpoint"] < 100
        st = eng.status()
        assert eng.counters["checkpoints"] == 10  # at commits 100, 200, ..., 1,000
        assert st["last_checkpoint"] == 1000  # a manual clock at 0: commit n gets ts n
        assert st["commits_since_checkpoint"] == 2
    finally:
        eng.close()


def test_recovery_counts_the_commits_of_ranges_after_the_newest_checkpoint():
    """After a reopen, each range after the newest checkpoint counted as one commit: 60
    flushed commits and a checkpoint trigger that saw 3."""
    store = MemoryStore()
    eng = _shard(store)
    eng.checkpoint()  # nothing flushed yet: no checkpoint
    for i in range(60):
        eng.write("db", "t", [{"k": i, "v": "x"}])
        if i % 20 == 19:
            eng.freeze()
            eng.flush()
    for i in range(5):
        eng.write("db", "t", [{"k": i, "v": "tail"}])  # stays in the log
    assert eng.status()["commits_since_checkpoint"] == 67
    eng.close()
    again = _open(store)
    try:
        st = again.status()
        assert len(st["ranges"]) == 3 and st["checkpoints"] == []
        assert st["commits_since_checkpoint"] == 67
    finally:
        again.close()


def test_a_compacted_range_records_the_commits_of_its_inputs():
    """Compaction writes the sum of its inputs' counts, the commits the output covers, even
    when it drops the versions that newer ones shadow below the horizon."""
    store = MemoryStore()
    eng = _shard(store)
    try:
        for i in range(30):
            eng.write("db", "t", [{"k": i % 3, "v": f"v{i}"}])
            if i % 10 == 9:
                eng.freeze()
                eng.flush()
        ranges = eng.status()["ranges"]
        inputs = [eng.reader.range(r) for r in ranges]
        assert [ro.ncommits for ro in inputs] == [12, 10, 10]  # the first holds the DDL
        t = eng.table("db", "t")
        data, _ = compaction.merge(0, inputs, {t.id: (t.pk_pos, None)}, 10**9, oldest=True)
        out = rangeobj.decode(data, "merged")
        assert len(out.tables[t.id]["ts"]) == 3  # one version of each key survives
        assert out.ncommits == compaction.commits(inputs) == 32
    finally:
        eng.close()


# -- finding 6: no plan names a range that starts after its snapshot -----------------------


@pytest.mark.parametrize("cp", SEED_CHECKPOINTS)
def test_snapshot_plan_at_a_checkpoint_names_no_range_after_it(cp):
    """At S = a checkpoint's timestamp the plan named the first range after the checkpoint,
    which starts at S + 1: the checkpoint alone serves S."""
    assert snapshot_plan(SEED_RANGES, SEED_CHECKPOINTS, cp) == Plan(cp, (), cp, None)


def test_snapshot_plan_between_ranges_names_no_range_after_s():
    """A snapshot in a gap between ranges (a pure function's input need not be contiguous)
    named the range after the gap."""
    ranges = [(1, 10), (21, 30), (31, 40)]
    assert snapshot_plan(ranges, [], 15) == Plan(None, ((1, 10),), 10, (11, 15))
    assert snapshot_plan(ranges, [10], 15) == Plan(10, (), 10, (11, 15))
    assert snapshot_plan(ranges, [], 0) == Plan(None, (), None, (0, 0))
    assert range_plan(ranges, [], 15, 5) == Plan(None, ((1, 10),), 10, (11, 15))
    assert range_plan(ranges, [10], 15, 12) == Plan(None, (), 10, (12, 15))


@pytest.mark.parametrize("layout", ["seed", "gaps"])
def test_plans_at_every_snapshot_cover_it_and_name_no_range_after_it(layout):
    """Every snapshot from 0 to past the newest range: no working range starts after S, and
    every commit at or below S (in the window, for a range plan) is in exactly one place."""
    ranges = SEED_RANGES if layout == "seed" else [(5, 20), (31, 50), (51, 90), (120, 130)]
    cps = SEED_CHECKPOINTS
    last = ranges[-1][1]
    exists = {ts for lo, hi in ranges for ts in range(lo, hi + 1)} | set(range(last + 1, 176))

    def check(spans: list[tuple[int, int]], lo: int, hi: int, what: object) -> None:
        for ts in range(lo, hi + 1):
            n = sum(a <= ts <= b for a, b in spans)
            assert n == 1 if ts in exists else n <= 1, (what, ts)

    for s in range(0, 176):
        plan = snapshot_plan(ranges, cps, s)
        assert all(r[0] <= s for r in plan.ranges), (s, plan)
        spans = [r for r in ranges if plan.checkpoint is not None and r[1] <= plan.checkpoint]
        spans += list(plan.ranges) + ([plan.tail] if plan.tail else [])
        check(spans, 1, s, plan)
        for from_ts in range(0, s + 1, 7):
            rp = range_plan(ranges, cps, s, from_ts)
            assert all(r[0] <= s and r[1] >= from_ts for r in rp.ranges), (s, from_ts, rp)
            assert rp.checkpoint is None and rp.max_range == plan.max_range
            check(list(rp.ranges) + ([rp.tail] if rp.tail else []), max(from_ts, 1), s, rp)


def test_a_read_at_a_checkpoint_fetches_no_range_after_it():
    """A read at a checkpoint's timestamp fetched the checkpoint, the ranges it lists and one
    object too many: the range after the checkpoint, which holds nothing visible at S."""
    store = MemoryStore()
    eng = _shard(store)
    try:
        for i in range(3):
            eng.write("db", "t", [{"k": i, "v": f"a{i}"}])
            eng.freeze()
            eng.flush()
        cp = eng.checkpoint()
        eng.write("db", "t", [{"k": 0, "v": "after"}])
        eng.freeze()
        eng.flush()
        st = eng.status()
        assert st["checkpoints"] == [cp] and st["ranges"][-1][0] == cp + 1
        counting = CountingStore(store)
        reader = Reader(counting, 0, ObjectCache(1 << 30))
        rows = list(materialize(reader, eng.read_view("db", "t", cp)))
        assert rows == [{"k": i, "v": f"a{i}"} for i in range(3)]
        assert rows == list(eng.scan("db", "t", snapshot=cp))
        listed = [codec.range_key(0, *r) for r in st["ranges"] if r[1] <= cp]
        assert counting.gets == [codec.checkpoint_key(0, cp), *listed]
    finally:
        eng.close()
