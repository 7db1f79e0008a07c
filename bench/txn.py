"""Part 6: atomic batches and transactions across shards (decision 0015), on the Ray cluster.

Ray on loopback with 2 CPUs as :mod:`bench.cluster` starts it, 16 warm workers, and a **fresh
4-shard deployment for every measurement** (a local directory, or a new bucket on moto's S3
server, a child process on 127.0.0.1 started and stopped here): a prepare raises its
shard's clock to its commit timestamp, so a measurement would otherwise start where the last
left the clocks; each task resets its process's commit clock, if the client has one.
16 Ray tasks per measurement; each run of a figure is followed by its same-run baseline. The
time of 6a/6b is from the first task's first write to the last task's last (each task looks its
table up first, as a process does once: not timed); 6c's from launching the tasks to the last
result.

- **6a**: each task writes B batches of 1,000 new rows with ``client.write(atomic=True)``,
  against the same batches with a plain ``client.write`` (the 4a-sync-4 path): rows/s.
- **6b**: each task makes M atomic writes of 4 rows, one key on each shard, keys no other
  commit touches, ``INFLIGHT`` at a time (a thread pool in the task, as a service handling
  requests has), against the same plain writes made the same way: commits/s, p50/p99
  latency; local store and S3. **6b-seq**: the same, one commit at a time per task. The tasks
  count their shard calls, their calls to the coordinator (a process's concurrent commits share
  one: :mod:`coordinator.client.commits`) and refusals; shards count prepares and log writes.
- **6c**: bank transfers over N accounts on the 4 shards, T attempts per task of
  ``client.transaction()`` (read two accounts, write both, commit; a ``Conflict`` counted,
  not retried): commits/s, conflicts per 100 attempts; the balances' total is checked.
- **6-2a..c**: the engine's own 2a-2c (part 2's sizes, no peer), in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.harness import Figure, progress, rmtree, tempdir, timed
from bench.stores import MotoServer, node_env

DB = "bench"
VALUE = b"v" * 100
SCHEMA = {"k": "int64", "v": "bytes"}
BANK = {"k": "int64", "w": "int64"}
NAMESPACE = "dnbench-txn"
SHARDS, TASKS = 4, 16
INFLIGHT = 8  # 6b: commits in flight per task (threads); 6b-seq: one
BALANCE = 1000
SETTLE_S = 2.0  # as bench.cluster: Ray starts replacement workers for the placed actors


@dataclass(frozen=True)
class Sizes:
    runs: int
    batches: int  # 6a: batches of 1,000 per task
    commits: int  # 6b: commits per task
    s3_commits: int  # 6b-s3: commits per task
    transfers: int  # 6c: attempts per task
    accounts: tuple[int, ...] = (16, 1000)


FULL = Sizes(runs=5, batches=4, commits=400, s3_commits=100, transfers=10)
QUICK = Sizes(runs=3, batches=2, commits=150, s3_commits=40, transfers=5)


# -- the Ray tasks (pickled by value: the workers need not import bench) ---------------------


def _count_calls(client: Any) -> dict[str, float]:
    """Count the shard calls this client makes itself, and their time, by method, and the
    refusals by error."""
    n: dict[str, float] = {}
    group, inner = client.shards, client.shards.call_each

    def call_each(calls: Any, *args: Any, **kw: Any) -> Any:
        methods = [m for m, _ in calls.values()]
        for m in methods:
            n[f"call_{m}"] = n.get(f"call_{m}", 0) + 1
        t0 = time.perf_counter()
        out = inner(calls, *args, **kw)
        n[f"{methods[0]}_s"] = n.get(f"{methods[0]}_s", 0.0) + time.perf_counter() - t0
        for r in out.values():
            if isinstance(r, BaseException):  # a refused call: why
                n[type(r).__name__] = n.get(type(r).__name__, 0) + 1
        return out

    group.call_each = call_each
    return n


def _writes(client: Any, batches: list, atomic: bool, inflight: int = 1) -> dict:
    """One ``client.write`` per batch of keys, ``inflight`` at a time (threads); a write that
    fails (e.g. TimestampPassed on every attempt) is counted by error, not retried."""
    from concurrent.futures import ThreadPoolExecutor

    from dn.errors import DNError

    out: dict[str, Any] = {"lat": [], "commits": 0, "failed": {}, "calls": _count_calls(client)}
    lock = threading.Lock()

    def one(ks: list) -> None:
        t0 = time.perf_counter()
        try:
            client.write(DB, "t", upserts=[{"k": k, "v": VALUE} for k in ks], atomic=atomic)
        except DNError as exc:
            with lock:
                out["failed"][type(exc).__name__] = out["failed"].get(type(exc).__name__, 0) + 1
            return
        with lock:
            out["lat"].append(time.perf_counter() - t0)
            out["commits"] += 1

    client.txn_context().tables.get(DB, "t")  # the process's connection: not timed
    out["window"] = [time.time()]
    start = time.perf_counter()
    with ThreadPoolExecutor(inflight) as pool:
        list(pool.map(one, batches))
    out["busy"] = time.perf_counter() - start
    out["window"].append(time.time())
    group = getattr(client, "_commits", None)
    out["calls"]["coordinator_calls"] = group.calls if group else 0
    return out


def _transfers(client: Any, accounts: list, seed: int, count: int) -> dict:
    from dn.errors import Conflict, DNError

    rng = random.Random(seed)
    out: dict[str, Any] = {"lat": [], "commits": 0, "conflicts": 0, "failed": {}}
    out["calls"] = _count_calls(client)
    start = time.perf_counter()
    for _ in range(count):
        a, b = rng.sample(accounts, 2)
        amount = rng.randint(1, 10)
        t0 = time.perf_counter()
        try:
            with client.transaction() as tx:
                va, vb = tx.get(DB, "t", a)["w"], tx.get(DB, "t", b)["w"]
                tx.write(DB, "t", [{"k": a, "w": va - amount}, {"k": b, "w": vb + amount}])
        except Conflict:
            out["conflicts"] += 1
            continue
        except DNError as exc:
            out["failed"][type(exc).__name__] = out["failed"].get(type(exc).__name__, 0) + 1
            continue
        out["lat"].append(time.perf_counter() - t0)
        out["commits"] += 1
    out["busy"] = time.perf_counter() - start
    return out


# -- the figures --------------------------------------------------------------------------------


def _figures(sz: Sizes) -> dict[str, Figure]:
    plain = "client.write, not atomic"
    out: list[Figure] = []

    def fig(i: str, title: str, unit: str, **kw: Any) -> None:
        out.append(Figure(i, "txn", title, unit, **kw))

    fig("6a", "atomic batches of 1,000 rows on 4 shards from 16 Ray tasks", "rows/s",
        peer_name=plain, target=0.5,
        note=f"{sz.batches} batches per task with client.write(atomic=True); the peer: the "
        "same batches with client.write (the 4a-sync-4 path)")  # fmt: skip
    for i, sfx, m, k in (
        ("6b", "", sz.commits, INFLIGHT),
        ("6b-seq", ", one at a time per task", sz.commits // 4, 1),
        ("6b-s3", " (S3, moto)", sz.s3_commits, INFLIGHT),
    ):
        fig(i, f"small transactions (4 rows, one per shard) from 16 Ray tasks{sfx}",
            "commits/s", peer_name=plain, target=1000 if i == "6b" else None, absolute=True,
            note=f"{m} atomic 4-row writes per task, {k} in flight; the peer: the same 4 rows "
            "with client.write (a part per shard), the same way")  # fmt: skip
        for p in ("p50", "p99"):
            fig(f"{i}-{p}", f"{p} latency of one small transaction{sfx}", "ms",
                higher_is_better=False, peer_name=plain)  # fmt: skip
    for n in sz.accounts:
        fig(f"6c-{n}", f"bank transfers, {n:,} accounts on 4 shards, 16 Ray tasks", "commits/s",
            note=f"{sz.transfers} attempts per task: client.transaction(), two reads, two "
            "writes, commit; a Conflict is counted, not retried")  # fmt: skip
        fig(f"6c-{n}-conflicts", f"conflicts per 100 transfer attempts, {n:,} accounts", "%",
            higher_is_better=False)  # fmt: skip
    return {f.id: f for f in out}


def _spread_keys(per_shard: int, n: int = SHARDS) -> list[list[int]]:
    """``per_shard`` keys owned by each shard, as groups of one key per shard."""
    from coordinator.client.routing import shard_of

    owned: list[list[int]] = [[] for _ in range(n)]
    k = 0
    while min(map(len, owned)) < per_shard:
        s = shard_of(k, n)
        if len(owned[s]) < per_shard:
            owned[s].append(k)
        k += 1
    return [list(g) for g in zip(*owned)]


def _counters(client: Any) -> dict[str, int]:
    out = {"txn_prepared": 0, "txn_aborted": 0, "group_commits": 0, "commits": 0}
    out["d"] = len(client.txn_context().store.list("40/txn/"))  # decisions: one a client group
    for st in client.status()["shards"].values():
        out["group_commits"] += st.get("group_commits", 0)
        out["commits"] += st.get("commits", 0)
        for k in ("txn_prepared", "txn_aborted"):
            out[k] += st.get("counters", {}).get(k, 0)
    return out


def _pct(lat: list[float], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000


def _bounds(results: list[dict], before: dict, after: dict, dt: float) -> dict[str, float]:
    """Per commit: shard calls, decision objects and log writes, counted in the run."""
    commits = sum(r["commits"] for r in results)
    calls: dict[str, float] = {}
    for r in results:
        for k, v in [*r["calls"].items(), *((f"failed_{e}", n) for e, n in r["failed"].items())]:
            calls[k] = calls.get(k, 0) + v
    d = {k: after[k] - before[k] for k in after}
    out = {
        "commits": commits,
        "commits_per_s": round(commits / dt, 3),
        **{k: v for k, v in calls.items() if k.startswith("failed_")},
        **{f"refused_{k}": v for k, v in calls.items() if k[0].isupper()},  # by error type
        "log_writes_per_commit": round(d["group_commits"] / max(1, commits), 3),
        "parts_per_log_write": round(d["commits"] / max(1, d["group_commits"]), 2),
    }
    if not commits:
        return out
    lat = sum(r["busy"] for r in results) * 1000 / commits  # failed attempts included
    per = {k[:-2]: 1000 * v / commits for k, v in calls.items() if k.endswith("_s")}
    return out | {
        "client_shard_calls_per_commit": round(
            sum(v for k, v in calls.items() if k.startswith("call_")) / commits, 2
        ),
        **{f"{k}_per_commit": round(v / commits, 2) for k, v in calls.items() if k[:5] == "call_"},
        "coordinator_calls_per_commit": round(calls.get("coordinator_calls", 0) / commits, 3),
        "prepares_per_commit": round(d["txn_prepared"] / commits, 3),
        "decision_puts_per_commit": round(d["d"] / commits, 3),
        "aborted_intents_per_commit": round(d["txn_aborted"] / commits, 3),
        "prepares_per_log_write": round(d["txn_prepared"] / max(1, d["group_commits"]), 2),
        "task_ms_per_commit": round(lat, 2),
        **{f"{k}_ms_per_commit": round(v, 2) for k, v in per.items()},
        "rest_ms_per_commit": round(lat - sum(per.values()), 2),
    }


def _measure(ray: Any, fresh: Any, where: str, r: int, sz: Sizes, f: dict) -> None:
    """One run of every figure of this store, each on a fresh deployment, each followed by
    its baseline."""

    def once(schema: dict, fn: Any, args: Any, setup: Any = None) -> tuple[list, dict]:
        with fresh() as client:
            client.create_table(DB, "t", schema, "k")
            if setup:
                setup(client)
            before = _counters(client)
            t0 = time.perf_counter()
            res = ray.get([ray.remote(num_cpus=0)(fn).remote(client, *a) for a in args])
            dt = time.perf_counter() - t0
            if all("window" in r for r in res):  # from the first task's first write to the last
                dt = max(r["window"][1] for r in res) - min(r["window"][0] for r in res)
            bounds = _bounds(res, before, _counters(client), dt)
            if fn is _transfers:  # no lost update: the balances still add up
                rows = client.scan(DB, "t", snapshot=client.snapshot())
                assert sum(row["w"] for row in rows) == len(args[0][0]) * BALANCE
        return res, bounds

    run, nb = f"run {r + 1}/{sz.runs}", sz.batches
    cases = [("6b", sz.commits, INFLIGHT), ("6b-seq", sz.commits // 4, 1)]
    if where != "local":
        cases = [("6b-s3", sz.s3_commits, INFLIGHT)]
    jobs = []
    for i, m, k in cases:
        groups = _spread_keys(TASKS * m)
        jobs.append((i, 4, [groups[t * m : (t + 1) * m] for t in range(TASKS)], k))
    if where == "local":
        spans = [
            [range(b * 1000, b * 1000 + 1000) for b in range(t * nb, t * nb + nb)]
            for t in range(TASKS)
        ]
        jobs.insert(0, ("6a", 1000, spans, 1))
    for i, rows, work, k in jobs:
        for atomic in (True, False):
            progress(f"{i}: {rows:,}-row writes on 4 shards, {k} in flight per task, "
                     f"atomic={atomic}, {run}")  # fmt: skip
            res, bounds = once(SCHEMA, _writes, [(w, atomic, k) for w in work])
            side = "ours" if atomic else "peer"
            getattr(f[i], side).append(bounds["commits_per_s"] * (rows if i == "6a" else 1))
            f[i].extra.setdefault("atomic" if atomic else "plain", []).append(bounds)
            lat = [v for x in res for v in x["lat"]]
            for p, q in (("p50", 0.5), ("p99", 0.99)):
                if lat and f"{i}-{p}" in f:
                    getattr(f[f"{i}-{p}"], side).append(_pct(lat, q))
    if where != "local":
        return
    for n in sz.accounts:
        progress(f"6c: bank transfers over {n:,} accounts, {run}")
        accounts = list(range(n))

        def load(client: Any, accounts: list = accounts) -> None:
            client.write(DB, "t", [{"k": a, "w": BALANCE} for a in accounts], atomic=True)

        args = [(accounts, r * 1000 + t, sz.transfers) for t in range(TASKS)]
        res, bounds = once(BANK, _transfers, args, load)
        commits, conflicts = bounds["commits"], sum(x["conflicts"] for x in res)
        f[f"6c-{n}"].ours.append(bounds["commits_per_s"])
        f[f"6c-{n}-conflicts"].ours.append(100 * conflicts / max(1, commits + conflicts))
        lat = [v for x in res for v in x["lat"]]
        if lat:
            bounds.update(p50_ms=round(_pct(lat, 0.5), 2), p99_ms=round(_pct(lat, 0.99), 2))
        f[f"6c-{n}"].extra.setdefault("runs", []).append(bounds)


def _ray_figures(sz: Sizes, f: dict[str, Figure]) -> None:
    import ray
    import ray.cloudpickle

    import coordinator
    from coordinator.cli.ray_node import start_local_ray
    from coordinator.client.tasks import warm_workers

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    @contextlib.contextmanager
    def fresh(s3: MotoServer | None) -> Iterator[Any]:
        d = None if s3 else tempdir("dn-txn")
        store, env = d, {}
        if s3:
            store, env = f"s3://{s3.new_bucket()}/dn", {"AWS_ENDPOINT_URL": s3.endpoint}
        client = coordinator.deploy(shards=SHARDS, store=store, namespace=NAMESPACE, env=env)
        try:
            client.create_database(DB)
            time.sleep(SETTLE_S)
            yield client
        finally:
            coordinator.shutdown(namespace=NAMESPACE)
            if d:
                rmtree(d)

    with MotoServer() as moto, node_env(moto):
        start_local_ray(num_cpus=2)
        try:
            warm_workers(TASKS)
            for r in range(sz.runs):
                _measure(ray, functools.partial(fresh, None), "local", r, sz, f)
                _measure(ray, functools.partial(fresh, moto), "s3", r, sz, f)
        finally:
            ray.shutdown()


def _plain_figures(quick: bool) -> list[Figure]:
    """2a-2c of the engine alone, as part 2 measures ours (no peer)."""
    from bench.ours import Ours
    from bench.vs_slatedb import FULL as P2
    from bench.vs_slatedb import QUICK as P2Q

    sz = P2Q if quick else P2
    fa = Figure("6-2a", "txn", "2a again: durable single-row writes, 1 writer", "writes/s")
    fb = Figure("6-2b", "txn", "2b again: durable single-row writes, 100 writers", "writes/s")
    fc = Figure("6-2c", "txn", "2c again: durable batches of 1,000 rows", "rows/s")
    for r in range(sz.runs):
        progress(f"6-2a..c: the engine's own writes, run {r + 1}/{sz.runs}")
        for fig, work, n in (
            (fa, lambda o: timed(lambda: o.single(sz.single))[0], sz.single),
            (fb, lambda o: o.concurrent(sz.concurrent), sz.concurrent),
            (fc, lambda o: timed(lambda: o.batches(sz.batches))[0], sz.batches * 1000),
        ):
            o = Ours(f"txn-{fig.id}")
            try:
                fig.ours.append(n / work(o))
            finally:
                o.close()
    return [fa, fb, fc]


def run(quick: bool, ray_ok: bool = True, sizes: Sizes | None = None) -> list[Figure]:
    sz = sizes or (QUICK if quick else FULL)
    f = _figures(sz)
    if not ray_ok:
        for fig in f.values():
            fig.skipped = "--no-ray given: the Ray cluster figures were not run"
    else:
        _ray_figures(sz, f)
    for fig in f.values():
        for side in ("atomic", "plain"):
            runs = fig.extra.get(side, [])
            keys = {k for x in runs for k in x}
            if runs:
                fig.extra[f"{side}_median"] = {
                    k: statistics.median(x.get(k, 0) for x in runs) for k in sorted(keys)
                }
    return [*f.values(), *_plain_figures(quick)]
