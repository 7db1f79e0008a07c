"""Runs kept by column (a buffer's tail): pickled for another process, and merged by a scan,
they give exactly what the same rows kept as tuples give."""

from __future__ import annotations

import gc
import pickle
import random
import threading

import pytest

from dn.read import feed
from dn.read.collector import paused_gc
from dn.read.pick import sorted_rows
from dn.read.run import Run


def _pair(pks, ts, rows, del_pks=(), del_ts=(), pk_pos=(0,)):
    """The same versions as a run of row tuples and as a run of columns."""
    cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(2)]
    by_rows = Run(list(pks), list(ts), list(rows), list(del_pks), list(del_ts), pk_pos=pk_pos)
    by_cols = Run(list(pks), list(ts), None, list(del_pks), list(del_ts), pk_pos=pk_pos, cols=cols)
    return by_rows, by_cols


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("pk_pos", [(0,), (0, 1)])
def test_a_column_run_pickles_to_the_same_versions(protocol, pk_pos):
    rows = [(i % 7, f"s{i}") for i in range(50)]
    pks = [r[0] if len(pk_pos) == 1 else r for r in rows]
    _, run = _pair(pks, [10 + i // 9 for i in range(50)], rows, [3], [99], pk_pos=pk_pos)
    buffers: list = []
    blob = pickle.dumps(
        run, protocol=protocol, buffer_callback=buffers.append if protocol >= 5 else None
    )
    assert len(buffers) == (1 if protocol >= 5 else 0)  # the rows travel out of band
    back = pickle.loads(blob, buffers=buffers)
    assert back.rows == rows
    assert back.pks == pks
    assert back.ts == run.ts
    assert (back.del_pks, back.del_ts) == ([3], [99])


def test_column_runs_scan_like_row_runs_and_like_a_model():
    rng = random.Random(5)
    for _ in range(200):
        runs_rows, runs_cols, ts = _random_runs(rng, rng.randint(1, 4), 30, range(41))
        snap = rng.randint(1, ts)
        start, end = rng.choice([(None, None), (5, 30), (10, None), (None, 20)])
        want = sorted_rows(snap, runs_rows, start, end)
        assert sorted_rows(snap, runs_cols, start, end) == want
        mixed = [runs_rows[0], *runs_cols[1:]]  # a mix of both kinds
        assert sorted_rows(snap, mixed, start, end) == want
        model: dict = {}
        for run, _ in runs_rows:
            for t, k, row in sorted(
                [(t, k, r) for k, t, r in zip(run.pks, run.ts, run.rows)]
                + [(t, k, None) for k, t in zip(run.del_pks, run.del_ts)]
            ):
                if t <= snap:
                    model[k] = row
        expect = [
            model[k]
            for k in sorted(model)
            if model[k] is not None and (start is None or k >= start) and (end is None or k < end)
        ]
        assert want == expect


def test_overlapping_pauses_turn_the_collector_back_on_once_and_only_if_it_was_on():
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with paused_gc():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=other)
    with paused_gc():
        t.start()
        inside.wait(5)
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause is still running
    release.set()
    t.join(5)
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()
    with pytest.raises(ValueError):
        with paused_gc():
            raise ValueError
    assert gc.isenabled()


def _random_runs(rng, nruns, nversions, keyspace, key=lambda k: k, p_delete=0.2):
    runs_rows, runs_cols, ts = [], [], 1
    for _ in range(nruns):  # oldest first, disjoint timestamps
        ups, dels = [], []
        for _ in range(rng.randint(0, nversions)):  # one version per timestamp
            (dels if rng.random() < p_delete else ups).append((key(rng.choice(keyspace)), ts))
            ts += 1
        by_rows, by_cols = _pair(
            [k for k, _ in ups],
            [t for _, t in ups],
            [(k, f"v{k}-{t}") for k, t in ups],
            [k for k, _ in dels],
            [t for _, t in dels],
        )
        runs_rows.append((by_rows, ts - 1))
        runs_cols.append((by_cols, ts - 1))
    return runs_rows, runs_cols, ts


def _dict_path(monkeypatch, *args):
    with monkeypatch.context() as m:
        m.setattr("dn.read.pick.int_picks", lambda *a: None)
        return sorted_rows(*args)


@pytest.mark.parametrize("threshold", [0, None])
def test_int_keys_sorted_by_numpy_scan_like_the_dict_path(monkeypatch, threshold):
    """The numpy path for int keys (every case at threshold 0; only the large ones at the
    default) gives exactly what the dict path gives: newest version per key at the snapshot,
    deletes, bounds, runs of both kinds, keys at the ends of int64."""
    import dn.read.pick

    if threshold is not None:
        monkeypatch.setattr(dn.read.pick, "INT_PICKS_MIN", threshold)
    rng = random.Random(11)
    edge = [-(1 << 63), (1 << 63) - 1, -1, 0, 1]
    for case in range(120):
        big = case % 6 == 0
        keyspace = list(range(-50, 3000 if big else 60)) + edge
        runs_rows, runs_cols, ts = _random_runs(
            rng,
            rng.randint(1, 4),
            1500 if big else 30,
            keyspace,
            p_delete=(0.2, 0.0)[(case // 3) % 2],
        )
        snap = rng.randint(1, ts)
        start, end = rng.choice([(None, None), (5, 30), (-(1 << 63), None), (None, 1000), (0, 0)])
        for runs in (runs_rows, runs_cols, [runs_rows[0], *runs_cols[1:]]):
            want = _dict_path(monkeypatch, snap, runs, start, end)
            assert sorted_rows(snap, runs, start, end) == want


def test_keys_that_are_not_all_ints_take_the_dict_path(monkeypatch):
    import dn.read.pick

    monkeypatch.setattr(dn.read.pick, "INT_PICKS_MIN", 0)
    rng = random.Random(3)
    for key in (str, float, lambda k: (k, k % 3), lambda k: k if k % 7 else True):
        runs_rows, runs_cols, ts = _random_runs(rng, 3, 40, list(range(50)), key)
        assert dn.read.pick.int_picks(ts, runs_cols, None, None) is None
        want = _dict_path(monkeypatch, ts, runs_rows, None, None)
        assert sorted_rows(ts, runs_cols, None, None) == want


@pytest.mark.parametrize("threshold", [0, None])
def test_change_feeds_match_a_model(monkeypatch, threshold):
    """feed.changes (numpy ordering for int keys: every case at threshold 0, the large ones
    at the default) is every version in the window, in (ts, pk) order, for int and string
    keys, with and without deletes, projected or not."""
    import dn.read.pick
    from dn.schema import TableDef

    if threshold is not None:
        monkeypatch.setattr(dn.read.pick, "INT_PICKS_MIN", threshold)
    rng = random.Random(23)
    for case in range(60):
        string = case % 3 == 2
        key = (lambda k: f"k{k}") if string else (lambda k: k)
        table = TableDef(
            "db", "t", (("k", "string" if string else "int64"), ("v", "string")), ("k",), 1
        )
        big = case % 5 == 0
        runs_rows, runs_cols, ts = _random_runs(
            rng,
            rng.randint(1, 4),
            1500 if big else 30,
            list(range(3000 if big else 50)),
            key,
            p_delete=(0.2, 0.0)[case % 2],
        )
        lo, hi = sorted(rng.randint(1, ts) for _ in range(2))
        model = []
        for run, _ in runs_rows:
            model += [
                (t, "upsert", k, {"k": r[0], "v": r[1]})
                for k, t, r in zip(run.pks, run.ts, run.rows)
                if lo <= t <= hi
            ]
            model += [
                (t, "delete", k, None) for k, t in zip(run.del_pks, run.del_ts) if lo <= t <= hi
            ]
        model.sort(key=lambda c: (c[0], c[2]))
        for runs in (runs_rows, runs_cols):
            assert [tuple(c)[:4] for c in feed.changes(table, lo, hi, runs)] == model
            assert [c.row for c in feed.changes(table, lo, hi, runs, ["v"])] == [
                None if r is None else {"v": r["v"]} for *_, r in model
            ]
