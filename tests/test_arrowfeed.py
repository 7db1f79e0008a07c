"""The Arrow change feed (dn/read/arrowfeed.py) equals the feed classified through Python
values (dn/read/cdc.py), which the model tests of tests/test_arrow.py check: same rows, order,
types, change types and pre-images, for each key type of the Arrow path, over range objects and
in-memory tails together, windows starting anywhere, projections with and without the key, and
with and without before images. On one engine and through the in-process cluster client.
"""

from __future__ import annotations

import random
import uuid

import pyarrow as pa
import pytest

from dn import Engine, Settings
from dn.read import arrowfeed, cdc
from dn.read.view import before_view
from tests.test_exactly_once import Cluster

KEYS = {
    "int64": lambda i: i * 7 - 50,
    "string": lambda i: f"k{i:03d}",
    "bytes": lambda i: bytes([i % 7, i]),
}


def _schema(key: str) -> dict:
    return {"k": key, "v": "int64", "s": "string"}


def _load(e, rng: random.Random, key: str, commits: int = 40) -> list[int]:
    """Random upserts and deletes (some of keys that have no row), flushed now and then;
    returns each commit's timestamp."""
    stamps = []
    for j in range(commits):
        ks = rng.sample(range(60), rng.randint(1, 10))
        dels = [KEYS[key](k) for k in ks if rng.random() < 0.3]
        rows = [
            {"k": KEYS[key](k), "v": j, "s": None if rng.random() < 0.2 else f"s{j}.{k}"}
            for k in ks
            if KEYS[key](k) not in dels
        ]
        stamps.append(e.write("d", "t", rows, dels))
        if rng.random() < 0.15 and hasattr(e, "freeze"):
            e.freeze()
            e.flush()
    return stamps


def _reference(e: Engine, from_ts, snapshot, columns, before_images) -> pa.Table:
    view, _ = e._reads.checked_view("d", "t", snapshot, from_ts, columns)
    _, changes, pre = cdc.feed(e.reader, view, e._reads.read_view, columns)
    return cdc.arrow_feed(view.table, changes, pre, columns, before_images)


@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize("seed", [1, 2])
def test_the_arrow_feed_equals_the_classified_feed_on_an_engine(key, seed):
    rng = random.Random(seed)
    e = Engine.open(f"memory://feed-{uuid.uuid4().hex[:8]}", 0, Settings(background=False))
    try:
        e.create_database("d")
        e.create_table("d", "t", _schema(key), "k")
        stamps = _load(e, rng, key)
        if seed == 2:  # objects merged by compaction (the feed reads the merged versions)
            while e.compact():
                pass
        for _ in range(12):
            lo = rng.choice([1, *stamps])
            hi = rng.choice([s for s in stamps if s >= lo] or [None])
            cols = rng.choice([None, ["k", "s"], ["v"], ["s", "k", "v"]])
            pre = rng.random() < 0.5
            got = e.changes_arrow("d", "t", lo, hi, cols, pre)
            want = _reference(e, lo, hi, cols, pre)
            assert got.schema == want.schema
            assert got.to_pylist() == want.to_pylist(), (lo, hi, cols, pre)
        view, _ = e._reads.checked_view("d", "t", None, stamps[5], None)
        assert before_view(e._reads.read_view, view) is not None
        alone = arrowfeed.feed_table(e.reader, view, None)  # no state before it, as from_ts 1
        kinds = alone.column("_change_type").to_pylist()
        assert len(kinds) == len(list(e.changes("d", "t", stamps[5])))
        first = {}
        for k, kind in zip(alone.column("k").to_pylist(), kinds, strict=True):
            first.setdefault(k, kind)
        assert "update_postimage" not in first.values()  # each key's first change: no row before
    finally:
        e.close()


@pytest.mark.parametrize("key", ["int64", "string"])
def test_the_arrow_feed_equals_the_classified_feed_across_shards(key):
    rng = random.Random(7)
    c = Cluster()
    try:
        c.client.create_database("d")
        c.client.create_table("d", "t", _schema(key), "k")
        stamps = _load(c.client, rng, key, commits=30)
        for s in c.services:
            s.flush()
        stamps += _load(c.client, rng, key, commits=10)  # and some still in the tails
        for lo in (stamps[0], stamps[10], stamps[-3]):
            for cols, pre in ((None, True), (["v"], False), (["s", "k"], True)):
                got = c.client.changes_arrow("d", "t", lo, columns=cols, before_images=pre)
                dicts = list(c.client.changes("d", "t", lo, columns=cols))
                posts = [r for r in got.to_pylist() if r["_change_type"] != "update_preimage"]
                assert [(r["_commit_ts"], r["_change_type"]) for r in posts] == [
                    (ch.ts, ch.change_type) for ch in dicts
                ]
                for r, ch in zip(posts, dicts, strict=True):
                    if ch.kind == "upsert":
                        assert {n: r[n] for n in ch.row} == ch.row
                if pre:  # each pre-image just before its post-image, at its timestamp
                    rows = got.to_pylist()
                    for i, r in enumerate(rows):
                        if r["_change_type"] == "update_preimage":
                            assert rows[i + 1]["_change_type"] == "update_postimage"
                            assert rows[i + 1]["_commit_ts"] == r["_commit_ts"]
                assert got.schema.names == [*(cols or list(_schema(key))), "_commit_ts",
                                            "_change_type"]  # fmt: skip
    finally:
        c.close()


def test_a_shard_ships_its_tail_as_arrow_to_arrow_readers():
    from dn.read.arrowscan import scan_table

    c = Cluster()
    try:
        c.client.create_database("d")
        c.client.create_table("d", "t", _schema("string"), "k")
        c.client.create_table("d", "pair", {"a": "string", "b": "int64"}, ["a", "b"])
        stamps = _load(c.client, random.Random(3), "string", commits=15)  # all in memory
        c.client.write("d", "pair", [{"a": "x", "b": 1}])
        s = c.services[0]
        reader = c.client.reader_pool().reader(0)
        plain, arrow = s.read_view("d", "t"), s.read_view("d", "t", arrow=True)
        assert plain.tail and plain.arrow_tail is None
        assert arrow.tail == () and len(arrow.arrow_tail) == len(plain.tail)
        snap = max(plain.snapshot, arrow.snapshot)
        plain, arrow = s.read_view("d", "t", snap), s.read_view("d", "t", snap, arrow=True)
        assert scan_table(reader, arrow).equals(scan_table(reader, plain))
        feed, _ = s.feed_views("d", "t", snap, stamps[0], arrow=True)
        assert feed.tail == () and feed.arrow_tail
        pair = s.read_view("d", "pair", arrow=True)  # not on the Arrow path: runs as they are
        assert pair.arrow_tail is None
    finally:
        c.close()


@pytest.mark.parametrize("key", sorted(KEYS))
def test_a_window_of_only_deletes(key):
    e = Engine.open(f"memory://dels-{uuid.uuid4().hex[:8]}", 0, Settings(background=False))
    try:
        e.create_database("d")
        e.create_table("d", "t", _schema(key), "k")
        k = KEYS[key]
        e.write("d", "t", [{"k": k(1), "v": 1, "s": "a"}])
        e.freeze()
        e.flush()
        gone = e.write("d", "t", [], [k(1), k(9)])  # one row, one key that never had one
        got = e.changes_arrow("d", "t", gone, before_images=True)
        assert got.to_pylist() == _reference(e, gone, None, None, True).to_pylist()
        assert got.column("_change_type").to_pylist() == ["delete", "delete"]
        assert got.column("s").to_pylist() == ["a", None]  # the row it removed; none
    finally:
        e.close()


def test_the_cluster_feed_of_a_composite_key_is_in_ts_then_key_order():
    # an atomic write puts one timestamp on keys of every shard: the merge orders them by
    # the whole key, as the dict feed does
    c = Cluster()
    try:
        c.client.create_database("d")
        c.client.create_table("d", "pair", {"a": "int64", "b": "string", "v": "int64"}, ["a", "b"])
        first = c.client.write(
            "d", "pair", [{"a": 1, "b": f"b{i:02d}", "v": i} for i in range(24)], atomic=True
        )
        c.client.write("d", "pair", [{"a": 1, "b": "b03", "v": -1}], [(1, "b05")], atomic=True)
        got = c.client.changes_arrow("d", "pair", first, before_images=True).to_pylist()
        dicts = list(c.client.changes("d", "pair", first))
        posts = [r for r in got if r["_change_type"] != "update_preimage"]
        assert [(r["_commit_ts"], (r["a"], r["b"])) for r in posts] == [
            (ch.ts, ch.pk) for ch in dicts
        ]
        assert [r["b"] for r in posts[:24]] == [f"b{i:02d}" for i in range(24)]
    finally:
        c.close()
