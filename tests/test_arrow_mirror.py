"""A buffer block's Arrow mirror (dn/write/arrowmirror.py): the first Arrow read that reaches a
row of the in-memory tail converts it and keeps it, the reads after it slice it, and every read
reads what the dict reads read.

- Reads equal the dict reads across writes with nulls, deletes, older snapshots (a read that
  extends the mirror less far than one before it), a transaction's abort and commit, a freeze
  and a write-out.
- A second read of the same tail converts nothing (it slices the kept record batches); rows
  written since are converted on their own.
- A tail read a few rows at a time (a live feed) is kept in few batches.
- Reads keep conversions while the shard's mirrors hold under ``arrow_mirror_bytes``, and
  none past it; the mirrors are not counted in the memory backpressure bounds.
- Readers in several threads while a writer writes read what the dict reads read.
"""

from __future__ import annotations

import random
import threading
import uuid

import pyarrow as pa
import pytest

from dn import Engine, Settings
from dn.errors import InvalidArgument
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
        snaps.append(e.snapshot())
        for s in (snaps[-1], rng.choice(snaps)):  # the newest, and an older one
            assert e.scan_arrow("d", "t", snapshot=s).to_pylist() == _dicts(e, s), step
    e._check()  # noqa: SLF001


def test_a_second_read_of_the_same_tail_converts_nothing(monkeypatch):
    converted = []
    real = arrowmirror.convert

    def counting(cols, ts, lo, hi, schema):
        converted.append(hi - lo)
        return real(cols, ts, lo, hi, schema)

    monkeypatch.setattr(arrowmirror, "convert", counting)
    rng = random.Random(1)
    e = _engine()
    _write(e, rng, 3_000)
    assert e.scan_arrow("d", "t").to_pylist() == _dicts(e, e.snapshot())
    assert sum(converted) == 3_000
    mirror = _block(e).mirror
    batches = list(mirror.batches)
    assert e.scan_arrow("d", "t").to_pylist() == _dicts(e, e.snapshot())
    assert sum(converted) == 3_000  # the second read sliced what the first kept
    assert all(a is b for a, b in zip(mirror.batches, batches, strict=True))
    _write(e, rng, 2 * PIECE)  # the new rows alone are converted, in pieces
    assert e.scan_arrow("d", "t").to_pylist() == _dicts(e, e.snapshot())
    assert sum(converted) == 3_000 + 2 * PIECE and mirror.done == 3_000 + 2 * PIECE
    assert max(b.num_rows for b in mirror.batches) <= PIECE


def test_a_tail_read_a_few_rows_at_a_time_is_kept_in_few_batches():
    e = _engine()
    for i in range(400):
        e.write_columns("d", "t", {"k": list(range(i * 100, i * 100 + 100)), "v": ["x"] * 100})
        assert e.scan_arrow("d", "t", columns=["k"]).num_rows == (i + 1) * 100
    mirror = _block(e).mirror
    assert mirror.done == 40_000
    assert len(mirror.batches) <= 40_000 // SMALL + 2, len(mirror.batches)


def test_reads_keep_conversions_only_under_the_bound_and_backpressure_does_not_count_them():
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
        s = e.snapshot()
        assert e.scan_arrow("d", "t", snapshot=s).to_pylist() == _dicts(e, s)
        assert buf.memory == memory  # backpressure bounds the rows, not their copy
    mirror = _block(e).mirror
    assert bound <= buf.mirror_bytes() == mirror.nbytes < 2 * bound  # kept up to the bound
    assert 0 < mirror.done < 40_000  # and nothing past it
    assert buf.describe()["mirror_bytes"] == mirror.nbytes


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


def test_an_abort_drops_the_mirror_and_the_next_read_converts_the_rows_as_they_are():
    rng = random.Random(5)
    e = _engine()
    _write(e, rng, 2_000)
    assert e.scan_arrow("d", "t").num_rows > 0
    block = _block(e)
    assert block.mirror is not None and block.mirror.done == 2_000
    t = e.live_table("d", "t")
    cols, _ = t.normalize_columns({"k": [1, 2], "v": ["txn", "txn"]}, 1 << 20)
    token = TokenMinter().mint()
    before = e.snapshot()
    e.prepare(token, e.clock() + (5 << 16), [WritePart.from_columns(t, cols, [])], None)
    _write(e, rng, 500)  # above the intent
    assert e.scan_arrow("d", "t", snapshot=before).to_pylist() == _dicts(e, before)
    assert block.mirror.done == 2_000  # a read below the intent converts nothing above it
    decision.decide(e.store, token, decision.ABORTED, [0])
    e.resolve(token, decision.ABORTED)  # its rows go, and the mirror with them
    assert block.mirror is None
    s = e.snapshot()
    assert e.scan_arrow("d", "t", snapshot=s).to_pylist() == _dicts(e, s)
    assert block.mirror.done == 2_500


def test_with_the_bound_at_zero_nothing_is_kept():
    e = Engine.open(
        f"memory://mirror-{uuid.uuid4().hex[:8]}",
        0,
        Settings(background=False, arrow_mirror_bytes=0),
    )
    e.create_database("d")
    e.create_table("d", "t", SCHEMA, "k")
    _write(e, random.Random(2), 1_000)
    assert e.scan_arrow("d", "t").num_rows == 1_000  # converted by the read, as before
    assert _block(e).mirror is None


def test_a_read_of_a_later_window_converts_only_its_window_and_keeps_nothing():
    e = _engine()
    e.write_columns("d", "t", {"k": list(range(5_000)), "v": ["a"] * 5_000})
    e.write_columns("d", "t", {"k": list(range(5_000, 5_100)), "v": ["b"] * 100})
    block = _block(e)
    types = [pa.int64(), pa.string(), pa.float64()]
    window = arrowmirror.block_rows(block, types, 5_000, 5_100)  # a feed's window
    assert window.column("c1").to_pylist() == ["b"] * 100
    assert block.mirror is not None and block.mirror.done == 0  # not the 5,000 before it
    assert arrowmirror.block_rows(block, types, 0, 5_100).num_rows == 5_100
    assert block.mirror.done == 5_100  # a read from the first row keeps them
    assert arrowmirror.block_rows(block, types, 5_000, 5_100).equals(window)


def test_a_bad_bound_is_a_typed_error():
    for bad in (-1, 1.5, "big", None):
        with pytest.raises(InvalidArgument, match="arrow_mirror_bytes"):
            Settings(arrow_mirror_bytes=bad)
