"""Load trial: 64 concurrent writers for a fixed time, with freezes, buffer checkpoints,
checkpoints, compaction and garbage collection running in the background (DESIGN.md §5
promise 7, and promises 1 and 3 at the end).

The shard's range-object puts are slowed (``FaultyStore`` latency) so that buffer checkpoints
fall behind the writers and the checkpoint queue fills: backpressure must then slow writers
(they run buffer checkpoints themselves past ``queue_slow_bytes``) and refuse them with a
retryable ``Unavailable`` past ``queue_stop_bytes`` — never crash, never let the queue grow
without bound. A sampler thread records the process's resident set size and the engine's
queued bytes; each writer records the latency of every acknowledged write.

Checked at the end: no error other than ``Unavailable`` reached a writer; the queue's
high-water mark stayed within ``queue_stop_bytes`` plus one buffer and one group; the growth
of the resident set stayed under a bound; after a flush, every key holds the value of its last
acknowledged write, and the change feed has each acknowledged row exactly once. Reported:
p50/p99 write latency, writes, refusals, memory figures.

Not here: crashes and faults (the other trials); Ray (``ray_trials``).
"""

from __future__ import annotations

import random
import shutil
import threading
import time

from dn import Engine, Settings, Unavailable
from dn.store import FaultyStore, LocalStore
from tests.trials.crashes import scratch_dir
from tests.trials.tally import Tally, TrialFailure, rss_now_bytes

WRITERS = 64
KEYS_PER_WRITER = 300
MiB = 1024 * 1024
#: Growth of the resident set allowed over the run (the queue bound, the reader cache, the
#: mutable buffer, 64 thread stacks and the interpreter's own slack).
RSS_BOUND = 400 * MiB


def load_settings() -> Settings:
    return Settings(
        freeze_bytes=256 * 1024,
        freeze_interval_s=0.5,
        checkpoint_delta=400,
        checkpoint_interval_s=1.0,
        queue_slow_bytes=1 * MiB,
        queue_stop_bytes=5 * MiB // 4,
        group_commit_max_bytes=1 * MiB,
        cache_bytes=8 * MiB,
        retention_s=None,
        compaction_base_bytes=256 * 1024,
        gc_grace_s=1.0,
        log_delete_grace_s=1.0,
        background=True,
        background_interval_s=0.01,
    )


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def run(seed: int, long: bool, tally: Tally) -> None:
    seconds = 120.0 if long else 3.0
    root = scratch_dir(f"dn-load-{seed}-")
    faulty = FaultyStore(LocalStore(root), seed)
    faulty.add_rule("put", "20/", kind="latency", latency_s=0.25)
    settings = load_settings()
    eng = Engine.open(store=faulty, settings=settings)
    eng.create_database("db")
    eng.create_table("db", "t", {"k": "int64", "w": "int64", "v": "string"}, "k")
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(WRITERS)]
    last: list[dict[int, str]] = [{} for _ in range(WRITERS)]
    rows_acked = [0] * WRITERS
    refused = [0] * WRITERS
    errors: list[BaseException] = []
    high = {"rss": 0, "queue": 0}
    base_rss = rss_now_bytes()

    def writer(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        n = 0
        while not stop.is_set():
            keys = rng.sample(range(KEYS_PER_WRITER), rng.randint(1, 8))
            rows = [
                {"k": w * KEYS_PER_WRITER + k, "w": w, "v": f"{w}.{n}" + "x" * 80} for k in keys
            ]
            t0 = time.perf_counter()
            try:
                eng.write("db", "t", rows)
            except Unavailable:
                refused[w] += 1
                time.sleep(0.005)
                continue
            except BaseException as exc:  # reported below
                errors.append(exc)
                return
            latencies[w].append(time.perf_counter() - t0)
            for r in rows:
                last[w][r["k"]] = r["v"]
            rows_acked[w] += len(rows)
            n += 1

    def sampler() -> None:
        while not stop.is_set():
            high["rss"] = max(high["rss"], rss_now_bytes())
            high["queue"] = max(high["queue"], eng.queued_bytes())
            time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(WRITERS)]
    threads.append(threading.Thread(target=sampler, daemon=True))
    try:
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(60)
        if errors:
            raise TrialFailure(f"a writer under load got {errors[0]!r}, not Unavailable")
        faulty.clear_rules()
        eng.flush()
        _verify(eng, last, sum(rows_acked))
    finally:
        stop.set()
        eng.close()
        shutil.rmtree(root, ignore_errors=True)
    lat = [x for xs in latencies for x in xs]
    bound = settings.queue_stop_bytes + settings.freeze_bytes + settings.group_commit_max_bytes
    growth = max(0, high["rss"] - base_rss)
    with tally.lock:
        tally.load_writes += len(lat)
        tally.load_refused += sum(refused)
        tally.load_rss_growth_bytes = max(tally.load_rss_growth_bytes, growth)
        tally.load_queue_high_water_bytes = max(tally.load_queue_high_water_bytes, high["queue"])
        tally.load_queue_bound_bytes = bound
        tally.write_latency_p50_ms = round(_percentile(lat, 0.50) * 1000, 2)
        tally.write_latency_p99_ms = round(_percentile(lat, 0.99) * 1000, 2)
        tally.acked_writes_checked += len(lat)
    tally.kind("load").update(writes=len(lat), refused=sum(refused), seconds_of_load=seconds)
    if high["queue"] > bound:
        raise TrialFailure(
            f"checkpoint queue reached {high['queue']} bytes, over the bound {bound}"
        )
    if growth > RSS_BOUND:
        raise TrialFailure(f"resident set grew by {growth >> 20} MiB, over {RSS_BOUND >> 20}")


def _verify(eng: Engine, last: list[dict[int, str]], rows_acked: int) -> None:
    want = {k: v for per in last for k, v in per.items()}
    got = {r["k"]: r["v"] for r in eng.scan("db", "t")}
    if got != want:
        bad = next(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise TrialFailure(
            f"after load, key {bad} holds {got.get(bad)!r}, last acknowledged {want.get(bad)!r}"
        )
    seen = set()
    n = 0
    for c in eng.changes("db", "t", 0):
        n += 1
        if (c.ts, c.pk) in seen:
            raise TrialFailure(f"change ({c.ts}, {c.pk}) appears twice")
        seen.add((c.ts, c.pk))
    if n != rows_acked:
        raise TrialFailure(f"the change feed has {n} upserts, {rows_acked} were acknowledged")
