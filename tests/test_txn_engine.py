"""Transactions across shards at the engine level (decision 0015): intents, decisions, reads.

Several :class:`dn.Engine` shards share one memory store; the tests play the client's part of
the protocol themselves (prepare on every shard at one timestamp, decide, resolve), or stop it
at any step, and check what reads, change feeds, restarts and conflicting transactions see.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from dn import Engine, Settings
from dn.errors import Conflict, InvalidArgument, TimestampPassed
from dn.objects import decision
from dn.write.part import WritePart
from dn.write.tokens import TokenMinter

SCHEMA = {"k": "int64", "v": "string"}
MINT = TokenMinter()
STEP = 5 << 16  # 5 ms of timestamps: a commit timestamp a little past every shard's clock


def _settings(**kw) -> Settings:
    return Settings(**{"background": False, "txn_wait_s": 0.3, **kw})


def _open(url: str, shards: int = 2, **kw) -> list[Engine]:
    engines = [Engine.open(url, i, _settings(**kw)) for i in range(shards)]
    for e in engines:
        if "d" not in e.databases():
            e.create_database("d")
            e.create_table("d", "t", SCHEMA, "k")
    return engines


def _reopen(url: str, shards: int = 2, **kw) -> list[Engine]:
    return [Engine.open(url, i, _settings(**kw)) for i in range(shards)]


@pytest.fixture
def url():
    return f"memory://txn-{uuid.uuid4().hex[:8]}"


def part(engine: Engine, rows: dict[int, str] | None = None, deletes=()) -> WritePart:
    t = engine.live_table("d", "t")
    cols, _ = t.normalize_columns(
        {"k": list(rows or {}), "v": list((rows or {}).values())}, 1 << 20
    )
    return WritePart.from_columns(t, cols if rows else [], list(deletes))


def prepare(engines, writes, snapshot=None, at=None):
    """Prepare ``writes`` ({shard: rows}) at one timestamp; returns (token, at)."""
    token = MINT.mint()
    at = at or max(e.clock() for e in engines) + STEP
    for i, rows in writes.items():
        assert engines[i].prepare(token, at, [part(engines[i], rows)], snapshot) == at
    return token, at


def commit(engines, writes, snapshot=None):
    token, at = prepare(engines, writes, snapshot)
    assert decision.decide(engines[0].store, token, at, list(writes)) == at
    for i in writes:
        engines[i].resolve(token, at)
    return at


def rows(engines, snapshot=None):
    s = snapshot or max(e.snapshot() for e in engines)
    return {r["k"]: r["v"] for e in engines for r in e.scan("d", "t", snapshot=s)}


def test_a_committed_transaction_is_seen_whole_at_its_one_timestamp(url):
    a, b = engines = _open(url)
    before = max(e.snapshot() for e in engines)
    at = commit(engines, {0: {1: "x", 2: "y"}, 1: {3: "z"}})
    assert rows(engines, before) == {}
    assert rows(engines, at - 1) == {}
    assert rows(engines, at) == {1: "x", 2: "y", 3: "z"}
    feed = [(c.ts, c.pk) for e in engines for c in e.changes("d", "t", from_ts=before)]
    assert sorted(feed) == [(at, 1), (at, 2), (at, 3)]
    # the commit survives a restart and a buffer checkpoint, each shard's token noted once
    for e in engines:
        e.close()
    engines = _open(url)
    assert rows(engines, at) == {1: "x", 2: "y", 3: "z"}
    for e in engines:
        e.freeze()
        e.flush()
    engines[0]._check()
    assert rows(engines, at) == {1: "x", 2: "y", 3: "z"}


def test_a_read_at_or_after_an_undecided_intent_waits_then_aborts_it(url):
    engines = _open(url)
    token, at = prepare(engines, {0: {1: "x"}, 1: {2: "y"}})
    assert rows(engines, at - 1) == {}  # below the intent: served at once
    t0 = time.monotonic()
    assert rows(engines, at) == {}  # waited txn_wait_s, found no decision: aborted it
    assert time.monotonic() - t0 >= 0.25
    assert decision.lookup(engines[0].store, token) == decision.ABORTED
    # the client's late decision loses: every shard agrees on the abort
    assert decision.decide(engines[0].store, token, at, [0, 1]) == decision.ABORTED
    assert sum(e.counters["txn_aborted"] for e in engines) == 2


def test_a_reader_waiting_on_an_intent_sees_the_commit_when_it_lands(url):
    engines = _open(url, txn_wait_s=5.0)
    token, at = prepare(engines, {0: {1: "x"}, 1: {2: "y"}})
    got = {}
    reader = threading.Thread(target=lambda: got.update(rows(engines, at)))
    reader.start()
    time.sleep(0.1)
    assert reader.is_alive()  # waiting for the decision
    decision.decide(engines[0].store, token, at, [0, 1])
    for e in engines:
        e.resolve(token, at)
    reader.join(5)
    assert got == {1: "x", 2: "y"}


@pytest.mark.parametrize("step", ["prepared", "decided"])
def test_a_crash_after_each_step_resolves_to_the_decision(url, step):
    engines = _open(url)
    token, at = prepare(engines, {0: {1: "x"}, 1: {2: "y"}})
    if step == "decided":
        decision.decide(engines[0].store, token, at, [0, 1])
    for e in engines:  # the client and both shards die: nothing was resolved anywhere
        e.close()
    engines = _reopen(url)
    assert sum(len(e._state.intents) for e in engines) == 2  # replayed, undecided
    want = {1: "x", 2: "y"} if step == "decided" else {}
    assert rows(engines, at) == want
    assert sum(len(e._state.intents) for e in engines) == 0
    for e in engines:  # and the background round decides what no reader asked for
        e.close()
    engines = _reopen(url)
    assert sum(len(e._state.intents) for e in engines) == 2
    time.sleep(0.35)
    for e in engines:
        e.maintain()
        assert len(e._state.intents) == 0
    assert rows(engines, at) == want


def _prepare_group(engines, writes: list[dict]) -> tuple[bytes, list[tuple[bytes, int]]]:
    """Prepare one transaction per entry of ``writes`` ({shard: rows} each) as a client group,
    through ``prepare_many`` as the committer sends them; returns (group, [(token, at)])."""
    txns = [
        (MINT.mint(), max(e.clock() for e in engines) + STEP * (j + 1)) for j in range(len(writes))
    ]
    group = txns[0][0]
    for i, e in enumerate(engines):
        items = [
            (token, at, [part(e, w[i])], None, group)
            for (token, at), w in zip(txns, writes, strict=True)
            if i in w
        ]
        if items:
            assert e.transactions.prepare_many(items) == [at for _, at, *_ in items]
    return group, txns


@pytest.mark.parametrize("step", ["prepared", "decided"])
def test_a_group_is_decided_by_one_object_across_a_crash(url, step):
    # a client's group commit: its transactions share one decision object, named in op 7;
    # after a crash each shard resolves each intent from the group's object
    engines = _open(url)
    writes = [{0: {1: "a"}, 1: {2: "a"}}, {0: {3: "b"}}, {1: {4: "c"}}]
    group, txns = _prepare_group(engines, writes)
    if step == "decided":  # the first and the last commit; the second was refused somewhere
        outcomes = {txns[0][0]: txns[0][1], txns[1][0]: 0, txns[2][0]: txns[2][1]}
        got = decision.decide_group(engines[0].store, group, outcomes, [0, 1])
        assert [got.of(t) for t, _ in txns] == [txns[0][1], 0, txns[2][1]]
    for e in engines:
        e.close()
    engines = _reopen(url)
    assert sum(len(e._state.intents) for e in engines) == 4  # replayed, undecided
    assert all(i.group == group for e in engines for i in e._state.intents.by_token.values())
    want = {1: "a", 2: "a", 4: "c"} if step == "decided" else {}
    assert rows(engines, txns[-1][1]) == want
    assert sum(len(e._state.intents) for e in engines) == 0
    assert engines[0].store.list(decision.PREFIX) == [decision.key(group)]  # one object


def test_a_reader_giving_up_on_one_intent_aborts_its_whole_group(url):
    engines = _open(url)
    group, txns = _prepare_group(engines, [{0: {1: "a"}}, {1: {2: "b"}}])
    assert rows(engines[:1], txns[0][1]) == {}  # waits txn_wait_s, then aborts the group
    assert decision.lookup(engines[0].store, txns[1][0], group) == decision.ABORTED
    # the committer comes late: the group is decided already, it reads the abort back
    late = decision.decide_group(engines[0].store, group, dict(txns), [0, 1])
    assert [late.of(t) for t, _ in txns] == [0, 0]
    assert rows(engines[1:], txns[1][1]) == {}  # shard 1 reads the group's abort at once
    assert decision.decide(engines[0].store, txns[1][0], 0, [], group) == decision.ABORTED
    with pytest.raises(ValueError):  # a group's commits are decided only together
        decision.decide(engines[0].store, txns[1][0], txns[1][1], [], group)


def test_a_prepare_naming_a_group_minted_too_long_ago_is_refused(url):
    # decisions are collected by the age of their key: an intent may not name a key older
    # than a token may be (else its abort could be collected while the intent still waits)
    from dn.errors import InvalidArgument
    from dn.write.tokens import make_token

    (e,) = _open(url, shards=1)
    old_ms = int(time.time() * 1000) - int(e.settings.token_window_s * 1000)
    stale = make_token(bytes(16), old_ms, 1)
    token, at = MINT.mint(), e.clock() + STEP
    got = e.transactions.prepare_many([(token, at, [part(e, {1: "x"})], None, stale)])
    assert isinstance(got[0], InvalidArgument) and "minted" in str(got[0])
    assert len(e._state.intents) == 0 and rows([e]) == {}
    fresh = MINT.mint()
    assert e.transactions.prepare_many([(token, at, [part(e, {1: "x"})], None, fresh)]) == [at]


def test_a_buffer_with_an_undecided_intent_is_written_out_after_its_decision(url):
    engines = _open(url)
    token, at = prepare(engines, {0: {1: "x"}})
    engines[0].write("d", "t", [{"k": 5, "v": "after"}])  # a commit above the intent
    engines[0].freeze()
    done = threading.Event()
    threading.Thread(target=lambda: (engines[0].flush(), done.set())).start()
    time.sleep(0.1)
    assert not done.is_set()
    decision.decide(engines[0].store, token, at, [0])
    engines[0].resolve(token, at)
    assert done.wait(5)
    engines[0]._check()
    for e in engines:
        e.close()
    engines = _open(url)
    assert rows(engines) == {1: "x", 5: "after"}


def test_an_abort_takes_out_only_the_intents_rows(url):
    engines = _open(url)
    engines[0].write("d", "t", [{"k": 1, "v": "old"}])
    token, at = prepare(engines, {0: {1: "new", 2: "new"}})
    engines[0].write("d", "t", [{"k": 3, "v": "later"}])
    decision.decide(engines[0].store, token, decision.ABORTED, [0])
    engines[0].resolve(token, decision.ABORTED)
    engines[0]._check()
    assert rows(engines) == {1: "old", 3: "later"}
    engines[0].freeze()
    engines[0].flush()
    assert rows(engines) == {1: "old", 3: "later"}


def test_a_prepare_below_a_shards_clock_is_refused_and_writes_nothing(url):
    engines = _open(url)
    snap = engines[0].snapshot()
    token = MINT.mint()
    with pytest.raises(TimestampPassed) as err:
        engines[0].prepare(token, snap, [part(engines[0], {1: "x"})])
    assert err.value.details["clock"] >= snap
    assert len(engines[0]._state.intents) == 0
    with pytest.raises(InvalidArgument):  # too far ahead of the wall clock
        engines[0].prepare(MINT.mint(), snap + (3600_000 << 16), [part(engines[0], {1: "x"})])
    assert rows(engines) == {}


def test_a_resent_prepare_is_applied_once(url):
    engines = _open(url)
    token, at = prepare(engines, {0: {1: "x"}})
    assert engines[0].prepare(token, at, [part(engines[0], {1: "x"})]) == at
    assert engines[0].counters["txn_prepared"] == 1
    decision.decide(engines[0].store, token, at, [0])
    engines[0].resolve(token, at)
    engines[0].resolve(token, at)  # idempotent
    assert engines[0].prepare(token, at, [part(engines[0], {1: "x"})]) == at
    assert engines[0].counters["txn_prepared"] == 1


def test_write_write_conflicts_under_snapshot_isolation(url):
    engines = _open(url)
    engines[0].write("d", "t", [{"k": 1, "v": "a"}])
    snap = max(e.snapshot() for e in engines)
    # an undecided intent holds its keys
    token, at = prepare(engines, {0: {1: "t1"}})
    with pytest.raises(Conflict):
        prepare(engines, {0: {1: "t2"}}, snapshot=snap)
    decision.decide(engines[0].store, token, at, [0])
    engines[0].resolve(token, at)
    # committed after the snapshot: a conflict; from a newer snapshot: none
    with pytest.raises(Conflict):
        prepare(engines, {0: {1: "t2"}}, snapshot=snap)
    assert commit(engines, {0: {1: "t3"}}, snapshot=engines[0].snapshot())
    # a plain write after the snapshot conflicts too, and a key never touched does not
    snap = engines[0].snapshot()
    engines[0].write("d", "t", [{"k": 1, "v": "plain"}])
    with pytest.raises(Conflict):
        prepare(engines, {0: {1: "t4"}}, snapshot=snap)
    commit(engines, {0: {7: "free"}}, snapshot=snap)
    assert rows(engines) == {1: "plain", 7: "free"}
    # a conflict found after the buffers were written out, in the range objects
    snap = engines[0].snapshot()
    engines[0].write("d", "t", [{"k": 1, "v": "flushed"}])
    engines[0].freeze()
    engines[0].flush()
    with pytest.raises(Conflict):
        prepare(engines, {0: {1: "t5"}}, snapshot=snap)
    assert len(engines[0]._state.intents) == 0
    assert rows(engines)[1] == "flushed"


def test_a_conflict_leaves_no_claim_behind(url):
    engines = _open(url)
    snap = engines[0].snapshot()
    engines[0].write("d", "t", [{"k": 1, "v": "a"}])
    with pytest.raises(Conflict):
        prepare(engines, {0: {1: "x", 2: "x"}}, snapshot=snap)
    commit(engines, {0: {2: "y"}}, snapshot=engines[0].snapshot())  # key 2 was not held
    assert rows(engines) == {1: "a", 2: "y"}


def test_a_decided_intent_whose_client_died_is_read_from_its_decision_soon(url):
    engines = _open(url, txn_wait_s=30.0)
    token, at = prepare(engines, {0: {1: "x"}, 1: {2: "y"}})
    decision.decide(engines[0].store, token, at, [0, 1])  # then the client dies: no resolve
    t0 = time.monotonic()
    assert rows(engines, at) == {1: "x", 2: "y"}
    assert time.monotonic() - t0 < 5  # read from the decision object, not after txn_wait_s
    # an undecided one is only looked at (not aborted) before txn_wait_s
    token, at = prepare(engines, {0: {3: "z"}})
    time.sleep(0.1)
    engines[0].maintain()
    assert len(engines[0]._state.intents) == 1
    decision.decide(engines[0].store, token, at, [0])
    time.sleep(0.06)
    engines[0].maintain()
    assert len(engines[0]._state.intents) == 0
    assert rows(engines)[3] == "z"


def test_a_buffer_of_aborted_intents_alone_writes_a_readable_range(url):
    # found by the txn trials: the abort took the buffer's count of commits to 0, the range
    # object recorded 0 commits, and every later read refused it as Corruption
    (e,) = _open(url, 1)
    e.freeze()
    e.flush()
    token, at = prepare([e], {0: {1: "x"}})
    decision.decide(e.store, token, decision.ABORTED, [0])
    e.resolve(token, decision.ABORTED)
    e.freeze()
    e.flush()
    assert list(e.scan("d", "t")) == []
    e.close()
    (e,) = _reopen(url, 1)
    assert list(e.scan("d", "t")) == []


def test_a_decision_that_exists_and_cannot_be_read_is_an_unknown_outcome():
    # found by the txn trials: a client settling its attempt found the commit decision there,
    # could not read it back, and reported a definite failure of a committed transaction
    from dn.errors import Unavailable
    from dn.store.faulty import FaultyStore
    from dn.store.memory import MemoryStore

    inner, token = MemoryStore("decided"), MINT.mint()
    decision.decide(inner, token, 5 << 16, [0])
    flaky = FaultyStore(inner)
    flaky.add_rule("get", "40/", kind="error")
    with pytest.raises(Unavailable) as err:
        decision.decide(flaky, token, decision.ABORTED, [0])
    assert err.value.outcome_unknown
