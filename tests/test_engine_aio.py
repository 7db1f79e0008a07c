"""The asyncio front door (dn/write/aio.py): many coroutines' writes share log writes, each gets its
own timestamp or its own error, and threads can write at the same time."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dn import Engine, InvalidArgument, ManualClock, Settings, Unavailable
from dn.store import FaultyStore, MemoryStore

SCHEMA = {"k": "int64", "v": "string"}


def _engine(store=None) -> Engine:
    eng = Engine.open(
        settings=Settings(background=False), store=store or MemoryStore(), clock=ManualClock()
    )
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    return eng


def test_many_coroutines_share_log_writes_and_all_land():
    eng = _engine()

    async def writer(w):
        return [
            await eng.write_async("db", "t", [{"k": w * 1000 + i, "v": f"{w}"}]) for i in range(20)
        ]

    async def main():
        return await asyncio.gather(*[writer(w) for w in range(50)])

    stamps = [ts for per in asyncio.run(main()) for ts in per]
    assert len(set(stamps)) == 1000  # one timestamp per write
    rows = list(eng.scan("db", "t"))
    assert len(rows) == 1000
    st = eng.status()
    assert st["log"]["objects_written"] < 1000 / 5, "writes should share log writes"
    eng._check()
    eng.close()


def test_bad_input_raises_in_the_calling_coroutine_and_others_land():
    eng = _engine()

    async def main():
        good = [eng.write_async("db", "t", [{"k": i, "v": "x"}]) for i in range(10)]
        bad = eng.write_async("db", "t", [{"k": "nope"}])
        return await asyncio.gather(*good, bad, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[-1], InvalidArgument)
    assert all(isinstance(r, int) for r in results[:-1])
    assert [r["k"] for r in eng.scan("db", "t")] == list(range(10))
    eng.close()


def test_store_failure_fails_every_write_of_the_round_and_none_is_visible():
    inner = MemoryStore()
    faulty = FaultyStore(inner)
    eng = _engine(faulty)
    faulty.add_rule("put_if_absent", "30/", kind="error", count=1)

    async def main():
        return await asyncio.gather(
            *[eng.write_async("db", "t", [{"k": i, "v": "x"}]) for i in range(10)],
            return_exceptions=True,
        )

    results = asyncio.run(main())
    failed = [r for r in results if isinstance(r, Unavailable)]
    assert failed and all(isinstance(r, int | Unavailable) for r in results)
    visible = {r["k"] for r in eng.scan("db", "t")}
    assert visible == {i for i, r in enumerate(results) if isinstance(r, int)}
    eng.close()


def test_threads_and_coroutines_write_together():
    eng = _engine()

    def thread_writer(w):
        for i in range(50):
            eng.write("db", "t", [{"k": 10_000 + w * 100 + i, "v": "t"}])

    async def main():
        await asyncio.gather(
            *[eng.write_async("db", "t", [{"k": i, "v": "a"}]) for i in range(200)]
        )

    threads = [threading.Thread(target=thread_writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    asyncio.run(main())
    for t in threads:
        t.join()
    assert sum(1 for _ in eng.scan("db", "t")) == 400
    eng._check()
    eng.close()


@pytest.mark.parametrize("loops", [2])
def test_each_event_loop_gets_its_own_drain(loops):
    eng = _engine()

    def run(n):
        async def main():
            await asyncio.gather(
                *[eng.write_async("db", "t", [{"k": n * 1000 + i, "v": "x"}]) for i in range(100)]
            )

        asyncio.run(main())

    threads = [threading.Thread(target=run, args=(n,)) for n in range(loops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for _ in eng.scan("db", "t")) == 100 * loops
    eng.close()


def test_reads_during_concurrent_writes_are_repeatable():
    """The in-memory tail is copied outside the engine's lock: a scan taken while writers
    append must equal the same snapshot read again after they stop."""
    eng = _engine()
    stop = threading.Event()

    def writer(w):
        i = 0
        while not stop.is_set():
            eng.write("db", "t", [{"k": w * 100_000 + i, "v": "x"}], deletes=[w * 100_000 + i - 3])
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    seen = []
    try:
        for _ in range(30):
            s = eng.snapshot()
            seen.append((s, list(eng.scan("db", "t", snapshot=s))))
            if len(seen) % 10 == 0:
                eng.freeze()
                eng.flush()
    finally:
        stop.set()
        for t in threads:
            t.join()
    for s, rows in seen:
        assert list(eng.scan("db", "t", snapshot=s)) == rows
    eng._check()
    eng.close()
