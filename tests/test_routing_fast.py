"""The vectorized routing of int64 keys (:mod:`coordinator.client.routing`) against the
per-key path: the same shard for every key (at and around every msgpack encoding boundary,
and over the whole int64 range), the same parts from :func:`split` (same lists, order, objects
and Python types), and the per-key path kept for every other key type, small batches, and
shard counts over 65,536.
No Ray."""

from __future__ import annotations

import random

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.client import routing
from coordinator.client.routing import (
    VECTOR_MIN_KEYS,
    Batch,
    owners,
    shard_of,
    split,
    validate_batch,
    validate_columns,
)
from dn.objects.codec import pack
from dn.schema import TableDef
from dn.slots import INT_FORMS, int64_slots
from dn.write.part import pack_columns

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BOUNDARIES = (
    0,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**63 - 1,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32768,
    -32769,
    -(2**31),
    -(2**31) - 1,
    -(2**63),
)
#: Every boundary and its neighbours inside int64.
EDGE_KEYS = sorted(
    {k + d for k in BOUNDARIES for d in (-2, -1, 0, 1, 2) if INT64_MIN <= k + d <= INT64_MAX}
)
SHARD_COUNTS = (1, 2, 3, 4, 5, 6, 7, 16)

INT_TABLE = TableDef("db", "t", (("k", "int64"), ("v", "bytes"), ("f", "float64")), ("k",), 1)
STR_TABLE = TableDef("db", "s", (("k", "string"), ("v", "int64")), ("k",), 1)
COMPOSITE_TABLE = TableDef(
    "db", "c", (("a", "int64"), ("b", "string"), ("v", "bytes")), ("a", "b"), 1
)
LIMITS = (1 << 20, 100_000)


def vector_owners(keys: list, shards: int) -> list[int]:
    out = int64_slots(keys, shards)
    assert out is not None
    assert out.dtype in (np.uint8, np.uint16)
    return out.tolist()


def per_key(keys: list, shards: int) -> list[int]:
    return [shard_of(k, shards) for k in keys]


# -- the hash -------------------------------------------------------------------------------


def test_int_forms_are_msgpack_own_choice_at_every_boundary():
    # The grammar in the module docstring, checked against msgpack itself: each form's lowest
    # value and the value below it, with the header and payload length the form says.
    highs = [low - 1 for low, _, _ in INT_FORMS[1:]] + [INT64_MAX]
    for (low, header, size), high in zip(INT_FORMS, highs):
        for v in (low, high):
            blob = msgpack.packb(v, use_bin_type=True)
            assert len(blob) == len(header) + size, v
            assert blob.startswith(header), v
            if header:
                assert int.from_bytes(blob[1:], "big", signed=low < 0) == v
            else:  # fixint: the byte is the value
                assert blob == (v & 0xFF).to_bytes(1, "big")
    assert sorted(BOUNDARIES) == sorted({low for low, _, _ in INT_FORMS} | set(highs))


@pytest.mark.parametrize("shards", SHARD_COUNTS)
def test_vector_owners_equal_shard_of_at_every_encoding_boundary(shards):
    assert vector_owners(EDGE_KEYS, shards) == per_key(EDGE_KEYS, shards)
    for k in EDGE_KEYS:  # one key alone: no neighbour to hide a wrong form
        assert vector_owners([k], shards) == [shard_of(k, shards)], k


@pytest.mark.parametrize("shards", SHARD_COUNTS + (255, 256, 257, 1000, 4096, 65536))
def test_vector_owners_equal_shard_of_over_the_int64_range(shards):
    rnd = random.Random(shards)
    keys = [rnd.randint(INT64_MIN, INT64_MAX) for _ in range(2000)]
    keys += [rnd.randint(-(2**40), 2**40) for _ in range(1000)]
    keys += [rnd.randint(-300, 300) for _ in range(500)]
    assert vector_owners(keys, shards) == per_key(keys, shards)
    assert owners(keys, shards, int64=True) == per_key(keys, shards)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=1, max_size=50),
    shards=st.integers(1, 300),
)
def test_vector_owners_equal_shard_of_for_generated_keys(keys, shards):
    assert vector_owners(keys, shards) == per_key(keys, shards)


def test_owners_takes_the_vector_path_only_for_long_int64_lists(monkeypatch):
    keys = list(range(VECTOR_MIN_KEYS))
    monkeypatch.setattr(routing, "slots_py", _refuse)
    assert owners(keys, 4, int64=True) == per_key(keys, 4)
    with pytest.raises(AssertionError, match="per-key path"):
        owners(keys[:-1], 4, int64=True)  # too short
    with pytest.raises(AssertionError, match="per-key path"):
        owners(keys, 4)  # not known to be int64


def test_more_than_65536_shards_take_the_per_key_path():
    keys = list(range(-50, 150))
    assert int64_slots(keys, 65537) is None
    assert owners(keys, 70_000, int64=True) == per_key(keys, 70_000)


# -- split ----------------------------------------------------------------------------------


def _refuse(*_args, **_kwargs):
    raise AssertionError("the per-key path was taken")


def int_batch(rnd: random.Random, nrows: int, ndel: int, by_columns: bool) -> Batch:
    lo, hi = rnd.choice([(INT64_MIN, INT64_MAX), (-3000, 3000), (0, 70_000), (2**31, 2**33)])
    keys = list(dict.fromkeys(rnd.randint(lo, hi) for _ in range(3 * (nrows + ndel))))
    keys = keys[: nrows + ndel]
    rnd.shuffle(keys)
    vals = [
        rnd.randbytes(rnd.randrange(0, 120)) if rnd.random() < 0.9 else None for _ in range(nrows)
    ]
    floats = [k / 3 for k in keys[:nrows]]
    if by_columns:
        return validate_columns(
            INT_TABLE, {"k": keys[:nrows], "v": vals, "f": floats}, keys[nrows:], *LIMITS
        )
    rows = [{"k": k, "v": v, "f": f} for k, v, f in zip(keys, vals, floats)]
    return validate_batch(INT_TABLE, rows, keys[nrows:], *LIMITS)


def assert_same_parts(new: dict, old: dict) -> None:
    assert list(new) == list(old)  # the same shards, in the same order
    for s in old:
        a, b = new[s], old[s]
        assert a == b, s
        assert type(a.cols) is list and type(a.deletes) is list
        assert len(a.cols) == len(b.cols)
        for ca, cb in zip(a.cols, b.cols):
            assert type(ca) is list
            assert all(x is y for x, y in zip(ca, cb, strict=True))  # the batch's own objects
        assert all(x is y for x, y in zip(a.deletes, b.deletes, strict=True))
        assert pack_columns(a.cols) == pack_columns(b.cols) if a.cols else not b.cols


@pytest.mark.parametrize("shards", (2, 3, 4, 7, 16, 300))
def test_split_of_int64_keys_equals_the_per_key_split(shards, monkeypatch):
    rnd = random.Random(shards)
    cases = [
        (1000, 0),
        (1000, 37),
        (VECTOR_MIN_KEYS, 0),
        (0, VECTOR_MIN_KEYS),
        (0, 500),
        (VECTOR_MIN_KEYS - 1, 1),
        (250, 1),
        (1, 300),
        (5, 3),
        (1, 0),
        (0, 1),
    ]
    cases += [(rnd.randrange(0, 400), rnd.randrange(0, 60)) for _ in range(12)]
    for nrows, ndel in cases:
        if nrows + ndel == 0:
            continue
        for by_columns in (False, True):
            batch = int_batch(rnd, nrows, ndel, by_columns)
            assert batch.int64_key
            old = routing._split_py(batch, shards)
            if len(batch.keys) >= VECTOR_MIN_KEYS:  # prove the numpy path made the parts
                with monkeypatch.context() as m:
                    m.setattr(routing, "_split_py", _refuse)
                    new = split(batch, shards)
            else:
                new = split(batch, shards)
            assert_same_parts(new, old)
            want: dict = {}  # each part holds its own keys, in the batch's order
            for i, (k, s) in enumerate(zip(batch.keys, per_key(batch.keys, shards))):
                want.setdefault(s, ([], []))[i >= batch.nrows].append(k)
            assert {s: ((p.cols[0] if p.cols else []), p.deletes) for s, p in new.items()} == want


@pytest.mark.parametrize("shards", (2, 3, 4, 16))
def test_split_of_string_and_composite_keys_takes_the_per_key_path(shards, monkeypatch):
    rnd = random.Random(shards)
    monkeypatch.setattr(routing, "_split_sorted", _refuse)
    for nrows, ndel in ((1000, 50), (0, 200), (300, 0), (3, 2)):
        names = [f"key-{i}-{rnd.random()}" for i in range(nrows + ndel)]
        batch = validate_batch(
            STR_TABLE,
            [{"k": k, "v": i} for i, k in enumerate(names)][:nrows],
            names[nrows:],
            *LIMITS,
        )
        assert not batch.int64_key
        assert_same_parts(split(batch, shards), routing._split_py(batch, shards))
        pairs = [(rnd.randint(INT64_MIN, INT64_MAX), rnd.choice("abc")) for _ in range(nrows)]
        pairs = list(dict.fromkeys(pairs))
        cols = {
            "a": [a for a, _ in pairs],
            "b": [b for _, b in pairs],
            "v": [b"x" * (i % 7) for i in range(len(pairs))],
        }
        dels = [(i, "d") for i in range(ndel)]
        batch = validate_columns(COMPOSITE_TABLE, cols, dels, *LIMITS)
        assert not batch.int64_key
        assert_same_parts(split(batch, shards), routing._split_py(batch, shards))


def test_split_over_65536_shards_takes_the_per_key_path(monkeypatch):
    batch = int_batch(random.Random(9), 500, 20, True)
    want = routing._split_py(batch, 70_000)
    monkeypatch.setattr(routing, "_split_sorted", _refuse)
    assert_same_parts(split(batch, 70_000), want)


def test_no_numpy_scalar_leaks_into_the_parts():
    # Keys given as a numpy array (a Ray Data batch) are Python ints once validated; the parts
    # must hold those Python objects, never numpy scalars (np.int64 packs differently).
    n = 2000
    keys = np.arange(-(2**40), -(2**40) + 7 * n, 7, dtype=np.int64)
    cols = {
        "k": keys,
        "v": np.array([b"v%d" % i for i in range(n)], dtype=object),
        "f": np.linspace(0.0, 1.0, n),
    }
    dels = [int(k) + 1 for k in keys[:300]]
    batch = validate_columns(INT_TABLE, cols, dels, *LIMITS)
    assert batch.int64_key and len(batch.keys) >= VECTOR_MIN_KEYS
    for shards in (3, 4):
        parts = split(batch, shards)
        assert sum(p.nrows for p in parts.values()) == n
        assert sum(len(p.deletes) for p in parts.values()) == len(dels)
        for p in parts.values():
            assert all(type(k) is int for k in p.cols[0])
            assert all(type(k) is int for k in p.deletes)
            assert all(type(v) is bytes for v in p.cols[1])
            assert all(type(f) is float for f in p.cols[2])
            assert msgpack.unpackb(pack(p.cols), raw=False) == p.cols
    assert all(type(o) is int for o in owners(batch.keys, 4, int64=True))
