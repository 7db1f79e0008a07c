"""Streaming scans (issue 15): ``scan_batches`` equals ``scan_arrow`` and runs in bounded memory.

- equality, on one engine and through the cluster client (three in-process shards; and once on
  the shared Ray deployment): the same rows, order, types, projections and key bounds as
  ``scan_arrow``, at past and present snapshots, over many range objects, a checkpoint, updates
  and deletes across flushes and the in-memory tail, for int, string and composite keys; no
  batch is empty or has more than ``batch_rows`` rows;
- laziness: a range object is fetched when the merge reaches its first key and the shared
  object cache is read, never filled;
- typed errors, raised when ``scan_batches`` is called, before any batch is read;
- memory, in a process of its own: the resident set's peak growth over a 1.5M-row scan stays
  under a bound tied to the batch's Arrow bytes, which the whole-table scan exceeds many times.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from bench.arrow import measure_scan_peak, write_scan_table
from dn import Engine, Settings
from dn.errors import InvalidArgument
from tests.test_exactly_once import Cluster

SCHEMAS = {
    "int": ({"k": "int64", "s": "string", "f": "float64", "ok": "bool"}, "k"),
    "string": ({"k": "string", "s": "string", "f": "float64", "ok": "bool"}, "k"),
    "bytes": ({"k": "bytes", "s": "string", "f": "float64", "ok": "bool"}, "k"),
    "composite": ({"a": "int64", "k": "string", "s": "string", "f": "float64"}, ["a", "k"]),
}


def _key(kind: str, i: int):
    keys = {
        "int": i,
        "string": f"k{i:05d}",
        "bytes": b"k%05d" % i,
        "composite": (i % 7, f"k{i:05d}"),
    }
    return keys[kind]


def _row(kind: str, i: int, rng: random.Random) -> dict:
    row = {"s": None if rng.random() < 0.2 else f"s{rng.randrange(10**6)}", "f": rng.random()}
    if kind == "composite":
        row["a"], row["k"] = _key(kind, i)
    else:
        row["k"], row["ok"] = _key(kind, i), rng.random() < 0.5
    return row


def _load(writer, flush, kind: str, seed: int, rounds: int = 12, keys: int = 3000) -> list[int]:
    """Rounds of upserts over a key range that moves on (so objects overlap in part), updates
    of older keys and deletes; ``flush`` after most rounds (many range objects), the last
    rounds left in memory. Returns a snapshot after each round."""
    rng = random.Random(seed)
    snaps = []
    for r in range(rounds):
        ks = rng.sample(range(r * keys // 3, r * keys // 3 + keys), keys // 2)
        writer.write("d", "t", [_row(kind, i, rng) for i in ks])
        if r:
            dels = [_key(kind, i) for i in rng.sample(range(r * keys), r * 20)]
            writer.write("d", "t", [], dels)
        snaps.append(writer.snapshot())
        if r < rounds - 2:
            flush(r)
    return snaps


def _check_equal(reader, snaps: list[int], kind: str) -> None:
    rng = random.Random(len(snaps))
    names = list(SCHEMAS[kind][0])
    cases: list[dict] = [{}, {"snapshot": snaps[len(snaps) // 2]}, {"snapshot": snaps[0]}]
    for _ in range(4):
        lo, hi = sorted(rng.sample(range(0, 5000), 2))
        cases.append({"start": _key(kind, lo), "end": _key(kind, hi)})
        cases.append({"columns": rng.sample(names, rng.randint(1, len(names)))})
    cases.append({"start": _key(kind, 10**5)})  # no rows
    cases.append({"columns": ["s"], "start": _key(kind, 700), "snapshot": snaps[-3]})
    for kw in cases:
        want = reader.scan_arrow("d", "t", **kw)
        for batch_rows in (1000, 7, 65_536):
            batches = list(reader.scan_batches("d", "t", batch_rows=batch_rows, **kw))
            sizes = [b.num_rows for b in batches]
            assert all(0 < n <= batch_rows for n in sizes), (kw, sizes)
            assert sum(sizes) == want.num_rows, kw
            got = pa.Table.from_batches(batches, want.schema)
            assert all(b.schema == want.schema for b in batches), kw
            assert got.equals(want), kw


def _engine(kind: str) -> Engine:
    settings = Settings(background=False, compaction=False, freeze_interval_s=None)
    e = Engine.open(f"memory://scan-batches-{uuid.uuid4().hex[:8]}", 0, settings)
    e.create_database("d")
    e.create_table("d", "t", *SCHEMAS[kind])
    return e


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_engine_scan_batches_equal_scan_arrow(kind):
    e = _engine(kind)
    try:

        def flush(r: int) -> None:
            e.freeze()
            e.flush()
            if r == 4:
                e.checkpoint()  # objects listed by a checkpoint, and objects after it

        snaps = _load(e, flush, kind, seed=15)
        assert len(e._state.ranges) >= 9
        _check_equal(e, snaps, kind)
        e._check()
    finally:
        e.close()


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_cluster_scan_batches_equal_scan_arrow(kind):
    c = Cluster()
    try:
        c.client.create_database("d")
        c.client.create_table("d", "t", *SCHEMAS[kind])

        def flush(r: int) -> None:
            for s in c.services:
                s.engine.freeze()
                s.engine.flush()
                if r == 4:
                    s.engine.checkpoint()

        snaps = _load(c.client, flush, kind, seed=16)
        _check_equal(c.client, snaps, kind)
    finally:
        c.close()


def test_objects_are_fetched_as_the_merge_reaches_them_and_the_cache_is_not_filled():
    e = _engine("int")
    try:
        rng = random.Random(3)
        for lo in range(0, 40_000, 2000):  # 20 objects of disjoint, ascending keys
            e.write("d", "t", [_row("int", i, rng) for i in range(lo, lo + 2000)])
            e.freeze()
            e.flush()
        e.checkpoint()
        cache = e.reader.cache
        before = cache.status()
        it = e.scan_batches("d", "t", batch_rows=1000)
        assert cache.status()["misses"] == before["misses"]  # nothing fetched before reading
        first = next(it)
        assert 500 <= first.num_rows <= 1000  # a window of over half a batch, as it came
        assert first.column("k").to_pylist() == list(range(first.num_rows))
        assert cache.status()["misses"] - before["misses"] <= 2  # not 20 objects
        assert sum(b.num_rows for b in it) == 40_000 - first.num_rows
        assert not [k for k in cache._items if k.startswith("20/")]  # read through, not filled
        e.scan_arrow("d", "t")  # a whole scan fills it; a stream then reads what is cached
        misses = cache.status()["misses"]
        assert sum(b.num_rows for b in e.scan_batches("d", "t")) == 40_000
        assert cache.status()["misses"] == misses
    finally:
        e.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10", None])
def test_a_bad_batch_rows_is_invalid_argument_when_called(bad):
    e = _engine("int")
    c = Cluster()
    try:
        for reader in (e, c.client):
            with pytest.raises(InvalidArgument, match="batch_rows"):
                reader.scan_batches("db" if reader is c.client else "d", "t", batch_rows=bad)
    finally:
        e.close()
        c.close()


def test_bad_columns_and_bounds_are_invalid_argument_when_called():
    e = _engine("int")
    c = Cluster()
    try:
        for reader, db in ((e, "d"), (c.client, "db")):
            with pytest.raises(InvalidArgument, match="unknown column"):
                reader.scan_batches(db, "t", columns=["nope"])
            with pytest.raises(InvalidArgument):
                reader.scan_batches(db, "t", start="not an int")
    finally:
        e.close()
        c.close()


@pytest.mark.ray
def test_ray_cluster_scan_batches_equal_scan_arrow(cluster):
    cluster.create_database("sb")
    cluster.create_table("sb", "t", {"k": "int64", "s": "string"}, "k")
    for lo in range(0, 8000, 1000):
        cluster.write("sb", "t", [{"k": k, "s": f"s{k}"} for k in range(lo, lo + 1000)])
    mid = cluster.snapshot()
    updates = [{"k": k, "s": "new"} for k in range(0, 8000, 7)]
    cluster.write("sb", "t", updates, deletes=list(range(1, 8000, 7)))
    for kw in ({}, {"snapshot": mid}, {"columns": ["s"]}, {"start": 100, "end": 4321}):
        want = cluster.scan_arrow("sb", "t", **kw)
        got = list(cluster.scan_batches("sb", "t", batch_rows=999, **kw))
        assert all(0 < b.num_rows <= 999 for b in got), [b.num_rows for b in got]
        assert pa.Table.from_batches(got, want.schema).equals(want)


# -- memory, measured in processes of their own (bench/arrow.py's figure 2k, smaller) ---------

MEMORY_ROWS = 1_500_000
OBJECT_ROWS = 30_000  # rows per range object: smaller than a batch
BATCH_ROWS = 65_536
#: The bound on the resident set's peak growth, in batches' Arrow bytes, for a consumer that
#: lets each batch go before it asks for the next. The scan holds the part it decodes, its
#: stored bytes, and at most half a batch of short windows (here two objects of 30,000 rows make
#: one batch, joined by a copy): measured at 2.5 batches, and 3.6 with a plain ``for`` loop.
#: Before the scan let each part and window go once handed on, and read a source's next part
#: only when the merge asked for it: 4.3, and 5.9 with the loop (9.5 to 10.3 in Arrow's default
#: pool; 23 through Python values). The whole-table scan takes 50 to 120.
BOUND_BATCHES = 3.5


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_scan_batches_memory_is_bounded_by_the_batch_not_the_table(tmp_path):
    path = str(tmp_path / "store")
    assert write_scan_table(path, MEMORY_ROWS, OBJECT_ROWS) == MEMORY_ROWS // OBJECT_ROWS
    grown, rows, batch_bytes = measure_scan_peak(path, "stream", BATCH_ROWS)
    assert rows == MEMORY_ROWS
    bound = BOUND_BATCHES * batch_bytes
    assert grown < bound, (grown, bound)
    held, rows, _ = measure_scan_peak(path, "held", BATCH_ROWS)  # a plain for loop: one more
    assert rows == MEMORY_ROWS
    assert held < bound + batch_bytes, (held, bound + batch_bytes)
    whole, rows, _ = measure_scan_peak(path, "whole", BATCH_ROWS)  # what scan_batches did
    assert rows == MEMORY_ROWS
    # the whole-table scan reads format-4 objects straight into Arrow (dn/read/arrowscan.py):
    # about 50 batches, no longer the ~290 of Python values; the stream still holds less
    assert whole > grown, (whole, grown)


def test_batches_are_windows_as_they_come_and_short_windows_joined():
    """``rebatch``: a window of at least half a batch is handed out as it is (the same
    buffers: no copy), a longer one cut in even pieces, short ones joined until they make half
    a batch or the next would overflow it; never over ``batch_rows``, no row lost or doubled."""
    from dn.read.arrowstream import rebatch
    from dn.schema import TableDef

    t = TableDef("d", "t", (("k", "int64"), ("v", "string")), ("k",), 1)
    at = 0

    def window(n: int) -> pa.Table:
        nonlocal at
        ks = list(range(at, at + n))
        at += n
        return pa.table({"k": ks, "v": [str(k) for k in ks], "ts": [1] * n})

    windows = [window(n) for n in (60, 100, 10, 10, 30, 70, 250, 5)]
    got = list(rebatch(t, iter(windows), None, 100))
    assert [b.num_rows for b in got] == [60, 100, 50, 70, 83, 83, 84, 5]
    assert pa.Table.from_batches(got).column("k").to_pylist() == list(range(at))
    for b, w in ((got[0], windows[0]), (got[1], windows[1]), (got[3], windows[5])):
        assert b.column(0).buffers()[1].address == w.column(0).chunk(0).buffers()[1].address
