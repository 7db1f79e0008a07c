"""Regression tests for bugs the reliability trials (tests/trials/) found, each named after
what broke. The trial seed that found each is in its docstring (``python -m tests.trials
--only KIND --seed S --count 1 [--long]`` reproduces it on the code before the fix).
"""

from __future__ import annotations

import os

import pytest

from dn import Corruption, Engine, InvalidArgument, ManualClock, Settings, Unavailable
from dn.objects import codec
from dn.store import FaultyStore, LocalStore, MemoryStore

SCHEMA = {"k": "int64", "v": "string"}


def _settings(**kw) -> Settings:
    return Settings(
        background=False,
        freeze_interval_s=None,
        checkpoint_interval_s=None,
        log_delete_grace_s=0,
        gc_grace_s=0,
        retention_s=None,
        **kw,
    )


def _shard(store) -> Engine:
    eng = Engine.open(store=store, settings=_settings(), clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    return eng


def _rows(store) -> dict:
    eng = Engine.open(store=store, settings=_settings(), clock=ManualClock())
    try:
        return {r["k"]: r["v"] for r in eng.scan("db", "t")}
    finally:
        eng.close()


# -- stale listings (faults trials, long mode: seeds 1, 3, 6, 16, 17, 24, 37, 44, 54, 58) ------


def test_gc_through_a_stale_manifest_listing_keeps_the_newest_range():
    """GC read the manifest through a listing that missed the newest version, took the range
    that version added for garbage and deleted it (gc_grace_s=0): an acknowledged write lost."""
    inner = MemoryStore()
    faulty = FaultyStore(inner)
    eng = _shard(faulty)
    eng.write("db", "t", [{"k": 1, "v": "a"}])
    eng.freeze()
    eng.flush()
    newest = inner.list("20/")[-1]
    faulty.add_rule("list", "00/", kind="stale_list", count=1)
    eng.collect_garbage(force=True)
    assert newest in inner.list("20/")
    eng.close()
    assert _rows(inner) == {1: "a"}


def test_gc_through_a_stale_listing_of_the_only_manifest_does_not_fence_the_shard():
    """A listing that missed the shard's only manifest version made GC read "no manifest" and
    raise Fenced: a healthy shard stopped for good."""
    faulty = FaultyStore(MemoryStore())
    eng = _shard(faulty)
    faulty.add_rule("list", "00/", kind="stale_list", count=1)
    try:
        eng.collect_garbage(force=True)
    except Unavailable:
        pass  # retryable is fine; Fenced is not
    assert eng.status()["state"] == "open"
    eng.write("db", "t", [{"k": 2, "v": "b"}])
    eng.close()


def test_gc_after_a_lost_manifest_ack_and_a_stale_listing_keeps_the_committed_range():
    """A buffer checkpoint's manifest commit landed but its acknowledgement was lost (memory
    still at the older version); GC then listed the manifest without the landed version, so
    the older version looked current and the committed range was deleted (seed 54)."""
    inner = MemoryStore()
    faulty = FaultyStore(inner)
    eng = _shard(faulty)
    eng.write("db", "t", [{"k": 1, "v": "a"}])
    eng.freeze()
    faulty.add_rule("put_if_absent", "00/", kind="lost_ack", count=1)
    with pytest.raises(Unavailable):
        eng.flush()
    committed = inner.list("20/")
    faulty.add_rule("list", "00/", kind="stale_list", count=1)
    eng.collect_garbage(force=True)
    faulty.clear_rules()
    assert inner.list("20/") == committed
    eng.write("db", "t", [{"k": 2, "v": "b"}])
    eng.freeze()
    eng.flush()
    eng._check()
    eng.close()
    assert _rows(inner) == {1: "a", 2: "b"}


def test_settling_through_a_stale_manifest_listing_does_not_roll_memory_back():
    """After a commit of unknown outcome, the engine read the manifest back through a stale
    listing and adopted an older version, dropping committed ranges from memory; the next
    commit then failed its invariant check ("ranges not contiguous", seed 37)."""
    inner = MemoryStore()
    faulty = FaultyStore(inner)
    eng = _shard(faulty)
    for i in range(3):
        eng.write("db", "t", [{"k": i, "v": "a"}])
        eng.freeze()
        eng.flush()
    faulty.add_rule("put_if_absent", "00/", kind="lost_ack", count=1)
    eng.write("db", "t", [{"k": 9, "v": "z"}])
    eng.freeze()
    with pytest.raises(Unavailable):
        eng.flush()
    faulty.add_rule("list", "00/", kind="stale_list", count=3)
    eng.write("db", "t", [{"k": 10, "v": "y"}])
    eng.freeze()
    eng.flush()
    eng.checkpoint()
    eng._check()
    assert {r["k"] for r in eng.scan("db", "t")} == {0, 1, 2, 9, 10}
    eng.close()
    assert set(_rows(inner)) == {0, 1, 2, 9, 10}


# -- objects that pass their checksum but are not what their key says (planted trials) ---------


def _populated() -> MemoryStore:
    store = MemoryStore()
    eng = _shard(store)
    for i in range(4):
        eng.write("db", "t", [{"k": i, "v": f"w{i}"}])
        eng.freeze()
        eng.flush()
        if i in (1, 3):
            eng.checkpoint()
    eng.write("db", "t", [{"k": 9, "v": "tail"}])
    eng.close()
    return store


@pytest.mark.parametrize("prefix", ["00/", "10/", "20/", "30/"])
def test_a_valid_object_under_another_key_is_corruption_not_data(prefix):
    """A well-formed range (or log, checkpoint, manifest) object copied over another key was
    read as that key's data: the acknowledged writes of the overwritten object vanished
    (planted seeds 8, 71, 100)."""
    store = _populated()
    keys = store.list(prefix)
    assert len(keys) >= 2
    victim, other = keys[-1], keys[0]
    store.put(victim, store.get(other))
    with pytest.raises(Corruption) as err:
        eng = Engine.open(store=store, settings=_settings(), clock=ManualClock())
        try:
            list(eng.scan("db", "t"))
            list(eng.changes("db", "t", 0))
        finally:
            eng.close()
    assert err.value.key == victim


def test_a_checksummed_log_record_with_a_malformed_command_is_corruption():
    """A log object whose frame and checksum were valid but whose command was not
    [ts, op, args] crashed recovery with a bare ValueError (planted seed 35)."""
    store = _populated()
    key = store.list("30/")[-1]
    store.put(key, codec.encode(codec.KIND_LOG, [1, codec.last_number(key), [[1, 2]]]))
    with pytest.raises(Corruption) as err:
        Engine.open(store=store, settings=_settings(), clock=ManualClock()).close()
    assert err.value.key == key
    store.put(
        key,
        codec.encode(codec.KIND_LOG, [1, codec.last_number(key), [[10**6, 0, [99, [[1]], []]]]]),
    )
    with pytest.raises(Corruption) as err:
        Engine.open(store=store, settings=_settings(), clock=ManualClock()).close()
    assert err.value.key == key


# -- malformed calls (fuzz trials) -----------------------------------------------------------


def test_open_with_a_url_of_the_wrong_type_creates_nothing(tmp_path, monkeypatch):
    """Engine.open(5) opened (and created) a directory named "5" in the working directory."""
    monkeypatch.chdir(tmp_path)
    for url in (5, ["x"], 1.5):
        with pytest.raises(InvalidArgument, match="url"):
            Engine.open(url, settings=_settings())
    assert os.listdir(tmp_path) == []


def test_open_with_components_of_the_wrong_type_is_invalid_argument():
    """store=5 or clock=5 failed with AttributeError deep inside recovery."""
    with pytest.raises(InvalidArgument, match="store"):
        Engine.open(store=5, settings=_settings())
    with pytest.raises(InvalidArgument, match="clock"):
        Engine.open(store=MemoryStore(), clock=5, settings=_settings())


def test_lookups_with_non_string_names_are_invalid_argument():
    """scan(["db"], "t") raised TypeError (unhashable) from the catalog."""
    eng = _shard(MemoryStore())
    for call in (
        lambda: list(eng.scan(["db"], "t")),
        lambda: eng.get({}, "t", 1),
        lambda: eng.table("db", None),
        lambda: eng.tables(5),
        lambda: eng.write("db", ("t",), [{"k": 1}]),
    ):
        with pytest.raises(InvalidArgument, match="names are strings"):
            call()
    eng.close()


def test_read_view_with_a_malformed_from_ts_is_invalid_argument():
    """read_view(from_ts="x") raised TypeError comparing it with the retention floor."""
    eng = _shard(MemoryStore())
    for bad in ("x", -1, 1.5, True):
        with pytest.raises(InvalidArgument, match="from_ts"):
            eng.read_view("db", "t", None, bad)
    eng.close()


def test_settings_reject_nan_and_non_mappings():
    """Settings(gc_grace_s=nan) was accepted; Settings.from_dict([1]) raised TypeError."""
    with pytest.raises(InvalidArgument, match="gc_grace_s"):
        Settings(gc_grace_s=float("nan"))
    with pytest.raises(InvalidArgument, match="retention_s"):
        Settings(retention_s=float("nan"))
    with pytest.raises(InvalidArgument, match="mapping"):
        Settings.from_dict([1])


def test_local_store_root_that_no_file_system_takes_is_invalid_argument(tmp_path):
    """A store path with a NUL byte or a lone surrogate raised ValueError/UnicodeEncodeError."""
    for bad in ("a\x00b", "\ud800"):
        with pytest.raises(InvalidArgument, match="not a valid path"):
            LocalStore(str(tmp_path / bad))


def test_client_with_a_list_as_database_name_gets_invalid_argument_not_type_error():
    """Found by the Ray trial's client fuzzing: the table cache keyed on (db, table) raised
    TypeError (unhashable list) before any validation."""
    from coordinator.client.client import Client

    info = {"shards": 1, "max_value_bytes": 1 << 20, "max_batch_rows": 10}
    client = Client("nowhere", info=info, coordinator=object(), shards=object())
    with pytest.raises(InvalidArgument):
        client.write(["db"], "t", [{"k": 1}])
