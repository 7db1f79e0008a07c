"""Atomic batches and snapshot-isolation transactions through the client (decision 0015).

The whole client runs in-process over three :class:`ShardService` shards (the cluster of
``tests/test_exactly_once.py``: every call's arguments, results and errors pickled, as Ray
would). No Ray.
"""

from __future__ import annotations

import pickle
import random
import threading
import time

import pytest

from coordinator.actor.committer import PREPARE_MANY
from coordinator.client.routing import shard_of
from dn.clock import LOGICAL_BITS
from dn.errors import Conflict, DNError, Unavailable
from dn.objects import decision
from tests.test_exactly_once import SHARDS, Cluster


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.close()


def _spread(n: int) -> list[int]:
    """``n`` keys covering every shard."""
    keys, k = [], 0
    while len({shard_of(x, SHARDS) for x in keys}) < SHARDS or len(keys) < n:
        keys.append(k)
        k += 1
    return keys


def test_an_atomic_batch_commits_every_shards_part_at_one_timestamp(cluster):
    c = cluster.client
    before = c.snapshot()
    keys = _spread(12)
    ts = c.write("db", "t", [{"k": k, "v": f"a{k}"} for k in keys], atomic=True)
    assert {t for t, *_ in cluster.feed(before)} == {ts}
    assert sorted(pk for _, pk, *_ in cluster.feed(before)) == keys
    assert list(c.scan("db", "t", snapshot=ts - 1)) == []
    assert len(list(c.scan("db", "t", snapshot=ts))) == len(keys)
    ts2 = c.write_columns("db", "t", {"k": keys[:4], "v": ["b"] * 4}, keys[4:6], atomic=True)
    assert {t for t, *_ in cluster.feed(ts + 1)} == {ts2}
    assert c.get("db", "t", keys[5]) is None and c.get("db", "t", keys[0])["v"] == "b"


def test_a_lost_prepare_response_is_resent_and_applied_once(cluster):
    c, group = cluster.client, cluster.group
    lost = set()
    submit = group._submit

    def lossy(i, method, args):
        out = submit(i, method, args)
        if method == PREPARE_MANY and i not in lost:
            lost.add(i)
            from dn.errors import Unavailable

            return Unavailable("lost", outcome_unknown=True)
        return out

    group._submit = lossy
    before = c.snapshot()
    ts = c.write("db", "t", [{"k": k, "v": "x"} for k in _spread(9)], atomic=True)
    assert len(lost) == SHARDS
    feed = cluster.feed(before)
    assert {t for t, *_ in feed} == {ts} and len(feed) == len(_spread(9))
    assert cluster.counter("txn_prepared") == SHARDS
    assert cluster.counter("duplicate_parts") == SHARDS


def test_a_shard_clock_ahead_makes_the_client_prepare_again_later(cluster):
    c = cluster.client
    before = c.snapshot()
    ahead = ((time.time_ns() // 1_000_000 + 200) << LOGICAL_BITS) + 7
    cluster.services[1].advance_floor(ahead)
    ts = c.write("db", "t", [{"k": k, "v": "x"} for k in _spread(6)], atomic=True)
    assert ts > ahead
    assert cluster.counter("txn_aborted") >= 1  # the first attempt's intents, rolled back
    assert {t for t, *_ in cluster.feed(before)} == {ts}


def test_a_transaction_reads_its_snapshot_and_its_own_writes(cluster):
    c = cluster.client
    c.write("db", "t", [{"k": 1, "v": "one"}, {"k": 2, "v": "two"}, {"k": 3, "v": "three"}])
    with c.transaction() as tx:
        snap = tx.snapshot
        c.write("db", "t", [{"k": 9, "v": "not seen"}])  # after the snapshot
        tx.write("db", "t", [{"k": 4, "v": "four"}], deletes=[2])
        tx.write_columns("db", "t", {"k": [1], "v": ["uno"]})
        assert tx.get("db", "t", 2) is None
        assert tx.get("db", "t", 1) == {"k": 1, "v": "uno"}
        assert tx.get("db", "t", 9) is None
        got = [(r["k"], r["v"]) for r in tx.scan("db", "t")]
        assert got == [(1, "uno"), (3, "three"), (4, "four")]
        assert [r["k"] for r in tx.scan("db", "t", columns=["k"], start=2, end=4)] == [3]
    assert tx.state == "committed" and tx.commit_ts > snap
    rows = {r["k"]: r["v"] for r in c.scan("db", "t")}
    assert rows == {1: "uno", 3: "three", 4: "four", 9: "not seen"}


def test_a_write_write_conflict_raises_and_applies_nothing(cluster):
    c = cluster.client
    c.write("db", "t", [{"k": 1, "v": "a"}])
    t1, t2 = c.transaction(), c.transaction()
    t1.write("db", "t", [{"k": 1, "v": "t1"}, {"k": 2, "v": "t1"}])
    t2.write("db", "t", [{"k": 1, "v": "t2"}, {"k": 5, "v": "t2"}])
    t1.commit()
    with pytest.raises(Conflict) as err:
        t2.commit()
    assert err.value.retryable
    assert t2.state == "aborted"
    assert c.get("db", "t", 5) is None and c.get("db", "t", 1)["v"] == "t1"
    with pytest.raises(DNError):
        t2.commit()


def test_an_exception_in_the_block_aborts(cluster):
    c = cluster.client
    with pytest.raises(RuntimeError), c.transaction() as tx:
        tx.write("db", "t", [{"k": 1, "v": "x"}])
        raise RuntimeError("boom")
    assert tx.state == "aborted"
    assert c.get("db", "t", 1) is None


def test_a_transaction_pickles_and_commits_from_the_copy(cluster):
    c = cluster.client
    tx = c.transaction()
    tx.write("db", "t", [{"k": 7, "v": "seven"}])
    copy = pickle.loads(pickle.dumps(tx))
    # the copy's client is a new one: give it this in-process cluster's calls
    copy._client = c
    ts = copy.commit()
    assert c.get("db", "t", 7, snapshot=ts) == {"k": 7, "v": "seven"}


def test_an_abandoned_transaction_is_rolled_back_by_the_next_reader(cluster):
    c = cluster.client
    snap = c.snapshot()
    ctx = c.txn_context()
    token = ctx.minter.mint()
    at = max(s.engine.clock() for s in cluster.services) + (5 << LOGICAL_BITS)
    parts = {}
    routed = ctx.tables.get("db", "t")
    from coordinator.client.routing import split, validate_batch

    for s, share in split(
        validate_batch(routed.table, [{"k": k, "v": "lost"} for k in _spread(6)], [], 1 << 20, 100),
        SHARDS,
    ).items():
        parts[s] = ("prepare", (token, at, None, [routed.part(s, share, 0).to_call()]))
    assert all(isinstance(r, int) for r in cluster.group.call_each(parts).values())
    # the client is gone: a reader waits txn_wait_s, then decides the abort
    t0 = time.monotonic()
    assert list(c.scan("db", "t")) == []
    assert time.monotonic() - t0 >= 1.5
    assert cluster.counter("txn_aborted") == SHARDS
    assert cluster.feed(snap) == []


def test_bank_transfers_keep_the_total_in_every_snapshot(cluster):
    c = cluster.client
    accounts = _spread(8)
    c.write("db", "t", [{"k": a, "v": "100"} for a in accounts])
    start = c.snapshot()
    stats = {"committed": 0, "conflicts": 0}
    lock = threading.Lock()

    def transfers(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(25):
            a, b = rng.sample(accounts, 2)
            try:
                with c.transaction() as tx:
                    va = int(tx.get("db", "t", a)["v"])
                    vb = int(tx.get("db", "t", b)["v"])
                    amount = rng.randint(1, 20)
                    tx.write("db", "t", [{"k": a, "v": str(va - amount)}])
                    tx.write("db", "t", [{"k": b, "v": str(vb + amount)}])
                with lock:
                    stats["committed"] += 1
            except Conflict:
                with lock:
                    stats["conflicts"] += 1

    threads = [threading.Thread(target=transfers, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats["committed"] > 0
    # every commit timestamp in the feed is a snapshot: the total holds at each
    stamps = sorted({ts for ts, *_ in cluster.feed(start)})
    assert 0 < len(stamps) <= stats["committed"]  # two commits may share a timestamp
    for s in [start, *stamps]:
        assert sum(int(r["v"]) for r in c.scan("db", "t", snapshot=s)) == 100 * len(accounts)


def test_concurrent_commits_share_batches_and_get_ascending_timestamps(cluster):
    c = cluster.client
    keys = _spread(12)
    stamps: list[int] = []
    lock = threading.Lock()

    def commit(i: int) -> None:
        for j in range(5):
            ts = c.write("db", "t", [{"k": k, "v": f"{i}.{j}"} for k in keys[i::4]], atomic=True)
            with lock:
                stamps.append(ts)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committer = cluster.coordinator._committer
    assert len(set(stamps)) == len(stamps) == 20 == committer.commits
    assert committer.batches <= committer.commits


def test_a_committer_lost_after_its_decision_is_settled_by_the_client(cluster, monkeypatch):
    c = cluster.client
    service = cluster.coordinator
    real = service.commit

    def lost(*args):
        real(*args)  # committed; then the answer is lost
        raise Unavailable("the coordinator died", outcome_unknown=True)

    monkeypatch.setattr(service, "commit", lost)
    before = c.snapshot()
    ts = c.write("db", "t", [{"k": k, "v": "once"} for k in _spread(6)], atomic=True)
    feed = cluster.feed(before)
    assert {t for t, *_ in feed} == {ts} and len(feed) == len(_spread(6))


def test_a_committer_dying_before_its_decision_is_aborted_and_sent_again(cluster, monkeypatch):
    c = cluster.client
    real = decision.decide_group
    died = []

    def dies_once(store, group, outcomes, shards):
        if threading.current_thread().name.startswith("dn-decide") and not died:
            died.append(group)
            raise RuntimeError("the coordinator process died here")
        return real(store, group, outcomes, shards)

    monkeypatch.setattr(decision, "decide_group", dies_once)
    before = c.snapshot()
    ts = c.write("db", "t", [{"k": k, "v": "again"} for k in _spread(6)], atomic=True)
    store = cluster.client.txn_context().store
    assert died and decision.decide(store, died[0], 1, []) == decision.ABORTED
    feed = cluster.feed(before)  # the first attempt's intents: read, found aborted, gone
    assert {t for t, *_ in feed} == {ts} and len(feed) == len(_spread(6))


def test_decisions_are_collected_once_old_and_written_out_everywhere(cluster, monkeypatch):
    c = cluster.client
    keys = _spread(6)
    committed = c.write("db", "t", [{"k": k, "v": "a"} for k in keys], atomic=True)
    store = c.txn_context().store
    aborted_token = c.txn_context().minter.mint()
    decision.decide(store, aborted_token, decision.ABORTED, [0])
    assert len(store.list(decision.PREFIX)) == 2
    service = cluster.coordinator
    assert service.collect_decisions() == 0  # both too young
    window = service.config.engine.token_window_s
    later = time.time() + window + 5
    monkeypatch.setattr(time, "time", lambda: later)
    assert service.collect_decisions() == 1  # the abort; the commit is still in the logs
    assert decision.lookup(store, aborted_token) is None
    for s in cluster.services:
        s.flush()
    assert min(s.flushed_through() for s in cluster.services) >= committed
    assert service.collect_decisions() == 1
    assert store.list(decision.PREFIX) == []
    for s in cluster.services:  # a restart replays no intent: the rows stand without it
        cluster.restart(cluster.services.index(s))
    assert len(list(c.scan("db", "t"))) == len(keys)


def test_the_commit_clock_does_not_ratchet_ahead_of_the_wall_clock(cluster):
    # found by the clocks and txn trials: each restart's ceiling made the committer learn an
    # offset it kept, until commits were aimed a minute ahead and refused as FutureSnapshot
    c = cluster.client
    for i in range(12):
        cluster.restart(i % SHARDS)
        c.write("db", "t", [{"k": k, "v": str(i)} for k in _spread(4)], atomic=True)
    clock = cluster.coordinator._committer.clock
    ahead_ms = (clock.pick(0) >> LOGICAL_BITS) - time.time_ns() // 1_000_000
    assert ahead_ms < 3_000  # a restart's ceiling reaches at most timestamp_lease_s ahead


def test_a_write_after_a_timestamp_equal_to_an_unissued_shard_clock_lands_above_it():
    # found when transactions stopped raising every shard's floor at their start: a write
    # whose causality token equalled a shard's clock reading (a wall-clock millisecond no
    # commit had taken yet) was stamped at exactly that token, inside the snapshot it follows
    import uuid

    from dn.clock import ManualClock
    from shards.shard import ShardService

    url = f"memory://after-{uuid.uuid4().hex[:8]}"
    shard = ShardService(url, 0, {"background": False}, clock=ManualClock(ms=1_000))
    shard.ddl("create_database", ["d"])
    shard.ddl("create_table", ["d", "t", {"k": "int64"}, "k"])
    shard.engine.write("d", "t", [{"k": 0}])
    shard._clock.ms = 2_000  # the wall clock moves on; no commit takes its millisecond yet
    seen = shard.clock()
    assert seen == 2_000 << LOGICAL_BITS
    assert shard.write("d", "t", [{"k": 1}], after=seen) > seen
    shard.close()


def _grouped(cluster, monkeypatch, n: int, fns: list) -> tuple[list, list]:
    """Run ``fns`` (each a commit) on threads of one client while the first commit's call to
    the coordinator is held until the other ``n - 1`` are queued behind it: they must go in
    one ``commit_many``. Returns (each fn's result or error, the coordinator calls made)."""
    group, service = cluster.client._commits, cluster.coordinator
    calls: list[str] = []
    for name in ("commit", "commit_many"):
        real = getattr(service, name)

        def held(*args, _real=real, _name=name):
            calls.append(_name)
            deadline = time.monotonic() + 10
            while _name == "commit" and len(calls) == 1 and len(group._queue) < n - 1:
                assert time.monotonic() < deadline, "the commits did not queue"
                time.sleep(0.005)
            return _real(*args)

        monkeypatch.setattr(service, name, held)
    out: list = [None] * len(fns)

    def run(i: int) -> None:
        try:
            out[i] = fns[i]()
        except DNError as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    threads[0].start()
    while not calls:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    return out, calls


def _four_in_a_group(cluster, monkeypatch, tag: str) -> None:
    """Four atomic writes of disjoint keys from one process (the first sent alone, three in one
    ``commit_many``); checks each is in the feed once, whole, at its own timestamp."""
    c = cluster.client
    keys = _spread(4 * SHARDS)
    before = c.snapshot()

    def commit(i: int):
        rows = [{"k": k, "v": f"{tag}{i}"} for k in keys[i::4]]
        return lambda: c.write("db", "t", rows, atomic=True)

    out, _ = _grouped(cluster, monkeypatch, 4, [commit(i) for i in range(4)])
    assert all(type(ts) is int for ts in out), out
    feed = cluster.feed(before)
    assert sorted(pk for _, pk, *_ in feed) == sorted(keys)  # each once
    for i, ts in enumerate(out):
        assert {(t, v) for t, pk, _, v in feed if pk in keys[i::4]} == {(ts, f"{tag}{i}")}


def test_a_process_s_concurrent_commits_share_one_coordinator_call(cluster, monkeypatch):
    c = cluster.client
    keys = _spread(8 * SHARDS)
    before = c.snapshot()

    def commit(i: int):
        return lambda: c.write("db", "t", [{"k": k, "v": f"g{i}"} for k in keys[i::8]], atomic=True)

    store = c.txn_context().store
    decided = set(store.list(decision.PREFIX))
    out, calls = _grouped(cluster, monkeypatch, 8, [commit(i) for i in range(8)])
    assert calls == ["commit", "commit_many"]  # the first alone, the 7 queued behind it in one
    assert all(type(ts) is int for ts in out) and len(set(out)) == 8
    assert len(set(store.list(decision.PREFIX)) - decided) == 2  # one decision per call
    feed = cluster.feed(before)
    assert sorted(pk for _, pk, *_ in feed) == sorted(keys)  # every row once
    for i, ts in enumerate(out):
        assert {(t, v) for t, pk, _, v in feed if pk in keys[i::8]} == {(ts, f"g{i}")}


def test_each_commit_of_a_group_gets_its_own_answer(cluster, monkeypatch):
    c = cluster.client
    keys = _spread(3 * SHARDS)
    conflicted = c.transaction()
    conflicted.get("db", "t", keys[0])
    c.write("db", "t", [{"k": keys[0], "v": "first"}])  # after its snapshot: it must conflict
    conflicted.write("db", "t", [{"k": keys[0], "v": "lost"}])
    fns = [
        lambda: c.write("db", "t", [{"k": k, "v": "a"} for k in keys[1::3]], atomic=True),
        conflicted.commit,
        lambda: c.write("db", "t", [{"k": k, "v": "b"} for k in keys[2::3]], atomic=True),
    ]
    out, calls = _grouped(cluster, monkeypatch, 2, fns)
    assert calls == ["commit", "commit_many"]
    assert type(out[0]) is int and type(out[2]) is int and isinstance(out[1], Conflict)
    assert c.get("db", "t", keys[0])["v"] == "first"
    assert [c.get("db", "t", k)["v"] for k in keys[2::3]] == ["b"] * len(keys[2::3])


def test_a_lost_answer_to_a_group_is_settled_by_each_transaction(cluster, monkeypatch):
    service = cluster.coordinator
    real = service.commit_many
    lost = []

    def answer_lost(items, group=None):
        real(items, group)  # committed; then the answer is lost
        lost.append(len(items))
        raise Unavailable("the coordinator died", outcome_unknown=True)

    monkeypatch.setattr(service, "commit_many", answer_lost)
    _four_in_a_group(cluster, monkeypatch, "l")  # each found its own commit decision
    assert lost == [3]


def test_a_group_whose_committer_dies_before_deciding_is_aborted_and_sent_again(
    cluster, monkeypatch
):
    real = decision.decide_group
    died: list[bytes] = []

    def dies_once(store, group, outcomes, shards):
        if len(outcomes) > 1 and not died:
            died.append(group)
            raise RuntimeError("the coordinator process died here")
        return real(store, group, outcomes, shards)

    monkeypatch.setattr(decision, "decide_group", dies_once)
    _four_in_a_group(cluster, monkeypatch, "d")  # settled, then sent again
    store = cluster.client.txn_context().store
    assert died and decision.lookup(store, died[0]) == decision.ABORTED  # by its settler


def test_a_group_aborted_by_a_reader_is_sent_again_and_commits_once(cluster, monkeypatch):
    # one stalled intent's reader aborts its whole client group; the others' transactions are
    # not conflicts: their clients settle and send them again
    real = decision.decide_group
    aborted: list[bytes] = []

    def reader_first(store, group, outcomes, shards):
        if len(outcomes) > 1 and not aborted:
            aborted.append(group)
            decision.decide(store, next(iter(outcomes)), decision.ABORTED, [0], group)
        return real(store, group, outcomes, shards)

    monkeypatch.setattr(decision, "decide_group", reader_first)
    _four_in_a_group(cluster, monkeypatch, "r")
    assert aborted


def test_a_group_call_whose_answer_cannot_be_read_settles_at_the_groups_key():
    from coordinator.client.commits import CommitGroup, _Pending
    from dn.write.tokens import TokenMinter, is_token

    class Garbled:  # the coordinator answers a group with the wrong number of answers
        def call(self, method, *args):
            return [] if method == "commit_many" else 1

    group = CommitGroup(Garbled(), TokenMinter())
    batch = [_Pending((bytes([i]) * 32, 0, None, {0: []})) for i in range(3)]
    outs = group._call(batch)
    errors = [o for o in outs if isinstance(o, Unavailable)]
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3  # one each, not shared
    assert all(e.details.get("outcome_unknown") for e in errors)
    keys = {e.details["group"] for e in errors}
    assert len(keys) == 1 and is_token(keys.pop())  # a key of its own, minted for the call
    assert not any(e.details["group"] == p.args[0] for e, p in zip(errors, batch, strict=True))


# -- staged parts: an atomic dataset write (DNDatasink(atomic=True)) ------------------------


def _staged_dataset(cluster, rows: list[dict], slice_rows: int = 40) -> dict:
    """``rows`` put in the store as write parts, as an atomic sink's write tasks put them."""
    import pyarrow as pa

    from coordinator.client.raydata import put_parts
    from coordinator.client.writes import Limits

    c = cluster.client
    tc, lim = c.txn_context(), Limits.from_info(c.info)
    blocks = [pa.Table.from_pylist(rows[i : i + 100]) for i in range(0, len(rows), 100)]
    return put_parts(tc, lim, "50/sink/test/parts/0000000000/", blocks, "db", "t", slice_rows)


def test_staged_parts_commit_at_one_timestamp_after_a_restart_between_stage_and_commit(
    cluster, monkeypatch
):
    from coordinator.client.raydata import commit_staged

    c = cluster.client
    rows = [{"k": k, "v": f"s{k}"} for k in range(300)]
    staged = _staged_dataset(cluster, rows)
    assert staged["rows"] == 300 and len(staged["staged"]) == SHARDS
    before = c.snapshot()
    stage = cluster.services[0].stage
    restarted = []

    def stage_then_restart(*args):  # the first stage is lost: the shard restarts after it
        out = stage(*args)
        if not restarted:
            restarted.append(True)
            cluster.restart(0)
        return out

    monkeypatch.setattr(cluster.services[0], "stage", stage_then_restart)
    ts = commit_staged(c, b"sink-key", staged["staged"], "db", "t")
    assert restarted
    feed = cluster.feed(before)
    assert {t for t, *_ in feed} == {ts} and sorted(pk for _, pk, *_ in feed) == list(range(300))
    assert list(c.scan("db", "t", snapshot=ts - 1)) == []
    assert all(len(s.staging) == 0 for s in cluster.services)  # unstaged everywhere


def test_a_staged_dataset_naming_a_key_twice_commits_nothing(cluster):
    from coordinator.client.raydata import commit_staged
    from dn.errors import InvalidArgument

    c = cluster.client
    rows = [{"k": k % 150, "v": "dup"} for k in range(300)]  # every key twice, in two slices
    staged = _staged_dataset(cluster, rows)
    before = c.snapshot()
    with pytest.raises(InvalidArgument, match="twice"):
        commit_staged(c, b"sink-dup", staged["staged"], "db", "t")
    assert cluster.feed(before) == []
    assert all(len(s.staging) == 0 for s in cluster.services)


def test_a_prepare_naming_parts_never_staged_is_refused_and_writes_nothing(cluster):
    from coordinator.client.txn import commit_calls

    c = cluster.client
    before = c.snapshot()
    with pytest.raises(Unavailable, match="stage them again"):
        commit_calls(c.txn_context(), lambda stale: {0: [("staged", b"never")]})
    assert cluster.feed(before) == []


def test_staging_the_same_parts_again_reads_nothing(cluster, monkeypatch):
    staged = _staged_dataset(cluster, [{"k": k, "v": "s"} for k in range(120)])
    svc = cluster.services[0]
    objects = staged["staged"][0]
    store = svc.engine.store
    reads = []
    real = store.get
    monkeypatch.setattr(store, "get", lambda k: reads.append(k) or real(k))
    n = svc.stage(b"again", objects)
    assert n > 0 and len(reads) == len(objects)
    assert svc.stage(b"again", objects) == n and len(reads) == len(objects)  # held already
    svc.unstage(b"again")
    assert svc.stage(b"again", objects) == n and len(reads) == 2 * len(objects)
