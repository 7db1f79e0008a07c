"""Range objects of format version 5 read in parts (issue 15's bounded ``scan_batches``).

- the encoder cuts each stream into parts between keys, bounded in rows and bytes, a key with
  more versions than a part's bound kept in one part;
- a table read part by part with ranged reads (:func:`dn.objects.rangeparts.open_table`)
  equals the table read whole, on the memory, local and S3 (moto) stores; a meta longer than
  the first read is read with a second; a damaged part, a damaged meta or a truncated object is
  ``Corruption``, raised when that part is reached;
- ``get_range`` of every store: a slice of ``get``, none past the end, ``ObjectNotFound`` for
  no object;
- ``scan_batches`` over objects of many parts equals ``scan_arrow`` for every key type, at past
  snapshots and with bounds, and reads those objects by parts only (no whole ``get``): through
  Arrow (a key of one int64, string or bytes column) and through Python values (a composite
  key).

No Ray.
"""

from __future__ import annotations

import random
import uuid
import zlib

import msgpack
import pyarrow as pa
import pytest

from dn import Engine, Settings
from dn.errors import Corruption, ObjectNotFound
from dn.objects import codec, rangecols, rangeobj, rangeparts
from dn.store import open_store
from dn.store.local import LocalStore
from dn.store.memory import MemoryStore
from dn.store.retry import RetryingStore
from tests.test_scan_batches import SCHEMAS, _key, _row

KEY = codec.range_key(3, 10, 20)


@pytest.fixture
def small_parts(monkeypatch):
    """Objects of many small parts, read by parts (not whole from the first read)."""
    monkeypatch.setattr(rangecols, "CHUNK_ROWS", 50)
    monkeypatch.setattr(rangecols, "CHUNK_BYTES", 1200)
    monkeypatch.setattr(rangeparts, "HEAD", 200)


def _table(n: int, versions: int = 3, seed: int = 0) -> tuple[dict, list]:
    """A version-3 table dict of ``n`` keys (int ``k``, string ``s``), up to ``versions``
    versions each, sorted by (k, ts), and deletes of some keys."""
    rng = random.Random(seed)
    ks, ts, ss = [], [], []
    for k in range(n):
        for v in range(rng.randint(1, versions)):
            ks.append(k)
            ts.append(100 + v)
            ss.append(None if rng.random() < 0.1 else "x" * rng.randint(0, 40))
    dels = sorted(rng.sample(range(n), n // 5))
    t = {"ts": ts, "cols": [ks, ss], "del_pks": dels, "del_ts": [200] * len(dels)}
    return t, ks


def _object(t: dict) -> bytes:
    return rangeobj.encode(3, 10, 20, 2, [], {7: t}, [], {7: (0,)})


def test_parts_are_cut_between_keys_and_bounded(small_parts):
    t, ks = _table(400)
    t["cols"][0][120:120] = [ks[120]] * 70  # one key with more versions than a part holds
    t["cols"][1][120:120] = ["y"] * 70
    t["ts"][120:120] = [50 + i for i in range(70)]
    t["ts"][120 : 120 + 70 + 10] = sorted(t["ts"][120 : 120 + 70 + 10])
    ks = t["cols"][0]
    streams = rangecols.encode_table(t, (0,))
    parts = streams["rows"].parts
    assert len(parts) > 5 and sum(p[2] for p in parts) == len(ks)
    at = 0
    for _, _, rows, first in parts:
        keys = ks[at : at + rows]
        assert first == keys[0]  # the meta names each part's first key
        if at:
            assert ks[at - 1] != keys[0]  # never a key across two parts
        # at most the bound, moved on past the rest of the versions of the key it reached
        assert rows <= 50 + ks.count(keys[-1]) - 1, (at, rows)
        at += rows
    assert max(p[2] for p in parts) >= 70  # the long key whole, in one part
    dels = streams["dels"].parts
    assert sum(p[2] for p in dels) == len(t["del_ts"])


@pytest.mark.parametrize("store_kind", ["memory", "local"])
def test_a_table_read_in_parts_equals_the_table_read_whole(small_parts, store_kind, tmp_path):
    store = MemoryStore() if store_kind == "memory" else LocalStore(tmp_path)
    t, _ = _table(500, seed=1)
    store.put(KEY, _object(t))
    whole = rangeobj.decode(store.get(KEY), KEY).arrow(7)
    parted = rangeparts.open_table(store, KEY, 7)
    rows = list(parted.row_parts())
    assert len(rows) > 5
    assert pa.concat_tables(rows).equals(whole.rows())
    assert pa.concat_tables(list(parted.del_parts())).equals(whole.dels())
    assert [p.num_rows for p in rows] == [p.num_rows for p in whole.row_parts()]
    assert rangeparts.open_table(store, KEY, 8) is None  # no such table
    old = rangeobj.V4  # an object of an older version: read it whole
    store.put(KEY, codec.frame(codec.KIND_RANGE, codec.pack({"tables": {}}), old))
    assert rangeparts.open_table(store, KEY, 7) is False


def test_a_bounded_read_fetches_only_the_parts_its_keys_may_be_in(small_parts):
    store = _Counting()
    t, ks = _table(2000, seed=7)
    store.put(KEY, _object(t))
    parted = rangeparts.open_table(store, KEY, 7)
    whole = rangeobj.decode(store.get(KEY), KEY).arrow(7).rows()
    n = len(parted._entry["rows"][3])
    for start, end in [(700, 900), (None, 300), (1900, None), (5000, None), (0, 0), (3, 2)]:
        store.ranged = 0
        got = pa.concat_tables([whole.slice(0, 0), *parted.row_parts(start, end)])
        keys = got.column(0).to_pylist()
        lo, hi = start or 0, 10**9 if end is None else end
        want = [k for k in ks if lo <= k < hi]
        assert set(want) <= set(keys), (start, end)  # every part its keys may be in
        assert store.ranged <= 1 + len(got.to_batches()) and store.ranged < n  # and no other


def test_an_object_collected_mid_scan_is_a_clear_not_found(small_parts):
    store = MemoryStore()
    t, _ = _table(500, seed=9)
    store.put(KEY, _object(t))
    parts = rangeparts.open_table(store, KEY, 7).row_parts()
    next(parts)
    store.delete(KEY)  # compaction replaced it and GC's grace passed mid-scan
    with pytest.raises(ObjectNotFound, match="the scan's plan names, is not in the store"):
        list(parts)


def test_a_meta_longer_than_the_first_read_is_read_with_a_second(small_parts, monkeypatch):
    store = _Counting()
    t, _ = _table(3000, seed=2)
    store.put(KEY, _object(t))
    monkeypatch.setattr(rangeparts, "HEAD", 64)
    parted = rangeparts.open_table(store, KEY, 7)
    assert store.ranged == 2 and isinstance(parted, rangeparts.PartedTable)
    whole = rangeobj.decode(store.get(KEY), KEY).arrow(7)
    rows = list(parted.row_parts())
    assert pa.concat_tables(rows).equals(whole.rows())
    assert store.ranged == 2 + len(rows)  # the schema with the first part, then one read a part


def test_an_object_that_fits_in_the_first_read_is_read_whole_from_it():
    store = _Counting()
    t, _ = _table(40, seed=2)
    store.put(KEY, _object(t))
    table = rangeparts.open_table(store, KEY, 7)
    rows = pa.concat_tables(list(table.row_parts()))
    assert store.ranged == 1 and store.gets == 0
    assert rows.equals(rangeobj.decode(store.get(KEY), KEY).arrow(7).rows())
    store.put(KEY, _damaged(store.get(KEY), len(store.get(KEY)) - 20))
    with pytest.raises(Corruption, match="checksum"):  # the frame's, over the whole object
        rangeparts.open_table(store, KEY, 7)


def test_a_store_that_cannot_read_ranges_has_objects_read_whole(small_parts):
    class Whole:  # get only: reads_ranges is not set
        url = "memory://whole"

        def __init__(self):
            self.inner = MemoryStore()

        def get(self, key):
            return self.inner.get(key)

    store = Whole()
    t, _ = _table(500, seed=1)
    store.inner.put(KEY, _object(t))
    assert rangeparts.open_table(store, KEY, 7) is False
    assert rangeparts.open_table(RetryingStore(store), KEY, 7) is False


class _Counting(MemoryStore):
    def __init__(self):
        super().__init__()
        self.ranged = self.gets = 0

    def get(self, key):
        self.gets += 1
        return super().get(key)

    def get_range(self, key, start, length):
        self.ranged += 1
        return super().get(key)[start : start + length]


def _damaged(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]


def test_damage_is_corruption_when_the_damaged_part_is_reached(small_parts):
    store = MemoryStore()
    t, _ = _table(500, seed=3)
    data = _object(t)
    meta_len = int.from_bytes(data[codec.HEADER_SIZE : codec.HEADER_SIZE + 8], "big")
    data_start = codec.HEADER_SIZE + 12 + meta_len
    parted = rangeparts.open_table(_stored(store, data), KEY, 7)
    parts = parted._entry["rows"][3]
    third = data_start + parted._entry["rows"][1] + parts[0][0] + parts[1][0] + 5
    reader = rangeparts.open_table(_stored(store, _damaged(data, third)), KEY, 7).row_parts()
    next(reader), next(reader)  # the first two parts are whole
    with pytest.raises(Corruption, match="part's checksum"):
        next(reader)
    with pytest.raises(Corruption, match="meta checksum"):
        rangeparts.open_table(_stored(store, _damaged(data, codec.HEADER_SIZE + 20)), KEY, 7)
    with pytest.raises(Corruption, match="header checksum"):
        rangeparts.open_table(_stored(store, _damaged(data, 5)), KEY, 7)
    for bit in range(8):  # the schema: no silent change of a column's type or byte order
        schema_at = data_start + parted._entry["rows"][0] + 40
        flipped = data[:schema_at] + bytes([data[schema_at] ^ (1 << bit)]) + data[schema_at + 1 :]
        reader = rangeparts.open_table(_stored(store, flipped), KEY, 7).row_parts()
        with pytest.raises(Corruption, match="schema's checksum"):
            next(reader)
    short = rangeparts.open_table(_stored(store, data[: len(data) - 100]), KEY, 7)
    with pytest.raises(Corruption, match="truncated"):
        list(short.row_parts()) + list(short.del_parts())
    with pytest.raises(Corruption):  # the whole read checks the frame's checksum
        rangeobj.decode(_damaged(data, third), KEY)


def _stored(store: MemoryStore, data: bytes) -> MemoryStore:
    store.put(KEY, data)
    return store


def _check_get_range(store) -> None:
    store.put("20/1/x", bytes(range(200)))
    assert store.get_range("20/1/x", 0, 10) == bytes(range(10))
    assert store.get_range("20/1/x", 190, 50) == bytes(range(190, 200))
    assert store.get_range("20/1/x", 200, 5) == b"" and store.get_range("20/1/x", 300, 5) == b""
    assert store.get_range("20/1/x", 100, 2**62) == bytes(range(100, 200))  # what there is
    with pytest.raises(ObjectNotFound):
        store.get_range("20/1/none", 0, 5)


def test_get_range_of_every_store(tmp_path, s3_url):
    url, options = s3_url
    for store in (MemoryStore(), LocalStore(tmp_path), open_store(url, s3_options=options)):
        _check_get_range(store)


def test_ranged_reads_on_s3_equal_whole_reads(small_parts, s3_url):
    url, options = s3_url
    store = open_store(url, s3_options=options)
    t, _ = _table(400, seed=4)
    store.put(KEY, _object(t))
    whole = rangeobj.decode(store.get(KEY), KEY).arrow(7)
    parted = rangeparts.open_table(store, KEY, 7)
    assert pa.concat_tables(list(parted.row_parts())).equals(whole.rows())
    settings = Settings(background=False, compaction=False, freeze_interval_s=None)
    e = Engine.open(url, 0, settings)
    try:
        _fill(e, "int")
    finally:
        e.close()
    e = Engine.open(url, 0, settings)  # cold: nothing cached, objects read by parts
    try:
        _check_stream(e, "int")
    finally:
        e.close()


def _fill(e: Engine, kind: str) -> list[int]:
    e.create_database("d")
    e.create_table("d", "t", *SCHEMAS[kind])
    rng = random.Random(5)
    snaps = []
    for r in range(4):
        ks = rng.sample(range(r * 300, r * 300 + 900), 600)
        e.write("d", "t", [_row(kind, i, rng) for i in ks])
        e.write("d", "t", [], [_key(kind, i) for i in rng.sample(range(r * 300 + 900), 40)])
        for _ in range(3):  # keys with several versions in one object, some across a cut
            e.write("d", "t", [_row(kind, i, rng) for i in range(r * 300, r * 300 + 900, 7)])
        snaps.append(e.snapshot())
        e.freeze()
        e.flush()
    return snaps


def _check_stream(e: Engine, kind: str, snaps: list[int] | None = None) -> None:
    cases = [{}, {"start": _key(kind, 500), "end": _key(kind, 1400)}]
    cases += [{"snapshot": s} for s in snaps or ()]
    for kw in cases:
        got = list(e.scan_batches("d", "t", batch_rows=97, **kw))  # before any cache fill
        want = e.scan_arrow("d", "t", **kw)
        assert pa.Table.from_batches(got, want.schema).equals(want), kw


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_scan_batches_reads_objects_of_many_parts_by_parts(small_parts, kind):
    settings = Settings(background=False, compaction=False, freeze_interval_s=None)
    url = f"memory://parts-{uuid.uuid4().hex[:8]}"
    e = Engine.open(url, 0, settings)
    snaps = _fill(e, kind)
    e.checkpoint()
    e.close()
    e = Engine.open(url, 0, settings)  # cold: nothing cached
    gets: list[str] = []
    ranged: list[str] = []
    store = e.reader._store
    real_get, real_range = store.get, store.get_range

    def get(key):
        gets.append(key)
        return real_get(key)

    def get_range(key, start, length):
        ranged.append(key)
        return real_range(key, start, length)

    store.get, store.get_range = get, get_range
    try:
        list(e.scan_batches("d", "t", batch_rows=97))
        assert ranged and not [k for k in gets if k.startswith("20/")], gets
        _check_stream(e, kind, snaps[:2])
    finally:
        store.get, store.get_range = real_get, real_range
        e.close()


def _with_meta(data: bytes, change) -> bytes:
    """``data`` (a version-5 object) with its meta changed by ``change`` and every checksum but
    the parts' made again: only the meta's grammar can refuse it."""
    body = data[codec.HEADER_SIZE :]
    n = int.from_bytes(body[:8], "big")
    meta = msgpack.unpackb(body[12 : 12 + n], raw=False, strict_map_key=False)
    raw = msgpack.packb(change(meta), use_bin_type=True)
    body = len(raw).to_bytes(8, "big") + zlib.crc32(raw).to_bytes(4, "big") + raw + body[12 + n :]
    return codec.frame(codec.KIND_RANGE, body, 5)


def _set(path, value):
    def change(meta):
        at = meta
        for p in path[:-1]:
            at = at[p]
        at[path[-1]] = value
        return meta

    return change


@pytest.mark.parametrize(
    "change",
    [
        _set(["tables"], [7]),
        _set(["tables"], b"\x07"),
        _set(["tables", 7, "rows", 0], 0.0),
        _set(["tables", 7, "rows", 0], False),
        _set(["tables", 7, "rows", 3], "parts"),
        _set(["tables", 7, "rows", 3, 0], 5),
        _set(["tables", 7, "rows", 3, 0, 0], 0),
        _set(["tables", 7, "rows"], [0, 1]),
        _set(["tables", 7, "dels"], "x"),
        _set(["tables", 7], None),
    ],
)
def test_a_malformed_meta_is_corruption_read_whole_or_by_parts(small_parts, change):
    t, _ = _table(300, seed=6)
    bad = _with_meta(_object(t), change)
    store = MemoryStore()
    store.put(KEY, bad)
    with pytest.raises(Corruption):
        rangeobj.decode(bad, KEY)
    with pytest.raises(Corruption):
        parted = rangeparts.open_table(store, KEY, 7)
        list(parted.row_parts()) + list(parted.del_parts())


def _early(meta):
    """The meta as the first version-5 writers wrote it: parts of three items (no first key),
    then also streams of three (no schema checksum)."""
    for entry in meta["tables"].values():
        for stream in entry.values():
            if stream is not None:
                stream[3] = [p[:3] for p in stream[3]]
    return meta


def _earliest(meta):
    for entry in _early(meta)["tables"].values():
        for name, stream in entry.items():
            if stream is not None:
                entry[name] = [stream[0], stream[1], stream[3]]
    return meta


@pytest.mark.parametrize("change", [_early, _earliest])
def test_early_version_5_objects_still_read(small_parts, change):
    t, _ = _table(300, seed=8)
    data = _with_meta(_object(t), change)
    want = rangeobj.decode(_object(t), KEY).arrow(7)
    got = rangeobj.decode(data, KEY).arrow(7)
    assert got.rows().equals(want.rows()) and got.dels().equals(want.dels())
    store = MemoryStore()
    store.put(KEY, data)
    parted = rangeparts.open_table(store, KEY, 7)
    assert pa.concat_tables(list(parted.row_parts(100, 200))).equals(want.rows())  # all parts


def test_long_keys_are_not_named_in_the_meta(small_parts):
    long = [f"{i:04d}" + "a" * 1000 for i in range(40)]
    t = {"ts": [1] * 40, "cols": [long, ["v"] * 40], "del_pks": [], "del_ts": []}
    data = _object(t)
    parts = rangecols.encode_table(t, (0,))["rows"].parts
    assert len(parts) > 1 and all(p[3] is None for p in parts)
    assert len(data) < 20_000  # the keys are not copied, uncompressed, into the meta
    store = MemoryStore()
    store.put(KEY, data)
    rows = pa.concat_tables(list(rangeparts.open_table(store, KEY, 7).row_parts(long[20])))
    assert rows.column(0).to_pylist() == long  # every part read: no first keys to skip by


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
@pytest.mark.parametrize("seed", range(3))
def test_a_buffer_built_straight_into_arrow_is_the_object_of_its_sorted_lists(kind, seed):
    """``rangeobj.build`` orders each table's rows in Arrow (numpy's sort for an int64 key):
    the bytes and the stats equal the object encoded from the rows sorted as Python lists
    (``rangeobj._sorted``, the version-3 tables), for every key type, with nulls, keys
    written many times (their versions kept in ts order), deletes and more parts than one."""
    from dn.write.buffer import Buffer

    rng = random.Random(seed)
    schema, pk = SCHEMAS[kind]
    names = list(schema)
    pk_pos = tuple(names.index(c) for c in ([pk] if isinstance(pk, str) else pk))
    buf = Buffer(1, 0.0)
    n = rangecols.CHUNK_ROWS + 5_000 if seed == 0 else 3_000
    ts = 1
    for _ in range(0, n, 2_500):
        rows = []
        for _ in range(2_500):
            row = _row(kind, rng.randrange(n // 2), rng)  # about two versions a key
            rows.append(tuple(row.get(c) for c in names))
        dels = [_key(kind, rng.randrange(n)) for _ in range(rng.randrange(40))]
        buf.apply_write(ts, 7, len(names), pk_pos, rows, dels, 0)
        ts += 1
    buf.freeze()
    data, stats = rangeobj.build(3, buf)
    tables, want_stats = rangeobj._sorted(buf)  # noqa: SLF001 - the reference it must equal
    want = rangeobj.encode(3, buf.from_ts, buf.to_ts, buf.ncommits, [], tables, [], {7: pk_pos})
    assert data == want and stats == want_stats
    assert codec.version_of(data) == rangeobj.VERSION


def test_a_buffer_with_a_value_arrow_cannot_store_is_built_as_version_3():
    from dn.write.buffer import Buffer

    buf = Buffer(1, 0.0)
    buf.apply_write(1, 7, 2, (0,), [(1, "a"), (2, 5)], [], 0)  # a string column holding an int
    buf.freeze()
    data, _ = rangeobj.build(3, buf)
    assert codec.version_of(data) == 3
    got = rangeobj.decode(data, codec.range_key(3, 1, 1)).tables[7]
    assert got["cols"] == [[1, 2], ["a", 5]]
