"""End-to-end on Ray: concurrent ingest from Ray tasks, snapshot and change-feed reads across
shards, cross-shard order, typed errors through Ray, a coordinator restart, a write part
resent after a call timeout applied once, and atomic batches and transactions from Ray tasks.

All tests share the session's Ray instance and the 4-shard ``cluster`` deployment (a local
directory store), each in its own table.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
import ray
import ray.cloudpickle

import coordinator
from coordinator.actor.handle import CoordinatorHandle
from coordinator.client.readerpool import ReaderPool
from coordinator.client.routing import shard_of
from dn.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tasks defined here

SCHEMA = {"k": "int64", "v": "string", "w": "int64"}


def _ingest(client, db: str, table: str, task: int, batches: int, size: int) -> list:
    """Each batch upserts ``size`` new keys of this task, overwrites 10 keys of the previous
    batch and deletes 5 keys of the one before; returns the acknowledged parts as
    (shard, ts, upserts, deletes)."""
    n = client.info["shards"]
    acks = []
    for b in range(batches):
        base = (task * batches + b) * size
        rows = [{"k": base + i, "v": f"t{task}b{b}", "w": b} for i in range(size)]
        if b >= 1:
            prev = base - size
            rows += [{"k": prev + i, "v": f"t{task}b{b}-again", "w": b} for i in range(10)]
        dels = [base - 2 * size + 20 + i for i in range(5)] if b >= 2 else []
        per_shard = client.write_each(db, table, rows, dels)
        for s, ts in per_shard.items():
            acks.append(
                (
                    s,
                    ts,
                    [r for r in rows if shard_of(r["k"], n) == s],
                    [d for d in dels if shard_of(d, n) == s],
                )
            )
    return acks


def _model(acks: list, upto: int) -> dict:
    state: dict = {}
    for _, ts, ups, dels in sorted(acks, key=lambda a: a[1]):
        if ts > upto:
            break
        for r in ups:
            state[r["k"]] = r
        for d in dels:
            state.pop(d, None)
    return state


def test_16_tasks_ingest_then_snapshot_and_change_feed_match_acks(cluster):
    cluster.create_database("ingest")
    cluster.create_table("ingest", "t", SCHEMA, "k")
    before = cluster.snapshot()
    task = ray.remote(num_cpus=0.01)(_ingest)
    results = ray.get([task.remote(cluster, "ingest", "t", i, 6, 300) for i in range(16)])
    acks = [a for r in results for a in r]
    after = cluster.snapshot()
    assert {s for s, *_ in acks} == {0, 1, 2, 3}

    rows = list(cluster.scan("ingest", "t", snapshot=after))
    assert [r["k"] for r in rows] == sorted(r["k"] for r in rows)  # pk order across shards
    assert {r["k"]: r for r in rows} == _model(acks, after)

    # a window in the middle of the ingest: exactly the acknowledged changes inside it
    stamps = sorted(ts for _, ts, *_ in acks)
    lo, hi = stamps[len(stamps) // 3], stamps[2 * len(stamps) // 3]
    feed = list(cluster.changes("ingest", "t", lo, snapshot=hi))
    expected = sorted(
        [(ts, r["k"], "upsert") for _, ts, ups, _ in acks if lo <= ts <= hi for r in ups]
        + [(ts, d, "delete") for _, ts, _, dels in acks if lo <= ts <= hi for d in dels]
    )
    assert [(c.ts, c.pk, c.kind) for c in feed] == expected
    whole = list(cluster.changes("ingest", "t", before + 1, snapshot=after))
    assert len(whole) == sum(len(u) + len(d) for _, _, u, d in acks)

    # a snapshot in the middle shows exactly the batches acknowledged at or before it
    mid = stamps[len(stamps) // 2]
    assert {r["k"]: r for r in cluster.scan("ingest", "t", snapshot=mid)} == _model(acks, mid)
    st = cluster.status()["shards"]
    assert all(s["state"] == "open" for s in st.values())
    if sys.platform.startswith("linux"):  # glibc's mallopt, applied in each shard process
        assert all(s["actor"]["allocator_tuned"] for s in st.values())
    # glibc's settings in the environment each shard process started with
    assert all(s["actor"]["allocator_env"] for s in st.values())
    # Arrow's pool in each shard process: jemalloc, or the system's (decision 0020)
    assert all(s["actor"]["arrow_pool"] in ("jemalloc", "system") for s in st.values())


def _ordered_writer(namespace: str, db: str, table: str, keys: list, stop_at: float) -> int:
    """Write seq 0, 1, 2, ... one at a time, alternating between the keys of two shards,
    each write through a *fresh* client (no causality token carried between them)."""
    i = 0
    while time.time() < stop_at and i < len(keys):
        client = coordinator.Client(namespace)
        client.write(db, table, [{"k": keys[i], "v": "x", "w": i}])
        i += 1
    return i


def test_cross_shard_order_later_ack_implies_earlier_visible(cluster):
    cluster.create_database("order")
    cluster.create_table("order", "t", SCHEMA, "k")
    a = [k for k in range(10_000) if shard_of(k, 4) == 0]
    b = [k for k in range(10_000) if shard_of(k, 4) == 3]
    keys = [a[i // 2] if i % 2 == 0 else b[i // 2] for i in range(2000)]
    writer = ray.remote(num_cpus=0.01)(_ordered_writer)
    ref = writer.remote(cluster.namespace, "order", "t", keys, time.time() + 8)
    checked = 0
    seen_max = -1
    while True:
        done, _ = ray.wait([ref], timeout=0)
        s = cluster.snapshot()
        seqs = sorted(r["w"] for r in cluster.scan("order", "t", snapshot=s, columns=["w"]))
        # W(i+1) was acknowledged after W(i): any snapshot showing W(i+1) shows W(i)
        assert seqs == list(range(len(seqs))), f"gap in {seqs[:20]}... at snapshot {s}"
        assert len(seqs) >= seen_max  # snapshots taken later never show less
        seen_max = len(seqs)
        checked += 1
        if done:
            break
    written = ray.get(ref)
    assert written > 20 and checked > 5
    final = list(cluster.scan("order", "t"))
    assert len(final) == written


def _bad_writes_in_task(client) -> list[str]:
    out = []
    lock = threading.Lock()
    for call in (
        lambda: client.write("errs", "nope", [{"k": 1}]),
        lambda: client.write("errs", "t", [{"k": "x"}]),
        lambda: client.write("errs", "t", [{"k": 1, "v": lock}]),
    ):
        try:
            call()
            out.append("no error")
        except Exception as exc:  # noqa: BLE001 - the test inspects the type
            out.append(type(exc).__name__)
    return out


def test_bad_input_gets_the_engines_typed_errors(cluster):
    cluster.create_database("errs")
    cluster.create_table("errs", "t", SCHEMA, "k")
    lock = threading.Lock()
    with pytest.raises(NotFound, match="errs.nope") as ei:
        cluster.write("errs", "nope", [{"k": 1}])
    assert type(ei.value) is NotFound  # the engine's class, not a Ray wrapper
    with pytest.raises(NotFound):
        list(cluster.scan("errs", "nope"))
    with pytest.raises(InvalidArgument, match="is int64, got str"):
        cluster.write("errs", "t", [{"k": "x"}])
    with pytest.raises(InvalidArgument, match="column 'v'"):
        cluster.write("errs", "t", [{"k": 1, "v": lock}])  # not picklable either
    with pytest.raises(InvalidArgument):
        cluster.write("errs", "t", [{"k": k} for k in range(10)] + [{"k": 3}])  # duplicate
    with pytest.raises(InvalidArgument):
        cluster.scan("errs", "t", snapshot="yesterday")
    with pytest.raises(InvalidArgument):
        cluster.get("errs", "t", "not-an-int")
    # from inside a Ray task, the errors cross the process boundary with their types
    task = ray.remote(num_cpus=0.01)(_bad_writes_in_task)
    assert ray.get(task.remote(cluster)) == ["NotFound", "InvalidArgument", "InvalidArgument"]
    assert list(cluster.scan("errs", "t")) == []  # nothing of any bad batch was written


def test_coordinator_killed_restarts_with_catalog_and_clients_reconnect(cluster):
    cluster.create_database("coord")
    cluster.create_table("coord", "t", SCHEMA, "k")
    cluster.write("coord", "t", [{"k": 1, "v": "before"}])
    handle = CoordinatorHandle(cluster.namespace)
    old_pid = handle.call("pid")
    version = handle.call("status")["catalog_version"]
    os.kill(old_pid, signal.SIGKILL)
    # writes do not need the coordinator: the client has the shard map and the table cached
    cluster.write("coord", "t", [{"k": 2, "v": "while down"}])
    deadline = time.time() + 60
    while True:
        try:
            new_pid = CoordinatorHandle(cluster.namespace).call("pid", retry_s=5)
            if new_pid != old_pid:
                break
        except Exception:  # noqa: BLE001 - restarting
            pass
        assert time.time() < deadline, "coordinator did not restart"
        time.sleep(0.2)
    fresh = coordinator.connect(cluster.namespace)
    assert fresh.info["shards"] == 4 and fresh.info["hash"] == cluster.info["hash"]
    assert "coord" in fresh.databases() and fresh.tables("coord") == ["t"]
    assert CoordinatorHandle(cluster.namespace).call("status")["catalog_version"] == version
    fresh.create_table("coord", "u", SCHEMA, "k")  # DDL works again, through the new one
    cluster.write("coord", "u", [{"k": 3, "v": "after"}])
    assert [r["v"] for r in cluster.scan("coord", "t")] == ["before", "while down"]
    assert fresh.get("coord", "u", 3)["v"] == "after"


def test_large_reads_by_ray_tasks_equal_reads_in_the_client(cluster):
    """A scan read by one streaming Ray task per shard (pages of packed rows, merged by key
    in the client) returns exactly what the client's own read returns, with projections and
    key ranges, at a snapshot and now; the automatic choice picks tasks for big plans."""
    cluster.create_database("big")
    cluster.create_table("big", "t", {"k": "int64", "s": "string", "f": "float64"}, "k")
    for lo in range(0, 6000, 1000):
        rows = [{"k": k, "s": f"s{k}", "f": k / 3} for k in range(lo, lo + 1000)]
        cluster.write("big", "t", rows)
    mid = cluster.snapshot()
    cluster.write(
        "big",
        "t",
        [{"k": k, "s": "new"} for k in range(0, 6000, 7)],
        deletes=list(range(1, 6000, 7)),
    )
    for kw in ({}, {"snapshot": mid}, {"columns": ["s", "k"]}, {"start": 100, "end": 4321}):
        by_tasks = list(cluster.scan("big", "t", tasks=True, **kw))
        assert by_tasks == list(cluster.scan("big", "t", tasks=False, **kw))
        assert by_tasks


def _buffered(client, table: str, task: int, batches: int, size: int) -> list:
    """One client.writer per task: batch b upserts new keys and overwrites keys of batch b-1
    (coalesced when both sit in one part); returns the durable batches' numbers."""
    durable: list[int] = []
    with client.writer("writer", table, part_bytes=16 * 1024, on_durable=durable.append) as w:
        for b in range(batches):
            base = (task * batches + b) * size
            rows = [{"k": base + i, "v": f"t{task}b{b}", "w": b} for i in range(size)]
            if b:
                rows += [
                    {"k": base - size + i, "v": f"t{task}b{b}-again", "w": b} for i in range(10)
                ]
            w.write(rows)
    return durable


def test_writer_from_ray_tasks_is_durable_on_flush(cluster):
    cluster.create_database("writer")
    cluster.create_table("writer", "buffered", SCHEMA, "k")
    task = ray.remote(num_cpus=0.01)(_buffered)
    done = ray.get([task.remote(cluster, "buffered", t, 30, 100) for t in range(8)])
    assert all(d == list(range(1, 31)) for d in done)
    rows = {r["k"]: r for r in cluster.scan("writer", "buffered")}
    assert len(rows) == 8 * 30 * 100
    for t in range(8):
        for b in range(30):
            base = (t * 30 + b) * 100
            want = f"t{t}b{b + 1}-again" if b < 29 else f"t{t}b{b}"
            assert rows[base]["v"] == want and rows[base + 50]["v"] == f"t{t}b{b}"


def test_a_batch_over_rays_inline_limit_travels_in_chunks(cluster):
    cluster.create_database("chunks")
    cluster.create_table("chunks", "big", SCHEMA, "k")
    rows = [{"k": i, "v": "x" * 200, "w": i} for i in range(6000)]  # ~300 KiB per shard part
    ts = cluster.write("chunks", "big", rows)
    got = list(cluster.scan("chunks", "big", snapshot=ts))
    assert got == sorted(rows, key=lambda r: r["k"])


def test_a_part_resent_after_a_call_timeout_is_applied_once(cluster):
    """Every write-part call times out after 1 ms and is sent again while the original is
    still queued or running in the actor (decision 0014): each part carries one token, so each
    shard applies it once, whichever of its copies runs first."""
    from coordinator.client.client import Client
    from dn.errors import Unavailable
    from dn.settings import ShellSettings
    from shards.group import ShardGroup

    cluster.create_database("once")
    cluster.create_table("once", "t", SCHEMA, "k")
    before = cluster.snapshot()

    class Impatient(ShardGroup):
        sends = 0

        def _submit(self, i, method, args):
            if method == "write_part":
                Impatient.sends += 1
            return super()._submit(i, method, args)

        def _get(self, i, method, ref):
            self.call_timeout_s = 0.001 if method == "write_part" else 60.0
            return super()._get(i, method, ref)

    shell = {**cluster.info["shell"], "retry_s": 2.0}
    client = Client(
        cluster.namespace,
        {**cluster.info, "shell": shell},
        shards=Impatient(cluster.namespace, 4, ShellSettings.from_dict(shell)),
    )
    try:
        client.write("once", "t", [{"k": k, "v": "once", "w": 0} for k in range(40)])
    except Unavailable:
        pass  # every attempt may have timed out; the copies still run in the actors
    assert Impatient.sends > 4  # parts were sent again
    deadline = time.time() + 30
    while len(list(cluster.scan("once", "t"))) < 40:
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # any copy still queued runs meanwhile
    feed = list(cluster.changes("once", "t", before + 1))
    assert sorted(c.pk for c in feed) == list(range(40))  # each key once
    per_shard = {shard_of(c.pk, 4): c.ts for c in feed}
    assert all(c.ts == per_shard[shard_of(c.pk, 4)] for c in feed)  # one commit per part


@ray.remote(num_cpus=0)
def _held(seconds: float) -> int:
    time.sleep(seconds)  # held so that every task of a burst runs at once, on its own worker
    return os.getpid()


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _worker_processes(raylet: int) -> set[int]:
    """The pids of the Ray worker processes (titles starting with ``ray::``) that ``raylet``
    started: this session's node only, whatever else runs Ray on the machine."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read().startswith(b"ray::") and _parent(int(name)) == raylet:
                        out.add(int(name))
            except OSError:
                pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="counts processes through /proc")
def test_bursts_of_tasks_reuse_warm_workers_and_start_no_spare_ones(ray_session):
    """The node config (coordinator.cli.ray_node.WARM_WORKERS) keeps idle workers and leases one
    at a time: once a burst's workers exist, later bursts of the same size run on them and
    the raylet starts no spare worker (a Python start-up, about a CPU-second each) under a
    burst. With several lease requests in flight, it started two or three per burst."""
    burst = 6
    warm = ray.get([_held.remote(0.5) for _ in range(burst)])  # the workers a burst needs exist
    raylet = _parent(warm[0])  # the node's raylet starts its workers
    assert raylet is not None and all(_parent(p) == raylet for p in warm)
    time.sleep(1.0)
    before = _worker_processes(raylet)
    for _ in range(3):
        used = ray.get([_held.remote(0.5) for _ in range(burst)])
        assert len(set(used)) == burst
    time.sleep(1.0)  # a worker started under the last burst shows up by now
    started = _worker_processes(raylet) - before
    assert not started, f"{len(started)} worker processes were started under warm bursts"


def test_a_local_node_starts_on_loopback_when_ray_was_imported_first(tmp_path):
    """``start_local_ray`` (``dn demo``, ``dn up`` without an address, the benchmark) binds
    127.0.0.1 even when ``ray`` was imported before the single-node flag could be set: Ray
    reads it at import and otherwise turns 127.0.0.1 into the machine's other address."""
    import subprocess

    script = (
        "import ray\n"  # first, with the flag unset
        "from coordinator.cli.ray_node import start_local_ray, stop_local_ray\n"
        "start_local_ray(num_cpus=1)\n"
        "print('NODE', ray.nodes()[0]['NodeManagerAddress'], "
        "ray.get_runtime_context().gcs_address)\n"
        "stop_local_ray()\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("NODE ")]
    _, node, gcs = line.split()
    assert node == "127.0.0.1" and gcs.startswith("127.0.0.1:"), line


def _transfer_task(client, accounts: list, seed: int, count: int) -> dict:
    """Bank transfers in snapshot-isolation transactions from a Ray task (decision 0015)."""
    import random as _random

    from dn.errors import Conflict

    rng = _random.Random(seed)
    out = {"committed": [], "conflicts": 0}
    for _ in range(count):
        a, b = rng.sample(accounts, 2)
        try:
            with client.transaction() as tx:
                va, vb = tx.get("txn", "bank", a)["w"], tx.get("txn", "bank", b)["w"]
                amount = rng.randint(1, 10)
                tx.write("txn", "bank", [{"k": a, "v": "", "w": va - amount}])
                tx.write("txn", "bank", [{"k": b, "v": "", "w": vb + amount}])
            out["committed"].append(tx.commit_ts)
        except Conflict:
            out["conflicts"] += 1
    return out


def test_atomic_batches_and_transactions_from_ray_tasks(cluster):
    cluster.create_database("txn")
    cluster.create_table("txn", "bank", SCHEMA, "k")
    accounts = list(range(12))
    before = cluster.snapshot()
    ts = cluster.write("txn", "bank", [{"k": a, "v": "", "w": 100} for a in accounts], atomic=True)
    assert {c.ts for c in cluster.changes("txn", "bank", from_ts=before)} == {ts}
    assert {shard_of(a, 4) for a in accounts} == {0, 1, 2, 3}
    task = ray.remote(num_cpus=0.01)(_transfer_task)
    results = ray.get([task.remote(cluster, accounts, seed, 10) for seed in range(6)])
    stamps = sorted(t for r in results for t in r["committed"])
    assert stamps and len(set(stamps)) == len(stamps)
    feed = {c.ts for c in cluster.changes("txn", "bank", from_ts=ts + 1)}
    assert feed == set(stamps)  # every commit once, each at its one timestamp
    for s in [ts, *stamps]:
        rows = list(cluster.scan("txn", "bank", snapshot=s))
        assert sum(r["w"] for r in rows) == 100 * len(accounts), s


def _write_keys(client, task: int, rounds: int) -> list:
    """Writes ``rounds`` batches of this task's keys; returns the (key, value) written."""
    out = []
    for r in range(rounds):
        rows = [
            {"k": task * 100_000 + r * 100 + i, "v": f"t{task}r{r}", "w": r} for i in range(100)
        ]
        client.write("db", "t", rows)
        out += [(row["k"], row["v"]) for row in rows]
    return out


def test_reshard_on_ray_splits_and_merges_while_tasks_write(deploy_cluster):
    """``client.reshard`` on a Ray deployment: 2 -> 4 shards (two new shard actors, started by
    the coordinator) while Ray tasks write with clients pickled before it, then 4 -> 3 (one
    shard retired). Every acknowledged write is read once, and reads at a snapshot before the
    split stay the same after the merge, and once every move settled into the shards' own
    objects (at once here: ``absorb_after_s`` 0)."""
    engine = {"absorb_after_s": 0.0, "gc_references_s": 0.0}
    client = deploy_cluster("reshard", shards=2, engine=engine)
    client.create_database("db")
    client.create_table("db", "t", SCHEMA, "k")
    first = ray.get([ray.remote(num_cpus=0.01)(_write_keys).remote(client, 9, 3)])[0]
    s0 = client.snapshot()
    task = ray.remote(num_cpus=0.01)(_write_keys)
    pending = [task.remote(client, i, 20) for i in range(4)]  # their clients: 2 shards
    done = client.reshard(4)
    assert done["shards"] == 4 and done["moved_slots"] == client.info["slots"]["count"] // 2
    assert done["start_s"] > 0 and done["move_s"] > 0
    written = [kv for got in ray.get(pending) for kv in got]
    st = client.status()
    assert sorted(st["shards"]) == [0, 1, 2, 3]
    assert {int(k): n for k, n in st["coordinator"]["slots"]["per_shard"].items()} == {
        i: client.info["slots"]["count"] // 4 for i in range(4)
    }
    assert client.reshard(3)["shards"] == 3
    rows = {r["k"]: r["v"] for r in client.scan("db", "t")}
    assert rows == dict(first + written)
    assert {r["k"]: r["v"] for r in client.scan("db", "t", snapshot=s0)} == dict(first)
    route = client._tables().route
    assert route.shards == 3 and set(route.owners) == {0, 1, 2}
    written += _write_keys(client, 7, 3)  # each shard writes after the merge: all can settle
    deadline = time.time() + 120
    while True:
        st = client.status()["shards"]
        left = {i: st[i]["moves"]["moves_to_absorb"] for i in range(3)}
        if not any(left.values()):
            break
        assert time.time() < deadline, f"moves not settled: {left}"
        time.sleep(0.5)
    assert {r["k"]: r["v"] for r in client.scan("db", "t")} == dict(first + written)
    assert {r["k"]: r["v"] for r in client.scan("db", "t", snapshot=s0)} == dict(first)
    for i in range(3):  # settled: read from the shards' own objects, unfiltered
        assert st[i]["moves"]["references"] == 0
    # shut down: the actors go, and this process's cache of the store's objects with them
    url, pool = client.info["store"], client.reader_pool()
    killed = coordinator.shutdown("dn-test-reshard")
    assert {"dn-shard-0", "dn-shard-1", "dn-shard-2"} <= set(killed), killed
    assert ReaderPool.for_url(url, client.settings.client_cache_bytes) is not pool
