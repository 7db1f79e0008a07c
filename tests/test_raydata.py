"""Ray Data: read_dn equals client.scan at the same snapshot, read_dn_changes equals
client.changes_arrow, and DNDatasink writes exactly the dataset's rows once, also when a write
task is killed mid-way and Ray runs it again (issue 15, item 3).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
import ray.data

import coordinator
from coordinator.client import queries
from coordinator.client.raydata import DNDatasink
from coordinator.client.raytails import Replan, with_tails
from dn.errors import DNError, InvalidArgument, Unavailable

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEMA = {"k": "int64", "v": "string", "w": "float64"}


def test_read_dn_equals_the_clients_scan_and_feed(cluster):
    c = cluster
    c.create_database("rd")
    c.create_table("rd", "t", SCHEMA, "k")
    first = c.write("rd", "t", [{"k": k, "v": f"v{k}", "w": k / 2} for k in range(500)])
    again = [{"k": k, "v": "again", "w": None} for k in range(0, 500, 7)]
    c.write("rd", "t", again, range(1, 60, 7))
    snap = c.snapshot()
    c.write("rd", "t", [{"k": 10_000, "v": "after", "w": 1.0}])  # not at snap
    ds = coordinator.read_dn("rd", "t", snapshot=snap, namespace=c.namespace)
    got = sorted(ds.take_all(), key=lambda r: r["k"])
    assert got == list(c.scan("rd", "t", snapshot=snap))
    cols = coordinator.read_dn("rd", "t", snap, columns=["v"], namespace=c.namespace)
    assert cols.schema().names == ["v"] and cols.count() == len(got)
    feed = coordinator.read_dn_changes("rd", "t", first + 1, snap, namespace=c.namespace)
    rows = sorted(feed.take_all(), key=lambda r: (r["_commit_ts"], r["k"]))
    want = c.changes_arrow("rd", "t", first + 1, snapshot=snap).to_pylist()
    assert rows == want and {r["_change_type"] for r in rows} == {"update_postimage", "delete"}
    # one read task per shard, its output in blocks of at most the target block size
    ctx = ray.data.DataContext.get_current()
    saved, ctx.target_max_block_size = ctx.target_max_block_size, 2_000
    try:
        small = coordinator.read_dn("rd", "t", snapshot=snap, namespace=c.namespace).materialize()
    finally:
        ctx.target_max_block_size = saved
    shards = len(c.status()["shards"])
    assert small.num_blocks() > shards
    assert sorted(small.take_all(), key=lambda r: r["k"]) == got
    whole = coordinator.read_dn("rd", "t", snapshot=snap, namespace=c.namespace).materialize()
    assert whole.num_blocks() == shards  # not split by Ray Data into many small blocks


def test_read_dn_leaves_each_tail_in_the_object_store_and_reads_it_while_its_shard_restarts(
    cluster,
):
    """The driver holds only a reference to each shard's Arrow tail (the tail is not fetched
    and pickled into the read tasks), for read_dn and read_dn_changes; the reference is the
    driver's, so datasets made before a shard is SIGKILLed still read while it restarts."""
    c = cluster
    c.create_database("tails")
    c.create_table("tails", "t", SCHEMA, "k")
    c.write("tails", "t", [{"k": k, "v": f"v{k}", "w": k / 4} for k in range(1_000)])
    first = c.snapshot() + 1  # the feed's: inserts, updates and deletes of rows in memory
    c.write("tails", "t", [{"k": k, "v": f"v{k}", "w": k / 4} for k in range(500, 2_000)])
    c.write("tails", "t", [], range(0, 2_000, 9))  # deletes in the tails too
    views = queries.views(c, "tails", "t", None, arrow=True, by_ref=True)
    assert all(isinstance(v.arrow_tail, ray.ObjectRef) for v in views.values())
    with pytest.raises(InvalidArgument, match="read_view or feed_views"):
        c.shards.call(0, "split_views", "status")  # splits views only
    snap = views[0].snapshot
    by_value = queries.views(c, "tails", "t", snap, arrow=True)
    for i, v in views.items():
        fetched = with_tails(i, v, None, Replan(c.namespace, c.map_version))[0].arrow_tail
        assert fetched is not None and len(fetched) == len(by_value[i].arrow_tail)
        for (rows, dels, ordered), (rows2, dels2, ordered2) in zip(
            fetched, by_value[i].arrow_tail, strict=True
        ):
            assert rows.equals(rows2) and ordered == ordered2
            assert (dels is None and dels2 is None) or dels.equals(dels2)
    feed_views, _ = queries.feed_views(c, "tails", "t", first, snap, None, True, by_ref=True)
    assert all(isinstance(v.arrow_tail, ray.ObjectRef) for v in feed_views.values())
    want = list(c.scan("tails", "t", snapshot=snap))
    want_feed = c.changes_arrow("tails", "t", first, snapshot=snap).to_pylist()
    assert {r["_change_type"] for r in want_feed} == {"insert", "update_postimage", "delete"}
    ds = coordinator.read_dn("tails", "t", snapshot=snap, namespace=c.namespace)
    feed = coordinator.read_dn_changes("tails", "t", first, snap, namespace=c.namespace)
    pid = c.shards.call(0, "pid")
    os.kill(pid, signal.SIGKILL)
    assert sorted(ds.take_all(), key=lambda r: r["k"]) == want
    assert sorted(feed.take_all(), key=lambda r: (r["_commit_ts"], r["k"])) == want_feed
    deadline = time.time() + 60
    while True:  # leave the shard up for the next test
        try:
            if c.shards.call(0, "pid", retry_s=5) != pid:
                break
        except DNError:
            pass
        assert time.time() < deadline, "shard 0 did not restart"
        time.sleep(0.2)


@ray.remote(num_cpus=0)
class _Owner:
    """Puts an object and owns it: once the actor is killed, the object is lost."""

    def put(self) -> list:
        return [ray.put(b"gone" * 100_000)]  # in the object store, not inlined


def _lost_ref() -> ray.ObjectRef:
    """A reference whose object is lost (its owner died), as a tail lost with its node."""
    owner = _Owner.remote()
    [ref] = ray.get(owner.put.remote())
    ray.kill(owner)
    deadline = time.time() + 60
    while True:  # the borrowers hear of the owner's death a moment later
        try:
            ray.get(ref, timeout=30)
        except ray.exceptions.ObjectLostError:
            return ref
        assert time.time() < deadline, "the object outlived its owner"
        time.sleep(0.5)


def test_a_read_task_whose_tail_was_lost_reads_its_shards_view_again(cluster, monkeypatch):
    """A tail lost between the making of a dataset and its read (its node lost): the read
    task asks its shard for its view again at the same snapshot, by value, and reads the same
    rows, though the shard wrote its buffer out meanwhile (another plan); the same for the
    change feed. What the shard cannot read again is Unavailable, the reason named."""
    c = cluster
    c.create_database("lost")
    c.create_table("lost", "t", SCHEMA, "k")
    c.write("lost", "t", [{"k": k, "v": "x", "w": 1.0} for k in range(300)])
    first = c.snapshot() + 1
    c.write("lost", "t", [{"k": k, "v": "y", "w": None} for k in range(200, 400)], range(0, 50))
    snap = c.snapshot()
    want = list(c.scan("lost", "t", snapshot=snap))
    want_feed = c.changes_arrow("lost", "t", first, snapshot=snap).to_pylist()
    gone = _lost_ref()
    views, feed_views = queries.views, queries.feed_views

    def lost_views(*a, **kw):
        return {i: replace(v, arrow_tail=gone) for i, v in views(*a, **kw).items()}

    def lost_feed_views(*a, **kw):
        got, before = feed_views(*a, **kw)
        return {i: replace(v, arrow_tail=gone) for i, v in got.items()}, before

    monkeypatch.setattr(queries, "views", lost_views)
    monkeypatch.setattr(queries, "feed_views", lost_feed_views)
    ds = coordinator.read_dn("lost", "t", snapshot=snap, namespace=c.namespace)
    feed = coordinator.read_dn_changes("lost", "t", first, snap, namespace=c.namespace)
    c.write("lost", "t", [{"k": k, "v": "later", "w": 2.0} for k in range(500)])  # not at snap
    shards = len(c.status()["shards"])
    for i in range(shards):
        c.shards.call(i, "flush")  # the rows at snap now in range objects: another plan
    assert sorted(ds.take_all(), key=lambda r: r["k"]) == want
    assert sorted(feed.take_all(), key=lambda r: (r["_commit_ts"], r["k"])) == want_feed
    # nothing to read again by: a projection the shard refuses stands for any refusal
    view = replace(views(c, "lost", "t", snap, arrow=True)[0], arrow_tail=gone)
    with pytest.raises(Unavailable, match="could not read them again"):
        with_tails(0, view, None, Replan(c.namespace, c.map_version, ["nope"]))


def _dataset(n: int):
    """Rows k = 0 .. n-1 (int64 ``k``, string ``v``, float64 ``w``) in 4 blocks."""
    return ray.data.range(n, override_num_blocks=4).map_batches(
        lambda b: {"k": b["id"], "v": [f"r{i}" for i in b["id"]], "w": b["id"] * 0.5},
        batch_format="numpy",
    )


class _KilledOnce(DNDatasink):
    """A sink whose task 0 dies (the process exits) after its first slice, once."""

    def __init__(self, *args, flag: str, **kw) -> None:
        super().__init__(*args, **kw)
        self.flag = flag

    def write(self, blocks, ctx):
        import coordinator.client.raydata as sinks

        if int(getattr(ctx, "task_idx", 0)) == 0 and not Path(self.flag).exists():
            Path(self.flag).write_text("died")
            real, written = sinks.write_batch, []

            def dying(*args):
                if written:  # one slice is durable: die before the next
                    os._exit(1)
                written.append(real(*args))

            sinks.write_batch = dying
        return super().write(blocks, ctx)


def test_dn_datasink_writes_every_row_once_also_after_a_killed_task(cluster, tmp_path):
    c = cluster
    c.create_database("sink")
    c.create_table("sink", "t", SCHEMA, "k")
    before = c.snapshot()
    dups = _duplicates(c)
    n = 20_000
    ds = _dataset(n)
    sink = _KilledOnce(
        "sink", "t", namespace=c.namespace, slice_rows=1000, flag=str(tmp_path / "died")
    )
    ds.write_datasink(sink)
    assert (tmp_path / "died").exists()
    changes = list(c.changes("sink", "t", from_ts=before))
    assert len(changes) == n  # every row once: the retried task's resent parts were not applied
    assert sorted(ch.pk for ch in changes) == list(range(n))
    assert {ch.change_type for ch in changes} == {"insert"}
    assert _duplicates(c) > dups  # the retry did send the dead attempt's parts again
    store = c.reader_pool().store
    assert store.list("50/sink/") == []  # the first-attempt markers are gone


def _duplicates(client) -> int:
    shards = client.status()["shards"].values()
    return sum(s["counters"]["duplicate_parts"] for s in shards)


class _KilledAtomicOnce(DNDatasink):
    """An atomic sink whose task 0 dies after putting its first block's parts, once."""

    def __init__(self, *args, flag: str, **kw) -> None:
        super().__init__(*args, atomic=True, **kw)
        self.flag = flag

    def _put_parts(self, tc, lim, task, blocks):
        if task == 0 and not Path(self.flag).exists():
            Path(self.flag).write_text("died")
            blocks = iter(blocks)
            super()._put_parts(tc, lim, task, [next(blocks)])
            os._exit(1)
        return super()._put_parts(tc, lim, task, blocks)


def test_an_atomic_dn_datasink_commits_the_dataset_at_one_timestamp_after_a_killed_task(
    cluster, tmp_path
):
    c = cluster
    c.create_database("asink")
    c.create_table("asink", "t", SCHEMA, "k")
    before = c.snapshot()
    n = 20_000
    ds = _dataset(n)
    sink = _KilledAtomicOnce(
        "asink", "t", namespace=c.namespace, slice_rows=1000, flag=str(tmp_path / "died")
    )
    ds.write_datasink(sink)
    assert (tmp_path / "died").exists()
    changes = list(c.changes("asink", "t", from_ts=before))
    assert sorted(ch.pk for ch in changes) == list(range(n))  # every row, once
    assert {ch.ts for ch in changes} == {sink.commit_ts} and sink.rows == n
    assert list(c.scan("asink", "t", snapshot=sink.commit_ts - 1)) == []
    assert c.reader_pool().store.list("50/sink/") == []  # the staged parts are gone


def test_an_atomic_dn_datasink_with_a_key_twice_commits_nothing(cluster):
    c = cluster
    c.create_database("asink2")
    c.create_table("asink2", "t", SCHEMA, "k")
    before = c.snapshot()
    ds = ray.data.range(2_000, override_num_blocks=2).map_batches(
        lambda b: {"k": b["id"] % 1500, "v": ["x"] * len(b["id"]), "w": b["id"] * 1.0},
        batch_format="numpy",
    )
    with pytest.raises(Exception, match="twice"):
        ds.write_datasink(DNDatasink("asink2", "t", namespace=c.namespace, atomic=True))
    assert list(c.changes("asink2", "t", from_ts=before)) == []
    assert c.reader_pool().store.list("50/sink/") == []
