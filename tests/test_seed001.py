"""Seed 001, reproduced: buffers, ranges, checkpoints and plans at the seed's timestamps.

A manual clock stuck at 0 makes the shard issue timestamps 1, 2, 3, ...: commit n gets ts n.
The seed draws:

    Checkpoints:  [130] --> [90] --> [20]
    Ranges:       [131-140] --> [111-130] --> [91-110] --> [51-90] --> [31-50] --> [21-30]
    Buffers:      [MutableBuffer[161-170]] --> [ImmutableBuffer[141-160]]

and answers snapshot reads at 120 and 150 and range reads (120,100), (120,115), (150,132),
(150,142). Rows read at those timestamps must equal a reference model.
"""

from __future__ import annotations

import pytest

from dn import Engine, ManualClock, Plan, Settings

FREEZE_AT = {20, 30, 50, 90, 110, 130, 140, 160}
CHECKPOINT_AT = {20, 90, 130}
FLUSH_UNTIL = 140  # buffers ending at or before this are buffer-checkpointed


def build_seed_shard(url: str, store=None):
    """170 commits (ts 1..170): DDL at 1-2, then upserts and deletes; returns the engine and
    the reference model: a list of (ts, kind, pk, row)."""
    settings = Settings(background=False, checkpoint_interval_s=None, freeze_interval_s=None)
    eng = Engine.open(url, settings=settings, clock=ManualClock(), store=store)
    history = []
    assert eng.create_database("db") == 1
    assert eng.create_table("db", "t", {"k": "int64", "v": "string", "n": "float64"}, "k") == 2
    for ts in range(3, 171):
        k = ts % 23
        if ts % 7 == 0:
            assert eng.write("db", "t", deletes=[k]) == ts
            history.append((ts, "delete", k, None))
        else:
            row = {"k": k, "v": f"v{ts}", "n": ts / 2}
            assert eng.write("db", "t", [row]) == ts
            history.append((ts, "upsert", k, row))
        if ts in FREEZE_AT:
            assert eng.freeze() is not None
            if ts <= FLUSH_UNTIL:
                assert eng.flush() == 1
            if ts in CHECKPOINT_AT:
                assert eng.checkpoint() == ts
        eng._check()
    return eng, history


def model_at(history, snapshot):
    state = {}
    for ts, kind, pk, row in history:
        if ts > snapshot:
            break
        if kind == "delete":
            state.pop(pk, None)
        else:
            state[pk] = row
    return [state[k] for k in sorted(state)]


def changes_in(history, from_ts, snapshot):
    return [(ts, kind, pk, row) for ts, kind, pk, row in history if from_ts <= ts <= snapshot]


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    eng, history = build_seed_shard(str(tmp_path_factory.mktemp("seed001")))
    yield eng, history
    eng.close()


def test_buffers_ranges_and_checkpoints_land_where_the_seed_draws(seed):
    eng, _ = seed
    st = eng.status()
    assert st["checkpoints"] == [20, 90, 130]
    assert st["ranges"] == [
        (1, 20),
        (21, 30),
        (31, 50),
        (51, 90),
        (91, 110),
        (111, 130),
        (131, 140),
    ]
    assert [(b["from"], b["to"], b["frozen"]) for b in st["buffers"]] == [
        (161, 170, False),
        (141, 160, True),
    ]
    assert st["queue_length"] == 1


@pytest.mark.parametrize(
    "snapshot, expected",
    [
        (120, Plan(90, ((91, 110), (111, 130)), 130, None)),
        (150, Plan(130, ((131, 140),), 140, (141, 150))),
    ],
)
def test_snapshot_plans_equal_the_seed(seed, snapshot, expected):
    eng, _ = seed
    assert eng.snapshot_plan(snapshot) == expected


@pytest.mark.parametrize(
    "snapshot, from_ts, ranges, tail",
    [
        (120, 100, ((91, 110), (111, 130)), None),
        (120, 115, ((111, 130),), None),
        (150, 132, ((131, 140),), (141, 150)),
        (150, 142, (), (142, 150)),
    ],
)
def test_range_plans_equal_the_seed(seed, snapshot, from_ts, ranges, tail):
    eng, _ = seed
    plan = eng.range_plan(snapshot, from_ts)
    assert plan.ranges == ranges
    assert plan.tail == tail


@pytest.mark.parametrize("snapshot", [3, 20, 21, 89, 90, 91, 120, 130, 140, 141, 150, 160, 170])
def test_rows_at_seed_snapshots_equal_the_model(seed, snapshot):
    eng, history = seed
    assert list(eng.scan("db", "t", snapshot=snapshot)) == model_at(history, snapshot)
    for k in range(23):
        want = {r["k"]: r for r in model_at(history, snapshot)}.get(k)
        assert eng.get("db", "t", k, snapshot=snapshot) == want


@pytest.mark.parametrize(
    "snapshot, from_ts", [(120, 100), (120, 115), (150, 132), (150, 142), (170, 1), (90, 90)]
)
def test_change_feeds_at_seed_ranges_equal_the_model(seed, snapshot, from_ts):
    eng, history = seed
    got = [(c.ts, c.kind, c.pk, c.row) for c in eng.changes("db", "t", from_ts, snapshot)]
    assert got == changes_in(history, from_ts, snapshot)


def test_reopen_recovers_the_same_answers(tmp_path):
    eng, history = build_seed_shard(str(tmp_path))
    eng.close()
    again = Engine.open(str(tmp_path), settings=Settings(background=False), clock=ManualClock())
    try:
        again._check()
        st = again.status()
        assert st["checkpoints"] == [20, 90, 130]
        assert st["ranges"][-1] == (131, 140)
        for snapshot in (20, 120, 150, 170):
            assert list(again.scan("db", "t", snapshot=snapshot)) == model_at(history, snapshot)
        # the clock restarts above every timestamp issued before
        assert again.write("db", "t", [{"k": 1, "v": "x", "n": 0.0}]) > 170
    finally:
        again.close()
