"""The live feed's shard call (``ShardService.feed_next``) and its client
(:mod:`coordinator.client.live`): a commit landing during a long poll wakes the call and is
returned once; a window never reaches above what every shard has resolved; a quiet shard with a
clock that does not move still lets the others' changes out. In-process cluster of three
shards (``tests/test_exactly_once.py``), no Ray.
"""

from __future__ import annotations

import threading
import time

import pytest

from coordinator.client.live import LiveFeed
from dn.read import cdc
from tests.test_exactly_once import Cluster


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.close()


@pytest.fixture
def frozen():
    c = Cluster(clock_ms=int(time.time() * 1000))  # a manual clock that never moves
    yield c
    c.close()


def _keys(view) -> list:
    return [k for run in view.tail for k in run.pks]


def _each_shard_once(feed: LiveFeed) -> list:
    """One call to each shard in turn, each answer taken; the pairs then emitted."""
    for i in list(feed.cursor):
        method, args = feed.call(i, 0.0)
        feed.take(i, feed.client.shards.call(i, method, *args))
    return feed.emit()


def test_a_commit_during_a_long_poll_wakes_it_and_is_returned_once(cluster):
    svc = cluster.services[0]
    cur = cluster.client.snapshot()  # the cursor: resolved now
    writer = threading.Timer(
        0.2, lambda: cluster.client.write("db", "t", [{"k": k, "v": "a"} for k in range(30)])
    )
    writer.start()
    t0 = time.monotonic()
    view, before, s = svc.feed_next("db", "t", cur + 1, 0, None, 1.0)
    took = time.monotonic() - t0
    writer.join()
    # without the waiting rule the call returns at once, before the write, with nothing
    mine = sorted(_keys(view))
    assert mine and 0.15 < took < 0.9  # woken by the commit, not by the 1 s timeout
    assert before is None or not before.tail  # keys new to the table: nothing before them
    # the next window starts above the first: the same commit is not returned again
    nxt = svc.feed_next("db", "t", s + 1)[0]
    assert nxt is None or not set(_keys(nxt)) & set(mine)


def test_a_long_poll_with_nothing_landing_waits_its_time_and_resolves(cluster):
    svc = cluster.services[1]
    cur = cluster.client.snapshot()
    t0 = time.monotonic()
    view, _, s = svc.feed_next("db", "t", cur + 1, 0, None, 0.2)
    assert time.monotonic() - t0 >= 0.19
    assert view is None or not _keys(view)
    assert svc.engine.clock() >= s  # resolved: later commits are stamped above s


def test_before_state_of_the_window_keys_only(cluster):
    c = cluster.client
    c.write("db", "t", [{"k": k, "v": "old"} for k in range(40)])
    svc = cluster.services[2]
    cur = cluster.client.snapshot()
    c.write("db", "t", [{"k": k, "v": "new"} for k in range(3)], [3, 4, 5])
    view, before, _ = svc.feed_next("db", "t", cur + 1)
    window = {*_keys(view), *(k for run in view.tail for k in run.del_pks)}
    assert window and before is not None
    assert {k for run in before.tail for k in run.pks} == window  # only the window's keys
    rows = cdc.rows_before(svc.engine._state.reader, before)(sorted(window))
    assert {r["v"] for r in rows.values()} == {"old"}  # at from_ts - 1


def test_no_window_is_emitted_above_a_shards_resolved_clock(frozen):
    c = frozen.client
    start = c.snapshot() + 1
    feed = LiveFeed(c, "db", "t", start, None)
    ts = c.write("db", "t", [{"k": 7, "v": "x"}])  # one row: one shard moves, two stay put
    out: list = []
    for _ in range(3):
        out += _each_shard_once(feed)
        w = feed.watermark
        # every emitted change is at or below what every shard has resolved
        assert all(p[0].ts <= w for p in out)
        assert all(s.engine.clock() >= w for s in frozen.services)
        feed._check()
    assert [(p[0].ts, p[0].pk, p[0].change_type) for p in out] == [(ts, 7, "insert")]
    # a commit after the emitted window is stamped above it, on every shard
    later = c.write("db", "t", [{"k": k, "v": "y"} for k in range(20)])
    assert later > feed.watermark


def test_changes_held_above_the_watermark_come_out_once_in_order(cluster):
    c = cluster.client
    start = c.snapshot() + 1
    feed = LiveFeed(c, "db", "t", start, None)
    seen: list = []
    for i in range(20):
        c.write(
            "db", "t", [{"k": (i * 7 + j) % 50, "v": f"{i}"} for j in range(5)], [(i * 7 + 5) % 50]
        )
        seen += _each_shard_once(feed)
    while feed.holding:
        seen += _each_shard_once(feed)
    got = [(p[0].ts, p[0].pk, p[0].change_type) for p in seen]
    want = [(ch.ts, ch.pk, ch.change_type) for ch in c.changes("db", "t", start)]
    assert got == want[: len(got)] and len(got) == len(want)


def test_a_shards_next_call_goes_out_without_waiting_for_the_other_shards(cluster, monkeypatch):
    """``subscribe`` calls each shard on its own: a shard's next call goes out as soon as
    its answer is in, while another shard has not answered yet, so a change waits for one
    call of each shard, not for rounds as long as their slowest call (issue 15's 4g). Staged:
    shard 1's first answer is held back until shard 0 has been called again; in rounds,
    shard 0 would wait for it and the test times out. What comes out is unchanged."""
    c = cluster.client
    start = c.snapshot() + 1
    c.write("db", "t", [{"k": k, "v": "a"} for k in range(30)])
    shards = c.shards
    real_start = shards.start
    calls: list[int] = []
    again = threading.Event()

    def start_call(i, method, args, done):
        calls.append(i)
        if i == 0 and calls.count(0) == 2:
            again.set()
        if i == 1 and calls.count(1) == 1:  # its answer comes once shard 0 was called again

            def late(out):
                threading.Thread(target=lambda: (again.wait(5), done(out))).start()

            real_start(i, method, args, late)
            return
        real_start(i, method, args, done)

    monkeypatch.setattr(shards, "start", start_call)
    got: list = []
    t0 = time.monotonic()
    for tbl in c.subscribe("db", "t", start, stop=lambda: len(got) >= 30):
        got.extend(tbl.column("k").to_pylist())
    assert again.is_set() and time.monotonic() - t0 < 4
    assert calls.index(1) < [j for j, i in enumerate(calls) if i == 0][1] < len(calls)
    assert sorted(got) == list(range(30))


def test_a_call_never_answered_is_made_again_after_the_call_timeout(cluster):
    """A shard's feed call whose answer never comes (a hung actor, a lost reply) is made
    again once the shards' ``call_timeout_s`` passes, as the shards' other calls are, and
    the feed goes on; without the timeout the feed waits forever for that shard."""
    c = cluster.client
    start = c.snapshot() + 1
    shards = c.shards
    real_start = shards.start
    dropped: list[int] = []

    def start_call(i, method, args, done):
        if i == 1 and not dropped:
            dropped.append(i)  # never answered
            return
        real_start(i, method, args, done)

    shards.start = start_call
    shards.call_timeout_s = 0.2
    try:
        ts = c.write("db", "t", [{"k": k, "v": "a"} for k in range(20)])
        seen: list = []
        t0 = time.monotonic()
        done = lambda: len(seen) >= 20 or time.monotonic() - t0 > 5  # noqa: E731
        seen += c.subscribe("db", "t", start, as_dicts=True, stop=done)
    finally:
        del shards.start, shards.call_timeout_s
    assert dropped == [1]
    assert sorted(ch.pk for ch in seen) == list(range(20))  # each once
    assert max(ch.ts for ch in seen) == ts
