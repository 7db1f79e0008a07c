"""LocalLogStore: the log's put-if-absent in segment files, one fdatasync of data per write.

The contract the log relies on: an empty slot is absent; exactly one of several concurrent
writers of a key (in other store instances, as other processes would be) wins and every reader
sees the winner's bytes; a write a crash cut short reads torn, anything else that fails its
checksum reads as corrupt; every process agrees where each sequence number lives; the engine
uses this store for the log on a local directory and recovers through it.
"""

from __future__ import annotations

import os
import threading

import pytest

from dn import Engine, ManualClock, Settings
from dn.errors import Corruption, InvalidArgument, ObjectExists, ObjectNotFound
from dn.objects import codec
from dn.store import RetryingStore
from dn.store.locallog import SECTOR, SLOT, LocalLogStore

# small segments: three slots of 4 KiB after the header, then 7, so tests cross segments
SMALL = {"min_segment": 4 * SLOT, "max_segment": 8 * SLOT}


def _key(seq: int) -> str:
    return codec.log_key(0, seq)


def _obj(n: int, size: int = 0) -> bytes:
    return codec.encode(codec.KIND_LOG, [1, n, [b"x" * (size or n)]])


def _segments(root) -> list[str]:
    return sorted(f for f in os.listdir(root / "30" / "0") if f.endswith(".seg"))


def _decode(store: LocalLogStore, seq: int):
    return codec.decode(codec.KIND_LOG, store.get(_key(seq)), _key(seq))


def test_round_trip_across_segments_and_a_fresh_reader_agrees(tmp_path):
    s = LocalLogStore(tmp_path, **SMALL)
    sizes = [10, 5000, 30, 40_000, 7, 7, 9000, 1, 2, 3, 4, 5, 100_000, 6]
    for seq, size in enumerate(sizes):
        s.put_if_absent(_key(seq), _obj(seq, size))
    assert s.list("30/0/") == [_key(i) for i in range(len(sizes))]
    assert len(_segments(tmp_path)) > 2  # rotated, objects larger than a segment included
    other = LocalLogStore(tmp_path, **SMALL)  # another process: learns everything from disk
    assert other.list("30/0/") == [_key(i) for i in range(len(sizes))]
    for seq, size in enumerate(sizes):
        assert s.get(_key(seq)) == _obj(seq, size)
        assert other.get(_key(seq)) == _obj(seq, size)
    with pytest.raises(ObjectNotFound):
        other.get(_key(len(sizes)))
    other.put_if_absent(_key(len(sizes)), _obj(99))  # and can go on where the chain ends
    assert s.get(_key(len(sizes))) == _obj(99)


def test_empty_store_and_absent_keys(tmp_path):
    s = LocalLogStore(tmp_path)
    assert s.list("30/0/") == []
    with pytest.raises(ObjectNotFound):
        s.get(_key(0))
    s.put_if_absent(_key(0), _obj(0))
    with pytest.raises(ObjectNotFound):
        s.get(_key(1))
    assert s.list("30/0/") == [_key(0)]
    assert s.list("30/1/") == []


def test_second_put_of_a_key_is_object_exists_and_first_bytes_stay(tmp_path):
    s = LocalLogStore(tmp_path)
    s.put_if_absent(_key(3), _obj(3))  # a log may start at any sequence number
    with pytest.raises(ObjectExists):
        s.put_if_absent(_key(3), _obj(4))
    assert s.get(_key(3)) == _obj(3)


def test_a_gap_and_anything_but_a_frame_are_refused(tmp_path):
    s = LocalLogStore(tmp_path)
    s.put_if_absent(_key(0), _obj(0))
    with pytest.raises(InvalidArgument, match="next sequence number"):
        s.put_if_absent(_key(2), _obj(2))
    with pytest.raises(InvalidArgument, match="frames"):
        s.put_if_absent(_key(1), b"not a frame")
    with pytest.raises(InvalidArgument):
        s.put(_key(1), _obj(1))
    assert s.list("30/0/") == [_key(0)]


def test_concurrent_writers_of_one_key_have_one_winner(tmp_path):
    for round_ in range(20):
        root = tmp_path / str(round_)
        LocalLogStore(root, **SMALL).put_if_absent(_key(0), _obj(0))
        stores = [LocalLogStore(root, **SMALL) for _ in range(6)]  # one per "process"
        results: dict[int, str] = {}
        barrier = threading.Barrier(6)

        def put(i, stores=stores, barrier=barrier, results=results):
            barrier.wait()
            try:
                stores[i].put_if_absent(_key(1), _obj(10 + i, 3000 * (i + 1)))
                results[i] = "won"
            except ObjectExists:
                results[i] = "lost"

        threads = [threading.Thread(target=put, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, r in results.items() if r == "won"]
        assert len(winners) == 1
        want = _obj(10 + winners[0], 3000 * (winners[0] + 1))
        for s in [*stores, LocalLogStore(root, **SMALL)]:
            assert s.get(_key(1)) == want
        # every instance places the next seq in the same slot: again exactly one winner
        stores[0].put_if_absent(_key(2), _obj(2))
        for s in stores[1:]:
            with pytest.raises(ObjectExists):
                s.put_if_absent(_key(2), _obj(20))
            assert s.get(_key(2)) == _obj(2)


def test_a_stale_writer_finds_what_a_newer_one_wrote(tmp_path):
    old = LocalLogStore(tmp_path, **SMALL)
    old.put_if_absent(_key(0), _obj(0))
    new = LocalLogStore(tmp_path, **SMALL)
    for seq in range(1, 9):  # the new incarnation writes on, across segments
        new.put_if_absent(_key(seq), _obj(seq, 5000))
    with pytest.raises(ObjectExists):  # the stale one, at the seq it thinks is next
        old.put_if_absent(_key(1), _obj(100))
    assert old.get(_key(1)) == _obj(1, 5000)
    assert old.list("30/0/") == [_key(i) for i in range(9)]


def _slot_of(root, seq: int, store: LocalLogStore) -> tuple[str, int]:
    """The file and offset of seq's slot, as the store knows it."""
    d = store._dir(root / "30" / "0")
    seg, off = store._locate(d, seq)
    return seg.path, off


def test_a_torn_header_reads_torn_and_the_next_seq_begins_a_segment(tmp_path):
    s = LocalLogStore(tmp_path)
    for seq in range(3):
        s.put_if_absent(_key(seq), _obj(seq))
    path, off = _slot_of(tmp_path, 3, s)
    with open(path, "r+b") as f:  # a crash left part of seq 3's header on disk
        f.seek(off)
        f.write(_obj(3)[:11])
    fresh = LocalLogStore(tmp_path)
    assert fresh.list("30/0/") == [_key(i) for i in range(4)]
    with pytest.raises(Corruption) as err:
        _decode(fresh, 3)
    assert err.value.truncated
    fresh.put_if_absent(_key(4), _obj(4))
    assert _segments(tmp_path)[-1] == f"{4:020d}.seg"
    again = LocalLogStore(tmp_path)
    assert again.list("30/0/") == [_key(i) for i in range(5)]
    assert again.get(_key(4)) == _obj(4)


def test_a_body_with_a_sector_that_never_landed_reads_torn(tmp_path):
    s = LocalLogStore(tmp_path)
    s.put_if_absent(_key(0), _obj(0))
    s.put_if_absent(_key(1), _obj(1, 3 * SECTOR))
    path, off = _slot_of(tmp_path, 1, s)
    with open(path, "r+b") as f:  # the second sector of seq 1 did not reach the disk
        f.seek(off + SECTOR)
        f.write(bytes(SECTOR))
    fresh = LocalLogStore(tmp_path)
    with pytest.raises(Corruption) as err:
        _decode(fresh, 1)
    assert err.value.truncated
    fresh.put_if_absent(_key(2), _obj(2))  # a torn object ends its segment
    assert _segments(tmp_path)[-1] == f"{2:020d}.seg"
    assert LocalLogStore(tmp_path).list("30/0/") == [_key(i) for i in range(3)]


def test_a_flipped_bit_is_corruption_not_a_torn_write(tmp_path):
    s = LocalLogStore(tmp_path)
    for seq in range(3):
        s.put_if_absent(_key(seq), _obj(seq, 2000))
    for seq in (1, 2):  # one with an object after it, and the last one
        path, off = _slot_of(tmp_path, seq, s)
        with open(path, "r+b") as f:
            f.seek(off + 700)
            b = f.read(1)
            f.seek(off + 700)
            f.write(bytes([b[0] ^ 0x10]))
        with pytest.raises(Corruption) as err:
            _decode(LocalLogStore(tmp_path), seq)
        assert not err.value.truncated


def test_deletes_remove_whole_segments_and_keys_are_never_reused(tmp_path):
    s = LocalLogStore(tmp_path, **SMALL)
    for seq in range(12):
        s.put_if_absent(_key(seq), _obj(seq))
    segs = _segments(tmp_path)
    assert len(segs) >= 3
    second = int(segs[1][:20])
    for seq in range(second):
        s.delete(_key(seq))
    assert _segments(tmp_path) == segs[1:]  # the first segment is gone
    assert s.list("30/0/") == [_key(i) for i in range(second, 12)]
    s.delete(_key(11))  # in the last segment: forgotten, the file stays
    assert _segments(tmp_path)[-1] == segs[-1]
    assert _key(11) not in s.list("30/0/")
    with pytest.raises(ObjectNotFound):
        s.get(_key(11))
    with pytest.raises(InvalidArgument, match="not reused"):
        s.put_if_absent(_key(11), _obj(11))
    s.put_if_absent(_key(12), _obj(12))
    s.delete(_key(0))  # already gone: not an error
    assert LocalLogStore(tmp_path, **SMALL).get(_key(12)) == _obj(12)


def test_files_of_the_earlier_layout_are_read_listed_and_deleted(tmp_path):
    d = tmp_path / "30" / "0"
    d.mkdir(parents=True)
    for seq in range(3):
        (d / codec.num(seq)).write_bytes(_obj(seq))
    for seq in range(3, 6):
        (d / codec.num(seq)).write_bytes(b"")  # pre-created, never written: absent
    (d / codec.num(1)).write_bytes(_obj(1) + _obj(77))  # two writers raced: the first wins
    s = LocalLogStore(tmp_path)
    assert s.list("30/0/") == [_key(i) for i in range(3)]
    assert s.get(_key(1)) == _obj(1)
    with pytest.raises(ObjectNotFound):
        s.get(_key(3))
    with pytest.raises(ObjectExists):
        s.put_if_absent(_key(2), _obj(2))
    s.put_if_absent(_key(3), _obj(3))  # new objects go to a segment
    assert _segments(tmp_path) == [f"{3:020d}.seg"]
    s.delete(_key(0))
    assert not (d / codec.num(0)).exists()
    assert LocalLogStore(tmp_path).list("30/0/") == [_key(i) for i in (1, 2, 3)]


def test_spares_of_dead_processes_are_removed(tmp_path):
    d = tmp_path / "30" / "0"
    d.mkdir(parents=True)
    dead = d / ".tmp-spare-999999999-abcd"
    dead.write_bytes(b"x")
    mine = d / f".tmp-spare-{os.getpid()}-abcd"
    mine.write_bytes(b"x")
    LocalLogStore(tmp_path).list("30/0/")
    assert not dead.exists() and mine.exists()


def test_engine_uses_it_for_the_log_on_a_local_directory(tmp_path):
    eng = Engine.open(str(tmp_path), settings=Settings(background=False), clock=ManualClock())
    try:
        assert isinstance(eng._state.log_store, RetryingStore)
        assert isinstance(eng._state.log_store.inner, LocalLogStore)
        eng.create_database("db")
        eng.create_table("db", "t", {"k": "int64"}, "k")
        eng.write("db", "t", [{"k": 1}])
    finally:
        eng.close()
    again = Engine.open(str(tmp_path), settings=Settings(background=False), clock=ManualClock())
    assert [r["k"] for r in again.scan("db", "t")] == [1]
    again.close()


def test_engine_recovers_past_a_torn_log_write(tmp_path):
    """A crash during a log write leaves a torn object after the acknowledged ones: recovery
    skips it, keeps every acknowledged write, and the log goes on in a new segment."""
    settings = Settings(background=False)
    eng = Engine.open(str(tmp_path), settings=settings, clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", {"k": "int64", "v": "bytes"}, "k")
    for i in range(20):
        eng.write("db", "t", [{"k": i, "v": b"v" * 300}])
    nxt = eng.status()["log"]["next_seq"]
    eng.close()
    probe = LocalLogStore(tmp_path)
    probe.list("30/0/")
    path, off = _slot_of(tmp_path, nxt, probe)
    torn = codec.encode(codec.KIND_LOG, [1, nxt, [[10**15, 0, [1, [[99, b"t" * 2000]], []]]]])
    with open(path, "r+b") as f:  # the unacknowledged write got only its first sector down
        f.seek(off)
        f.write(torn[:SECTOR] + bytes(max(0, len(torn) - SECTOR)))
    for round_ in range(2):
        eng = Engine.open(str(tmp_path), settings=settings, clock=ManualClock())
        rows = {r["k"] for r in eng.scan("db", "t")}
        assert rows == set(range(20)) | ({100} if round_ else set())
        if not round_:
            eng.write("db", "t", [{"k": 100, "v": b"after"}])
        eng.close()


def test_closing_the_engine_closes_its_log_segments(tmp_path):
    settings = Settings(background=False)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(30):
        eng = Engine.open(str(tmp_path), settings=settings, clock=ManualClock())
        if i == 0:
            eng.create_database("db")
            eng.create_table("db", "t", {"k": "int64"}, "k")
        eng.write("db", "t", [{"k": i}])
        eng.close()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
