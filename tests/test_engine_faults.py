"""Failing stores, stale incarnations and corrupt objects (DESIGN.md §5 promises 1, 2, 4, 6).

- A store that fails, loses acknowledgements of, or tears log, range, manifest and checkpoint
  writes: the engine retries, fails what it cannot make durable with a retryable error, never
  acknowledges a write that is not durable, never loses one that is, never applies one twice.
- Fencing: a second incarnation of a shard makes the first fail its next commit, and nothing
  the first writes afterwards is visible.
- Corruption: a flipped byte in any kind of object is detected and named, never read as data.
"""

from __future__ import annotations

import random
import uuid

import pytest

from dn import Corruption, Engine, Fenced, ManualClock, Settings, Unavailable
from dn.objects import codec
from dn.store import FaultyStore, MemoryStore, RetryingStore, RetryPolicy, open_store

SCHEMA = {"k": "int64", "v": "string"}


def _settings(**kw) -> Settings:
    base = dict(
        background=False, log_delete_grace_s=0, freeze_interval_s=None, checkpoint_interval_s=None
    )
    base.update(kw)
    return Settings(**base)


def _retrying(store, attempts=4):
    return RetryingStore(store, RetryPolicy(max_attempts=attempts, sleep=lambda s: None))


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_faulty_store_never_loses_or_duplicates_acknowledged_writes(seed):
    _fault_trial(seed, MemoryStore(), 150)


@pytest.mark.s3
def test_faulty_s3_never_loses_or_duplicates_acknowledged_writes(s3_url):
    url, _ = s3_url
    _fault_trial(11, open_store(url, retry=RetryPolicy(max_attempts=1)), 60)


def _fault_trial(seed: int, inner, writes: int) -> None:
    rng = random.Random(seed)
    faulty = FaultyStore(inner, seed=seed)
    store = _retrying(faulty)
    eng = Engine.open(settings=_settings(checkpoint_delta=15), store=store, clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    for prefix in ("30/", "20/", "00/", "10/"):
        for kind in ("error", "lost_ack", "torn"):
            faulty.add_rule(None, prefix, error_rate=rng.choice([0.1, 0.3, 0.6]), kind=kind)
    acked, unknown = {}, {}
    for i in range(writes):
        rows = [{"k": i * 10 + j, "v": f"w{i}"} for j in range(rng.randint(1, 4))]
        try:
            acked[i] = (eng.write("db", "t", rows), len(rows))
        except Unavailable as exc:
            assert exc.retryable
            unknown[i] = len(rows)
        for action in (eng.freeze, eng.flush, eng.maintain, eng.checkpoint):
            if rng.random() < 0.15:
                try:
                    action()
                except Unavailable:
                    pass
    assert acked, "some writes should get through the faults"
    assert sum(faulty.fired.values()) > 10
    eng.close()
    # The store heals; a new incarnation recovers from whatever the faults left behind.
    again = Engine.open(settings=_settings(), store=_retrying(inner), clock=ManualClock())
    try:
        again._check()
        rows = {r["k"]: r["v"] for r in again.scan("db", "t")}
        for i, (_, n) in acked.items():
            assert all(rows.get(i * 10 + j) == f"w{i}" for j in range(n)), f"lost write {i}"
        for i, n in unknown.items():  # all or nothing
            present = [rows.get(i * 10 + j) == f"w{i}" for j in range(n)]
            assert all(present) or not any(present), f"write {i} partly applied"
        assert set(k // 10 for k in rows) <= set(acked) | set(unknown)
        ups = [c.pk for c in again.changes("db", "t", 0)]
        assert len(ups) == len(set(ups)), "a write was applied twice"
    finally:
        again.close()


def test_log_write_of_unknown_outcome_is_settled_before_the_next_write():
    inner = MemoryStore()
    faulty = FaultyStore(inner)
    eng = Engine.open(settings=_settings(), store=faulty, clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    faulty.add_rule("put_if_absent", "30/", kind="lost_ack", count=1)
    with pytest.raises(Unavailable) as err:
        eng.write("db", "t", [{"k": 1, "v": "a"}])
    assert err.value.outcome_unknown
    assert eng.status()["state"] == "settling"
    # the write had landed: the next write settles it first, and both are visible, once
    ts = eng.write("db", "t", [{"k": 2, "v": "b"}])
    assert [r["k"] for r in eng.scan("db", "t")] == [1, 2]
    assert ts > max(c.ts for c in eng.changes("db", "t", 0) if c.pk == 1)
    faulty.add_rule("put_if_absent", "30/", kind="error", count=1)
    with pytest.raises(Unavailable):
        eng.write("db", "t", [{"k": 3, "v": "c"}])
    # a read at a later snapshot settles the unknown outcome too (it did not land here)
    assert [r["k"] for r in eng.scan("db", "t")] == [1, 2]
    eng.close()


def test_store_down_fails_writes_with_retryable_error_and_acknowledges_nothing():
    inner = MemoryStore()
    faulty = FaultyStore(inner)
    eng = Engine.open(settings=_settings(), store=_retrying(faulty), clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    before = inner.snapshot()
    faulty.add_rule(None, "", kind="error")
    for i in range(3):
        with pytest.raises(Unavailable):
            eng.write("db", "t", [{"k": i, "v": "x"}])
    assert inner.snapshot() == before
    faulty.clear_rules()
    eng.write("db", "t", [{"k": 9, "v": "y"}])
    assert [r["k"] for r in eng.scan("db", "t")] == [9]
    eng.close()


# -- fencing --------------------------------------------------------------------------------


def test_second_incarnation_fences_the_first():
    store = MemoryStore()
    a = Engine.open(settings=_settings(), store=store, clock=ManualClock())
    a.create_database("db")
    a.create_table("db", "t", SCHEMA, "k")
    a.write("db", "t", [{"k": 1, "v": "a"}])
    a.freeze()
    b = Engine.open(settings=_settings(), store=store, clock=ManualClock())
    assert b.status()["epoch"] == a.status()["epoch"] + 1
    with pytest.raises(Fenced):
        a.write("db", "t", [{"k": 2, "v": "zombie"}])
    with pytest.raises(Fenced):
        a.flush()
    with pytest.raises(Fenced):
        a.write("db", "t", [{"k": 3, "v": "zombie"}])
    assert a.status()["state"] == "fenced"
    b.write("db", "t", [{"k": 4, "v": "b"}])
    assert {r["k"]: r["v"] for r in b.scan("db", "t")} == {1: "a", 4: "b"}
    b.close()
    c = Engine.open(settings=_settings(), store=store, clock=ManualClock())
    assert {r["k"]: r["v"] for r in c.scan("db", "t")} == {1: "a", 4: "b"}
    c.close()
    a.close()


def test_zombie_buffer_checkpoint_is_invisible():
    store = MemoryStore()
    a = Engine.open(settings=_settings(), store=store, clock=ManualClock())
    a.create_database("db")
    a.create_table("db", "t", SCHEMA, "k")
    a.write("db", "t", [{"k": 1, "v": "a"}])
    a.freeze()
    b = Engine.open(settings=_settings(), store=store, clock=ManualClock())
    ts = b.write("db", "t", [{"k": 1, "v": "b"}])  # above the ceiling a left (decision 0013)
    with pytest.raises(Fenced):
        a.flush()  # its range object may land, but the manifest commit is fenced
    b.freeze()
    b.flush()
    b.checkpoint()
    assert [r["v"] for r in b.scan("db", "t")] == ["b"]
    assert b.status()["ranges"] == [(1, ts)]
    b.close()
    a.close()


# -- corruption -----------------------------------------------------------------------------


def _flip(store: MemoryStore, key: str, at: int = -1) -> None:
    data = bytearray(store.get(key))
    data[at] ^= 0x40
    store.put(key, bytes(data))


def _populated() -> MemoryStore:
    store = MemoryStore()
    eng = Engine.open(settings=_settings(), store=store, clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.write("db", "t", [{"k": 1, "v": "a"}])
    eng.freeze()
    eng.flush()
    eng.checkpoint()
    eng.write("db", "t", [{"k": 2, "v": "b"}])
    eng.freeze()
    eng.flush()
    eng.write("db", "t", [{"k": 3, "v": "c"}])
    eng.close()
    return store


@pytest.mark.parametrize("prefix", ["00/", "10/", "20/", "30/"])
@pytest.mark.parametrize("where", ["header", "body"])
def test_flipped_byte_in_each_kind_of_object_is_named(prefix, where):
    store = _populated()
    key = store.list(prefix)[-1]
    _flip(store, key, 5 if where == "header" else -1)
    with pytest.raises(Corruption) as err:
        eng = Engine.open(settings=_settings(), store=store, clock=ManualClock())
        try:
            list(eng.scan("db", "t"))
            list(eng.scan("db", "t", snapshot=5))
        finally:
            eng.close()
    assert err.value.key == key
    assert key in str(err.value)


def test_corrupt_range_object_is_detected_at_read_time():
    store = _populated()
    eng = Engine.open(settings=_settings(), store=store, clock=ManualClock())
    key = store.list("20/")[0]  # read through the checkpoint, not at recovery
    _flip(store, key)
    eng._state.cache = type(eng.reader.cache)(1)  # drop what recovery cached
    eng.reader.cache = eng._state.cache
    with pytest.raises(Corruption) as err:
        list(eng.scan("db", "t"))
    assert err.value.key == key
    eng.close()


def test_golden_frame_bytes():
    # the header is a format: magic, kind, version, body length, body crc32, header crc32
    framed = codec.encode(codec.KIND_LOG, [1, 0, []])
    assert framed.hex() == "444e4c01040000000000000025687c7fc589b81693010090"
    with pytest.raises(Corruption):
        codec.decode(codec.KIND_RANGE, framed, "k")
    with pytest.raises(Corruption) as err:
        codec.decode(codec.KIND_LOG, framed[:-1], "k")
    assert err.value.truncated
    with pytest.raises(Corruption) as err:
        codec.decode(codec.KIND_LOG, framed[:5] + b"\x09" + framed[6:], "k")
    assert not err.value.truncated


@pytest.mark.s3
def test_fencing_on_s3(s3_url):
    url, _ = s3_url
    a = Engine.open(url, settings=_settings())
    a.create_database("db")
    b = Engine.open(url, settings=_settings())
    with pytest.raises(Fenced):
        a.create_table("db", "t", SCHEMA, "k")
    b.create_table("db", "t", SCHEMA, "k")
    b.close()
    a.close()


def test_memory_store_url_roundtrip():
    name = f"memory://faults-{uuid.uuid4().hex}"
    eng = Engine.open(name, settings=_settings(), clock=ManualClock())
    eng.create_database("db")
    eng.close()
    assert open_store(name).list("00/")
