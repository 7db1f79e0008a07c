"""Arrow's memory pool in DN's processes and tasks (decision 0020): jemalloc (or the system
allocator) while DN code runs, the previous pool after, and the user's
``ARROW_DEFAULT_MEMORY_POOL`` left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pyarrow as pa
import pytest

from coordinator.client import queries
from dn import arrowpool


def test_for_task_sets_the_pool_inside_and_puts_the_previous_one_back(monkeypatch):
    monkeypatch.delenv(arrowpool.ARROW_POOL_ENV, raising=False)
    before = pa.default_memory_pool().backend_name
    chosen = arrowpool.chosen_pool().backend_name
    assert chosen in ("jemalloc", "system")
    with arrowpool.for_task():
        assert pa.default_memory_pool().backend_name == chosen
        kept = pa.array(list(range(1000)))  # allocated from the chosen pool
    assert pa.default_memory_pool().backend_name == before
    assert kept.sum().as_py() == 499_500  # freed later into its own pool, still valid
    try:
        with arrowpool.for_task():
            raise KeyError("x")
    except KeyError:
        pass
    assert pa.default_memory_pool().backend_name == before


def test_a_pool_the_user_sets_during_a_block_is_kept_after_it(monkeypatch):
    monkeypatch.delenv(arrowpool.ARROW_POOL_ENV, raising=False)
    original = pa.default_memory_pool()
    chosen = arrowpool.chosen_pool().backend_name
    if chosen == "jemalloc":
        theirs = pa.system_memory_pool()
    else:
        try:
            theirs = pa.mimalloc_memory_pool()
        except NotImplementedError:
            pytest.skip("no second pool to choose in this pyarrow build")
    try:
        with arrowpool.for_task():
            pa.set_memory_pool(theirs)  # e.g. while iterating subscribe
        assert pa.default_memory_pool().backend_name == theirs.backend_name
        with arrowpool.for_task():  # the next block sets DN's and puts theirs back
            assert pa.default_memory_pool().backend_name == chosen
        assert pa.default_memory_pool().backend_name == theirs.backend_name
    finally:
        pa.set_memory_pool(original)


def test_a_users_pool_is_left_alone(monkeypatch):
    monkeypatch.setenv(arrowpool.ARROW_POOL_ENV, "system")
    before = pa.default_memory_pool().backend_name
    assert arrowpool.chosen_pool() is None
    with arrowpool.for_task():
        assert pa.default_memory_pool().backend_name == before


def test_use_in_process_makes_it_the_processs_pool():
    code = "from dn import arrowpool; print(arrowpool.use_in_process())"
    env = {k: v for k, v in os.environ.items() if k != arrowpool.ARROW_POOL_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("jemalloc", "system")
    env[arrowpool.ARROW_POOL_ENV] = "system"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "system"


def test_blocks_in_two_threads_set_the_pool_once_and_put_it_back_once(monkeypatch):
    monkeypatch.delenv(arrowpool.ARROW_POOL_ENV, raising=False)
    before = pa.default_memory_pool().backend_name
    chosen = arrowpool.chosen_pool().backend_name
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with arrowpool.for_task():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with arrowpool.for_task():
        t.start()
        assert entered.wait(10)
    assert pa.default_memory_pool().backend_name == chosen  # the other thread is still inside
    release.set()
    t.join(10)
    assert pa.default_memory_pool().backend_name == before


def test_a_pooled_stream_makes_its_items_with_the_pool_and_puts_it_back(monkeypatch):
    monkeypatch.delenv(arrowpool.ARROW_POOL_ENV, raising=False)
    before = pa.default_memory_pool().backend_name
    chosen = arrowpool.chosen_pool().backend_name

    def stream():
        for _ in range(3):
            yield pa.default_memory_pool().backend_name

    assert list(arrowpool.pooled(stream())) == [chosen] * 3
    assert pa.default_memory_pool().backend_name == before
    s = arrowpool.pooled(stream())
    assert next(s) == chosen
    s.close()  # a stream left early
    assert pa.default_memory_pool().backend_name == before


@pytest.mark.ray
def test_the_clients_arrow_reads_allocate_from_the_pool_and_leave_the_drivers(cluster, monkeypatch):
    monkeypatch.delenv(arrowpool.ARROW_POOL_ENV, raising=False)
    before = pa.default_memory_pool().backend_name
    chosen = arrowpool.chosen_pool().backend_name
    c = cluster
    c.create_database("pool")
    c.create_table("pool", "t", {"k": "int64", "v": "string"}, "k")
    first = c.snapshot() + 1
    c.write("pool", "t", [{"k": k, "v": str(k)} for k in range(100)])
    seen = []
    real = queries.scan_arrow

    def spy(*a, **kw):
        seen.append(pa.default_memory_pool().backend_name)
        return real(*a, **kw)

    monkeypatch.setattr(queries, "scan_arrow", spy)
    assert c.scan_arrow("pool", "t").num_rows == 100 and seen == [chosen]
    assert pa.default_memory_pool().backend_name == before
    assert sum(b.num_rows for b in c.scan_batches("pool", "t")) == 100
    assert c.changes_arrow("pool", "t", first).num_rows == 100
    feed = c.subscribe("pool", "t", first)
    assert next(feed).num_rows == 100
    assert pa.default_memory_pool().backend_name == chosen  # the feed is open
    feed.close()
    assert pa.default_memory_pool().backend_name == before
