"""Range objects of format versions 4 and 5 (tables as Arrow IPC) and the Arrow scan over them.

- the golden fixtures ``tests/golden/range.bin`` (version 5) and ``range_v4.bin`` opened by
  hand (frame, msgpack, Arrow IPC streams), and the encoding deterministic;
- version 5's parts: cut between keys, bounded in rows and bytes, a key with more versions than
  a part in one part, read part by part, and a stream whose parts split a key refused;
- a corrupt version-4 body is ``Corruption``, when decoded or when its batches are read;
- ``Engine.scan_arrow`` (:mod:`dn.read.arrowscan`) equals the dict scan and the Python pick
  path (:func:`dn.read.view.scan_columns`) on random tables with nulls, updates and deletes
  across flushes and compactions, at every snapshot, with bounds and projections; over
  version-4 objects, over a mix of version-3 and version-4 objects, and with keys of every
  type (those the Arrow path does not pick by go through the Python path).

No Ray; fast.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import msgpack
import pyarrow as pa
import pytest

from dn import Engine, Settings
from dn.errors import Corruption
from dn.objects import codec, rangecols, rangeobj
from dn.read import arrowscan
from dn.read.arrow import to_arrow
from dn.read.arrowscan import arrow_path
from dn.read.view import scan_columns
from dn.upkeep import arrowmerge
from tests.golden import make

GOLDEN = Path(__file__).resolve().parent / "golden"
FRAME = struct.Struct("<2sBBQII")
RANGE_KEY = codec.range_key(7, 90, 108)


def _stored_body(data: bytes, want: int) -> memoryview:
    magic, kind, version, length, body_crc, header_crc = FRAME.unpack_from(data)
    assert (magic, kind, version, length) == (b"DN", ord("R"), want, len(data) - FRAME.size)
    assert body_crc == zlib.crc32(data[FRAME.size :]) and header_crc == zlib.crc32(data[:16])
    return memoryview(data)[FRAME.size :]


def _v5_by_hand(data: bytes) -> dict:
    """A version-5 object opened as docs/formats.md says: meta_len:u64 meta_crc:u32 (big-endian),
    the msgpack meta, then the streams where the meta places them, each part checked by its
    crc; returns the meta with each table's streams as bytes (None: no deletes)."""
    body = _stored_body(data, 5)
    meta_len, meta_crc = struct.unpack_from(">QI", body)
    raw = body[12 : 12 + meta_len]
    assert zlib.crc32(raw) == meta_crc
    meta = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    streams = body[12 + meta_len :]
    at = 0
    for entry in meta["tables"].values():
        assert list(entry) == ["rows", "dels"]
        for name in ("rows", "dels"):
            if entry[name] is None:
                continue
            offset, schema_len, schema_crc, parts = entry[name]
            assert offset == at
            end = offset + schema_len + sum(p[0] for p in parts) + 8
            stream = bytes(streams[offset:end])
            assert zlib.crc32(stream[:schema_len]) == schema_crc
            pos = schema_len
            for length, crc, rows, _ in parts:
                assert zlib.crc32(stream[pos : pos + length]) == crc
                schema = pa.ipc.read_schema(pa.py_buffer(stream[:schema_len]))
                part = pa.ipc.read_record_batch(pa.py_buffer(stream[pos : pos + length]), schema)
                assert part.num_rows == rows
                pos += length
            assert stream[pos:] == b"\xff\xff\xff\xff\x00\x00\x00\x00"  # end of stream
            entry[name] = stream
            at = end
    assert at == len(streams)
    return meta


@pytest.mark.parametrize("name,version", [("range.bin", 5), ("range_v4.bin", 4)])
def test_the_arrow_fixtures_opened_by_hand_hold_version_3s_tables(name, version):
    data = (GOLDEN / name).read_bytes()
    if version == 5:
        body = _v5_by_hand(data)
        assert list(body) == ["shard", "from", "to", "commits", "commands", "tokens", "tables"]
    else:
        body = msgpack.unpackb(_stored_body(data, 4), raw=False, strict_map_key=False)
        assert list(body) == ["shard", "from", "to", "commits", "commands", "tables", "tokens"]
    v3 = rangeobj.decode((GOLDEN / "range_v3.bin").read_bytes(), RANGE_KEY)
    assert list(body["tables"]) == sorted(v3.tables) == [101, 102]
    for tid, t in body["tables"].items():
        assert list(t) == ["rows", "dels"]
        rows = pa.ipc.open_stream(t["rows"]).read_all()
        want = v3.tables[tid]
        names = [f"c{i}" for i in range(len(want["cols"]))] + ["ts"]
        assert rows.schema.names == names
        assert rows.column("ts").to_pylist() == want["ts"]
        assert [c.to_pylist() for c in rows.columns[:-1]] == want["cols"]
        dels = pa.ipc.open_stream(t["dels"]).read_all()
        assert dels.column("ts").to_pylist() == want["del_ts"]
        keys = [c.to_pylist() for c in dels.columns[:-1]]
        got = keys[0] if dels.schema.names[0] == "k" else [list(k) for k in zip(*keys)]
        assert got == want["del_pks"]
    assert body["tables"][102]["dels"][:4] == b"\xff\xff\xff\xff"  # an IPC stream
    ro = rangeobj.decode(data, RANGE_KEY)
    assert (ro.commands, ro.tables, ro.tokens, ro.ncommits) == (
        v3.commands, v3.tables, v3.tokens, v3.ncommits
    )  # fmt: skip


def test_version_4_encoding_is_deterministic():
    a, b = make.range_object()[0], make.range_object()[0]
    assert a == b == (GOLDEN / "range.bin").read_bytes()
    rng = random.Random(4)
    t = {
        "ts": list(range(500)),
        "cols": [
            [rng.randint(-(2**63), 2**63 - 1) for _ in range(500)],
            [rng.choice([None, "x" * rng.randint(0, 30)]) for _ in range(500)],
            [None] * 500,
        ],
        "del_pks": [[1, "a"], [2, "b"]],
        "del_ts": [3, 4],
    }
    assert rangecols.encode_table(t) == rangecols.encode_table(eval(repr(t)))


def test_an_object_with_a_value_arrow_does_not_store_is_written_as_version_3():
    t = {"ts": [1, 2], "cols": [[1, "mixed"]], "del_pks": [], "del_ts": []}
    data = rangeobj.encode(7, 1, 2, 2, [], {5: t}, [])
    assert codec.version_of(data) == 3
    assert rangeobj.decode(data, codec.range_key(7, 1, 2)).tables == {5: t}


def _v4(tables: dict) -> bytes:
    body = {"shard": 7, "from": 90, "to": 108, "commits": 9, "commands": [], "tables": tables}
    return codec.frame(codec.KIND_RANGE, codec.pack({**body, "tokens": b""}), 4)


def _good_table() -> dict:
    t = {"ts": [100, 101], "cols": [[1, 2], ["a", None]], "del_pks": [3], "del_ts": [102]}
    return {name: bytes(memoryview(s.data)) for name, s in rangecols.encode_table(t).items()}


@pytest.mark.parametrize(
    "tables",
    [
        {101: {"ts": [], "cols": [], "del_pks": [], "del_ts": []}},  # version 3's table
        {101: {"rows": b"\x00" * 40, "dels": b""}},  # not an IPC stream
        {101: {"rows": _good_table()["dels"], "dels": b""}},  # columns k, ts: not rows
        {101: {"rows": _good_table()["rows"], "dels": _good_table()["rows"]}},
        {101: {"rows": "text", "dels": b""}},
        {"101": _good_table()},  # a table id that is not an int
        {102: _good_table(), 101: _good_table()},  # not ascending
    ],
)
def test_a_malformed_version_4_body_is_corruption(tables):
    with pytest.raises(Corruption, match="malformed"):
        rangeobj.decode(_v4(tables), RANGE_KEY)


def test_a_version_4_batch_that_does_not_decode_is_corruption_when_read():
    good = _good_table()
    rows = good["rows"]
    schema_len = len(pa.ipc.open_stream(rows).schema.serialize())
    bad = rows[:schema_len] + b"\xff\xff\xff\xff" + b"\x07" * 64  # a garbage batch message
    ro = rangeobj.decode(_v4({101: {"rows": bad, "dels": b""}}), RANGE_KEY)
    with pytest.raises(Corruption, match="does not decode"):
        ro.run(101, (0,))
    with pytest.raises(Corruption, match="does not decode"):
        ro.arrow(101).rows()


SCHEMAS = {
    "int": ({"k": "int64", "s": "string", "f": "float64", "b": "bytes", "ok": "bool"}, "k"),
    "str": ({"name": "string", "n": "int64", "f": "float64"}, "name"),
    "bin": ({"id": "bytes", "n": "int64"}, "id"),
    "two": ({"a": "string", "b": "int64", "v": "float64"}, ["a", "b"]),
    "flt": ({"x": "float64", "s": "string"}, "x"),
}


def _key(kind: str, rng: random.Random, space: int):
    i = rng.randrange(space)
    return {
        "int": i - space // 3,
        "str": f"k{i:03d}é" if i % 7 else f"k{i}",
        "bin": bytes([i % 251, i // 251]),
        "two": (f"a{i % 5}", i),
        "flt": i / 4 - 3.0,
    }[kind]


def _row(kind: str, key, rng: random.Random) -> dict:
    cols, pk = SCHEMAS[kind]
    pks = [pk] if isinstance(pk, str) else pk
    keyvals = dict(zip(pks, key if isinstance(key, tuple) else (key,), strict=True))
    maybe = lambda v: None if rng.random() < 0.25 else v  # noqa: E731
    out = {}
    for c, typ in cols.items():
        if c in keyvals:
            out[c] = keyvals[c]
        else:
            out[c] = maybe(
                {
                    "int64": rng.randint(-(2**40), 2**40),
                    "float64": rng.random(),
                    "string": "v" * rng.randint(0, 3),
                    "bytes": bytes([rng.randint(0, 255)]),
                    "bool": rng.random() < 0.5,
                }[typ]
            )
    return out


def _settings() -> Settings:
    return Settings(
        background=False,
        freeze_interval_s=None,
        compaction=False,
        compaction_fanout=2,
        compaction_base_bytes=1,
        retention_s=None,
    )


def _check(e: Engine, name: str, stamps: list[int], rng: random.Random) -> None:
    t = e.table("d", name)
    cols, pk = SCHEMAS[name]
    names = list(cols)
    for ts in [*stamps, None]:
        want = list(e.scan("d", name, snapshot=ts))
        got = e.scan_arrow("d", name, snapshot=ts)
        assert got.to_pylist() == want
        view = e.read_view("d", name, ts)
        old = to_arrow(t, scan_columns(e.reader, view)[0])
        assert got.equals(old) and got.schema == old.schema
        if t.pk_pos == (0,) and rng.random() < 0.7:
            keys = sorted({r[names[0]] for r in want} | {_key(name, rng, 60)})
            lo, hi = sorted(rng.sample(keys, 2)) if len(keys) > 1 else (keys[0], None)
            lo = None if rng.random() < 0.2 else lo
            proj = rng.sample(names, rng.randint(1, len(names)))
            got = e.scan_arrow("d", name, snapshot=ts, columns=proj, start=lo, end=hi)
            want = list(e.scan("d", name, snapshot=ts, columns=proj, start=lo, end=hi))
            assert got.to_pylist() == want
            assert got.schema.names == proj
            old = to_arrow(t, scan_columns(e.reader, view, lo, hi)[0], proj)
            assert got.equals(old) and got.schema == old.schema


def _workload(e: Engine, name: str, seed: int, steps: int, v3_until: int = -1, patch=None):
    rng = random.Random(seed)
    stamps = []
    for step in range(steps):
        keys = {_key(name, rng, 60) for _ in range(rng.randint(1, 12))}
        dels = [k for k in keys if rng.random() < 0.25]
        rows = [_row(name, k, rng) for k in keys if k not in dels]
        stamps.append(e.write("d", name, rows, dels))
        if rng.random() < 0.4:
            if patch is not None:
                patch(step < v3_until)
            e.freeze()
            e.flush()
        if rng.random() < 0.15:
            while e.compact():
                pass
        e._check()
    return stamps, rng


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("seed", range(3))
def test_scan_arrow_equals_the_dict_scan_over_version_4_objects(name, seed):
    e = Engine.open(f"memory://v4-{name}-{seed}", 0, _settings())
    e.create_database("d")
    cols, pk = SCHEMAS[name]
    e.create_table("d", name, cols, pk)
    assert arrow_path(e.table("d", name)) == (name in ("int", "str", "bin"))
    stamps, rng = _workload(e, name, seed, 40)
    _check(e, name, rng.sample(stamps, 8), rng)
    e.freeze()
    e.flush()
    while e.compact():
        pass
    _check(e, name, rng.sample(stamps, 5), rng)
    e.close()


@pytest.mark.parametrize("name", ["int", "str", "two"])
@pytest.mark.parametrize("seed", range(3))
def test_scan_arrow_over_a_mix_of_version_3_and_version_4_objects(name, seed, monkeypatch):
    real = rangecols.encode_table
    as_v3 = [False]

    def encode_table(t, pk_pos=None):
        if as_v3[0]:
            raise rangecols.Unencodable("as version 3 wrote it")
        return real(t, pk_pos)

    monkeypatch.setattr(rangecols, "encode_table", encode_table)
    real_merge = arrowmerge.merge_table

    def merge_table(*args):  # a compaction then merged in Python and wrote version 3 too
        if as_v3[0]:
            raise arrowmerge.NotArrow("as version 3 wrote it")
        return real_merge(*args)

    monkeypatch.setattr(arrowmerge, "merge_table", merge_table)

    def patch(v3: bool) -> None:
        as_v3[0] = v3

    e = Engine.open(f"memory://mix-{name}-{seed}", 0, _settings())
    e.create_database("d")
    cols, pk = SCHEMAS[name]
    e.create_table("d", name, cols, pk)
    stamps, rng = _workload(e, name, seed + 10, 40, v3_until=20, patch=patch)
    versions = {codec.version_of(e.store.get(k)) for k in e.store.list("20/0/")}
    assert versions == {3, rangeobj.VERSION}, versions
    _check(e, name, rng.sample(stamps, 8), rng)
    e.close()


def test_the_fast_path_returns_one_objects_columns_as_stored(monkeypatch):
    # one flushed object of distinct keys: no sort, no take, the stored buffers themselves
    e = Engine.open("memory://v4-fast", 0, _settings())
    e.create_database("d")
    e.create_table("d", "t", {"k": "int64", "s": "string"}, "k")
    e.write_columns("d", "t", {"k": list(range(3000)), "s": [f"s{i % 7}" for i in range(3000)]})
    e.freeze()
    e.flush()
    sorts = []
    real = arrowscan.pc.sort_indices
    monkeypatch.setattr(arrowscan.pc, "sort_indices", lambda *a, **kw: sorts.append(1) or real(*a, **kw))  # noqa: E501  # fmt: skip
    got = e.scan_arrow("d", "t")
    assert got.column("k").to_pylist() == list(range(3000)) and not sorts
    (r,) = e.reader.range_keys(e.table("d", "t"), e.snapshot_plan(e.snapshot()))
    stored = e.reader.range(r).arrow(e.table("d", "t").id).rows()
    assert got.column("s").chunk(0).buffers()[2].address == stored.column(1).chunk(0).buffers()[2].address  # noqa: E501  # fmt: skip
    # then objects of disjoint key spans, and one of updates: sorted, the newest version last
    e.write_columns("d", "t", {"k": list(range(3000, 5000)), "s": ["x"] * 2000})
    e.freeze()
    e.flush()
    assert e.scan_arrow("d", "t").column("k").to_pylist() == list(range(5000)) and not sorts
    e.write_columns("d", "t", {"k": [5, 4000], "s": ["new", "new"]})
    e.freeze()
    e.flush()
    got = e.scan_arrow("d", "t")
    assert got.num_rows == 5000 and got.column("s")[5].as_py() == "new" and sorts
    assert got.to_pylist() == list(e.scan("d", "t"))
    e.close()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_opening_takes_statistics_from_arrow_equal_to_those_the_write_recorded(name, monkeypatch):
    # recovery's statistics of objects written after the last checkpoint: from the Arrow
    # tables of a version-4 object with a one-column key, not from Python values
    from dn.objects import rangeobj

    url = f"memory://v4-stats-{name}"
    e = Engine.open(url, 0, _settings())
    e.create_database("d")
    e.create_table("d", name, *SCHEMAS[name])
    e.checkpoint()
    _workload(e, name, 5, 30)
    e.freeze()
    e.flush()
    written = {r: dict(st) for r, st in e._state.stats.items()}
    e.close()
    runs = []
    monkeypatch.setattr(
        rangeobj.RangeObject,
        "run",
        lambda self, *a, _r=rangeobj.RangeObject.run: runs.append(1) or _r(self, *a),
    )
    e = Engine.open(url, 0, _settings())
    try:
        assert {r: dict(st) for r, st in e._state.stats.items()} == written
        one_column = len(e.table("d", name).pk_pos) == 1
        assert (not runs) == one_column  # no object decoded into Python values to open
    finally:
        e.close()
