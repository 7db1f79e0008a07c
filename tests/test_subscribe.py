"""The live change feed (issue 15, item 5): ``client.subscribe`` yields every change once, in
(ts, key) order across shards, while writers (plain, atomic, deletes) run and a shard
restarts; stopped and resumed from the last timestamp seen, it goes on with no gap or repeat.
In-process cluster of three shards (``tests/test_exactly_once.py``), no Ray.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.test_exactly_once import Cluster


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.close()


def _writers(cluster, stop: threading.Event, seed: int) -> threading.Thread:
    c, rng = cluster.client, random.Random(seed)

    def run() -> None:
        i = 0
        while not stop.is_set():
            keys = rng.sample(range(60), rng.randint(1, 6))
            dels = keys[:1] if rng.random() < 0.3 else []
            rows = [{"k": k, "v": f"{i}.{k}"} for k in keys if k not in dels]
            c.write("db", "t", rows, dels, atomic=rng.random() < 0.5)
            i += 1
            if i == 15:
                cluster.restart(1)
            time.sleep(0.002)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_subscribe_yields_every_change_once_in_order_and_resumes(cluster):
    c = cluster.client
    start = c.snapshot() + 1
    stop = threading.Event()
    writer = _writers(cluster, stop, 3)
    seen: list[tuple] = []
    done = lambda: len(seen) >= 80 or stop.is_set()  # noqa: E731 - the stop condition
    for tbl in c.subscribe("db", "t", start, stop=done):
        rows = tbl.to_pylist()
        seen += [(r["_commit_ts"], r["k"], r["_change_type"]) for r in rows]
    # resume from the last timestamp seen, as dict changes this time
    resume = seen[-1][0] + 1
    more: list[tuple] = []
    for ch in c.subscribe("db", "t", resume, as_dicts=True, stop=lambda: len(more) >= 40):
        more.append((ch.ts, ch.pk, ch.change_type))
    stop.set()
    writer.join()
    everything = seen + more
    upto = everything[-1][0]
    want = [(ch.ts, ch.pk, ch.change_type) for ch in c.changes("db", "t", start, snapshot=upto)]
    assert everything == want[: len(everything)]
    assert [e[:2] for e in everything] == sorted(e[:2] for e in everything)
    assert len(set(e[:2] for e in everything)) == len(everything)
