"""The embedded engine driven the way the benchmark needs it: one shard on a fresh directory
(or S3 prefix), its store's requests counted, with the workloads of parts 2 and 5.

Values are 100 bytes and keys int64, as on the peer's side (:mod:`bench.slate`). Durable means
the write returned (the engine acknowledges a write once it is in the log).

Not here: the peer, timing policy (:mod:`bench.harness`).
"""

from __future__ import annotations

import asyncio
import threading
import time

import dn
from bench import slate
from bench.harness import rmtree, tempdir
from bench.stores import CountingStore, MotoServer
from dn.store import RetryingStore, open_store
from dn.store.locallog import LocalLogStore

DB, TABLE = "bench", "kv"
SCHEMA = {"k": "int64", "v": "bytes"}
VALUE = slate.VALUE
WRITERS = 100  # 2b's concurrent writers


class Ours:
    """One engine on a fresh directory (or S3 prefix), its store counted."""

    def __init__(self, tag: str, s3: tuple[MotoServer, str] | None = None) -> None:
        self.dir = None
        if s3 is None:
            self.dir = tempdir(f"dn-{tag}")
            inner = open_store(self.dir)
        else:
            moto, bucket = s3
            inner = open_store(
                f"s3://{bucket}/dn-{tag}-{time.monotonic_ns()}", s3_options=moto.s3_options()
            )
        self.store = CountingStore(inner)
        # On a local directory the engine keeps its log in the log's own layout (one
        # fdatasync per group commit); counted too, so objects and bytes cover the log.
        self.log_store = CountingStore(RetryingStore(LocalLogStore(self.dir))) if self.dir else None
        self.engine = dn.Engine.open(
            store=self.store, log_store=self.log_store, settings=dn.Settings()
        )
        self.engine.create_database(DB)
        self.engine.create_table(DB, TABLE, SCHEMA, "k")

    def counts(self) -> tuple[dict[str, int], int]:
        """Requests by kind and bytes put, over the data store and the log store."""
        counts, nbytes = self.store.snapshot()
        if self.log_store is not None:
            more, extra = self.log_store.snapshot()
            counts = {k: counts.get(k, 0) + more.get(k, 0) for k in counts.keys() | more.keys()}
            nbytes += extra
        return counts, nbytes

    def requests(self) -> int:
        return sum(self.counts()[0].values())

    def close(self) -> None:
        self.engine.close()
        if self.log_store is not None:
            self.log_store.close()
        if self.dir:
            rmtree(self.dir)

    def single(self, n: int) -> None:
        w = self.engine.write
        for i in range(n):
            w(DB, TABLE, upserts=[{"k": i, "v": VALUE}])

    def concurrent(self, n: int, writers: int = WRITERS) -> float:
        """Seconds for ``n`` single-row writes from ``writers`` asyncio tasks (the engine's
        ``write_async``), as SlateDB's side is measured."""
        it = iter(range(n))
        w = self.engine.write_async

        async def writer():
            for i in it:
                await w(DB, TABLE, upserts=[{"k": i, "v": VALUE}])

        async def main():
            t0 = time.perf_counter()
            await asyncio.gather(*[writer() for _ in range(writers)])
            return time.perf_counter() - t0

        return asyncio.run(main())

    def concurrent_threads(self, n: int, writers: int = WRITERS) -> float:
        """Seconds for ``n`` single-row writes from ``writers`` threads (started beforehand)."""
        it = iter(range(n))
        lock = threading.Lock()
        gate = threading.Barrier(writers + 1)
        errors: list[BaseException] = []
        w = self.engine.write

        def run():
            gate.wait()
            try:
                while True:
                    with lock:
                        i = next(it, None)
                    if i is None:
                        return
                    w(DB, TABLE, upserts=[{"k": i, "v": VALUE}])
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run, daemon=True) for _ in range(writers)]
        for t in threads:
            t.start()
        gate.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return dt

    def batches(self, nbatches: int, size: int = 1000) -> None:
        w = self.engine.write
        for b in range(nbatches):
            base = b * size
            w(DB, TABLE, upserts=[{"k": i, "v": VALUE} for i in range(base, base + size)])

    def load(self, n: int) -> None:
        for start in range(0, n, 1000):
            self.engine.write(
                DB,
                TABLE,
                upserts=[{"k": i, "v": VALUE} for i in range(start, min(n, start + 1000))],
            )
        self.engine.freeze()
        self.engine.flush()
