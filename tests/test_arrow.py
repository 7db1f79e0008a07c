"""Arrow and pandas: reads into Arrow equal the dict reads, change types match a model, and
writes from Arrow tables, record batches and DataFrames equal dict writes (issue 15, items 1
and 2). On one engine and through the in-process cluster client (three shards).
"""

from __future__ import annotations

import random
import uuid

import pandas as pd
import pyarrow as pa
import pytest

from dn import Engine, Settings
from dn.errors import InvalidArgument
from tests.test_exactly_once import Cluster

SCHEMA = {"k": "int64", "s": "string", "f": "float64", "b": "bytes", "ok": "bool"}


def _row(rng: random.Random, k: int) -> dict:
    maybe = lambda v: None if rng.random() < 0.2 else v  # noqa: E731 - a one-line helper
    return {
        "k": k,
        "s": maybe(f"s{rng.randint(0, 999)}"),
        "f": maybe(rng.random()),
        "b": maybe(bytes([rng.randint(0, 255)])),
        "ok": maybe(rng.random() < 0.5),
    }


class _Model:
    """The state after each commit, and what each change did."""

    def __init__(self) -> None:
        self.state: dict[int, dict] = {}
        self.history: list[tuple[int, dict[int, dict]]] = []
        self.changes: list[tuple[int, int, str, dict | None, dict | None]] = []

    def apply(self, ts: int, rows: list[dict], deletes: list[int]) -> None:
        for r in rows:
            prev = self.state.get(r["k"])
            kind = "insert" if prev is None else "update_postimage"
            self.changes.append((ts, r["k"], kind, r, prev))
            self.state[r["k"]] = r
        for k in deletes:
            prev = self.state.pop(k, None)
            self.changes.append((ts, k, "delete", None, prev))
        self.history.append((ts, dict(self.state)))


def _workload(write, seed: int, n: int = 12) -> _Model:
    rng = random.Random(seed)
    model = _Model()
    for _ in range(n):
        keys = rng.sample(range(40), rng.randint(1, 8))
        dels = [k for k in keys if rng.random() < 0.3]
        rows = [_row(rng, k) for k in keys if k not in dels]
        ts = write(rows, dels)
        model.apply(ts, rows, dels)
    return model


def _check_reads(reader, model: _Model, rng: random.Random) -> None:
    for ts, state in model.history:
        want = [state[k] for k in sorted(state)]
        assert reader.scan_arrow("d", "t", snapshot=ts).to_pylist() == want
        assert list(reader.scan("d", "t", snapshot=ts)) == want
        lo, hi = sorted(rng.sample(range(45), 2))
        cols = rng.sample(list(SCHEMA), rng.randint(1, len(SCHEMA)))
        got = reader.scan_arrow("d", "t", snapshot=ts, columns=cols, start=lo, end=hi)
        assert got.schema.names == cols
        assert got.to_pylist() == [
            {c: state[k][c] for c in cols} for k in sorted(state) if lo <= k < hi
        ]
        assert got.to_pandas().shape == (got.num_rows, len(cols))
    first = model.history[len(model.history) // 3][0]
    want = sorted((c for c in model.changes if c[0] >= first), key=lambda c: (c[0], c[1]))
    feed = list(reader.changes("d", "t", from_ts=first))
    assert [(c.ts, c.pk, c.change_type) for c in feed] == [
        (t, k, kind) for t, k, kind, _, _ in want
    ]
    arrow = reader.changes_arrow("d", "t", from_ts=first, before_images=True).to_pylist()
    expect = []
    for t, k, kind, row, prev in want:
        if kind == "update_postimage":
            expect.append({**prev, "_commit_ts": t, "_change_type": "update_preimage"})
        body = row if row is not None else (prev or {**dict.fromkeys(SCHEMA), "k": k})
        expect.append({**body, "_commit_ts": t, "_change_type": kind})
    assert arrow == expect
    batches = list(reader.changes_batches("d", "t", from_ts=first, batch_rows=3))
    assert sum(b.num_rows for b in batches) == len(want)
    assert pa.Table.from_batches(batches).column("_commit_ts").to_pylist() == [c[0] for c in want]


@pytest.fixture
def engine():
    e = Engine.open(f"memory://arrow-{uuid.uuid4().hex[:8]}", 0, Settings(background=False))
    e.create_database("d")
    e.create_table("d", "t", SCHEMA, "k")
    yield e
    e.close()


@pytest.fixture
def cluster():
    c = Cluster()
    c.client.create_database("d")
    c.client.create_table("d", "t", SCHEMA, "k")
    yield c
    c.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_arrow_reads_equal_dict_reads_and_change_types_match_a_model(engine, seed):
    model = _workload(lambda rows, dels: engine.write("d", "t", rows, dels), seed)
    if seed == 2:  # some of it in range objects
        engine.freeze()
        engine.flush()
    _check_reads(engine, model, random.Random(seed))


def test_arrow_reads_on_s3_equal_dict_reads_and_change_types_match_a_model(s3_url):
    # the same on S3 (moto): range objects and the tail read back cold through the S3 store
    url, _ = s3_url
    settings = Settings(background=False)
    e = Engine.open(url, 0, settings)
    try:
        e.create_database("d")
        e.create_table("d", "t", SCHEMA, "k")
        commits = []

        def write(rows, dels):  # the first half flushed to range objects, the rest in the log
            commits.append(e.write("d", "t", rows, dels))
            if len(commits) == 8:
                e.freeze()
                e.flush()
            return commits[-1]

        model = _workload(write, 6, n=16)
    finally:
        e.close()
    e = Engine.open(url, 0, settings)  # cold: every object fetched from the store again
    try:
        _check_reads(e, model, random.Random(6))
        for ts, _ in model.history[::5]:
            want = e.scan_arrow("d", "t", snapshot=ts)
            got = list(e.scan_batches("d", "t", snapshot=ts, batch_rows=4))
            assert pa.Table.from_batches(got, want.schema).equals(want)
    finally:
        e.close()


@pytest.mark.parametrize("seed", [4, 5])
def test_cluster_arrow_reads_equal_dict_reads_and_change_types_match_a_model(cluster, seed):
    c = cluster.client
    model = _workload(lambda rows, dels: c.write("d", "t", rows, dels, atomic=True), seed)
    _check_reads(c, model, random.Random(seed))


def _forms(rows: list[dict]):
    cols = {c: [r[c] for r in rows] for c in SCHEMA}
    tbl = pa.table(
        {
            c: pa.array(v, type=t)
            for (c, v), t in zip(
                cols.items(),
                [pa.int64(), pa.string(), pa.float64(), pa.binary(), pa.bool_()],
                strict=True,
            )
        }
    )
    return {
        "table": tbl,
        "batch": tbl.to_batches()[0],
        "pandas": pd.DataFrame({"k": cols["k"], "s": cols["s"], "f": cols["f"]}),
        "narrow types": pa.table({"k": pa.array(cols["k"], pa.int32()),
                                  "f": pa.array(cols["f"], pa.float32())}),
    }  # fmt: skip


@pytest.mark.parametrize("form", ["table", "batch", "pandas", "narrow types"])
def test_arrow_and_pandas_writes_equal_dict_writes(engine, cluster, form):
    rng = random.Random(7)
    rows = [_row(rng, k) for k in range(20)]
    data = _forms(rows)[form]
    names = data.schema.names if not isinstance(data, pd.DataFrame) else list(data.columns)
    want = [{c: (r[c] if c in names else None) for c in SCHEMA} for r in rows]
    if form == "narrow types":  # float32 rounds: compare what float32 holds
        want = [
            {**w, "f": None if w["f"] is None else float(pa.scalar(w["f"], pa.float32()).as_py())}
            for w in want
        ]  # noqa: E501
    for writer in (engine, cluster.client):
        ts = writer.write_columns("d", "t", data)
        assert list(writer.scan("d", "t", snapshot=ts)) == want


@pytest.mark.parametrize(
    "bad, message",
    [
        (pa.table({"k": [1, 2], "s": [1, 2]}), "column 's'"),
        (pa.table({"k": pa.array([1, None], pa.int64())}), "primary-key column 'k'"),
        (pa.table({"k": [1], "zz": [1]}), "unknown column 'zz'"),
        (pa.table({"k": pa.array([1], pa.uint64())}), "column 'k'"),
        (pd.DataFrame({"k": [1], "f": ["x"]}), "column 'f'"),
    ],
)
def test_a_bad_arrow_batch_is_a_typed_error_and_changes_nothing(engine, cluster, bad, message):
    for writer in (engine, cluster.client):
        before = writer.snapshot()
        with pytest.raises(InvalidArgument, match=message):
            writer.write_columns("d", "t", bad)
        assert list(writer.changes("d", "t", from_ts=before)) == []


def test_point_reads_copy_only_the_keys_versions_from_memory(engine, cluster):
    # issue 15, item 6: a get used to copy the whole in-memory tail into its view
    rows = [{"k": k, "s": f"s{k}", "f": None, "b": None, "ok": None} for k in range(3000)]
    for writer in (engine, cluster.client):
        ts = writer.write("d", "t", rows)
        writer.write("d", "t", [{**rows[7], "s": "seven"}], deletes=[8])
        want = [{**rows[7], "s": "seven"}, None, rows[9], None]
        assert writer.get_many("d", "t", [7, 8, 9, 10_000]) == want
        assert writer.get_many("d", "t", [7, 8], snapshot=ts) == [rows[7], rows[8]]
        assert writer.get("d", "t", 9, columns=["s"]) == {"s": "s9"}
    view = engine.read_view("d", "t", keys=[7, 9])
    assert sum(len(run) for run in view.tail) == 3  # 7 twice, 9 once: not 3,001 versions
    engine.freeze()
    engine.flush()
    assert engine.get_many("d", "t", [7, 8]) == [{**rows[7], "s": "seven"}, None]
    with pytest.raises(InvalidArgument):
        engine.get_many("d", "t", ["not an int"])


@pytest.mark.parametrize("keys", ["int64", "string", "composite"])
def test_change_types_with_the_state_before_looked_up_one_by_one_or_whole(keys, monkeypatch):
    import dn.read.cdc

    e = Engine.open(f"memory://cdc-{uuid.uuid4().hex[:8]}", 0, Settings(background=False))
    e.create_database("d")
    pk = ["a", "b"] if keys == "composite" else "a"
    e.create_table("d", "t", {"a": keys if keys != "composite" else "string", "b": "int64"}, pk)
    key = {"int64": lambda i: i, "string": lambda i: f"k{i:03d}", "composite": lambda i: f"k{i}"}
    rows = [{"a": key[keys](i), "b": i} for i in range(40)]
    e.write("d", "t", rows[:30])
    e.freeze()
    e.flush()
    start = e.write("d", "t", rows[20:40])  # 20-29 updated, 30-39 inserted
    dels = [(r["a"], r["b"]) if keys == "composite" else r["a"] for r in rows[:2]]
    e.write("d", "t", [], dels)
    for share in (0.0, 1.0):  # whole state, then one key at a time
        monkeypatch.setattr(dn.read.cdc, "BULK_SHARE", share)
        feed = list(e.changes("d", "t", from_ts=start))
        types = [c.change_type for c in feed]
        assert types.count("update_postimage") == 10 and types.count("insert") == 10
        assert types.count("delete") == 2
        arrow = e.changes_arrow("d", "t", from_ts=start, before_images=True).to_pylist()
        pre = [r for r in arrow if r["_change_type"] == "update_preimage"]
        assert sorted(r["b"] for r in pre) == list(range(20, 30))
        gone = [r for r in arrow if r["_change_type"] == "delete"]
        assert sorted(r["b"] for r in gone) == [0, 1]  # a delete carries the row it removed


@pytest.mark.parametrize(
    "schema,key",
    [
        ({"k": "string", "v": "int64", "w": "bytes"}, "k"),
        ({"a": "string", "b": "int64", "v": "float64"}, ["a", "b"]),
    ],
)
def test_cluster_scan_arrow_of_string_and_composite_keys_equals_the_dict_scan(cluster, schema, key):
    """A cluster's ``scan_arrow`` takes every shard's picked rows at once, in key order
    (``arrowscan.merge_shards``): for a string key and a composite one, whole, projected
    without the key, and bounded, it equals the dict scan; some rows overwritten, some
    deleted, some in range objects."""
    c = cluster.client
    c.create_table("d", "x", schema, key)
    names = list(schema)
    rng = random.Random(11)

    def row(i: int) -> dict:
        if names[0] == "k":
            return {"k": f"key{i:04d}", "v": rng.randint(0, 99), "w": bytes([i % 256]) * 3}
        return {"a": f"g{i % 7}", "b": i, "v": rng.random()}

    c.write("d", "x", [row(i) for i in range(300)])
    for s in cluster.services:
        s.engine.freeze()
        s.flush()
    gone = [row(i) for i in range(0, 300, 9)]
    dels = [r["k"] if names[0] == "k" else [r["a"], r["b"]] for r in gone]
    c.write("d", "x", [row(i) for i in range(0, 300, 4) if i % 9], dels)
    want = list(c.scan("d", "x"))
    assert c.scan_arrow("d", "x").to_pylist() == want
    cols = names[1:]
    assert c.scan_arrow("d", "x", columns=cols).to_pylist() == [
        {n: r[n] for n in cols} for r in want
    ]
    if names[0] == "k":
        got = c.scan_arrow("d", "x", start="key0050", end="key0200").to_pylist()
        assert got == list(c.scan("d", "x", start="key0050", end="key0200"))
        empty = c.scan_arrow("d", "x", columns=["v"], start="zzz")
        assert empty.num_rows == 0 and empty.column_names == ["v"]
