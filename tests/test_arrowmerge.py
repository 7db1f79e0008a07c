"""Compaction's Arrow merge (:mod:`dn.upkeep.arrowmerge`) against its Python merge
(:func:`dn.upkeep.compaction.merge_table`): on random consecutive range objects — every key
type, nulls, several versions of a key in one object and across objects, deletes, any horizon,
the shard's oldest objects or not — both keep the same versions, with the same statistics, in
an object of the same bytes. An input of format 3 makes the whole merge Python's."""

from __future__ import annotations

import random

import pytest

from dn.objects import codec, rangecols, rangeobj
from dn.upkeep import arrowmerge, compaction

SCHEMAS = {
    "int": ((0,), lambda r: r.randrange(40)),
    "str": ((0,), lambda r: f"k{r.randrange(40):03d}"),
    "bytes": ((0,), lambda r: bytes([r.randrange(40)]) * 3),
    "two": ((1, 0), lambda r: (r.randrange(6), f"a{r.randrange(7)}")),
}


def _value(r: random.Random, c: int):
    if r.random() < 0.15:
        return None
    return [r.randrange(-5, 5), f"v{r.randrange(1000)}", r.random(), r.random() < 0.5][c % 4]


def _objects(r: random.Random, kind: str, n: int) -> tuple[list, int, int]:
    """``n`` consecutive objects of one table (id 7); (encoded objects, first ts, last ts)."""
    pk_pos, key = SCHEMAS[kind]
    ncols = 4
    out, ts = [], 100
    lo = ts + 1
    for _ in range(n):
        start = ts + 1
        ups, dels = [], []
        for _ in range(r.randrange(0, 60)):
            ts += r.randrange(1, 4)
            k = key(r)
            if r.random() < 0.25:
                dels.append((k, ts))
                continue
            row = [_value(r, c) for c in range(ncols)]
            for p, part in zip(pk_pos, k if isinstance(k, tuple) else (k,)):
                row[p] = part
            ups.append((k, ts, row))
        ups.sort(key=lambda v: (v[0], v[1]))
        dels.sort()
        cols = [[row[c] for _, _, row in ups] for c in range(ncols)] if ups else []
        table = {
            "ts": [t for _, t, _ in ups],
            "cols": cols,
            "del_pks": [list(k) if isinstance(k, tuple) else k for k, _ in dels],
            "del_ts": [t for _, t in dels],
        }
        ts += 1
        tables = {7: table} if ups or dels else {}
        data = rangeobj.encode(0, start, ts, 1, [], tables, [], {7: pk_pos})
        out.append(rangeobj.decode(data, f"20/0/{start}_{ts}"))
    return out, lo, ts


def _python(monkeypatch, *args):
    def refuse(*a):
        raise arrowmerge.NotArrow("the Python merge, for comparison")

    with monkeypatch.context() as m:
        m.setattr(arrowmerge, "merge_table", refuse)
        return compaction.merge(*args)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
@pytest.mark.parametrize("seed", range(12))
def test_the_arrow_merge_keeps_what_the_python_merge_keeps_in_the_same_bytes(
    kind, seed, monkeypatch
):
    r = random.Random(seed)
    inputs, lo, hi = _objects(r, kind, r.randint(2, 5))
    horizon = r.choice([0, lo + (hi - lo) // 3, (lo + hi) // 2, hi + 10])
    oldest = r.random() < 0.5
    args = (0, inputs, {7: (SCHEMAS[kind][0], None)}, horizon, oldest)
    data, stats = compaction.merge(*args)
    want, want_stats = _python(monkeypatch, *args)
    got = rangeobj.decode(data, "out")
    expect = rangeobj.decode(want, "out")
    assert got.tables == expect.tables
    assert {t: s.to_wire() for t, s in stats.items()} == {
        t: s.to_wire() for t, s in want_stats.items()
    }
    assert data == want
    assert codec.version_of(data) == rangeobj.VERSION


def test_an_input_of_format_3_makes_the_whole_merge_pythons(monkeypatch):
    r = random.Random(5)
    inputs, lo, hi = _objects(r, "int", 3)
    with monkeypatch.context() as m:  # the middle object as an old writer wrote it
        m.setattr(rangecols, "encode_table", _unencodable)
        t = inputs[1].tables
        inputs[1] = rangeobj.decode(
            rangeobj.encode(0, inputs[1].from_ts, inputs[1].to_ts, 1, [], t, [], {7: (0,)}),
            "v3",
        )
    assert inputs[1].arrow(7) is False
    calls = []
    real = arrowmerge.merge_table
    monkeypatch.setattr(arrowmerge, "merge_table", lambda *a: calls.append(a) or real(*a))
    data, _ = compaction.merge(0, inputs, {7: ((0,), None)}, (lo + hi) // 2, False)
    assert calls == []
    want, _ = _python(monkeypatch, 0, inputs, {7: ((0,), None)}, (lo + hi) // 2, False)
    assert data == want


def _unencodable(t, pk_pos=None):
    raise rangecols.Unencodable("as version 3 wrote it")
