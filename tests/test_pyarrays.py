"""Python values into Arrow arrays for the range objects' encoders (:mod:`dn.objects.pyarrays`):
a column is converted in pieces (so that a shard's other threads run between them while it
writes a buffer out); the pieces joined equal the column converted whole, for every stored
type, with nulls in some pieces, in none, or a piece of nulls only."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from dn.objects import pyarrays
from dn.objects.pyarrays import Unencodable, int64s, stamps, to_array

TYPES = {
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    str: pa.string(),
    bytes: pa.binary(),
}


def _value(kind: type, rng: random.Random):
    if kind is int:
        return rng.randrange(-(2**63), 2**63)
    if kind is float:
        return rng.uniform(-1e9, 1e9)
    if kind is bool:
        return rng.random() < 0.5
    if kind is str:
        return "".join(rng.choice("ab\u00e9\u4e2d") for _ in range(rng.randrange(6)))
    return rng.randbytes(rng.randrange(6))


@pytest.mark.parametrize("kind", list(TYPES))
@pytest.mark.parametrize("seed", range(3))
def test_a_column_in_pieces_equals_it_converted_whole(kind, seed, monkeypatch):
    monkeypatch.setattr(pyarrays, "PIECE", 7)
    rng = random.Random(seed)
    n = rng.choice([0, 1, 7, 8, 20, 50])
    values = [_value(kind, rng) for _ in range(n)]
    if n > 10 and seed:  # nulls: scattered, and one piece of nulls only
        for i in rng.sample(range(n), n // 4):
            values[i] = None
        values[7:14] = [None] * 7
    got = to_array(values)
    want = pa.array(values, type=TYPES[kind]) if n and any(v is not None for v in values) else None
    if want is None:
        assert got.null_count == n and len(got) == n
        return
    assert got.type == want.type and got.equals(want)
    assert got.null_count == want.null_count


def test_int64s_and_stamps_in_pieces(monkeypatch):
    monkeypatch.setattr(pyarrays, "PIECE", 5)
    ts = list(range(10**12, 10**12 + 23))
    assert np.array_equal(int64s(ts), np.array(ts, np.int64))
    assert stamps(ts).to_pylist() == ts
    assert int64s([]).dtype == np.int64 and len(int64s([])) == 0


def test_mixed_types_across_pieces_are_unencodable(monkeypatch):
    monkeypatch.setattr(pyarrays, "PIECE", 4)
    with pytest.raises(Unencodable):
        to_array([1, 2, 3, 4, 5, "six"])  # the second type only in the second piece
