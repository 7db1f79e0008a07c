"""Memory trial: with buffer checkpoints stalled, writers push a shard until it refuses them,
and the shard's peak resident set stays under its bound (DESIGN.md §5 promise 7; issue 16).

Each row shape runs in a process of its own (``python -m tests.trials.memory --child ...``), so
the resident set measured is the shard's: an :class:`dn.Engine` on a local store whose
range-object puts all fail (``FaultyStore``), so no buffer checkpoint ever lands. The write
path freezes buffers (at ``freeze_bytes``, and backpressure's own freeze), and writers over
``queue_slow_bytes`` try to checkpoint them (and fail, then back off). The background upkeep
is off: it retries a failing checkpoint every ``background_interval_s`` with no backoff, a
storm of range-object builds whose churn adds fragmentation (measured: 15-25% of the bound
more with it on) — a follow-up for upkeep, not what this trial bounds.

``WRITERS`` threads write batches of ``write_columns`` until each has been refused
(``Unavailable``) ``REFUSALS`` times; the child then reports its idle baseline resident set
(after open, DDL and one write), its peak (``VmHWM`` of ``/proc/self/status``), and the
engine's estimated and encoded buffer bytes.

Checked, per shape: writers were refused (``Unavailable``, nothing else); the estimate
reached ``queue_stop_bytes`` while the encoded bytes stayed below it (all shapes but blobs);
and ::

    peak_rss <= baseline + queue_stop_bytes * (1 + TOLERANCE) + overhead
    overhead  = BUILD_FACTOR * largest buffer's estimate   (one buffer checkpoint being built)
              + WRITERS * (TRANSIENT_FACTOR * batch + WRITER_SLACK)
                                      (each writer's batch in flight, its allocator arena)

``batch`` is one batch's encoded bytes. Reported (``per_kind["memory"]["figures"]`` and
stderr): bound, peak, baseline, estimate/resident ratio, encoded bytes, per shape.

Shapes: ``int64+string`` (an int key and a 24-character string), ``wide`` (20 columns:
ints, floats, bools, short strings), ``blobs`` (an int key and 1-8 KiB of bytes).

Not here: Ray (the shard actor adds its own baseline); other memory (reader cache, tokens).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

from tests.trials.tally import Tally, TrialFailure

MiB = 1024 * 1024
WRITERS = 4
REFUSALS = 20
#: Allowance over the bound for what the estimate misses: the allocator's fragmentation, as
#: range-object builds (large, short-lived) interleave with the rows that stay (measured:
#: 5-20% of the held memory over the other terms, most with blobs and several writers).
TOLERANCE = 0.20
#: A buffer checkpoint builds one range object: the encoded object and its building blocks,
#: measured at about 1.4 times the buffer's own estimate (tracemalloc).
BUILD_FACTOR = 2
#: A batch in flight: the writer's own columns, its payload, the log record, the group.
TRANSIENT_FACTOR = 6
#: What each writer thread adds beyond its batch: glibc's per-thread malloc arena keeps freed
#: memory (measured: 4-8 MiB a thread with blobs, less with small rows).
WRITER_SLACK = 8 * MiB
SHAPES = ("int64+string", "wide", "blobs")


def _schema(shape: str) -> dict[str, str]:
    if shape == "int64+string":
        return {"k": "int64", "v": "string"}
    if shape == "wide":
        types = ["int64"] * 6 + ["float64"] * 6 + ["bool"] * 3 + ["string"] * 4
        return {"k": "int64", **{f"c{i}": t for i, t in enumerate(types)}}
    return {"k": "int64", "b": "bytes"}


def _batch(shape: str, rng: random.Random, first: int) -> dict[str, list]:
    if shape == "blobs":
        ks = list(range(first, first + 100))
        return {"k": ks, "b": [rng.randbytes(rng.randrange(1024, 8192)) for _ in ks]}
    ks = list(range(first, first + 1000))
    if shape == "int64+string":
        return {"k": ks, "v": [f"name-{rng.randrange(10**18):018d}" for _ in ks]}
    cols: dict[str, list] = {"k": ks}
    for i, t in enumerate(_schema(shape).values()):
        if i == 0:
            continue
        if t == "int64":
            cols[f"c{i - 1}"] = [rng.randrange(-(2**62), 2**62) for _ in ks]
        elif t == "float64":
            cols[f"c{i - 1}"] = [rng.random() for _ in ks]
        elif t == "bool":
            cols[f"c{i - 1}"] = [rng.random() < 0.5 for _ in ks]
        else:
            cols[f"c{i - 1}"] = [f"s{rng.randrange(10**6)}" for _ in ks]
    return cols


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise TrialFailure(f"no {field} in /proc/self/status")


def _child(shape: str, stop: int, freeze: int, seed: int, root: str) -> dict:
    """The shard process: write until refused, then report (see the module docstring)."""
    from dn import Engine, Settings, Unavailable
    from dn.objects import codec
    from dn.store import FaultyStore, LocalStore

    store = FaultyStore(LocalStore(root), seed)
    store.add_rule("put", "20/", kind="error")  # every range object: checkpoints stall
    settings = Settings(
        freeze_bytes=freeze,
        queue_slow_bytes=stop // 2,
        queue_stop_bytes=stop,
        store_retry_attempts=1,
        cache_bytes=1 * MiB,
        checkpoint_interval_s=None,
        retention_s=None,
        compaction=False,
        background=False,  # see the module docstring
    )
    eng = Engine.open(store=store, settings=settings)
    eng.create_database("db")
    eng.create_table("db", "t", _schema(shape), "k")
    probe = _batch(shape, random.Random(seed), -(10**6))
    batch = len(codec.pack(list(probe.values())))
    eng.write_columns("db", "t", probe)
    del probe
    time.sleep(0.2)
    baseline = _proc_kib("VmRSS")
    refused = [0] * WRITERS
    errors: list[BaseException] = []
    peak_est = [0]

    def writer(w: int) -> None:
        rng, n = random.Random(seed * 100 + w), 0
        while refused[w] < REFUSALS:
            cols = _batch(shape, rng, (w << 40) + n)
            try:
                eng.write_columns("db", "t", cols)
                n += len(cols["k"])
            except Unavailable:
                refused[w] += 1
                time.sleep(0.01)
            except BaseException as exc:  # reported by the parent
                errors.append(exc)
                return
            del cols
            peak_est[0] = max(peak_est[0], eng.queued_bytes())

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = eng.status()
    out = {
        "shape": shape,
        "stop": stop,
        "freeze": freeze,
        "batch": batch,
        "baseline": baseline,
        "peak": _proc_kib("VmHWM"),
        "estimate": st["buffer_memory_bytes"],
        "largest_buffer": max(b["memory"] for b in st["buffers"]),
        "peak_estimate": peak_est[0],
        "encoded": sum(b["bytes"] for b in st["buffers"]),
        "rows": st["rows_in_memory"],
        "refused": sum(refused),
        "errors": [repr(e) for e in errors[:3]],
    }
    eng.close()
    return out


def _run_child(shape: str, stop: int, freeze: int, seed: int) -> dict:
    from tests.trials.crashes import scratch_dir

    root = scratch_dir(f"dn-memory-{seed}-")
    try:
        args = [sys.executable, "-m", "tests.trials.memory", "--child", shape]
        args += [str(stop), str(freeze), str(seed), root]
        cwd = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if proc.returncode != 0:
        raise TrialFailure(f"memory child ({shape}) failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(r: dict) -> dict:
    """The promise for one child's report; returns the figures reported."""
    writers = WRITERS * (TRANSIENT_FACTOR * r["batch"] + WRITER_SLACK)
    overhead = BUILD_FACTOR * r["largest_buffer"] + writers
    bound = r["baseline"] + int(r["stop"] * (1 + TOLERANCE)) + overhead
    grown = max(1, r["peak"] - r["baseline"])
    fig = {
        "shape": r["shape"],
        "queue_stop_MiB": round(r["stop"] / MiB, 1),
        "baseline_MiB": round(r["baseline"] / MiB, 1),
        "overhead_MiB": round(overhead / MiB, 1),
        "peak_rss_MiB": round(r["peak"] / MiB, 1),
        "bound_MiB": round(bound / MiB, 1),
        "estimate_MiB": round(r["estimate"] / MiB, 1),
        "encoded_MiB": round(r["encoded"] / MiB, 1),
        "estimate_per_rss_growth": round(r["peak_estimate"] / grown, 2),
        "rows": r["rows"],
        "refused": r["refused"],
    }
    if r["errors"]:
        raise TrialFailure(f"a writer got {r['errors'][0]}, not Unavailable ({r['shape']})")
    if r["refused"] < WRITERS * REFUSALS:
        raise TrialFailure(f"writers were not refused ({r['shape']}): {fig}")
    if r["peak_estimate"] < r["stop"] * 0.9:
        raise TrialFailure(f"refused before the estimate neared queue_stop_bytes: {fig}")
    if r["shape"] != "blobs" and r["encoded"] >= r["stop"] / 2:
        raise TrialFailure(f"the encoded bytes reached the bound: not what is tested ({fig})")
    if r["peak"] > bound:
        raise TrialFailure(f"peak resident set over its bound ({r['shape']}): {fig}")
    return fig


def run(seed: int, long: bool, tally: Tally) -> None:
    stop = 256 * MiB if long else 48 * MiB
    freeze = 8 * MiB if long else 2 * MiB
    figures = tally.kind("memory").setdefault("figures", [])
    for shape in SHAPES:
        fig = check(_run_child(shape, stop, freeze, seed))
        print(f"  memory: {json.dumps(fig)}", file=sys.stderr)
        with tally.lock:
            figures.append(fig)


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--child":
    _, _, shape_, stop_, freeze_, seed_, root_ = sys.argv
    print(json.dumps(_child(shape_, int(stop_), int(freeze_), int(seed_), root_)))
