"""The buffered writer (``client.writer``) against in-process shards: what it promises in
:mod:`coordinator.client.writer` (durability on flush, per-shard order, coalescing, failures), with
every argument and result pickled as Ray would (see ``LocalShards``)."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from coordinator.actor.service import CoordinatorService
from coordinator.client.client import Client
from coordinator.config import ClusterConfig
from dn.errors import InvalidArgument, StaleTable, Unavailable
from dn.settings import Settings, ShellSettings
from shards.shard import ShardService
from tests.test_cluster_logic import LocalCoordinator, LocalShards

SCHEMA = {"k": "int64", "v": "string"}


@pytest.fixture
def cluster():
    url = f"memory://writer-{uuid.uuid4().hex}"
    cfg = ClusterConfig(
        store=url,
        shards=3,
        shell=ShellSettings(retry_s=1.0),
        engine=Settings(background=False, max_batch_rows=500),
    )
    services = [ShardService(url, i, cfg.engine.to_dict()) for i in range(3)]
    shards = LocalShards(services)
    coord = CoordinatorService(cfg.to_dict(), shards)
    client = Client("local", coordinator=LocalCoordinator(coord), shards=shards)
    client.create_database("db")
    client.create_table("db", "t", SCHEMA, "k")
    yield client, shards
    for s in services:
        s.close()


def scan(client):
    return {r["k"]: r["v"] for r in client.scan("db", "t")}


def test_writes_are_durable_after_flush_and_reported_in_order(cluster):
    client, shards = cluster
    seen: list[int] = []
    model: dict[int, str] = {}
    rng = random.Random(7)
    before = client.snapshot()
    with client.writer("db", "t", part_bytes=2048, linger_s=5.0, on_durable=seen.append) as w:
        seqs = []
        for b in range(60):
            keys = rng.sample(range(400), 40)
            rows = [{"k": k, "v": f"b{b}"} for k in keys[:30]]
            dels = keys[30:]
            seqs.append(w.write(rows, dels))
            model.update({k: f"b{b}" for k in keys[:30]})
            for k in dels:
                model.pop(k, None)
    assert seqs == list(range(1, 61))
    assert w.durable_seq == 60
    assert seen == seqs, "on_durable must report every batch once, in order"
    assert scan(client) == model
    assert w.stats["parts"] < 60 * 3, "batches were not coalesced into fewer parts"
    assert client.token >= max(c.ts for c in client.changes("db", "t", before))


def test_a_batch_is_not_durable_until_its_part_is_acknowledged(cluster):
    client, _ = cluster
    w = client.writer("db", "t", part_bytes=1 << 20, linger_s=60.0)
    seq = w.write([{"k": 1, "v": "x"}])
    time.sleep(0.1)
    assert w.durable_seq < seq
    assert scan(client) == {}, "a buffered row was visible before it was sent"
    w.flush()
    assert w.durable_seq == seq and scan(client) == {1: "x"}
    w.close()


def test_linger_sends_a_small_buffer_without_flush(cluster):
    client, _ = cluster
    w = client.writer("db", "t", linger_s=0.05)
    seq = w.write([{"k": 5, "v": "late"}])
    deadline = time.monotonic() + 5
    while w.durable_seq < seq:
        assert time.monotonic() < deadline, "linger_s did not send the buffer"
        time.sleep(0.01)
    assert scan(client) == {5: "late"}
    w.close()


def test_a_key_written_by_many_batches_keeps_the_last_write(cluster):
    client, _ = cluster
    before = client.snapshot()
    with client.writer("db", "t", part_bytes=1 << 20, linger_s=60.0) as w:
        w.write([{"k": 1, "v": "a"}, {"k": 2, "v": "a"}])
        w.write([{"k": 1, "v": "b"}], deletes=[2])
        w.write([{"k": 2, "v": "c"}], deletes=[1])
        w.write([{"k": 3, "v": "d"}])
        w.write(deletes=[3])
    assert scan(client) == {2: "c"}
    assert w.stats["coalesced"] == 5
    feed = [(c.pk, c.kind) for c in client.changes("db", "t", before)]
    assert sorted(feed) == [(1, "delete"), (2, "upsert"), (3, "delete")]


def test_batches_by_column_and_by_row_coalesce_together(cluster):
    client, _ = cluster
    before = client.snapshot()
    with client.writer("db", "t", part_bytes=1 << 20, linger_s=60.0) as w:
        w.write_columns({"k": [1, 2, 3], "v": ["a", "a", "a"]})
        w.write([{"k": 1, "v": "b"}], deletes=[2])
        w.write_columns({"k": [2, 4]}, deletes=[3])  # "v" left out: null
        w.write_columns({"k": (5, 6), "v": ("e", "f")})
    assert scan(client) == {1: "b", 2: None, 4: None, 5: "e", 6: "f"}
    assert w.stats["coalesced"] == 4
    feed = sorted((c.pk, c.kind) for c in client.changes("db", "t", before))
    assert feed == [
        (1, "upsert"),
        (2, "upsert"),
        (3, "delete"),
        (4, "upsert"),
        (5, "upsert"),
        (6, "upsert"),
    ]
    assert len({c.ts for c in client.changes("db", "t", before)}) <= len(client.shards)


def test_bad_columns_raise_at_write_and_keep_nothing_of_that_batch(cluster):
    client, _ = cluster
    with client.writer("db", "t", linger_s=60.0) as w:
        w.write_columns({"k": [1], "v": ["ok"]})
        for bad in (
            {"k": [2, 3], "v": ["x"]},
            {"k": [2, "x"]},
            {"v": ["no key"]},
            {"k": [2], "zz": [1]},
            {"k": [2, 2]},
            [[2]],
        ):
            with pytest.raises(InvalidArgument):
                w.write_columns(bad)
        w.write_columns({"k": [5], "v": ["ok"]})
    assert scan(client) == {1: "ok", 5: "ok"}
    assert w.durable_seq == 2


def test_client_write_columns_takes_one_shot_deletes(cluster):
    client, _ = cluster
    client.write_columns("db", "t", {"k": [900, 901], "v": ["a", "b"]})
    ts = client.write_columns("db", "t", {"k": [902]}, deletes=(k for k in [900, 901]))
    got = {r["k"]: r["v"] for r in client.scan("db", "t", snapshot=ts)}
    assert {k: got.get(k, "gone") for k in (900, 901, 902)} == {900: "gone", 901: "gone", 902: None}


def test_numpy_columns_are_written_as_python_values(cluster):
    np = pytest.importorskip("numpy")
    client, _ = cluster
    with client.writer("db", "t") as w:
        w.write_columns(
            {
                "k": np.arange(100, 110, dtype=np.int64),
                "v": np.array([f"n{i}" for i in range(10)], dtype=object),
            }
        )
    got = scan(client)
    assert {k: got[k] for k in range(100, 110)} == {100 + i: f"n{i}" for i in range(10)}
    assert all(type(k) is int for k in got)


class JitteryShards(LocalShards):
    """Calls end after a random delay, on threads of their own (as Ray's do): two parts in
    flight to one shard at once could commit in either order."""

    def start(self, i, method, args, done):
        def run():
            time.sleep(random.random() * 0.004)
            done(self.call_each({i: (method, args)})[i])

        threading.Thread(target=run, daemon=True).start()


def test_order_holds_per_shard_with_calls_ending_out_of_order(cluster):
    client, shards = cluster
    client._group = JitteryShards(shards.services)
    with client.writer("db", "t", part_bytes=64, linger_s=0.0) as w:
        for b in range(300):
            w.write([{"k": k, "v": f"v{b}"} for k in range(6)])
            if b % 10 == 0:
                time.sleep(0.002)  # let parts go out while later batches come in
    assert w.stats["parts"] > 10
    assert scan(client) == {k: "v299" for k in range(6)}


def test_bad_input_raises_at_write_and_keeps_nothing_of_that_batch(cluster):
    client, _ = cluster
    with client.writer("db", "t", linger_s=60.0) as w:
        w.write([{"k": 1, "v": "ok"}])
        with pytest.raises(InvalidArgument):
            w.write([{"k": 2, "v": "fine"}, {"k": "x", "v": "bad"}])
        with pytest.raises(InvalidArgument):
            w.write([{"k": 3, "v": "a"}, {"k": 3, "v": "b"}])
        with pytest.raises(InvalidArgument):
            w.write([{"k": 4, "nope": 1}])
        w.write([{"k": 5, "v": "ok"}])
    assert scan(client) == {1: "ok", 5: "ok"}
    assert w.durable_seq == 2


def test_bad_options_are_refused(cluster):
    client, _ = cluster
    for kwargs in (
        {"part_bytes": 0},
        {"part_bytes": "1"},
        {"linger_s": -1},
        {"max_buffer_bytes": 10, "part_bytes": 100},
        {"on_durable": 3},
    ):
        with pytest.raises(InvalidArgument):
            client.writer("db", "t", **kwargs)


def test_a_closed_writer_refuses_writes(cluster):
    client, _ = cluster
    w = client.writer("db", "t")
    w.write([{"k": 1, "v": "x"}])
    w.close()
    w.close()  # idempotent
    with pytest.raises(InvalidArgument, match="closed"):
        w.write([{"k": 2, "v": "y"}])
    assert scan(client) == {1: "x"}


def test_a_shard_down_for_a_while_is_retried(cluster):
    client, shards = cluster
    with client.writer("db", "t", part_bytes=256, linger_s=0.0) as w:  # the table is known
        shards.down.add(1)
        threading.Timer(0.3, shards.down.discard, args=(1,)).start()
        for b in range(20):
            w.write([{"k": b * 10 + i, "v": "x"} for i in range(10)])
    assert len(scan(client)) == 200
    assert w.stats["retries"] > 0


def test_a_shard_down_for_good_fails_the_writer_with_what_is_durable(cluster):
    client, shards = cluster
    w = client.writer("db", "t", part_bytes=256, linger_s=0.0)
    for b in range(5):
        w.write([{"k": b * 10 + i, "v": "x"} for i in range(10)])
    w.flush()
    assert w.durable_seq == 5
    shards.down.add(2)
    w.write([{"k": 1000 + i, "v": "y"} for i in range(30)])
    with pytest.raises(Unavailable) as err:
        w.flush()  # retry_s is 1 s in this cluster
    assert err.value.details["durable_seq"] == 5
    assert err.value.details["shard"] == 2
    with pytest.raises(Unavailable):
        w.write([{"k": 2000, "v": "z"}])
    shards.down.clear()
    rows = scan(client)
    assert all(rows.get(b * 10 + i) == "x" for b in range(5) for i in range(10))
    with client.writer("db", "t") as w2:  # a new writer goes on
        w2.write([{"k": 2000, "v": "z"}])
    assert scan(client)[2000] == "z"


@pytest.mark.parametrize("key_type", ["string", "int64"])
def test_a_redefined_table_fails_the_writer(cluster, key_type):
    """Dropped and created again, with another primary key or the very same definition: the
    buffered batches were accepted for the old table, so the writer stops with StaleTable
    and nothing of them reaches the new one."""
    client, _ = cluster
    w = client.writer("db", "t", linger_s=60.0)
    w.write([{"k": 1, "v": "x"}])
    client.drop_table("db", "t")
    client.create_table("db", "t", {"k": key_type, "v": "string"}, "k")
    with pytest.raises(StaleTable, match="redefined") as err:
        w.flush()
    assert err.value.details["durable_seq"] == 0
    assert list(client.scan("db", "t")) == []
    with client.writer("db", "t") as w2:  # a new writer writes to the new table
        w2.write([{"k": "2" if key_type == "string" else 2, "v": "y"}])
    assert len(list(client.scan("db", "t"))) == 1


def test_writer_defaults_come_from_the_settings(cluster):
    client, _ = cluster
    cfg = client.settings
    w = client.writer("db", "t")
    assert (w.part_bytes, w.linger_s) == (cfg.writer_part_bytes, cfg.writer_linger_s)
    assert w.max_buffer_bytes == cfg.writer_buffer_parts * cfg.writer_part_bytes
    assert (w.part_bytes, w.linger_s, w.max_buffer_bytes) == (256 * 1024, 0.1, 1024 * 1024)
    w.close()


def test_a_buffer_over_max_batch_rows_is_sent_in_several_parts(cluster):
    client, _ = cluster  # max_batch_rows is 500 in this cluster
    seen: list[int] = []
    with client.writer(
        "db",
        "t",
        part_bytes=1 << 24,
        max_buffer_bytes=1 << 24,
        linger_s=60.0,
        on_durable=seen.append,
    ) as w:
        for b in range(8):
            w.write([{"k": b * 400 + i, "v": "x"} for i in range(400)])
    assert len(scan(client)) == 3200
    assert seen == list(range(1, 9))


def test_concurrent_threads_share_one_writer(cluster):
    client, _ = cluster

    def work(w, t):
        for b in range(20):
            w.write([{"k": t * 1000 + b * 10 + i, "v": f"t{t}"} for i in range(10)])

    with client.writer("db", "t", part_bytes=1024) as w:
        threads = [threading.Thread(target=work, args=(w, t)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert len(scan(client)) == 800
    assert w.durable_seq == 80


def test_flush_returns_only_after_every_on_durable_callback(cluster):
    client, _ = cluster
    seen: list[int] = []

    def slow(seq):
        time.sleep(0.02)  # a callback slower than the acknowledgements
        seen.append(seq)

    w = client.writer("db", "t", part_bytes=256, linger_s=0.0, on_durable=slow)
    for b in range(10):
        w.write([{"k": b * 10 + i, "v": "x"} for i in range(10)])
    w.flush()
    assert seen == list(range(1, 11))
    w.close()


def test_a_failing_callback_does_not_stop_the_writer(cluster):
    client, _ = cluster

    def boom(seq):
        raise RuntimeError("caller's bug")

    with client.writer("db", "t", on_durable=boom) as w:
        for b in range(3):
            w.write([{"k": b, "v": "x"}])
    assert w.durable_seq == 3 and len(scan(client)) == 3
