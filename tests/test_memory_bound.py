"""The memory bound (DESIGN.md §5 promise 7, issue 16): the buffers' memory estimate tracks
what their Python objects really take, and backpressure acts on it, not on encoded bytes.

- the estimate (:attr:`dn.write.buffer.Buffer.memory`) is within 30% of the heap growth
  ``tracemalloc`` measures, for several row shapes, and an aborted intent takes its share out;
- with buffer checkpoints stalled, writers are refused once the estimate passes
  ``queue_stop_bytes`` while the encoded bytes are far below it.

The resident-set trial in a process of its own is ``tests/trials/memory.py``.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from dn import Engine, Settings, Unavailable
from dn.objects import codec
from dn.store import FaultyStore, MemoryStore
from dn.write.buffer import Buffer

MiB = 1024 * 1024


def _int64_string(rng: random.Random, ks: list[int]) -> tuple[list, list]:
    return [ks, [f"user-{rng.randrange(10**9)}-name" for _ in ks]], []


def _wide(rng: random.Random, ks: list[int]) -> tuple[list, list]:
    cols = [ks]
    cols += [[rng.randrange(-(2**62), 2**62) for _ in ks] for _ in range(6)]
    cols += [[rng.random() for _ in ks] for _ in range(6)]
    cols += [[rng.random() < 0.5 for _ in ks] for _ in range(3)]
    cols += [[f"s{rng.randrange(10**6)}" for _ in ks] for _ in range(4)]
    return cols, []


def _blobs(rng: random.Random, ks: list[int]) -> tuple[list, list]:
    return [ks, [rng.randbytes(rng.randrange(500, 3000)) for _ in ks]], []


def _small_ints(rng: random.Random, ks: list[int]) -> tuple[list, list]:
    return [ks] + [[rng.randrange(100) for _ in ks] for _ in range(10)], []


def _composite(rng: random.Random, ks: list[int]) -> tuple[list, list]:
    cols = [[k % 97 for k in ks], [f"k{k}" for k in ks], [rng.random() for _ in ks]]
    return cols, [(k % 97, f"d{k}") for k in ks[: len(ks) // 4]]


def _non_ascii(rng: random.Random, ks: list[int]) -> tuple[list, list]:
    return [ks, [f"naïve café {rng.randrange(10**6)}" for _ in ks]], []


ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    "int64+string": ((0,), _int64_string),
    "wide": ((0,), _wide),
    "blobs": ((0,), _blobs),
    "small_ints": ((0,), _small_ints),
    "composite_deletes": ((0, 1), _composite),
    "non_ascii": ((0,), _non_ascii),
}


def _payloads(shape, batches: int, per: int) -> list[bytes]:
    """Each batch as the log holds it: decoded again, its values are fresh objects."""
    rng = random.Random(16)
    out = []
    for b in range(batches):
        cols, dels = shape(rng, list(range(10**9 + b * per, 10**9 + (b + 1) * per)))
        out.append(codec.pack([1, [cols], dels]))
    return out


def _apply(buf: Buffer, pk_pos: tuple[int, ...], payloads: list[bytes]) -> None:
    for i, p in enumerate(payloads):
        table_id, chunks, dels = codec.unpack_tuples(p)
        ncols = len(chunks[0])
        buf.apply_columns(i + 1, table_id, ncols, pk_pos, list(chunks), list(dels), len(p) + 16)


def _measure(name: str) -> tuple[int, int, int]:
    """The buffer's estimate, tracemalloc's growth and the encoded bytes for one shape."""
    pk_pos, shape = SHAPES[name]
    per = 200 if name == "blobs" else 1000
    payloads = _payloads(shape, 20, per)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buf = Buffer(1, 0.0)
        _apply(buf, pk_pos, payloads)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    buf._check()
    return buf.memory, grown, buf.nbytes


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_estimate_within_30_percent_of_tracemalloc(name: str) -> None:
    # measured in a process of its own: tracemalloc counts every thread's allocations, and the
    # test session's other threads (engines' background rounds, Ray) allocate meanwhile
    code = f"from tests.test_memory_bound import _measure; print(*_measure({name!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    memory, grown, nbytes = map(int, out.stdout.split())
    assert 0.7 * grown <= memory <= 1.3 * grown, (name, memory, grown)
    assert memory >= nbytes


def test_aborted_intent_takes_its_estimate_out() -> None:
    buf = Buffer(1, 0.0)
    _apply(buf, (0,), _payloads(_int64_string, 2, 500))
    before = buf.memory
    cols, _ = _int64_string(random.Random(1), list(range(5000, 6000)))
    buf.apply_intent(3, b"t" * 16, [(1, 2, (0,), [cols], [4, 5])], 20_000)
    assert buf.memory > before + 20_000
    assert buf.tables[1].newest([5000]) == 3  # the key index counts while it lives
    buf.abort_intent(3)
    buf._check()
    assert buf.memory == before
    buf.apply_intent(4, b"u" * 16, [(1, 2, (0,), [cols], [])], 20_000)
    buf.commit_intent(4)  # a committed intent's rows stay counted
    buf._check()
    assert buf.memory > before + 20_000


def _stalled_engine(stop_bytes: int) -> Engine:
    """An engine whose buffer checkpoints fail (every range-object put)."""
    faulty = FaultyStore(MemoryStore(), seed=16)
    faulty.add_rule("put", "20/", kind="error")
    settings = Settings(
        background=False,
        freeze_bytes=64 * MiB,
        freeze_interval_s=None,
        checkpoint_interval_s=None,
        queue_slow_bytes=stop_bytes,
        queue_stop_bytes=stop_bytes,
        store_retry_attempts=1,
    )
    return Engine.open(store=faulty, settings=settings)


def test_refused_once_estimate_passes_stop_while_encoded_far_below() -> None:
    stop = 8 * MiB
    eng = _stalled_engine(stop)
    try:
        schema = {"k": "int64", **{f"f{i}": "int64" for i in range(15)}}
        eng.create_database("db")
        eng.create_table("db", "t", schema, "k")
        admitted, refused = 0, None
        for b in range(1000):
            ks = list(range(b * 1000, (b + 1) * 1000))
            cols = {"k": ks, **{f"f{i}": [k % 7 for k in ks] for i in range(15)}}
            before = eng.queued_bytes()
            try:
                eng.write_columns("db", "t", cols)
            except Unavailable as exc:
                refused = exc
                break
            assert before < stop  # admitted only below the bound
            admitted += 1
        assert refused is not None, "never refused"
        st = eng.status()
        encoded = sum(b["bytes"] for b in st["buffers"])
        assert st["buffer_memory_bytes"] == eng.queued_bytes() >= stop
        assert encoded < stop / 4, (encoded, st["buffer_memory_bytes"])
        assert st["queue_memory_bytes"] > 0 and st["queue_bytes"] > 0
        assert admitted > 0 and "queue_stop_bytes" in str(refused)
        with pytest.raises(Unavailable):  # still refused while checkpoints stall
            eng.write_columns("db", "t", {"k": [-1], **{f"f{i}": [0] for i in range(15)}})
        eng._state._check()
    finally:
        eng.close()


def test_writer_over_slow_freezes_a_large_mutable_buffer() -> None:
    """Upkeep freezes by encoded size; a writer over queue_slow_bytes freezes the mutable
    buffer itself when it holds most of the memory, so a checkpoint can relieve it."""
    settings = Settings(
        background=False,
        freeze_bytes=64 * MiB,
        freeze_interval_s=None,
        checkpoint_interval_s=None,
        queue_slow_bytes=2 * MiB,
        queue_stop_bytes=4 * MiB,
    )
    eng = Engine.open(store=MemoryStore(), settings=settings)
    try:
        eng.create_database("db")
        eng.create_table("db", "t", {"k": "int64", "v": "int64"}, "k")
        for b in range(200):
            ks = list(range(b * 1000, (b + 1) * 1000))
            eng.write_columns("db", "t", {"k": ks, "v": [k * 7919 for k in ks]})
        st = eng.status()
        assert st["counters"]["buffer_checkpoints"] > 0
        assert st["buffer_memory_bytes"] < 4 * MiB
        eng._state._check()
    finally:
        eng.close()
