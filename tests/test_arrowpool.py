"""Arrow's memory pool in DN's processes and tasks (decision 0020): jemalloc (or the system
allocator) while DN code runs, the previous pool after, and the user's
``ARROW_DEFAULT_MEMORY_POOL`` left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa

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
