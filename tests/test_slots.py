"""Slots and the slot map (issue 17, item 1): the direct map routes every key exactly as the
fixed hash did, so clusters made before slots keep their data where it is; a map whose slots
moved routes each key by its slot on the per-key and the vectorized paths alike; the map is
recorded in the cluster record and read back, a record without one reads as the direct map;
and a cluster written and read under a moved map finds every row on the shard the map names.
"""

from __future__ import annotations

import random
import zlib

import pytest

from coordinator.actor.cluster_catalog import CatalogState, ClusterCatalog
from coordinator.client import routing
from coordinator.client.routing import owners, shard_of, split
from coordinator.client.slots import SLOTS, SlotMap, slot_count
from dn.errors import InvalidArgument
from dn.objects.codec import pack
from dn.store.memory import MemoryStore
from tests.test_routing_fast import assert_same_parts, int_batch


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 5, 7, 8, 12, 16, 100, 4096, 5000])
def test_the_direct_map_routes_every_key_as_the_fixed_hash(shards):
    m = SlotMap.initial(shards)
    assert m.direct and m.slots % shards == 0 and m.slots >= SLOTS
    rnd = random.Random(shards)
    keys = [rnd.randint(-(2**63), 2**63 - 1) for _ in range(2000)] + ["a", ("x", 1), 2.5]
    assert [shard_of(k, m) for k in keys] == [shard_of(k, shards) for k in keys]
    ints = keys[:2000]
    assert owners(ints, m, int64=True) == owners(ints, shards, int64=True)


def test_slot_counts():
    assert [slot_count(n) for n in (1, 2, 4, 64, 4096)] == [SLOTS] * 5
    assert slot_count(3) == 4098 and slot_count(5000) == 5000 and slot_count(7) % 7 == 0
    for bad in (0, -1, 40_000, "4", True):
        with pytest.raises(InvalidArgument):
            slot_count(bad)


@pytest.mark.parametrize("shards", [2, 3, 4, 8])
def test_a_moved_map_routes_each_key_by_its_slot_on_every_path(shards, monkeypatch):
    rnd = random.Random(shards)
    m = SlotMap.initial(shards)
    moved = rnd.sample(range(m.slots), m.slots // 3)
    m = m.moved(moved, shards - 1)
    assert not m.direct and m.version == 1
    for _ in range(20):
        batch = int_batch(rnd, rnd.randint(100, 400), rnd.randint(0, 50), rnd.random() < 0.5)
        want = [m.owners[zlib.crc32(pack(k)) % m.slots] for k in batch.keys]
        assert [shard_of(k, m) for k in batch.keys] == want
        assert owners(batch.keys, m, int64=True) == want  # vectorized
        assert owners(batch.keys, m) == want  # per key
        fast = split(batch, m)
        slow = routing._split_py(batch, shards, want)
        assert_same_parts(fast, slow)
        for s, part in fast.items():  # every row in the part of its slot's owner
            assert all(shard_of(k, m) == s for k in part.deletes)


def test_a_map_is_checked():
    with pytest.raises(InvalidArgument):
        SlotMap(3, (0, 1, 2, 3))  # an owner that is no shard (and 4 slots for 3 shards)
    with pytest.raises(InvalidArgument):
        SlotMap(2, ())  # no slot
    with pytest.raises(InvalidArgument):
        SlotMap.initial(2).moved([SLOTS], 1)
    with pytest.raises(InvalidArgument):
        SlotMap.initial(2).moved([0], 2)


def test_a_map_over_a_shard_count_that_does_not_divide_its_slots_routes_by_slot():
    # after a reshard from 4 shards to 3, 4,096 slots over 3 shards: never the fast paths, even
    # where every slot s is owned by s % 3 (the fixed hash of 3 shards would differ)
    owners = tuple(s % 3 for s in range(SLOTS))
    m = SlotMap(3, owners)
    assert not m.direct
    keys = list(range(-300, 3000, 7))
    want = [owners[zlib.crc32(pack(k)) % SLOTS] for k in keys]
    assert [shard_of(k, m) for k in keys] == want == owners_of(keys, m)
    assert any(w != zlib.crc32(pack(k)) % 3 for k, w in zip(keys, want))
    batch = int_batch(random.Random(3), 300, 100, True)
    for s, part in split(batch, m).items():
        assert all(shard_of(k, m) == s for k in part.deletes)


def owners_of(keys: list, m: SlotMap) -> list[int]:
    return owners(keys, m, int64=True)


def test_the_map_is_recorded_and_a_record_without_one_is_the_direct_map():
    store = MemoryStore()
    cat = ClusterCatalog(store)
    st = cat.open(4, routing.HASH_NAME, 1)
    assert st.slots is not None and st.slot_map == SlotMap.initial(4)
    moved = st.slot_map.moved(list(range(0, 4096, 4)), 3)
    assert SlotMap.from_record(moved.to_record(), 4) == moved
    legacy = CatalogState(7, 3, routing.HASH_NAME, 1)  # a record made before slots
    body = legacy.to_body()
    assert "slots" not in body
    again = CatalogState.from_body(body)
    assert again.slot_map == SlotMap.initial(3) and again.slot_map.version == 0
    assert again.slot_map.per_shard() == {0: 1366, 1: 1366, 2: 1366}


def test_a_cluster_under_a_moved_map_finds_every_row_where_the_map_says(monkeypatch):
    from tests.test_exactly_once import SHARDS, Cluster

    c = Cluster()
    try:
        client = c.client
        m = SlotMap.initial(SHARDS)
        m = m.moved(m.slots_of(0)[::2], 1)  # half of shard 0's slots go to shard 1
        tables = client._tables()
        tables.route = m
        tables.clear()
        keys = list(range(600))
        client.write("db", "t", [{"k": k, "v": f"v{k}"} for k in keys])
        client.write("db", "t", [{"k": k, "v": f"a{k}"} for k in keys[::3]], atomic=True)
        client.write("db", "t", deletes=keys[1::7])
        want = {k: (f"a{k}" if k % 3 == 0 else f"v{k}") for k in keys if k % 7 != 1}
        assert {r["k"]: r["v"] for r in client.scan("db", "t")} == want
        assert [r and r["v"] for r in client.get_many("db", "t", keys)] == [
            want.get(k) for k in keys
        ]
        for i, svc in enumerate(c.services):  # each shard holds exactly its slots' keys
            held = {r["k"] for r in svc.engine.scan("db", "t")}
            assert held == {k for k in want if shard_of(k, m) == i}
        assert any(shard_of(k, m) != shard_of(k, SHARDS) for k in want)  # the map mattered
    finally:
        c.close()


def test_a_float_key_of_minus_zero_is_the_key_zero_on_every_shard():
    # -0.0 == 0.0, so one engine held them as one key; but they pack to different bytes, and
    # the slot hash sent them to different shards: two rows for one key on a cluster
    from tests.test_exactly_once import Cluster

    assert pack(-0.0) != pack(0.0)
    c = Cluster()
    try:
        client = c.client
        client.create_table("db", "f", {"k": "float64", "v": "string"}, "k")
        client.write("db", "f", [{"k": -0.0, "v": "minus"}])
        client.write("db", "f", [{"k": 0.0, "v": "plus"}, {"k": 2.5, "v": "x"}])
        client.write_columns("db", "f", {"k": [-0.0], "v": ["columns"]})
        assert list(client.scan("db", "f")) == [{"k": 0.0, "v": "columns"}, {"k": 2.5, "v": "x"}]
        assert client.get("db", "f", -0.0) == {"k": 0.0, "v": "columns"}
        client.write("db", "f", deletes=[-0.0])
        assert list(client.scan("db", "f")) == [{"k": 2.5, "v": "x"}]
    finally:
        c.close()


def test_dn_status_shows_the_slots_of_every_shard():
    from coordinator.actor.service import CoordinatorService
    from coordinator.cli.statusview import render
    from coordinator.config import ClusterConfig

    url = "memory://slots-status"
    cfg = ClusterConfig(store=url, shards=3)
    coord = CoordinatorService(cfg.to_dict(), shards=None, store=MemoryStore())
    text = render({"namespace": "n", "coordinator": coord.status(), "shards": {}})
    assert "slots: 4098 (map v0); per shard 0: 1366, 1: 1366, 2: 1366" in text
    assert SlotMap.from_record(coord.info()["slots"], 3) == SlotMap.initial(3)
