"""SlateDB (PyPI ``slatedb``, its uniffi binding) driven the way the benchmark needs it.

Everything in ``slatedb.uniffi`` is async; each workload here is a coroutine and the caller
runs it with ``asyncio.run`` (one event loop per run, database opened and shut down inside).
Keys are int64 as 8 big-endian bytes (so key order is numeric order for keys >= 0), values
100 bytes. Durable means ``await handle.await_durable()`` with ``flush_interval`` = 1 ms,
SlateDB's best setting for durable latency.

Store requests come from SlateDB's :class:`DefaultMetricsRecorder`
(``slatedb.object_store.request_count`` minus ``error_count``: on ``file:///`` each PUT is
first tried with attributes, fails, and is retried, so successful requests are the difference).

Not here: our engine, timing policy (:mod:`bench.harness`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import slatedb.uniffi as sdb

from bench.harness import rmtree, tempdir
from bench.stores import MotoServer, dir_usage

VALUE = b"v" * 100


def key(i: int) -> bytes:
    return i.to_bytes(8, "big")


async def open_db(path: str, s3: dict[str, Any] | None = None):
    """(db, recorder) for a local directory ``path`` or, with ``s3`` (endpoint, bucket,
    credentials), the prefix ``path`` in that bucket."""
    if s3 is None:
        store = sdb.ObjectStore.resolve("file:///")
    else:
        b = sdb.ObjectStoreBuilder(sdb.ObjectStoreType.S3)
        for k, v in (
            ("bucket", s3["bucket"]),
            ("endpoint", s3["endpoint_url"]),
            ("allow_http", "true"),
            ("access_key_id", s3["access_key_id"]),
            ("secret_access_key", s3["secret_access_key"]),
            ("region", s3["region"]),
        ):
            b.with_config(k, v)
        store = b.build()
    builder = sdb.DbBuilder(path, store)
    settings = sdb.Settings.default()
    settings.set("flush_interval", '"1ms"')
    builder.with_settings(settings)
    recorder = sdb.DefaultMetricsRecorder()
    builder.with_metrics_recorder(recorder)
    return await builder.build(), recorder


def requests(recorder) -> dict[str, int]:
    """Successful object-store requests so far, by api (get, put, list, head, delete, ...)."""
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    for m in recorder.snapshot():
        if m.name not in ("slatedb.object_store.request_count", "slatedb.object_store.error_count"):
            continue
        labels = {
            lb.key if hasattr(lb, "key") else lb[0]: lb.value if hasattr(lb, "value") else lb[1]
            for lb in m.labels
        }
        api = labels.get("api", "?")
        target = counts if m.name.endswith("request_count") else errors
        target[api] = target.get(api, 0) + int(m.value[0])
    return {api: n - errors.get(api, 0) for api, n in counts.items()}


def total_requests(recorder) -> int:
    return sum(requests(recorder).values())


def puts(recorder) -> int:
    r = requests(recorder)
    return r.get("put", 0) + r.get("multipart_complete", 0)


# -- workloads ----------------------------------------------------------------------------------


async def single_writes(db, start: int, n: int) -> None:
    for i in range(start, start + n):
        h = await db.put(key(i), VALUE)
        await h.await_durable()


async def concurrent_writes(db, start: int, n: int, writers: int) -> None:
    it = iter(range(start, start + n))

    async def writer():
        for i in it:
            h = await db.put(key(i), VALUE)
            await h.await_durable()

    await asyncio.gather(*(writer() for _ in range(writers)))


async def batches(db, start: int, nbatches: int, size: int) -> None:
    for b in range(nbatches):
        wb = sdb.WriteBatch()
        base = start + b * size
        for i in range(base, base + size):
            wb.put(key(i), VALUE)
        h = await db.write(wb)
        await h.await_durable()


async def load(db, n: int, batch: int = 10_000) -> None:
    """Write keys 0..n-1 (not awaiting each batch), then flush the memtable to an SST."""
    h = None
    for start in range(0, n, batch):
        wb = sdb.WriteBatch()
        for i in range(start, min(n, start + batch)):
            wb.put(key(i), VALUE)
        h = await db.write(wb)
    if h is not None:
        await h.await_durable()
    await db.flush_with_options(sdb.FlushOptions(flush_type=sdb.FlushType.MEM_TABLE))


async def gets(db, keys: list[int]) -> int:
    found = 0
    for k in keys:
        if await db.get(key(k)) is not None:
            found += 1
    return found


async def scan(db, batch: int = 1000) -> int:
    it = await db.scan(
        sdb.KeyRange(start=None, start_inclusive=True, end=None, end_inclusive=False)
    )
    n = 0
    next_batch = it.next_batch
    is_async = asyncio.iscoroutinefunction(next_batch)
    while True:
        rows = await next_batch(batch) if is_async else next_batch(batch)
        if not rows:
            return n
        n += len(rows)


class Slate:
    """One SlateDB on a fresh directory (or S3 prefix), with its own event loop."""

    def __init__(self, tag: str, s3: tuple[MotoServer, str] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.dir = None
        self.s3 = None
        if s3 is None:
            self.dir = tempdir(f"slate-{tag}")
            path = self.dir + "/db"
        else:
            moto, bucket = s3
            self.s3 = {"bucket": bucket, **moto.s3_options()}
            path = f"slate-{tag}-{time.monotonic_ns()}"
        self.db, self.recorder = self.loop.run_until_complete(open_db(path, self.s3))

    def run(self, coro) -> Any:
        return self.loop.run_until_complete(coro)

    def usage(self) -> tuple[int, int]:
        return dir_usage(self.dir) if self.dir else (0, 0)

    def close(self) -> None:
        try:
            self.run(self.db.shutdown())
        finally:
            self.loop.close()
            if self.dir:
                rmtree(self.dir)
