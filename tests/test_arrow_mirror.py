"""A buffer block's Arrow mirror (dn/write/arrowmirror.py): the background converts each row of
the in-memory tail once, and Arrow reads slice it and read what the dict reads read.

- Reads equal the dict reads across writes with nulls, deletes, older snapshots, background
  rounds at any point, a transaction's abort and commit, a freeze and a write-out.
- After a background round a read converts nothing (it slices the kept record batches); rows
  written since are converted by the read, not kept, and by the next round, kept.
- Rows converted a few at a time (steady writes) are kept in few batches.
- The background converts rows below every undecided intent, and keeps the mirrors under
  ``arrow_mirror_bytes``; the mirrors are not counted in the memory backpressure bounds.
- Readers in several threads while a writer writes read what the dict reads read.
"""

from __future__ import annotations

import random
import threading
import uuid

import pyarrow as pa

from dn import Engine, Settings
from dn.objects import decision
from dn.write import arrowmirror
from dn.write.arrowmirror import PIECE, SMALL
from dn.write.part import WritePart
from dn.write.tokens import TokenMinter

SCHEMA = {"k": "int64", "v": "string", "w": "float64"}


def _engine() -> Engine:
    e = Engine.open(f"memory://mirror-{uuid.uuid4().hex[:8]}", 0, Settings(background=False))
    e.create_database("d")
    e.create_table("d", "t", SCHEMA, "k")
    return e


def _block(e: Engine):
    state = e._state  # noqa: SLF001 - the test looks at the buffer the reads go through
    (block,) = state.mutable.tables.values()
    return block


def _dicts(e: Engine, snapshot: int) -> list[dict]:
    return list(e.scan("d", "t", snapshot=snapshot))


def _write(e: Engine, rng: random.Random, n: int) -> None:
    keys = rng.sample(range(max(5_000, 2 * n)), n)
    e.write_columns(
        "d",
        "t",
        {
            "k": keys,
            "v": [None if rng.random() < 0.1 else f"s{rng.randrange(100)}" for _ in keys],
            "w": [None if rng.random() < 0.1 else rng.random() for _ in keys],
        },
    )


def test_arrow_reads_through_the_mirror_equal_the_dict_reads():
    rng = random.Random(7)
    e = _engine()
    snaps = []
    minter = TokenMinter()
    for step in range(60):
        r = rng.random()
        if r < 0.5:
            _write(e, rng, rng.choice([1, 10, 300, 3_000]))
        elif r < 0.65:
            e.write_columns("d", "t", {"k": []}, deletes=rng.sample(range(5_000), 50))
        elif r < 0.75:  # a transaction's intent, then its decision
            t = e.live_table("d", "t")
            keys = rng.sample(range(5_000), 20)
            cols, _ = t.normalize_columns({"k": keys, "v": ["txn"] * 20}, 1 << 20)
            token, at = minter.mint(), e.clock() + (5 << 16)
            e.prepare(token, at, [WritePart.from_columns(t, cols, [])], None)
            _write(e, rng, 10)  # above the intent
            abort = rng.random() < 0.5
            outcome = decision.ABORTED if abort else at
            decision.decide(e.store, token, outcome, [0])
            e.resolve(token, outcome)
        elif r < 0.8:
            e.freeze()
        elif r < 0.83:
            e.flush()
        if rng.random() < 0.5:  # a background round: the mirror catches up (or not)
            e.maintain()
        snaps.append(e.snapshot())
        for s in (snaps[-1], rng.choice(snaps)):  # the newest, and an older one
            assert e.scan_arrow("d", "t", snapshot=s).to_pylist() == _dicts(e, s), step
    e._check()  # noqa: SLF001


def test_after_a_background_round_a_read_converts_nothing(monkeypatch):
    converted = []
    real = arrowmirror.convert

    def counting(cols, ts, lo, hi, schema):
        converted.append(hi - lo)
        return real(cols, ts, lo, hi, schema)

    monkeypatch.setattr(arrowmirror, "convert", counting)
    rng = random.Random(1)
    e = _engine()
    _write(e, rng, 3_000)
    e.maintain()
    mirror = _block(e).mirror
    batches = list(mirror.batches)
    assert mirror.done == 3_000
    assert sum(converted) == 3_000  # by the background
    assert e.scan_arrow("d", "t").to_pylist() == _dicts(e, e.snapshot())
    assert sum(converted) == 3_000  # the read sliced what is kept
    _write(e, rng, 2 * PIECE)
    assert e.scan_arrow("d", "t").to_pylist() == _dicts(e, e.snapshot())  # converted, not kept
    assert sum(converted) == 3_000 + 2 * PIECE
    assert mirror.done == 3_000 and all(a is b for a, b in zip(mirror.batches, batches))
    e.maintain()  # the new rows alone, in pieces
    assert mirror.done == 3_000 + 2 * PIECE and mirror.batches[0] is batches[0]
    assert max(b.num_rows for b in mirror.batches) <= PIECE
    assert e.scan_arrow("d", "t").to_pylist() == _dicts(e, e.snapshot())


def test_rows_converted_a_few_at_a_time_are_kept_in_few_batches():
    e = _engine()
    for i in range(400):
        e.write_columns("d", "t", {"k": list(range(i * 100, i * 100 + 100)), "v": ["x"] * 100})
        e.maintain()
    mirror = _block(e).mirror
    assert mirror.done == 40_000
    assert len(mirror.batches) <= 40_000 // SMALL + 2, len(mirror.batches)
    assert e.scan_arrow("d", "t", columns=["k"]).num_rows == 40_000


def test_the_mirror_is_a_cache_beside_the_buffers_memory_and_the_background_bounds_it():
    rng = random.Random(3)
    bound = 200_000
    e = Engine.open(
        f"memory://mirror-{uuid.uuid4().hex[:8]}",
        0,
        Settings(background=False, arrow_mirror_bytes=bound),
    )
    e.create_database("d")
    e.create_table("d", "t", SCHEMA, "k")
    buf = e._state.mutable  # noqa: SLF001
    for _ in range(10):
        _write(e, rng, 4_000)
        memory = buf.memory
        e.maintain()
        assert buf.memory == memory  # backpressure bounds the rows, not their copy
    mirror = _block(e).mirror
    assert bound <= buf.mirror_bytes() == mirror.nbytes < 2 * bound  # stopped past the bound
    assert mirror.done < 40_000
    assert buf.describe()["mirror_bytes"] == mirror.nbytes
    s = e.snapshot()
    assert e.scan_arrow("d", "t", snapshot=s).to_pylist() == _dicts(e, s)  # converts the rest
    assert mirror.done < 40_000  # and keeps none of it


def test_readers_in_threads_while_a_writer_writes_read_the_dict_reads():
    e = _engine()
    stop = threading.Event()
    bad: list = []

    def reader() -> None:
        while not stop.is_set():
            s = e.snapshot()
            got = e.scan_arrow("d", "t", snapshot=s)
            if got.to_pylist() != _dicts(e, s):
                bad.append(s)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(150):
        e.write_columns("d", "t", {"k": list(range(i * 50, i * 50 + 50)), "v": ["y"] * 50})
    stop.set()
    for t in threads:
        t.join()
    assert not bad
    assert isinstance(e.scan_arrow("d", "t"), pa.Table)


def test_the_background_converts_fresh_rows_below_every_undecided_intent():
    rng = random.Random(5)
    e = _engine()
    _write(e, rng, 2_000)
    e.maintain()  # one background round
    block = _block(e)
    assert block.mirror is not None and block.mirror.done == 2_000
    t = e.live_table("d", "t")
    cols, _ = t.normalize_columns({"k": [1, 2], "v": ["txn", "txn"]}, 1 << 20)
    token = TokenMinter().mint()
    e.prepare(token, e.clock() + (5 << 16), [WritePart.from_columns(t, cols, [])], None)
    _write(e, rng, 500)  # above the intent: not converted while it is undecided
    e.maintain()
    assert block.mirror.done == 2_000
    decision.decide(e.store, token, decision.ABORTED, [0])
    e.resolve(token, decision.ABORTED)  # its rows go, and the mirror with them
    assert block.mirror is None
    e.maintain()
    assert block.mirror.done == 2_500
    batches = list(block.mirror.batches)
    s = e.snapshot()
    assert e.scan_arrow("d", "t", snapshot=s).to_pylist() == _dicts(e, s)
    assert all(a is b for a, b in zip(block.mirror.batches, batches, strict=True))


def test_with_the_bound_at_zero_nothing_is_kept():
    e = Engine.open(
        f"memory://mirror-{uuid.uuid4().hex[:8]}",
        0,
        Settings(background=False, arrow_mirror_bytes=0),
    )
    e.create_database("d")
    e.create_table("d", "t", SCHEMA, "k")
    _write(e, random.Random(2), 1_000)
    e.maintain()
    assert _block(e).mirror is None
    assert e.scan_arrow("d", "t").num_rows == 1_000  # converted by the read, as before
    assert _block(e).mirror is None
