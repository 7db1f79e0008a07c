"""The cluster's logic without Ray: config, cluster.yaml and the shells' settings, the one
backoff of the retry loops, routing, the cluster catalog, the coordinator's DDL protocol, and
the whole client run against in-process shards (stale tables refused and written again).

``LocalShards`` implements :class:`coordinator.client.fanout.ShardCalls` over :class:`ShardService`
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

from coordinator.actor.cluster_catalog import ClusterCatalog
from coordinator.actor.service import CoordinatorService
from coordinator.client.client import Client
from coordinator.client.routing import (
    HASH_NAME,
    shard_of,
    split,
    validate_batch,
    validate_columns,
)
from coordinator.config import ClusterConfig, load_config
from dn.errors import AlreadyExists, DNError, InvalidArgument, NotFound, Unavailable
from dn.objects.codec import unpack
from dn.schema import TableDef
from dn.store import open_store
from dn.write.part import pack_columns
from shards.shard import ShardService
from tests.fakes import SleepClock

ROOT = Path(__file__).resolve().parent.parent


class LocalShards:
    """In-process shards; ``down`` holds shard ids that answer Unavailable."""

    def __init__(self, services: list[ShardService], factory=None) -> None:
        self.services = services
        self.down: set[int] = set()
        self.factory = factory  # shard id -> ShardService, for a reshard that adds shards
        self.retired: list[ShardService] = []

    def __len__(self) -> int:
        return len(self.services)

    def resize(self, n: int) -> None:
        while len(self.services) < n:
            self.services.append(self.factory(len(self.services)))
        while len(self.services) > n:
            self.retired.append(self.services.pop())

    def call_each(self, calls, retry_s: float = 0.0):
        out = {}
        for i, (method, args) in calls.items():
            if i in self.down:
                out[i] = Unavailable(f"shard {i} is down", outcome_unknown=True)
                continue
            try:
                result = getattr(self._service(i), method)(*pickle.loads(pickle.dumps(args)))
                out[i] = pickle.loads(pickle.dumps(result))
            except DNError as exc:
                out[i] = pickle.loads(pickle.dumps(exc))
        return out

    def _service(self, i: int) -> ShardService:
        """Shard ``i``: one a reshard retired still answers, as its actor does until it stops
        (it refuses what it no longer owns)."""
        if i < len(self.services):
            return self.services[i]
        return next(s for s in reversed(self.retired) if s.shard == i)

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

    from dn.settings import Settings, ShellSettings

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
    wanted = (
        {f.name for f in fields(ClusterConfig)}
        | {f.name for f in fields(Settings)}
        | {f.name for f in fields(ShellSettings)}
    )
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


def test_a_reshard_starts_its_new_shards_in_waves_of_the_set_size():
    from coordinator.actor.handle import start_waves

    assert start_waves(4, 8, 1) == [5, 6, 7, 8]  # one at a time: the default on one node
    assert start_waves(4, 8, 3) == [7, 8]
    assert start_waves(4, 8, 4) == start_waves(4, 8, 99) == [8]
    assert start_waves(8, 8, 1) == start_waves(8, 4, 2) == []  # nothing grows
    assert ClusterConfig().reshard_start_concurrency is None  # one per live node
    assert load_config({"reshard_start_concurrency": 2}).reshard_start_concurrency == 2
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(InvalidArgument, match="reshard_start_concurrency"):
            load_config({"reshard_start_concurrency": bad})


def test_shell_settings_defaults_are_the_old_constants():
    """The defaults of the shells' settings are the values the benchmarks were measured with
    (the module constants they replace); cluster.yaml carries the same."""
    from dn.settings import ShellSettings
    from dn.write.part import MAX_CHUNK_BYTES

    assert ShellSettings().to_dict() == {
        "retry_s": 60.0,
        "call_timeout_s": 120.0,
        "retry_base_delay_s": 0.05,
        "retry_max_delay_s": 1.0,
        "client_cache_bytes": 256 * 1024 * 1024,
        "writer_part_bytes": 256 * 1024,
        "writer_linger_s": 0.1,
        "writer_buffer_parts": 4,
        "large_read_objects": 8,
        "large_read_tail_rows": 200_000,
        "read_page_rows": 5_000,
        "commit_wait_max_s": 0.25,
    }
    assert MAX_CHUNK_BYTES == 90 * 1024  # a fact of Ray, not a setting
    assert ClusterConfig().shell == ShellSettings()
    assert load_config(ROOT / "cluster.yaml", environ={}).shell == ShellSettings()


def test_shell_settings_round_trip_through_yaml_and_overrides(tmp_path):
    from dn.settings import ShellSettings

    f = tmp_path / "c.yaml"
    f.write_text("metadata:\n  dn:\n    retry_s: 5\n    shell:\n      read_page_rows: 7\n")
    cfg = load_config(f, {"writer_linger_s": 0.5}, environ={})
    assert (cfg.shell.retry_s, cfg.shell.read_page_rows, cfg.shell.writer_linger_s) == (5, 7, 0.5)
    doc = {"metadata": {"dn": cfg.to_dict()}}
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(doc))
    assert load_config(tmp_path / "again.yaml", environ={}) == cfg
    assert ClusterConfig.from_dict(pickle.loads(pickle.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InvalidArgument, match="unknown shell settings: read_page_row"):
        load_config({"shell": {"read_page_row": 1}})
    for bad in (
        {"read_page_rows": 0},
        {"retry_s": -1},
        {"writer_linger_s": 61},
        {"client_cache_bytes": 1.5},
    ):
        with pytest.raises(InvalidArgument):
            ShellSettings(**bad)
    info = CoordinatorService(
        ClusterConfig(store=f"memory://cfg-{uuid.uuid4().hex}", shell=cfg.shell).to_dict(),
        LocalShards([]),
    ).info()
    assert ShellSettings.from_dict(info["shell"]) == cfg.shell


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_schedule_doubles_to_its_cap_within_its_jitter():
    import random

    from dn.backoff import Backoff, capped_delay
    from dn.settings import ShellSettings
    from dn.store.retry import RetryPolicy

    shell = ShellSettings().backoff(rng=random.Random(3))
    for n, d in enumerate([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0], start=1):
        for _ in range(20):
            assert d <= shell.delay(n) <= 2 * d  # never sooner than the schedule
    # the store's policy keeps its full-jitter schedule, draw for draw
    policy, rng = RetryPolicy(rng=random.Random(5)), random.Random(5)
    for n in range(1, 12):
        assert policy.backoff(n) == rng.uniform(0.0, min(2.0, 0.02 * 2 ** (n - 1)))
    assert capped_delay(4, 0.1, 10.0, random.Random(1), 1.0, 1.0) == 0.8
    assert Backoff(0.1, 0.3, 0.5, 0.5).delay(9) == 0.15
    with pytest.raises(InvalidArgument):
        Backoff(-1.0)
    with pytest.raises(InvalidArgument):
        Backoff(jitter_min=2.0, jitter_max=1.0)


def test_retries_stop_at_the_deadline_and_never_sleep_past_it():
    import random

    from dn.backoff import Backoff

    t = SleepClock(100.0)
    b = Backoff(0.1, 1.0, 1.0, 1.0, sleep=t.sleep, rng=random.Random(1), clock=t.clock)
    r = b.within(2.0)
    while r.wait():
        pass
    assert t.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.5])  # the last one cut short
    assert r.count == 5 and t.now == pytest.approx(102.0)
    assert b.within(0.0).next_delay() is None  # no budget: no retry


def test_shard_group_retries_unavailable_with_its_backoff_and_not_stale_tables():
    import random

    from dn.backoff import Backoff
    from dn.errors import StaleTable
    from dn.settings import ShellSettings
    from shards.group import ShardGroup

    t = SleepClock(100.0)
    answers = {
        0: [Unavailable("down"), Unavailable("down"), 7],
        1: [StaleTable("stale")],
        2: [Unavailable("down")] * 100,
    }

    class Scripted(ShardGroup):
        def _submit(self, i, method, args):
            return i

        def _get(self, i, method, ref):
            out = answers[i].pop(0)
            if isinstance(out, BaseException):
                raise out
            return out

    group = Scripted(
        "ns",
        3,
        backoff=Backoff(0.05, 1.0, 1.0, 1.0, sleep=t.sleep, rng=random.Random(1), clock=t.clock),
    )
    out = group.call_each({i: ("m", ()) for i in range(3)}, retry_s=1.0)
    assert out[0] == 7 and type(out[1]) is StaleTable and type(out[2]) is Unavailable
    assert t.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.25])  # cut at the deadline
    assert len(answers[2]) == 100 - 6
    plain = ShardGroup("ns", 3, ShellSettings(call_timeout_s=5.0))
    again = pickle.loads(pickle.dumps(plain))
    assert again.settings == plain.settings and again.call_timeout_s == 5.0


def test_coordinator_handle_retries_with_its_backoff(monkeypatch):
    import random
    from types import SimpleNamespace

    import coordinator.actor.handle as handle
    from dn.backoff import Backoff

    t = SleepClock(100.0)
    script = [Unavailable("restarting"), Unavailable("restarting"), {"shards": 3}]

    def get(ref, timeout):
        out = script.pop(0)
        if isinstance(out, BaseException):
            raise out
        return out

    monkeypatch.setattr(handle, "ray", SimpleNamespace(get=get))
    actor = SimpleNamespace(info=SimpleNamespace(remote=lambda: "ref"))
    h = handle.CoordinatorHandle(
        "ns",
        backoff=Backoff(0.05, 1.0, 1.0, 1.0, sleep=t.sleep, rng=random.Random(1), clock=t.clock),
    )
    monkeypatch.setattr(h, "_get_actor", lambda: actor)
    assert h.call("info", retry_s=5.0) == {"shards": 3}
    assert t.sleeps == pytest.approx([0.05, 0.1])
    script[:] = [Unavailable("gone")] * 3
    with pytest.raises(Unavailable):
        h.call("info")  # no retry budget: the first failure is raised


def test_stale_table_maps_through_ray_errors():
    import ray.exceptions as rx

    from dn.errors import StaleTable
    from shards.group import map_error

    err = StaleTable("table db.t was redefined", database="db", table="t")
    for raised in (
        rx.RayTaskError("write_part", "tb", err),
        rx.RayTaskError("write_part", "tb", err).as_instanceof_cause(),
    ):
        got = map_error(raised, "shard 0.write_part")
        assert type(got) is StaleTable and got.details == {"database": "db", "table": "t"}


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
    cols = {
        "k": list(range(200)),
        "v": [f"v{k}" for k in range(200)],
        "f": [k / 2 for k in range(200)],
    }
    by_cols = split(validate_columns(t, cols, [500, 501], 1 << 20, 1000), 4)
    assert by_rows == by_cols
    for s, part in by_cols.items():
        assert all(shard_of(k, 4) == s for k in part.cols[0] + part.deletes)
        assert [dict(zip(("k", "v", "f"), r)) for r in zip(*part.cols)] == [
            r for r in rows if shard_of(r["k"], 4) == s
        ]
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
            "timestamp T", str(from_engine.value)
        )
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


class CountingShards:
    """``LocalShards`` that records what each write part call answered."""

    def __init__(self, inner: LocalShards, refuse: type | None = None) -> None:
        self.inner = inner
        self.refuse = refuse  # answer every write part with this error
        self.answers: list = []

    def __len__(self) -> int:
        return len(self.inner)

    def call_each(self, calls, retry_s: float = 0.0):
        if self.refuse is not None and any(m == "write_part" for m, _ in calls.values()):
            out = {i: self.refuse("refused", database="db", table="t") for i in calls}
        else:
            out = self.inner.call_each(calls, retry_s)
        self.answers += [r for i, r in out.items() if calls[i][0] == "write_part"]
        return out

    def start(self, i, method, args, done):
        self.inner.start(i, method, args, done)


def test_a_part_for_a_recreated_table_is_refused_and_the_client_resends_it(local_cluster):
    """The table is dropped and created again with its two string columns swapped: the same
    primary key, so routing alone cannot tell. Every shard refuses the stale client's parts
    with StaleTable; the client looks the table up again, validates the batch against the
    new definition and sends it again, so each value lands in its own column."""
    from dn.errors import StaleTable

    client, shards, coord, _ = local_cluster
    counting = CountingShards(shards)
    stale = Client("local", coordinator=LocalCoordinator(coord), shards=counting)
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64", "a": "string", "b": "string"}, "k")
    stale.write("db", "t", [{"k": 0, "a": "old", "b": "old"}])
    client.drop_table("db", "t")
    client.create_table("db", "t", {"k": "int64", "b": "string", "a": "string"}, "k")
    counting.answers.clear()
    rows = [{"k": k, "a": f"a{k}", "b": f"b{k}"} for k in range(30)]
    ts = stale.write("db", "t", rows)
    assert [type(r) for r in counting.answers] == [StaleTable] * 3 + [int] * 3
    assert sorted(client.scan("db", "t", snapshot=ts), key=lambda r: r["k"]) == rows
    assert stale.token >= ts


def test_a_table_redefined_at_every_attempt_raises_stale_table(local_cluster):
    from coordinator.client.writes import ATTEMPTS
    from dn.errors import StaleTable

    client, shards, coord, _ = local_cluster
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64"}, "k")
    counting = CountingShards(shards, refuse=StaleTable)
    refused = Client("local", coordinator=LocalCoordinator(coord), shards=counting)
    with pytest.raises(StaleTable):
        refused.write("db", "t", [{"k": k} for k in range(10)])
    assert len(counting.answers) == ATTEMPTS * 3
    assert list(client.scan("db", "t")) == []


def test_the_client_does_not_retry_a_part_refused_as_malformed(local_cluster):
    client, shards, coord, _ = local_cluster
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64"}, "k")
    counting = CountingShards(shards, refuse=InvalidArgument)
    refused = Client("local", coordinator=LocalCoordinator(coord), shards=counting)
    with pytest.raises(InvalidArgument):
        refused.write("db", "t", [{"k": k} for k in range(10)])
    assert len(counting.answers) == 3


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


def test_a_snapshot_stays_the_same_when_a_shard_restarts_on_a_clock_behind():
    """Shards on clocks set apart (one 4 s ahead, one 3 s behind): a client reads at S (the
    newest shard clock, so S is ahead of the slow shard's wall clock), the slow shard restarts
    a second later on its own clock, another client (no causality token) writes, and the
    read at S again gives the same rows: the restarted shard starts above its durable
    timestamp ceiling, which covered S before S was served (decision 0013)."""
    import time

    from dn import ManualClock

    url = f"memory://skew-{uuid.uuid4().hex}"
    cfg = ClusterConfig(store=url, shards=3)
    t0 = time.time_ns() // 1_000_000  # near the client's own clock
    offsets = [0, 4_000, -3_000]
    clocks = [ManualClock(ms=t0 + offsets[i]) for i in range(3)]
    services = [ShardService(url, i, cfg.engine.to_dict(), clock=clocks[i]) for i in range(3)]
    shards = LocalShards(services)
    coord = CoordinatorService(cfg.to_dict(), shards)
    try:
        reader = Client("local", coordinator=LocalCoordinator(coord), shards=shards)
        reader.create_database("db")
        reader.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
        reader.write("db", "t", [{"k": k, "v": "a"} for k in range(30)])
        for clock in clocks:
            clock.advance(10)  # time passes on every node
        s = reader.snapshot()
        assert s >= shards.services[1].clock()  # the fast shard's clock
        before = list(reader.scan("db", "t", snapshot=s))
        assert len(before) == 30
        shards.services[2].close()
        clocks[2] = ManualClock(ms=clocks[2].ms + 1_000)  # restarted a second later
        shards.services[2] = ShardService(url, 2, cfg.engine.to_dict(), clock=clocks[2])
        assert shards.services[2].clock() >= s
        writer = Client("local", coordinator=LocalCoordinator(coord), shards=shards)
        writer.write("db", "t", [{"k": k, "v": "b"} for k in range(60)])
        assert {shard_of(k, 3) for k in range(60)} == {0, 1, 2}
        assert list(reader.scan("db", "t", snapshot=s)) == before
        assert [r["v"] for r in reader.scan("db", "t")] == ["b"] * 60
        for svc in shards.services:
            svc.engine._check()
        # a read the shards refuse (an unknown column) promises nothing, so it writes nothing,
        # even once every shard's ceiling has run out
        for clock in clocks:
            clock.advance(30)
        time.sleep(0.2)  # the maintenance rounds after the last use
        store = open_store(url).inner  # the named memory store the shards write to
        before = store.snapshot()
        with pytest.raises(InvalidArgument):
            list(reader.scan("db", "t", columns=["zz"]))
        assert store.snapshot() == before
    finally:
        for svc in shards.services:
            svc.close()


def test_large_read_rule_counts_objects_and_tail_rows():
    from coordinator.client import fanout
    from dn.read.plan import Plan
    from dn.read.run import Run
    from dn.read.view import ReadView

    def view(ranges, tail_rows):
        run = Run(list(range(tail_rows)), [1] * tail_rows, [(0,)] * tail_rows, [], [])
        plan = Plan(None, tuple((i, i) for i in range(ranges)), None, None)
        return ReadView(None, 5, plan, (run,))

    assert not fanout.is_large({0: view(20, 0)}, 8, 100)  # one shard: never
    assert fanout.is_large({0: view(4, 0), 1: view(4, 0)}, 8, 100)
    assert not fanout.is_large({0: view(3, 0), 1: view(4, 0)}, 8, 100)
    assert fanout.is_large({0: view(0, 60), 1: view(0, 40)}, 8, 100)


@pytest.mark.parametrize("threshold", [0, None])
def test_scans_over_shards_match_a_model_whichever_merge_runs(
    local_cluster, monkeypatch, threshold
):
    """Int keys are merged across shards by one numpy sort of the shards' columns (every scan
    at threshold 0; at the default, the large ones); other keys by pages of tuples. Either
    way a scan is the model's state at its snapshot, in key order, with projections and
    bounds."""
    import random

    import dn.read.pick

    if threshold is not None:
        monkeypatch.setattr(dn.read.pick, "INT_PICKS_MIN", threshold)
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
            dels = [key(k) for k in keys[: len(keys) // 5]]
            ups = [{"k": key(k), "v": f"v{step}", "n": step * 0.5} for k in keys[len(dels) :]]
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
            got = list(client.scan("m", name, snapshot=snap, columns=["n", "k"], start=lo, end=hi))
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
            dels = [key(k) for k in keys[: len(keys) // 6]]
            ups = [{"k": key(k), "v": step} for k in keys[len(dels) :]]
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


def test_the_client_reads_at_times_and_makes_snapshots_from_them(local_cluster):
    """Timestamps for people on the cluster: snapshot_at, and times wherever a snapshot or a
    feed's start is taken (scan, get, changes)."""
    import datetime as dt

    from dn.timestamps import time_of

    client, *_ = local_cluster
    client.create_database("db")
    client.create_table("db", "t", {"k": "int64"}, "k")
    ts1 = client.write("db", "t", [{"k": k} for k in range(6)])
    when = time_of(ts1)  # the millisecond of the first write: its state includes it
    s = client.snapshot_at(when)
    assert s >= ts1 and client.snapshot_at(when.isoformat()) == s
    assert client.snapshot_at(s) == s
    with pytest.raises(InvalidArgument, match="UTC offset"):
        client.snapshot_at(when.replace(tzinfo=None))
    assert sorted(r["k"] for r in client.scan("db", "t", snapshot=when)) == list(range(6))
    assert client.get("db", "t", 3, snapshot=when.isoformat()) == {"k": 3}
    feed = list(client.changes("db", "t", from_ts=when - dt.timedelta(seconds=1)))
    assert sorted(c.pk for c in feed) == list(range(6))
    with pytest.raises(InvalidArgument, match="from_ts"):
        list(client.changes("db", "t", from_ts="not a time"))


def test_a_process_keeps_the_reader_pools_of_the_stores_it_read_last_only():
    """A process that connects to deployment after deployment (the benchmarks do) kept every
    store's pool, and so its object cache, for good; now the last ``POOLS_KEPT``."""
    from coordinator.client.readerpool import POOLS_KEPT, ReaderPool

    urls = [f"memory://pools-{uuid.uuid4().hex}" for _ in range(POOLS_KEPT + 1)]
    first = [ReaderPool.for_url(u, 1 << 20) for u in urls]
    assert ReaderPool.for_url(urls[-1], 1 << 20) is first[-1]  # kept
    assert ReaderPool.for_url(urls[0], 1 << 20) is not first[0]  # let go, made again
    kept = ReaderPool.for_url(urls[0], 1 << 20)
    ReaderPool.forget(urls[0])  # what coordinator.shutdown does for its deployment's store
    assert ReaderPool.for_url(urls[0], 1 << 20) is not kept
    assert ReaderPool.for_url(urls[-1], 1 << 20) is first[-1]  # another store's: kept
