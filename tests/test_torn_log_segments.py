"""Regression tests: the crash trials could not tear a write of the local segment log (finding 7
of the reliability issue).

The finding: since decision 0012 the log on a local directory lives in segment files, and the
crash trials' "killed at log/torn" point stored a prefix of the object with ``put``, which the
segment store refuses ("the log store takes only put_if_absent"): the crash child died of that
error instead of the kill (``--only crashes --seed 777000 --count 60``: seeds 777029 and
777034). The harness now tears the write at the file level, as a crash mid-``pwrite`` leaves a
slot (:mod:`tests.trials.tear`). Checked here: every torn shape reads as torn, or as never
written when less than a header reached the end of the file (never as data, never as
corruption), and the log goes on after it; and the two seeds pass.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dn import Corruption, Engine, ManualClock, Settings, Unavailable
from dn.errors import ObjectNotFound
from dn.objects import codec
from dn.store.locallog import LocalLogStore
from tests.trials import crashes
from tests.trials.tally import Tally
from tests.trials.tear import tear_segment_write, variants
from tests.trials.tripwire import Point, Tripwire

SIZES = (200, 1_300, 40_000)  # one sector, three sectors, larger than zeros are written for


def _record(seq: int, size: int) -> bytes:
    return codec.frame(codec.KIND_LOG, bytes([seq % 251 + 1]) * size)


@pytest.mark.parametrize("size", SIZES)
def test_every_torn_slot_write_reads_as_torn_and_the_log_goes_on(size: int, tmp_path: Path) -> None:
    for pick in range(len(variants(len(_record(0, size))))):
        root = tmp_path / f"v{pick}"
        store = LocalLogStore(root, min_segment=64 * 1024)
        keys = [codec.log_key(0, s) for s in range(5)]
        for s in range(3):
            store.put_if_absent(keys[s], _record(s, size))
        what = tear_segment_write(store, keys[3], _record(3, size), pick)
        store.close()
        again = LocalLogStore(root, min_segment=64 * 1024)  # what a restart sees
        for s in range(3):
            assert again.get(keys[s]) == _record(s, size), what
        listed = again.list("30/0/")
        if listed == keys[:3]:  # less than a header at the end of the file: never written
            assert what.startswith("header"), what
            with pytest.raises(ObjectNotFound):
                again.get(keys[3])
            nxt = 3  # its slot is empty: the next write takes it
        else:
            assert listed == keys[:4], what
            with pytest.raises(Corruption) as err:
                codec.decode(codec.KIND_LOG, again.get(keys[3]), keys[3])
            assert err.value.truncated, what
            nxt = 4  # the next seq begins a new segment
        again.put_if_absent(keys[nxt], _record(nxt, size))
        assert again.get(keys[nxt]) == _record(nxt, size), what
        again.close()


@pytest.mark.parametrize("nth", [2, 3, 4, 5])
def test_a_log_write_torn_by_the_tripwire_is_skipped_by_recovery(nth: int, tmp_path: Path) -> None:
    settings = Settings(background=False, freeze_interval_s=None, checkpoint_interval_s=None)
    eng = Engine.open(tmp_path, settings=settings, clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
    eng.close()
    crashed = threading.Event()
    logs = Tripwire(LocalLogStore(tmp_path), Point("log", nth, "torn"), crashed.set)
    eng = Engine.open(tmp_path, log_store=logs, settings=settings, clock=ManualClock())
    acked = []
    for k in range(6):  # the fence record is the first log write, so write k = nth - 2 is torn
        try:
            eng.write("db", "t", [{"k": k, "v": "x" * (300 * k)}])
        except Unavailable as exc:
            assert exc.outcome_unknown and crashed.is_set() and k == nth - 2
            break
        acked.append(k)
    assert logs.torn
    eng.close()  # closing settles nothing: as after a crash, recovery finds the torn write
    logs.close()
    again = Engine.open(tmp_path, settings=settings, clock=ManualClock())
    try:
        assert [r["k"] for r in again.scan("db", "t")] == acked, logs.torn
        again.write("db", "t", [{"k": 99, "v": "after"}])
        assert [r["k"] for r in again.scan("db", "t")] == [*acked, 99]
    finally:
        again.close()


@pytest.mark.parametrize("seed", [777029, 777034])
def test_crash_trials_that_tear_a_log_write_pass(seed: int) -> None:
    tally = Tally()
    crashes.run(seed, False, tally)
    assert tally.per_kind["crashes"].get("killed at log/torn", 0) >= 1
    assert tally.writes_lost == 0 and tally.applied_twice == 0
