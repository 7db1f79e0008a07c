"""Bad input (DESIGN.md §5 promise 5): every malformed call gets a typed error with a clear
message, and the store's content is byte-identical before and after it.

Also: hypothesis-generated rows and keys against a table with every column type.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dn import (
    AlreadyExists,
    DNError,
    Engine,
    InvalidArgument,
    ManualClock,
    NotFound,
    Settings,
)
from dn.objects.codec import pack as codec_pack
from dn.store import MemoryStore
from dn.write.part import WritePart, pk_signature

SCHEMA = {"k": "int64", "s": "string", "f": "float64", "b": "bytes", "ok": "bool"}


@pytest.fixture(scope="module")
def shard():
    store = MemoryStore()
    eng = Engine.open(
        settings=Settings(background=False, max_value_bytes=64, max_batch_rows=50),
        store=store,
        clock=ManualClock(),
    )
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.create_table("db", "c", {"g": "string", "n": "int64", "v": "float64"}, ["g", "n"])
    eng.write("db", "t", [{"k": 1, "s": "one"}])
    eng.freeze()
    eng.flush()
    eng.checkpoint()
    eng.write("db", "t", [{"k": 2, "s": "two"}])
    yield eng, store
    eng.close()


BAD_CALLS = [
    # (what, call, error type, words the message must contain)
    ("unknown database", lambda e: e.write("nodb", "t", [{"k": 1}]), NotFound, "nodb"),
    ("unknown table", lambda e: e.write("db", "nope", [{"k": 1}]), NotFound, "db.nope"),
    ("read unknown table", lambda e: list(e.scan("db", "nope")), NotFound, "db.nope"),
    ("get unknown db", lambda e: e.get("x", "t", 1), NotFound, "'x'"),
    ("missing primary key", lambda e: e.write("db", "t", [{"s": "x"}]), InvalidArgument, "'k'"),
    ("null primary key", lambda e: e.write("db", "t", [{"k": None}]), InvalidArgument, "'k'"),
    ("wrong type", lambda e: e.write("db", "t", [{"k": "1"}]), InvalidArgument, "int64"),
    ("bool for int", lambda e: e.write("db", "t", [{"k": True}]), InvalidArgument, "int64"),
    ("float for int", lambda e: e.write("db", "t", [{"k": 1.0}]), InvalidArgument, "int64"),
    ("int out of range", lambda e: e.write("db", "t", [{"k": 1 << 63}]), InvalidArgument, "range"),
    ("str for bytes", lambda e: e.write("db", "t", [{"k": 3, "b": "x"}]), InvalidArgument, "bytes"),
    ("int for bool", lambda e: e.write("db", "t", [{"k": 3, "ok": 1}]), InvalidArgument, "bool"),
    ("unknown column", lambda e: e.write("db", "t", [{"k": 3, "zz": 1}]), InvalidArgument, "zz"),
    (
        "oversized string",
        lambda e: e.write("db", "t", [{"k": 3, "s": "x" * 65}]),
        InvalidArgument,
        "max_value_bytes",
    ),
    (
        "oversized bytes",
        lambda e: e.write("db", "t", [{"k": 3, "b": b"x" * 65}]),
        InvalidArgument,
        "max_value_bytes",
    ),
    (
        "lone surrogate",
        lambda e: e.write("db", "t", [{"k": 3, "s": "\ud800"}]),
        InvalidArgument,
        "string",
    ),
    ("duplicate key", lambda e: e.write("db", "t", [{"k": 3}, {"k": 3}]), InvalidArgument, "twice"),
    ("upsert and delete", lambda e: e.write("db", "t", [{"k": 3}], [3]), InvalidArgument, "twice"),
    ("empty batch", lambda e: e.write("db", "t", []), InvalidArgument, "at least one"),
    (
        "huge batch",
        lambda e: e.write("db", "t", [{"k": i} for i in range(51)]),
        InvalidArgument,
        "max_batch_rows",
    ),
    ("row not a dict", lambda e: e.write("db", "t", [(3, "x")]), InvalidArgument, "dict"),
    ("rows not a list", lambda e: e.write("db", "t", {"k": 3}), InvalidArgument, "list"),
    (
        "composite key scalar",
        lambda e: e.write("db", "c", deletes=[1]),
        InvalidArgument,
        "composite",
    ),
    ("composite key arity", lambda e: e.get("db", "c", ("a",)), InvalidArgument, "composite"),
    (
        "composite delete arity",
        lambda e: e.write("db", "c", deletes=[("a", 1, 2)]),
        InvalidArgument,
        "composite",
    ),
    (
        "composite key type",
        lambda e: e.write("db", "c", deletes=[(1, "a")]),
        InvalidArgument,
        "string",
    ),
    ("bad db name", lambda e: e.create_database("no spaces"), InvalidArgument, "name"),
    ("db exists", lambda e: e.create_database("db"), AlreadyExists, "'db'"),
    (
        "table exists",
        lambda e: e.create_table("db", "t", {"k": "int64"}, "k"),
        AlreadyExists,
        "db.t",
    ),
    (
        "unknown type",
        lambda e: e.create_table("db", "u", {"k": "int32"}, "k"),
        InvalidArgument,
        "int32",
    ),
    (
        "pk not in schema",
        lambda e: e.create_table("db", "u", {"k": "int64"}, "x"),
        InvalidArgument,
        "'x'",
    ),
    ("empty schema", lambda e: e.create_table("db", "u", {}, "k"), InvalidArgument, "schema"),
    ("drop unknown table", lambda e: e.drop_table("db", "u"), NotFound, "db.u"),
    ("drop unknown db", lambda e: e.drop_database("u"), NotFound, "'u'"),
    (
        "snapshot not int",
        lambda e: list(e.scan("db", "t", snapshot="5")),
        InvalidArgument,
        "snapshot",
    ),
    (
        "snapshot negative",
        lambda e: list(e.scan("db", "t", snapshot=-1)),
        InvalidArgument,
        "snapshot",
    ),
    (
        "snapshot far future",
        lambda e: list(e.scan("db", "t", snapshot=1 << 62)),
        InvalidArgument,
        "future",
    ),
    (
        "table before creation",
        lambda e: list(e.scan("db", "t", snapshot=1)),
        NotFound,
        "timestamp 1",
    ),
    (
        "from after snapshot",
        lambda e: list(e.changes("db", "t", 10, snapshot=5)),
        InvalidArgument,
        "after",
    ),
    ("from not int", lambda e: list(e.changes("db", "t", None)), InvalidArgument, "from_ts"),
    (
        "unknown projection",
        lambda e: list(e.scan("db", "t", columns=["zz"])),
        InvalidArgument,
        "zz",
    ),
    (
        "scan start wrong type",
        lambda e: list(e.scan("db", "t", start="a")),
        InvalidArgument,
        "int64",
    ),
]


@pytest.mark.parametrize("what, call, error, words", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_gets_a_typed_error_and_changes_nothing(shard, what, call, error, words):
    eng, store = shard
    before = store.snapshot()
    rows_before = list(eng.scan("db", "t"))
    with pytest.raises(error) as err:
        call(eng)
    assert isinstance(err.value, DNError)
    assert words in str(err.value), f"{what}: message {err.value!s} lacks {words!r}"
    assert store.snapshot() == before
    assert list(eng.scan("db", "t")) == rows_before
    eng._check()


def test_errors_pickle_with_their_kind_and_details():
    import pickle

    from dn.errors import Corruption, Unavailable

    for exc in (
        NotFound("x", table="t"),
        Unavailable("y", outcome_unknown=True),
        Corruption("z", key="k", truncated=True),
    ):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert back.details == exc.details
    assert pickle.loads(pickle.dumps(Unavailable("y", outcome_unknown=True))).outcome_unknown


values = {
    "k": st.integers(-(1 << 63), (1 << 63) - 1),
    "s": st.one_of(st.none(), st.text(max_size=20)),
    "f": st.one_of(st.none(), st.floats(allow_nan=False)),
    "b": st.one_of(st.none(), st.binary(max_size=20)),
    "ok": st.one_of(st.none(), st.booleans()),
}
junk = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.fixed_dictionaries({}, optional={**values, "zz": junk}),
    garbage=st.dictionaries(st.sampled_from(list(SCHEMA) + ["x"]), junk, max_size=3),
)
def test_fuzzed_rows_are_stored_exactly_or_rejected_cleanly(shard, row, garbage):
    eng, store = shard
    for candidate in (row, {**row, **garbage}):
        before = store.snapshot()
        try:
            ts = eng.write("db", "t", [candidate])
        except InvalidArgument:
            assert store.snapshot() == before
            continue
        got = eng.get("db", "t", candidate["k"], snapshot=ts)
        want = {c: candidate.get(c) for c in SCHEMA}
        if isinstance(want["f"], int) and not isinstance(want["f"], bool):
            want["f"] = float(want["f"])
        assert got == want or (math.isnan(got["f"]) and math.isnan(want["f"]))


def _cols(n: int = 1, **given) -> bytes:
    """One packed chunk of columns for table t: ``given`` columns, the others null."""
    return codec_pack([given.get(c, [None] * n) for c in SCHEMA])


def _write_packed(eng: Engine, table: str, chunks, dels=b"\x90") -> int:
    """``chunks`` and ``dels`` (packed) written as one part made for the live ``db.table``."""
    live = eng.live_table("db", table)
    return eng.write_packed_columns(
        WritePart("db", table, live.id, pk_signature(live), 0, dels, chunks)
    )


PACKED_BAD = [
    # (what, chunks, packed deletes, words the message must contain)
    ("not msgpack", [b"\xc1"], b"\x90", "decode"),
    ("trailing bytes", [_cols(k=[5]) + b"\x90"], b"\x90", "decode"),
    ("chunk not an array", [codec_pack({"k": 1})], b"\x90", "array of 5 columns"),
    ("column count", [codec_pack([[5], ["x"]])], b"\x90", "array of 5 columns"),
    (
        "a column not an array",
        [codec_pack([5, None, None, None, None])],
        b"\x90",
        "array of 5 columns",
    ),
    ("uneven columns", [codec_pack([[5, 6], [None], [None], [None], [None]])], b"\x90", "equal"),
    ("empty columns", [codec_pack([[], [], [], [], []])], b"\x90", "non-zero"),
    ("int in float column", [_cols(k=[5], f=[3])], b"\x90", "normal form"),
    ("wrong type", [_cols(k=[5], s=[7])], b"\x90", "string"),
    ("value too large", [_cols(k=[5], b=[b"x" * 65])], b"\x90", "max_value_bytes"),
    ("null key", [_cols(k=[None], s=["x"])], b"\x90", "'k'"),
    ("bad delete key", [], codec_pack(["x"]), "int64"),
    ("deletes not an array", [_cols(k=[5])], codec_pack(5), "array"),
    ("duplicate key", [_cols(k=[5])], codec_pack([5]), "twice"),
    ("key twice in a chunk", [_cols(2, k=[5, 5])], b"\x90", "twice"),
    ("empty", [], b"\x90", "at least one"),
    ("chunks not a list", b"abc", b"\x90", "bytes"),
    ("a chunk not bytes", [_cols(k=[5]), 7], b"\x90", "bytes"),
    ("deletes not bytes", [_cols(k=[5])], [], "bytes"),
    ("bad value in a later chunk", [_cols(k=[5]), _cols(k=[6], s=[7])], b"\x90", "string"),
    ("wrong type after a null", [_cols(3, k=[5, 6, 7], s=[None, "x", 7])], b"\x90", "string"),
    ("key twice across chunks", [_cols(k=[5]), _cols(k=[5], s=["x"])], b"\x90", "twice"),
    ("over max_batch_rows", [_cols(51, k=list(range(300, 351)))], b"\x90", "max_batch_rows"),
]


def test_packed_chunks_read_back_as_one_batch(shard):
    eng, _ = shard
    rows = [(200 + i, f"s{i}", i * 0.5, b"b", True) for i in range(40)]
    chunks = [codec_pack([list(c) for c in zip(*rows[i : i + 7])]) for i in range(0, 40, 7)]
    ts = _write_packed(eng, "t", chunks, codec_pack([2]))
    got = list(eng.scan("db", "t", snapshot=ts, start=200, end=240))
    assert got == [dict(zip(SCHEMA, r)) for r in rows]
    assert eng.get("db", "t", 2, snapshot=ts) is None
    assert len({c.ts for c in eng.changes("db", "t", ts, snapshot=ts)}) == 1  # one commit


def test_packed_columns_with_nulls_read_back(shard):
    eng, _ = shard
    ts = _write_packed(eng, "t", [_cols(2, k=[400, 401], f=[None, 1.5])])
    got = list(eng.scan("db", "t", snapshot=ts, start=400, end=402))
    assert got == [
        {"k": 400, "s": None, "f": None, "b": None, "ok": None},
        {"k": 401, "s": None, "f": 1.5, "b": None, "ok": None},
    ]


BAD_COLUMNS = [
    # (what, columns, deletes, words the message must contain)
    ("not a mapping", [[1, 2]], (), "dict"),
    ("unknown column", {"k": [1], "zz": [1]}, (), "zz"),
    ("missing primary key", {"s": ["x"]}, (), "'k'"),
    ("uneven lengths", {"k": [1, 2], "s": ["x"]}, (), "equal lengths"),
    ("a column is a string", {"k": [1], "s": "x"}, (), "list, tuple or array"),
    ("a column is a scalar", {"k": 1}, (), "list, tuple or array"),
    ("a column is a set", {"k": {3, 1, 2}, "s": ["a", "b", "c"]}, (), "list, tuple or array"),
    ("a column is a generator", {"k": (i for i in range(3))}, (), "list, tuple or array"),
    ("null among strings, wrong type after", {"k": [1, 2, 3], "s": [None, "x", 7]}, (), "string"),
    ("wrong type", {"k": [1, "2"]}, (), "int64"),
    ("bool for int", {"k": [True]}, (), "int64"),
    ("null key", {"k": [1, None]}, (), "'k'"),
    ("value too large", {"k": [1], "b": [b"x" * 65]}, (), "max_value_bytes"),
    ("duplicate key", {"k": [1, 1]}, (), "twice"),
    ("upsert and delete of one key", {"k": [7]}, [7], "twice"),
    ("empty", {"k": []}, (), "at least one"),
    ("over max_batch_rows", {"k": list(range(51))}, (), "max_batch_rows"),
]


BAD_BY_COLUMN = [("packed", *c) for c in PACKED_BAD] + [("columns", *c) for c in BAD_COLUMNS]


@pytest.mark.parametrize(
    "how, what, batch, dels, words", BAD_BY_COLUMN, ids=[f"{c[0]}: {c[1]}" for c in BAD_BY_COLUMN]
)
def test_bad_batches_by_column_are_refused_and_change_nothing(shard, how, what, batch, dels, words):
    eng, store = shard
    write = (
        (lambda _db, table, chunks, d: _write_packed(eng, table, chunks, d))
        if how == "packed"
        else eng.write_columns
    )
    before = store.snapshot()
    with pytest.raises(InvalidArgument) as err:
        write("db", "t", batch, dels)
    assert words in str(err.value), str(err.value)
    assert store.snapshot() == before


def test_column_batch_reads_back_like_a_dict_batch(shard):
    eng, _ = shard
    np = pytest.importorskip("numpy")
    keys = np.arange(500, 520, dtype=np.int64)
    cols = {
        "k": keys,
        "s": [f"s{i}" for i in range(20)],
        "f": list(range(20)),
        "ok": np.array([i % 2 == 0 for i in range(20)]),
    }
    ts = eng.write_columns("db", "t", cols, deletes=[2])
    want = [
        {"k": 500 + i, "s": f"s{i}", "f": float(i), "b": None, "ok": i % 2 == 0} for i in range(20)
    ]
    got = list(eng.scan("db", "t", snapshot=ts, start=500, end=520))
    assert got == want
    assert all(type(r["k"]) is int and type(r["f"]) is float for r in got)
    assert eng.get("db", "t", 2, snapshot=ts) is None
    ts2 = eng.write("db", "t", [{**r, "k": r["k"] + 100} for r in want])
    again = list(eng.scan("db", "t", snapshot=ts2, start=600, end=620))
    assert again == [{**r, "k": r["k"] + 100} for r in want]


def test_column_lists_are_copied_before_the_call_returns(shard):
    eng, _ = shard
    keys, vals = [700, 701], ["a", "b"]
    ts = eng.write_columns("db", "t", {"k": keys, "s": vals})
    keys[0], vals[0] = 999, "changed"
    assert eng.get("db", "t", 700, snapshot=ts)["s"] == "a"
    assert eng.get("db", "t", 999) is None


def test_composite_key_columns_survive_a_reopen():
    store = MemoryStore()
    eng = Engine.open(settings=Settings(background=False), store=store, clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "c", {"g": "string", "n": "int64", "v": "float64"}, ["g", "n"])
    eng.write_columns("db", "c", {"g": ["a", "a", "b"], "n": [1, 2, 1], "v": [1, 2, None]})
    _write_packed(eng, "c", [codec_pack([["b"], [2], [0.5]])], codec_pack([("a", 1)]))
    want = list(eng.scan("db", "c"))
    assert want == [
        {"g": "a", "n": 2, "v": 2.0},
        {"g": "b", "n": 1, "v": None},
        {"g": "b", "n": 2, "v": 0.5},
    ]
    eng.close()
    again = Engine.open(settings=Settings(background=False), store=store, clock=ManualClock())
    try:
        assert again.status()["counters"]["replayed_commands"] >= 2
        assert list(again.scan("db", "c")) == want
        assert [c.pk for c in again.changes("db", "c", 0) if c.kind == "delete"] == [("a", 1)]
    finally:
        again.close()


def test_columns_may_be_ranges_and_hold_nulls_outside_the_key(shard):
    eng, _ = shard
    ts = eng.write_columns(
        "db", "t", {"k": range(800, 803), "s": [None, "b", None], "f": (None, 2, 0.5)}
    )
    got = list(eng.scan("db", "t", snapshot=ts, start=800, end=803))
    assert got == [
        {"k": 800, "s": None, "f": None, "b": None, "ok": None},
        {"k": 801, "s": "b", "f": 2.0, "b": None, "ok": None},
        {"k": 802, "s": None, "f": 0.5, "b": None, "ok": None},
    ]


# -- the write part's codec (dn.write.part) -----------------------------------------------------


def test_a_write_part_round_trips_through_its_call_and_logs_op5_bytes():
    """Packed once on the client, carried as call arguments (pickled, as Ray would), taken
    back by the shard, decoded, and logged as ``[table_id, [chunk, ...], deletes]``: the very
    bytes of op 5 (pinned here; docs/formats.md)."""
    import pickle

    from dn.schema import TableDef

    t = TableDef("db", "t", (("k", "int64"), ("v", "string")), ("k",), 300)
    part = WritePart.from_columns(t, [[1, 2], ["a", None]], [7], after=5)
    assert (part.table_id, part.pk_signature, part.after) == (300, (("k", "int64"),), 5)
    args = pickle.loads(pickle.dumps(part.to_call()))
    assert len(args) == 2 + len(part.chunks)
    back = WritePart.from_call(*args)
    assert back == part
    decoded = back.decode(t, 1 << 20, 100)
    assert (decoded.chunks, decoded.deletes, decoded.nrows) == ([((1, 2), ("a", None))], [7], 3)
    assert back.log_payload() == codec_pack([300, [[[1, 2], ["a", None]]], [7]])
    assert back.log_payload().hex() == "93cd012c919292010292a161c09107"
    no_rows = WritePart.from_columns(t, [], [1, 2])
    assert no_rows.chunks == () and no_rows.log_payload() == codec_pack([300, [], [1, 2]])


def test_a_large_part_travels_as_separate_arguments_under_the_inline_limit():
    from dn.schema import TableDef
    from dn.write.part import MAX_CHUNK_BYTES

    t = TableDef("db", "t", (("k", "int64"), ("b", "bytes")), ("k",), 9)
    n = 3000
    part = WritePart.from_columns(t, [list(range(n)), [b"x" * 100] * n], [])
    head, dels, *chunks = part.to_call()
    assert len(chunks) > 1 and all(len(c) <= MAX_CHUNK_BYTES for c in chunks)
    assert len(codec_pack(list(head))) < 200 and dels == b"\x90"
    decoded = WritePart.from_call(head, dels, *chunks).decode(t, 1 << 20, 10_000)
    assert [k for cols in decoded.chunks for k in cols[0]] == list(range(n))


BAD_CALLS_OF_A_PART = [
    # (what, the call's arguments given the live table, words the message must contain)
    ("head not an array", lambda t: ("db", b"\x90"), "head"),
    ("head too short", lambda t: (("db", "t", t.id, pk_signature(t)), b"\x90"), "head"),
    (
        "table id not an int",
        lambda t: (("db", "t", str(t.id), pk_signature(t), 0), b"\x90"),
        "table_id",
    ),
    ("negative after", lambda t: (("db", "t", t.id, pk_signature(t), -1), b"\x90"), "after"),
    ("table name not a str", lambda t: (("db", 7, t.id, pk_signature(t), 0), b"\x90"), "names"),
    ("signature not pairs", lambda t: (("db", "t", t.id, ["k"], 0), b"\x90"), "pairs"),
    ("deletes not bytes", lambda t: (("db", "t", t.id, pk_signature(t), 0), [5]), "bytes"),
    ("a chunk not bytes", lambda t: (("db", "t", t.id, pk_signature(t), 0), b"\x90", "x"), "bytes"),
    (
        "routed by another key",
        lambda t: (("db", "t", t.id, (("s", "string"),), 0), b"\x90", _cols(k=[5])),
        "routed by primary key",
    ),
]


@pytest.mark.parametrize(
    "what, args, words", BAD_CALLS_OF_A_PART, ids=[c[0] for c in BAD_CALLS_OF_A_PART]
)
def test_a_malformed_part_is_refused_with_a_typed_error_and_changes_nothing(
    shard, what, args, words
):
    eng, store = shard
    before = store.snapshot()
    with pytest.raises(InvalidArgument) as err:
        eng.write_packed_columns(WritePart.from_call(*args(eng.live_table("db", "t"))))
    assert words in str(err.value), str(err.value)
    assert store.snapshot() == before


def test_a_part_made_for_a_dropped_and_recreated_table_is_stale():
    """The same name, columns and primary key, but another table: its part is refused with
    StaleTable (it pickles as itself, so it crosses Ray), and nothing is written."""
    import pickle

    from dn.errors import StaleTable

    store = MemoryStore()
    eng = Engine.open(settings=Settings(background=False), store=store, clock=ManualClock())
    try:
        eng.create_database("db")
        eng.create_table("db", "r", {"k": "int64", "v": "string"}, "k")
        old = eng.live_table("db", "r")
        part = WritePart.from_columns(old, [[1], ["x"]], [])
        assert eng.get("db", "r", 1, snapshot=eng.write_packed_columns(part)) == {"k": 1, "v": "x"}
        eng.drop_table("db", "r")
        eng.create_table("db", "r", {"k": "int64", "v": "string"}, "k")
        before = store.snapshot()
        with pytest.raises(StaleTable, match="redefined") as err:
            eng.write_packed_columns(part)
        assert store.snapshot() == before and list(eng.scan("db", "r")) == []
        again = pickle.loads(pickle.dumps(err.value))
        assert type(again) is StaleTable and again.details == {"database": "db", "table": "r"}
        assert not again.retryable and again.code == "stale_table"
        new = WritePart.from_columns(eng.live_table("db", "r"), [[1], ["y"]], [])
        assert eng.get("db", "r", 1, snapshot=eng.write_packed_columns(new))["v"] == "y"
    finally:
        eng.close()
