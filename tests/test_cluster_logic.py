"""The cluster's logic without Ray: config, cluster.yaml, routing, the cluster catalog, the
coordinator's DDL protocol, and the whole client run against in-process shards.

``LocalShards`` implements :class:`coordinator.reads.ShardCalls` over :class:`ShardService`
objects and pickles every argument, result and error, as Ray would.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import uuid
from pathlib import Path

import pytest
import yaml

from coordinator.catalog import ClusterCatalog
from coordinator.client import Client
from coordinator.config import ClusterConfig, load_config
from coordinator.routing import (
    HASH_NAME,
    pack_columns,
    shard_of,
    split,
    validate_batch,
    validate_columns,
)
from coordinator.service import CoordinatorService
from dn.codec import unpack
from dn.errors import AlreadyExists, DNError, InvalidArgument, NotFound, Unavailable
from dn.schema import TableDef
from dn.store import open_store
from shards.service import ShardService

ROOT = Path(__file__).resolve().parent.parent


class LocalShards:
    """In-process shards; ``down`` holds shard ids that answer Unavailable."""

    def __init__(self, services: list[ShardService]) -> None:
        self.services = services
        self.down: set[int] = set()

    def __len__(self) -> int:
        return len(self.services)

    def call_each(self, calls, retry_s: float = 0.0):
        out = {}
        for i, (method, args) in calls.items():
            if i in self.down:
                out[i] = Unavailable(f"shard {i} is down", outcome_unknown=True)
                continue
            try:
                result = getattr(self.services[i], method)(*pickle.loads(pickle.dumps(args)))
                out[i] = pickle.loads(pickle.dumps(result))
            except DNError as exc:
                out[i] = pickle.loads(pickle.dumps(exc))
        return out


    def start(self, i, method, args, done):
        done(self.call_each({i: (method, args)})[i])


class LocalCoordinator:
    def __init__(self, service: CoordinatorService) -> None:
        self.service = service

    def call(self, method, *args, retry_s: float = 0.0):
        return pickle.loads(pickle.dumps(getattr(self.service, method)(*args)))


@pytest.fixture
def local_cluster():
    url = f"memory://cluster-{uuid.uuid4().hex}"
    cfg = ClusterConfig(store=url, shards=3)
    services = [ShardService(url, i, cfg.engine.to_dict()) for i in range(3)]
    shards = LocalShards(services)
    coord = CoordinatorService(cfg.to_dict(), shards)
    client = Client("local", coordinator=LocalCoordinator(coord), shards=shards)
    yield client, shards, coord, cfg
    for s in services:
        s.close()


# -- config and cluster.yaml -----------------------------------------------------------------


def test_cluster_yaml_is_valid_for_ray_and_dn():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    doc = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    import jsonschema

    jsonschema.validate(doc, schema)
    validate_config(prepare_config(copy.deepcopy(doc)))
    cfg = load_config(ROOT / "cluster.yaml", environ={})
    assert cfg.shards == 4 and cfg.store.startswith("s3://")
    assert cfg.engine.background is False
    assert any("dn up" in c for c in doc["head_start_ray_commands"])


def test_cluster_yaml_comments_every_dn_key():
    from dataclasses import fields

    from dn.settings import Settings

    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    section = lines[lines.index("  dn:") + 1 :]
    keys = {}
    for i, line in enumerate(section):
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and indent in (4, 6):
            key = stripped.split(":")[0]
            if indent == 6 and key.isupper():
                continue  # an example under env:
            keys[key] = section[i - 1].strip().startswith("#")
    wanted = {f.name for f in fields(ClusterConfig)} | {f.name for f in fields(Settings)}
    wanted -= {"background"}  # always off on a cluster
    assert wanted <= set(keys), f"keys missing from cluster.yaml: {wanted - set(keys)}"
    assert all(keys.values()), f"uncommented keys: {[k for k, c in keys.items() if not c]}"


def test_config_precedence_and_typos(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("metadata:\n  dn:\n    shards: 2\n    engine:\n      freeze_bytes: 1000\n")
    cfg = load_config(f, {"checkpoint_delta": 7}, environ={"DN_SHARDS": "3"})
    assert (cfg.shards, cfg.engine.freeze_bytes, cfg.engine.checkpoint_delta) == (3, 1000, 7)
    assert os.path.isabs(cfg.store)
    assert ClusterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InvalidArgument, match="unknown cluster settings: shard"):
        load_config({"shard": 3})
    with pytest.raises(InvalidArgument, match="unknown engine settings"):
        load_config({"engine": {"freeze_byte": 1}})
    with pytest.raises(InvalidArgument):
        load_config(None, {"shards": 0})


# -- routing --------------------------------------------------------------------------------


def test_routing_hash_is_frozen():
    # Golden values: changing them moves rows between shards of existing clusters.
    assert HASH_NAME == "crc32-msgpack-v1"
    import zlib

    import msgpack

    for key in (0, 1, 2**40, -7, "abc", b"\x00", (1, "a"), 1.5, True):
        assert shard_of(key, 7) == zlib.crc32(msgpack.packb(key, use_bin_type=True)) % 7
    assert [shard_of(k, 4) for k in range(8)] == [1, 3, 1, 3, 0, 2, 0, 2]
    assert [shard_of(k, 4) for k in ("a", "b", "c")] == [1, 3, 1]
    assert shard_of((1, "a"), 4) == 2


def split_batch(t, upserts, deletes, shards, max_value_bytes, max_batch_rows):
    return split(validate_batch(t, upserts, deletes, max_value_bytes, max_batch_rows), shards)


def test_split_batch_normalizes_keys_and_rejects_before_splitting():
    t = TableDef("db", "t", (("k", "float64"), ("v", "string")), ("k",), 1)
    parts = split_batch(t, [{"k": 1, "v": "a"}], [2], 4, 1 << 20, 100)
    assert sum(p.nrows for p in parts.values()) == 1
    # int 1 and float 1.0 are the same key: same shard
    assert (
        parts.keys()
        == split_batch(t, [{"k": 1.0, "v": "a"}], [], 4, 1 << 20, 100).keys()
        | split_batch(t, [], [2.0], 4, 1 << 20, 100).keys()
    )
    with pytest.raises(InvalidArgument, match="twice"):
        split_batch(t, [{"k": 1, "v": "a"}], [1.0], 4, 1 << 20, 100)
    with pytest.raises(InvalidArgument, match="at least one"):
        split_batch(t, [], [], 4, 1 << 20, 100)
    with pytest.raises(InvalidArgument, match="max_batch_rows"):
        split_batch(t, [{"k": i} for i in range(5)], [], 4, 1 << 20, 4)


def test_a_column_batch_splits_like_the_same_rows():
    t = TableDef("db", "t", (("k", "int64"), ("v", "string"), ("f", "float64")), ("k",), 1)
    rows = [{"k": k, "v": f"v{k}", "f": k / 2} for k in range(200)]
    by_rows = split_batch(t, rows, [500, 501], 4, 1 << 20, 1000)
    cols = {"k": list(range(200)), "v": [f"v{k}" for k in range(200)],
            "f": [k / 2 for k in range(200)]}
    by_cols = split(validate_columns(t, cols, [500, 501], 1 << 20, 1000), 4)
    assert by_rows == by_cols
    for s, part in by_cols.items():
        assert all(shard_of(k, 4) == s for k in part.cols[0] + part.deletes)
        assert [dict(zip(("k", "v", "f"), r)) for r in zip(*part.cols)] == [
            r for r in rows if shard_of(r["k"], 4) == s]
    assert sorted(k for p in by_cols.values() for k in p.cols[0]) == list(range(200))


@pytest.mark.parametrize("n, size", [(1, 10), (7, 10), (3000, 100), (500, 30_000)])
def test_packed_columns_are_chunks_under_the_limit_that_join_to_the_columns(n, size):
    cols = [list(range(n)), [b"x" * (size + i % 7) for i in range(n)]]
    chunks = pack_columns(cols, limit=90 * 1024)
    assert all(len(c) <= 90 * 1024 for c in chunks) or n == 1
    decoded = [unpack(c) for c in chunks]
    assert [x for d in decoded for x in d[0]] == cols[0]
    assert [x for d in decoded for x in d[1]] == cols[1]
    assert all(len(d[0]) == len(d[1]) > 0 for d in decoded)


# -- the cluster catalog and the coordinator ---------------------------------------------------


def test_catalog_survives_reopen_and_refuses_other_shard_count():
    store = open_store(f"memory://cat-{uuid.uuid4().hex}")
    cat = ClusterCatalog(store)
    cat.open(4, HASH_NAME, 1)
    cat.begin("create_database", ["db"])
    cat.finish()
    cat.begin("create_table", ["db", "t", [["k", "int64"]], ["k"]])
    cat.finish()
    again = ClusterCatalog(store)
    again.open(4, HASH_NAME, 2)
    assert again.table("db", "t").primary_key == ("k",)
    assert again.state.version == 5
    with pytest.raises(InvalidArgument, match="4 shards"):
        ClusterCatalog(store).open(8, HASH_NAME, 3)


def test_coordinator_finishes_pending_ddl_after_restart(local_cluster):
    client, shards, coord, cfg = local_cluster
    client.create_database("db")
    shards.down = {2}
    with pytest.raises(Unavailable) as ei:
        client.create_table("db", "t", {"k": "int64"}, "k")
    assert ei.value.outcome_unknown
    assert coord._catalog.state.pending is not None
    shards.down = set()
    restarted = CoordinatorService(cfg.to_dict(), shards)  # a new incarnation, same store
    assert restarted._catalog.state.pending is None
    assert restarted.tables("db") == ["t"]
    for s in shards.services:
        assert s.engine.tables("db") == ["t"]


# -- the client against in-process shards ---------------------------------------------------


def test_client_reads_merge_across_shards(local_cluster):
    client, shards, _, _ = local_cluster
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    per_shard = client.write_each("db", "t", [{"k": k, "v": f"v{k}"} for k in range(60)])
    assert set(per_shard) == {0, 1, 2}
    s0 = client.snapshot()
    assert [r["k"] for r in client.scan("db", "t")] == list(range(60))
    assert [r["k"] for r in client.scan("db", "t", start=10, end=20)] == list(range(10, 20))
    pages = list(client.scan_pages("db", "t", columns=["v"], page_rows=25))
    assert [len(p) for p in pages] == [25, 25, 10] and pages[0][0] == {"v": "v0"}
    client.write("db", "t", [{"k": 100, "v": "x"}], deletes=[1, 2, 3])
    feed = list(client.changes("db", "t", s0 + 1))
    assert sorted(c.pk for c in feed) == [1, 2, 3, 100]
    assert [(c.ts, c.pk) for c in feed] == sorted((c.ts, c.pk) for c in feed)
    assert len(list(client.scan("db", "t", snapshot=s0))) == 60
    assert client.get("db", "t", 5) == {"k": 5, "v": "v5"}
    assert client.get("db", "t", 1) is None
    assert client.get("db", "t", 1, snapshot=s0) == {"k": 1, "v": "v1"}
    for s in shards.services:
        s.engine._check()


def test_client_errors_match_the_engine(local_cluster):
    client, shards, _, _ = local_cluster
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    engine = shards.services[0].engine
    import threading

    lock = threading.Lock()  # not picklable, not a column type

    cases = [
        (lambda e: e.write("db", "nope", [{"k": 1}]), NotFound),
        (lambda e: e.write("db", "t", [{"k": "one"}]), InvalidArgument),
        (lambda e: e.write("db", "t", [{"k": 1, "v": lock}]), InvalidArgument),
        (lambda e: e.write("db", "t", [{"k": 1, "zz": 1}]), InvalidArgument),
        (lambda e: e.write("db", "t", {"k": 1}), InvalidArgument),
        (lambda e: e.get("db", "t", "one"), InvalidArgument),
        (lambda e: e.scan("db", "nope"), NotFound),
        (lambda e: e.changes("db", "t", -1), InvalidArgument),
        (lambda e: e.create_table("db", "t", {"k": "int64"}, "k"), AlreadyExists),
        (lambda e: e.create_table("db", "u", {"k": "int128"}, "k"), InvalidArgument),
        (lambda e: e.drop_database("nodb"), NotFound),
    ]
    for call, kind in cases:
        with pytest.raises(kind) as from_engine:
            call(engine)
        with pytest.raises(kind) as from_client:
            call(client)
        assert type(from_client.value) is type(from_engine.value)
        # the same message, but for the timestamp a "does not exist at ..." names: the two
        # reads resolve their snapshots at different moments
        same = re.compile(r"timestamp \d+")
        assert same.sub("timestamp T", str(from_client.value)) == same.sub(
            "timestamp T", str(from_engine.value))
    assert list(client.scan("db", "t")) == []  # nothing written by any bad batch


def test_client_reroutes_after_table_redefined(local_cluster):
    client, shards, coord, _ = local_cluster
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    client.write("db", "t", [{"k": 1, "v": "a"}])
    other = Client("local", coordinator=LocalCoordinator(coord), shards=shards)
    other.drop_table("db", "t")
    other.create_table("db", "t", {"k": "int64", "v": "string"}, "v")  # new primary key
    client.write("db", "t", [{"k": k, "v": f"v{k}"} for k in range(20)])  # stale cache
    for k in range(20):
        assert client.get("db", "t", f"v{k}") == {"k": k, "v": f"v{k}"}


def test_causality_token_orders_writes_across_shards(local_cluster):
    client, shards, _, _ = local_cluster
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64"}, "k")
    keys = {}
    for k in range(100):
        keys.setdefault(shard_of(k, 3), k)
    # push shard 0's clock far ahead; a write on shard 1 after it must still get a later ts
    shards.services[0].engine.advance_floor(shards.services[0].engine.clock() + (5000 << 16))
    t0 = client.write("db", "t", [{"k": keys[0]}])
    t1 = client.write("db", "t", [{"k": keys[1]}])
    assert t1 > t0


def test_large_read_rule_counts_objects_and_tail_rows():
    from coordinator import reads
    from dn.plan import Plan
    from dn.reads import ReadView
    from dn.run import Run

    def view(ranges, tail_rows):
        run = Run(list(range(tail_rows)), [1] * tail_rows, [(0,)] * tail_rows, [], [])
        plan = Plan(None, tuple((i, i) for i in range(ranges)), None, None)
        return ReadView(None, 5, plan, (run,))

    assert not reads.is_large({0: view(20, 0)}, 8, 100)  # one shard: never
    assert reads.is_large({0: view(4, 0), 1: view(4, 0)}, 8, 100)
    assert not reads.is_large({0: view(3, 0), 1: view(4, 0)}, 8, 100)
    assert reads.is_large({0: view(0, 60), 1: view(0, 40)}, 8, 100)


@pytest.mark.parametrize("threshold", [0, None])
def test_scans_over_shards_match_a_model_whichever_merge_runs(local_cluster, monkeypatch,
                                                              threshold):
    """Int keys are merged across shards by one numpy sort of the shards' columns (every scan
    at threshold 0; at the default, the large ones); other keys by pages of tuples. Either
    way a scan is the model's state at its snapshot, in key order, with projections and
    bounds."""
    import random

    import dn.reader

    if threshold is not None:
        monkeypatch.setattr(dn.reader, "_INT_PICKS_MIN", threshold)
    client, _, _, _ = local_cluster
    client.create_database("m")
    client.create_table("m", "i", {"k": "int64", "v": "string", "n": "float64"}, "k")
    client.create_table("m", "s", {"k": "string", "v": "string", "n": "float64"}, "k")
    rng = random.Random(7)
    models: dict[str, dict] = {"i": {}, "s": {}}
    snaps = []
    for step in range(12):
        for name, key in (("i", lambda k: k - 3000), ("s", lambda k: f"k{k:05d}")):
            keys = rng.sample(range(12000), 7000 if step % 4 == 0 else 60)
            dels = [key(k) for k in keys[:len(keys) // 5]]
            ups = [{"k": key(k), "v": f"v{step}", "n": step * 0.5} for k in keys[len(dels):]]
            client.write("m", name, ups, dels)
            for d in dels:
                models[name].pop(d, None)
            for r in ups:
                models[name][r["k"]] = r
        snaps.append((client.snapshot(), {n: dict(m) for n, m in models.items()}))
    for snap, state in snaps[::3]:
        for name in ("i", "s"):
            want = [state[name][k] for k in sorted(state[name])]
            assert list(client.scan("m", name, snapshot=snap)) == want
            ks = sorted(state[name])
            lo, hi = ks[len(ks) // 4], ks[len(ks) // 2]
            got = list(client.scan("m", name, snapshot=snap, columns=["n", "k"], start=lo,
                                   end=hi))
            assert got == [{"n": state[name][k]["n"], "k": k} for k in ks if lo <= k < hi]
            assert list(client.scan("m", name, snapshot=snap, columns=[])) == [{}] * len(ks)


def test_change_feeds_over_shards_are_in_order_and_replay_to_the_state(local_cluster):
    """The shards' feeds are merged in (ts, pk) order; replaying a feed from the table's start
    gives the state at its snapshot, for int and string keys."""
    import random

    client, _, _, _ = local_cluster
    client.create_database("f")
    rng = random.Random(9)
    for name, typ, key in (("i", "int64", lambda k: k), ("s", "string", lambda k: f"k{k}")):
        client.create_table("f", name, {"k": typ, "v": "int64"}, "k")
        start = client.snapshot()
        model: dict = {}
        for step in range(8):
            keys = rng.sample(range(5000), 3000 if step % 3 == 0 else 50)
            dels = [key(k) for k in keys[:len(keys) // 6]]
            ups = [{"k": key(k), "v": step} for k in keys[len(dels):]]
            client.write("f", name, ups, dels)
            for d in dels:
                model.pop(d, None)
            model.update((r["k"], r) for r in ups)
        snap = client.snapshot()
        feed = list(client.changes("f", name, start, snapshot=snap))
        assert [(c.ts, c.pk) for c in feed] == sorted((c.ts, c.pk) for c in feed)
        state: dict = {}
        for c in feed:
            if c.kind == "delete":
                state.pop(c.pk, None)
            else:
                state[c.pk] = c.row
        assert state == model
