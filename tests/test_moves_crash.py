"""A slot move crashed at every store operation (issue 17, decision 0018): the two shards of a
move over one store that fails for good at its n-th operation (a process killed there), for
every n, on the memory store and (every few n) on S3 (moto); then both are opened again and
the move is settled the way the coordinator settles it (done only if both ``give`` and
``take`` had answered, the commit point's condition). Afterwards nothing acknowledged is lost
or doubled, every read equals the model by the map the outcome says, writes go to the right
owner, no move is left pending, and garbage collection leaves exactly the objects the shards
and their moves name.
"""

from __future__ import annotations

import pytest

from dn import Engine, ManualClock, Settings
from dn.errors import Moved
from dn.objects import codec
from dn.slots import slots_py
from dn.store import FaultyStore, MemoryStore, RetryPolicy, SimulatedCrash, open_store

COUNT = 16
SLOTS = {s for s in range(COUNT) if s % 2 == 0 and s < 10}  # shard 0's, moving to shard 1
KEYS = range(120)


def _settings() -> Settings:
    return Settings(background=False, gc_grace_s=0.0, log_delete_grace_s=0, retention_s=None)


def _open(store, shard: int) -> Engine:
    return Engine.open(None, shard, _settings(), store=store, clock=ManualClock())


def _owner(key: int, moved: bool) -> int:
    slot = slots_py([key], COUNT)[0]
    return 1 if moved and slot in SLOTS else slot % 2


def _setup(inner) -> dict:
    """Two shards with the table, rows flushed and in memory; returns the model."""
    model = {}
    engines = [_open(inner, i) for i in range(2)]
    for e in engines:
        e.create_database("d")
        e.create_table("d", "t", {"k": "int64", "v": "string"}, "k")
    for round_ in range(3):
        for k in KEYS:
            if (k + round_) % 3 == 0:
                engines[_owner(k, False)].write("d", "t", [{"k": k, "v": f"r{round_}"}])
                model[k] = f"r{round_}"
        if round_ < 2:
            for e in engines:
                e.freeze()
                e.flush()
    for e in engines:
        e.close()
    return model


def _move(store) -> list[str]:
    """The move's steps on shards opened over ``store``; the steps that answered."""
    done = []
    a, b = _open(store, 0), _open(store, 1)
    handover = a.handoff.give(1, SLOTS, COUNT, 1)
    done.append("give")
    b.handoff.take(1, 0, SLOTS, COUNT, handover)
    done.append("take")
    a.handoff.settle(1, True)
    done.append("settle-a")
    b.handoff.settle(1, True)
    done.append("settle-b")
    return done


def _verify(inner, model: dict, committed: bool) -> None:
    engines = [_open(inner, i) for i in range(2)]
    try:
        for e in engines:  # what the coordinator does from its record
            e.handoff.settle(1, committed)
            assert e.handoff.status()["pending_moves"] == []
        s = max(e.snapshot() for e in engines)
        for e in engines:
            e.advance_floor(s)
        got: dict = {}
        for e in engines:
            for row in e.scan("d", "t", s):
                assert row["k"] not in got, f"key {row['k']} on two shards"
                got[row["k"]] = row["v"]
        assert got == model
        for k in (0, 1, 2, 3, 4, 5):  # writes go to the owner the outcome says, once
            own = _owner(k, committed)
            engines[own].write("d", "t", [{"k": k, "v": "after"}])
            if committed and _owner(k, True) != _owner(k, False):  # the old owner refuses
                with pytest.raises(Moved):
                    engines[1 - own].write("d", "t", [{"k": k, "v": "wrong"}])
        for k in (0, 1, 2, 3, 4, 5):
            assert engines[_owner(k, committed)].get("d", "t", k) == {"k": k, "v": "after"}
        for e in engines:  # GC leaves exactly the live objects and those the moves name
            e.freeze()
            e.flush()
            e.compact()
            e.collect_garbage(force=True)
            e.collect_garbage(force=True)
            st = e._state
            named = {codec.range_key(e.shard, a_, b_) for a_, b_ in st.ranges}
            named |= {
                codec.range_key(x[0], x[1], x[2])
                for m in st.moves
                for g in m.groups
                for x in g.sources
                if x[0] == e.shard
            }
            assert set(inner.list(codec.range_prefix(e.shard))) == named
        got = {}  # every read still works after it
        for e in engines:
            for row in e.scan("d", "t", s):
                got[row["k"]] = row["v"]
        assert got == model
    finally:
        for e in engines:
            e.close()


def _count_ops(setup, act) -> int:
    """How many store operations ``act`` makes over a store ``setup`` prepared."""
    inner = MemoryStore()
    setup(inner)
    faulty = FaultyStore(inner)
    n = [0]
    faulty.on_op = lambda op, key: n.__setitem__(0, n[0] + 1)
    act(faulty)
    return n[0]


def _crash_each(ns, lands: bool, make, setup, act, verify) -> None:
    """For each n: ``act`` over a store that fails for good at its n-th operation (before or
    after it lands), then ``verify(store, what setup returned, what act returned or None)``."""
    for n in ns:
        inner = make(n)
        prepared = setup(inner)
        faulty = FaultyStore(inner)
        faulty.crash_after(n, lands=lands)
        done = None
        try:
            done = act(faulty)
        except SimulatedCrash:
            pass
        verify(inner, prepared, done)


# -- settling a done move into the two shards' objects (dn.upkeep.absorb), crashed ----------


def _settle_setup(inner) -> tuple[dict, int, dict]:
    """The move done, and written after it on both shards (so both can settle); returns the
    model before the move, a snapshot after the writes, and the model there."""
    before = _setup(inner)
    engines = [_open(inner, i) for i in range(2)]
    handover = engines[0].handoff.give(1, SLOTS, COUNT, 1)
    engines[1].handoff.take(1, 0, SLOTS, COUNT, handover)
    for e in engines:
        e.handoff.settle(1, True)
    after = dict(before)
    for k in range(0, 40, 3):
        engines[_owner(k, True)].write("d", "t", [{"k": k, "v": "moved"}])
        after[k] = "moved"
    for e in engines:
        e.freeze()
        e.flush()
    s = max(e.snapshot() for e in engines)
    for e in engines:
        e.advance_floor(s)
        e.close()
    return before, s, after


def _settle(store) -> None:
    """Both shards settle the move (the new owner first) and collect garbage."""
    engines = [_open(store, 1), _open(store, 0)]
    for e in engines:
        assert e.handoff.absorb()
    for e in engines:
        e.collect_garbage(force=True)


def _read(engines, s: int) -> dict:
    got: dict = {}
    for e in engines:
        for row in e.scan("d", "t", s):
            assert row["k"] not in got, f"key {row['k']} on two shards"
            got[row["k"]] = row["v"]
    return got


def _verify_settled(inner, after: dict, s: int) -> None:
    engines = [_open(inner, i) for i in range(2)]
    try:
        assert _read(engines, s) == after  # whatever settled before the crash
        for e in (engines[1], engines[0]):  # settling again finishes it
            e.handoff.absorb()
            assert all(m.absorbed for m in e._state.moves)
        for _ in range(2):
            for e in engines:
                e.collect_garbage(force=True)
        for e in engines:  # no reference is left: exactly the live objects stay
            live = {codec.range_key(e.shard, a_, b_) for a_, b_ in e._state.ranges}
            assert set(inner.list(codec.range_prefix(e.shard))) == live
            view = e.read_view("d", "t", s)
            assert view.plan.own is None and not view.plan.refs  # read unfiltered
        assert _read(engines, s) == after
        moved = next(k for k in KEYS if _owner(k, True) != _owner(k, False))
        with pytest.raises(Moved):  # the old owner still refuses the slots it gave away
            engines[0].write("d", "t", [{"k": moved, "v": "wrong"}])
    finally:
        for e in engines:
            e.close()


#: Each scenario: (prepare the store, act on it, check it after a crash or not).
SCENARIOS = {
    # the coordinator commits the move only once both give and take answered
    "move": (_setup, _move, lambda st, model, done: _verify(st, model, "take" in (done or []))),
    "settle": (_settle_setup, _settle, lambda st, p, _: _verify_settled(st, p[2], p[1])),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("lands", [False, True], ids=["before-op", "after-op"])
def test_a_move_and_its_settling_crashed_at_every_store_operation_lose_and_keep_nothing(
    scenario, lands
):
    setup, act, verify = SCENARIOS[scenario]
    total = _count_ops(setup, act)
    assert total > 10
    _crash_each(range(total + 1), lands, lambda n: MemoryStore(), setup, act, verify)


@pytest.mark.s3
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_move_and_its_settling_crashed_at_store_operations_on_s3(s3_url, scenario):
    url, _ = s3_url
    one_try = RetryPolicy(max_attempts=1)
    setup, act, verify = SCENARIOS[scenario]
    total = _count_ops(setup, act)
    make = lambda n: open_store(f"{url}/{scenario}-{n}", retry=one_try)  # noqa: E731
    _crash_each(range(0, total + 1, 5), True, make, setup, act, verify)
