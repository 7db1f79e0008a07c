"""Arrow's memory pool in the processes and tasks that run DN's Arrow code (decision 0020).

pyarrow's default pool is mimalloc. It takes fresh memory from the kernel in large, huge-page
backed pieces, so a process that keeps what it converts (a shard's Arrow mirrors, a read task's
sorted tail) pays the kernel for zeroed 2 MiB pages on every new piece. Measured on the
benchmark machine (a 2-core VM), converting 500,000 rows of (int64, string, float64, ts) to
Arrow and keeping them, three times in a fresh process: mimalloc 0.25-0.29 s each, 0.17-0.21 s
of it in the kernel, against jemalloc's 0.074 s and the system allocator's 0.10 s. In a
deployment that was most of a first read of fresh data: issue 15's 4f-read measured 1.19M
rows/s with mimalloc and 3.27M with jemalloc (consecutive runs of part 8, medians of 3).

So DN uses jemalloc (or, where pyarrow was built without it, the system allocator):

- :func:`use_in_process` — the whole process's default pool, for processes DN owns (the shard
  actors: ``shards.group.ShardActor``);
- :func:`for_task` — the default pool for the duration of a block of DN code in a process DN
  does not own: set on entry, the one before put back on exit. A Ray Data read or write task
  (it runs in a worker that runs the user's tasks too), and the cluster client's Arrow reads
  in the user's process (``Client.scan_arrow``, ``scan_batches``, ``changes_arrow``,
  ``subscribe``: :func:`pooled` for the streams): measured in a driver, a first
  ``scan_arrow`` of 2M fresh rows ran at 1.3-1.4M rows/s with mimalloc, 2.8-3.3M with
  jemalloc, the second at 2.1-2.4M against 6.9-7.8M.

A user's own choice wins: with ``ARROW_DEFAULT_MEMORY_POOL`` set (Arrow's variable, read when
pyarrow starts), neither changes anything. Outside DN's calls the user's process keeps its own
default pool (an Arrow buffer is freed into the pool it came from, whichever is the default
then). The embedded engine (``dn.Engine``) leaves the pool to its host.

Any thread: Arrow's default pool is one per process, so :func:`for_task` counts the blocks
inside it across threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

#: Arrow's own variable naming the default pool; when set, DN leaves the pool alone.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def chosen_pool() -> pa.MemoryPool | None:
    """The pool DN uses: jemalloc, else the system allocator; None when the user chose one
    (``ARROW_DEFAULT_MEMORY_POOL``)."""
    if os.environ.get(ARROW_POOL_ENV):
        return None
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.system_memory_pool()


def use_in_process() -> str:
    """Make :func:`chosen_pool` this process's default pool; returns the default pool's
    backend name (``jemalloc``, ``system``, or the user's choice)."""
    pool = chosen_pool()
    if pool is not None:
        pa.set_memory_pool(pool)
    return pa.default_memory_pool().backend_name


_lock = threading.Lock()
_users = 0  # blocks inside for_task now, in any thread
_before: pa.MemoryPool | None = None  # the default pool when the first of them entered


@contextmanager
def for_task() -> Iterator[None]:
    """:func:`chosen_pool` as the default pool inside the block, the previous one after the
    last block (of any thread) inside it ends: blocks in several threads at once set it once
    and put the pool from before the first back once. A pool the user made the default while
    a block ran (a pool of another backend) is left as it is."""
    global _users, _before
    pool = chosen_pool()
    if pool is None:
        yield
        return
    with _lock:
        if _users == 0:
            _before = pa.default_memory_pool()
            pa.set_memory_pool(pool)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _before is not None:
                if pa.default_memory_pool().backend_name == pool.backend_name:
                    pa.set_memory_pool(_before)  # else the user chose a pool meanwhile: theirs
                _before = None


def pooled(gen: Iterator) -> Iterator:
    """The items of ``gen`` (a DN stream of Arrow batches), made inside :func:`for_task`."""
    with for_task():
        yield from gen
