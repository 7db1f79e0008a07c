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
  does not own (a Ray Data read or write task runs in a worker that runs the user's tasks too):
  set on entry, the one before put back on exit.

A user's own choice wins: with ``ARROW_DEFAULT_MEMORY_POOL`` set (Arrow's variable, read when
pyarrow starts), neither changes anything. The driver's pool is never changed: the client's
in-process reads allocate from whatever pool the user's process uses.

Any thread (Arrow's default pool is one per process; :func:`for_task` is meant for a task's
one thread).
"""

from __future__ import annotations

import os
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


@contextmanager
def for_task() -> Iterator[None]:
    """:func:`chosen_pool` as the default pool inside the block, the previous one after."""
    pool = chosen_pool()
    if pool is None:
        yield
        return
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(before)
