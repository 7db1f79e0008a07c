"""LocalLogStore: the log's put-if-absent on pre-created files, one fdatasync per write.

The contract the log relies on: an empty (pre-created) file is absent; exactly one of several
concurrent writers of a key wins and every reader sees the winner's bytes; a file cut short is
returned torn; the engine uses this store for the log on a local directory.
"""

from __future__ import annotations

import os
import threading

import pytest

from dn import Engine, ManualClock, Settings, codec
from dn.errors import ObjectExists, ObjectNotFound
from dn.store import RetryingStore
from dn.store.locallog import PREALLOCATE, LocalLogStore


def _key(seq: int) -> str:
    return codec.log_key(0, seq)


def _obj(n: int) -> bytes:
    return codec.encode(codec.KIND_LOG, [1, n, [b"x" * n]])


def test_empty_preallocated_files_are_absent(tmp_path):
    s = LocalLogStore(tmp_path)
    s.put_if_absent(_key(0), _obj(0))
    files = os.listdir(tmp_path / "30" / "0")
    assert len(files) > PREALLOCATE // 2  # the next files exist, empty
    assert s.list("30/0/") == [_key(0)]
    with pytest.raises(ObjectNotFound):
        s.get(_key(1))
    assert s.get(_key(0)) == _obj(0)


def test_second_put_of_a_key_is_object_exists_and_first_bytes_stay(tmp_path):
    s = LocalLogStore(tmp_path)
    s.put_if_absent(_key(3), _obj(3))
    with pytest.raises(ObjectExists):
        s.put_if_absent(_key(3), _obj(4))
    assert s.get(_key(3)) == _obj(3)


def test_concurrent_writers_of_one_key_have_one_winner(tmp_path):
    for round_ in range(30):
        s = LocalLogStore(tmp_path / str(round_))
        s.put_if_absent(_key(0), _obj(0))  # pre-create the next files
        results: dict[int, str] = {}
        barrier = threading.Barrier(6)

        def put(i, s=s, barrier=barrier, results=results):
            barrier.wait()
            try:
                s.put_if_absent(_key(1), _obj(10 + i))
                results[i] = "won"
            except ObjectExists:
                results[i] = "lost"

        threads = [threading.Thread(target=put, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, r in results.items() if r == "won"]
        assert len(winners) <= 1
        got = s.get(_key(1))
        # every reader sees one whole object; a writer that was told it lost, and whose bytes
        # are what a reader sees, is the lost-acknowledgement case the log resolves by reading
        assert got in [_obj(10 + i) for i in range(6)]
        if winners:
            assert got == _obj(10 + winners[0])


def test_a_file_cut_short_reads_torn(tmp_path):
    s = LocalLogStore(tmp_path)
    s.put_if_absent(_key(0), _obj(0))
    path = tmp_path / "30" / "0" / codec.num(1)
    path.write_bytes(_obj(50)[:30])
    with pytest.raises(Exception) as err:
        codec.decode(codec.KIND_LOG, s.get(_key(1)), _key(1))
    assert err.value.truncated


def test_engine_uses_it_for_the_log_on_a_local_directory(tmp_path):
    eng = Engine.open(str(tmp_path), settings=Settings(background=False), clock=ManualClock())
    try:
        assert isinstance(eng._log_store, RetryingStore)
        assert isinstance(eng._log_store.inner, LocalLogStore)
        eng.create_database("db")
        eng.create_table("db", "t", {"k": "int64"}, "k")
        eng.write("db", "t", [{"k": 1}])
    finally:
        eng.close()
    again = Engine.open(str(tmp_path), settings=Settings(background=False), clock=ManualClock())
    assert [r["k"] for r in again.scan("db", "t")] == [1]
    again.close()
