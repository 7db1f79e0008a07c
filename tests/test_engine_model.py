"""Seeded model test of one shard: random upserts, deletes and DDL with freeze, flush,
checkpoint and close/reopen interleaved; after every step, scan, get and changes at random past
timestamps equal a dict-based reference model (tests/model.py).

Runs on the in-memory store (many steps), the local directory store, and S3 (moto server).
"""

from __future__ import annotations

import random
import uuid

import pytest

from dn import Engine, InvalidArgument, ManualClock, NotFound, Settings
from tests.model import Model

SCHEMA_A = {"k": "int64", "s": "string", "f": "float64", "b": "bytes", "ok": "bool"}
SCHEMA_C = {"g": "string", "n": "int64", "v": "string"}


def _settings(rng: random.Random, retention: bool) -> Settings:
    # small, randomized thresholds so that freezes, checkpoints and compactions also happen on
    # their own; GC deletes as soon as an object is unreferenced
    return Settings(
        background=False,
        freeze_bytes=rng.choice([2_000, 20_000, 1 << 20]),
        freeze_interval_s=None,
        checkpoint_interval_s=None,
        checkpoint_delta=rng.choice([25, 100, 10_000]),
        log_delete_grace_s=0,
        compaction_fanout=rng.choice([2, 3]),
        compaction_base_bytes=rng.choice([5_000, 20_000]),
        gc_grace_s=0,
        retention_s=rng.choice([3.0, 20.0]) if retention else None,
    )


def _row_a(rng: random.Random, k: int) -> dict:
    row = {"k": k}
    if rng.random() < 0.9:
        row["s"] = rng.choice(["", "x", "héllo", "z" * rng.randint(0, 40)])
    if rng.random() < 0.8:
        row["f"] = rng.choice([0.0, -1.5, 1e300, rng.random()])
    if rng.random() < 0.5:
        row["b"] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    if rng.random() < 0.5:
        row["ok"] = rng.random() < 0.5
    return row


def run_model(url: str, seed: int, steps: int, retention: bool = False) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    settings = _settings(rng, retention)
    eng = Engine.open(url, settings=settings, clock=clock)
    model = Model()
    stamps = [0]
    try:
        eng.create_database("db")
        ts = eng.create_table("db", "a", SCHEMA_A, "k")
        model.create("a", ts, ("k",), tuple(SCHEMA_A))
        stamps.append(ts)
        for step in range(steps):
            op = rng.random()
            if op < 0.70:
                name = "a" if rng.random() < 0.7 or model.live("c") is None else "c"
                keys = rng.sample(range(60), rng.randint(1, 12))
                n_up = rng.randint(0, len(keys))
                if name == "a":
                    ups = [_row_a(rng, k) for k in keys[:n_up]]
                    dels = keys[n_up:]
                else:
                    ups = [{"g": f"g{k % 3}", "n": k, "v": f"s{step}"} for k in keys[:n_up]]
                    dels = [(f"g{k % 3}", k) for k in keys[n_up:]]
                ts = eng.write("db", name, ups, dels)
                model.write(name, ts, ups, dels)
                stamps.append(ts)
            elif op < 0.76:
                eng.freeze()
            elif op < 0.81:
                eng.flush()
            elif op < 0.84:
                eng.maintain()
            elif op < 0.86:
                eng.checkpoint()
            elif op < 0.875:
                eng.close()
                eng = Engine.open(url, settings=settings, clock=clock)
            elif op < 0.91:
                eng.compact()
            elif op < 0.92:
                eng.collect_garbage(force=True)
                check_bucket(eng)
            elif op < 0.95 and retention:
                clock.advance(rng.choice([0.2, 1.0]))  # the retention window moves on
            elif op < 0.97:
                if model.live("c") is None:
                    ts = eng.create_table("db", "c", SCHEMA_C, ["g", "n"])
                    model.create("c", ts, ("g", "n"), tuple(SCHEMA_C))
                else:
                    ts = eng.drop_table("db", "c")
                    model.drop("c", ts)
                stamps.append(ts)
            verify(eng, model, rng, stamps)
        for s in stamps[-20:]:
            verify(eng, model, rng, [s])
    finally:
        eng.close()


def check_bucket(eng: Engine) -> None:
    """After GC with no grace, the bucket holds exactly what the manifest references."""
    st = eng.status()
    from dn.objects import codec

    want = {codec.range_key(0, a, b) for a, b in st["ranges"]}
    want |= {codec.checkpoint_key(0, c) for c in st["checkpoints"]}
    have = set(eng.store.list("20/")) | set(eng.store.list("10/"))
    assert have == want, (sorted(have - want), sorted(want - have))
    assert len(eng.store.list("00/")) <= 8


def verify(eng: Engine, model: Model, rng: random.Random, stamps: list[int]) -> None:
    eng._check()
    oldest = eng.oldest_readable()
    if oldest and stamps[0] < oldest:
        old = [s for s in stamps if s < oldest]
        with pytest.raises(InvalidArgument, match="retention window"):
            list(eng.scan("db", "a", snapshot=rng.choice(old)))
        with pytest.raises(InvalidArgument, match="retention window"):
            list(eng.changes("db", "a", rng.choice(old)))
        stamps = [s for s in stamps if s >= oldest] or [eng.snapshot()]
    snapshot = rng.choice(stamps[-50:] if rng.random() < 0.7 else stamps)
    name = rng.choice(["a", "c"])
    if model.version_at(name, snapshot) is None:
        with pytest.raises(NotFound):
            list(eng.scan("db", name, snapshot=snapshot))
        return
    assert list(eng.scan("db", name, snapshot=snapshot)) == model.rows(name, snapshot)
    if name == "a":
        cols = ["s", "k"]
        assert list(eng.scan("db", "a", snapshot=snapshot, columns=cols)) == model.rows(
            "a", snapshot, cols
        )
        lo, hi = sorted(rng.sample(range(61), 2))
        want = [r for r in model.rows("a", snapshot) if lo <= r["k"] < hi]
        assert list(eng.scan("db", "a", snapshot=snapshot, start=lo, end=hi)) == want
        keys = [rng.randrange(60) for _ in range(3)]
    else:
        keys = [(f"g{k % 3}", k) for k in (rng.randrange(60) for _ in range(3))]
    full = dict(zip(sorted(model.state(name, snapshot)), model.rows(name, snapshot)))
    for k in keys:
        assert eng.get("db", name, k, snapshot=snapshot) == full.get(k)
    from_ts = rng.choice([s for s in stamps if s <= snapshot] or [snapshot])
    got = [(c.ts, c.kind, c.pk, c.row) for c in eng.changes("db", name, from_ts, snapshot)]
    assert got == model.changes(name, from_ts, snapshot)


@pytest.mark.parametrize("seed", range(3))
def test_model_memory(seed):
    run_model(f"memory://model-{seed}-{uuid.uuid4().hex}", seed, 1000)


@pytest.mark.parametrize("seed", range(3))
def test_model_with_compaction_gc_and_retention(seed):
    run_model(f"memory://model-r-{seed}-{uuid.uuid4().hex}", 50 + seed, 1000, retention=True)


@pytest.mark.parametrize("seed", range(2))
def test_model_local_directory(tmp_path, seed):
    run_model(str(tmp_path / "shard"), 100 + seed, 600, retention=bool(seed))


@pytest.mark.s3
def test_model_s3(s3_url):
    url, _ = s3_url
    run_model(url, 200, 250, retention=True)
