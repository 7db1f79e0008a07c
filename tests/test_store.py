"""Tests of the object-store layer: the contract over every backend, then each component.

The contract tests run against MemoryStore, LocalStore (tmp_path) and S3Store on a loopback moto
server (marker ``s3``). Retry and fault tests use injected sleep/clock, so they are instant.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import threading
import time
from typing import Any

import botocore.exceptions as bx
import pytest

from dn.errors import (
    InvalidArgument,
    ObjectExists,
    ObjectNotFound,
    Unavailable,
)
from dn.store import (
    LocalStore,
    MemoryStore,
    ObjectStore,
    RetryingStore,
    RetryPolicy,
    S3Store,
    open_store,
)

NO_RETRY = RetryPolicy(max_attempts=1)
BAD_KEYS = ["", "/a", "a//b", "a/../b", "..", "a/./b", "a\\b", "a/", ".tmp-x", "a/.tmp-1"]


@pytest.fixture(params=["memory", "local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    url, options = request.getfixturevalue("s3_url")
    return open_store(url, retry=NO_RETRY, s3_options=options)


# -- the contract ---------------------------------------------------------------------------------


def test_store_follows_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.url


def test_get_missing_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("no/such/key")


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024])
def test_put_get_roundtrip(store: ObjectStore, size: int) -> None:
    data = random.Random(size).randbytes(size)
    store.put("20/3/00000000000000000001", data)
    assert store.get("20/3/00000000000000000001") == data


def test_put_replaces(store: ObjectStore) -> None:
    store.put("k", b"old")
    store.put("k", b"new")
    assert store.get("k") == b"new"
    assert store.list("") == ["k"]


def test_put_if_absent_twice_keeps_first(store: ObjectStore) -> None:
    store.put_if_absent("m/1", b"first")
    with pytest.raises(ObjectExists):
        store.put_if_absent("m/1", b"second")
    assert store.get("m/1") == b"first"


def test_list_sorted_and_prefix_filtered(store: ObjectStore) -> None:
    keys = ["20/3/0002", "20/3/0001", "20/30/0001", "20/4/x/y/z", "10/3/0001", "top"]
    for k in keys:
        store.put(k, k.encode())
    assert store.list("") == sorted(keys)
    assert store.list("20/3/") == ["20/3/0001", "20/3/0002"]
    assert store.list("20/3") == ["20/3/0001", "20/3/0002", "20/30/0001"]  # partial segment
    assert store.list("20/3/000") == ["20/3/0001", "20/3/0002"]
    assert store.list("20/3/0002") == ["20/3/0002"]
    assert store.list("20/4/") == ["20/4/x/y/z"]
    assert store.list("20/") == ["20/3/0001", "20/3/0002", "20/30/0001", "20/4/x/y/z"]
    assert store.list("t") == ["top"]
    assert store.list("nothing/") == []
    assert store.list("20/9") == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/1", b"x")
    store.delete("d/1")
    store.delete("d/1")
    store.delete("never/was")
    with pytest.raises(ObjectNotFound):
        store.get("d/1")
    assert store.list("d/") == []


def test_concurrent_put_if_absent_has_one_winner(store: ObjectStore) -> None:
    barrier = threading.Barrier(8)
    winners: list[int] = []
    losers: list[int] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put_if_absent("race", f"writer-{i}".encode())
            winners.append(i)
        except ObjectExists:
            losers.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    assert store.get("race") == f"writer-{winners[0]}".encode()


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected_by_every_store(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidArgument):
        store.put(key, b"x")
    with pytest.raises(InvalidArgument):
        store.get(key)


@pytest.mark.parametrize("prefix", ["../", "a/../", "/a", "a//", "a\\b", ".tmp-"])
def test_bad_list_prefixes_are_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidArgument):
        store.list(prefix)


def test_store_matches_dict_model_under_random_ops(store: ObjectStore) -> None:
    rng = random.Random(42)
    model: dict[str, bytes] = {}
    names = [f"{a}/{b}" for a in ("10", "20", "200") for b in ("1", "2", "3/x")]
    for _ in range(120):
        op, key = rng.choice(["put", "pia", "get", "del", "list"]), rng.choice(names)
        data = rng.randbytes(rng.randrange(16))
        if op == "put":
            store.put(key, data)
            model[key] = data
        elif op == "pia":
            if key in model:
                with pytest.raises(ObjectExists):
                    store.put_if_absent(key, data)
            else:
                store.put_if_absent(key, data)
                model[key] = data
        elif op == "get":
            if key in model:
                assert store.get(key) == model[key]
            else:
                with pytest.raises(ObjectNotFound):
                    store.get(key)
        elif op == "del":
            store.delete(key)
            model.pop(key, None)
        else:
            prefix = key[: rng.randrange(len(key) + 1)]
            assert store.list(prefix) == sorted(k for k in model if k.startswith(prefix))


# -- LocalStore -----------------------------------------------------------------------------------


def _all_files(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_local_leaves_no_temp_files(tmp_path) -> None:
    s = LocalStore(tmp_path)
    s.put("a/b/c", b"1")
    s.put("a/b/c", b"2")
    s.put_if_absent("a/d", b"3")
    with pytest.raises(ObjectExists):
        s.put_if_absent("a/d", b"4")
    assert _all_files(tmp_path) == ["a/b/c", "a/d"]


def test_local_list_ignores_stray_temp_files(tmp_path) -> None:
    s = LocalStore(tmp_path)
    s.put("a/1", b"x")
    (tmp_path / "a" / ".tmp-123-crashed-1").write_bytes(b"partial")
    assert s.list("") == ["a/1"]
    assert s.list("a/") == ["a/1"]


def test_local_file_url_reopens_same_data(tmp_path) -> None:
    s = LocalStore(tmp_path / "x")
    s.put("k", b"v")
    assert s.url == f"file://{tmp_path}/x"
    again = open_store(s.url, retry=NO_RETRY)
    assert isinstance(again, LocalStore) and again.get("k") == b"v"
    assert pickle.loads(pickle.dumps(s)).get("k") == b"v"


def test_local_key_directory_conflicts_are_invalid_argument(tmp_path) -> None:
    s = LocalStore(tmp_path)
    s.put("a", b"file")
    with pytest.raises(InvalidArgument):
        s.put("a/b", b"x")
    s.put("d/e", b"x")
    with pytest.raises(InvalidArgument):
        s.put("d", b"x")
    with pytest.raises(InvalidArgument):
        s.put_if_absent("d", b"x")
    with pytest.raises(ObjectNotFound):
        s.get("d")
    s.delete("d")  # a directory is not an object: nothing to delete
    assert s.list("") == ["a", "d/e"]


def test_local_fsync_failure_before_rename_is_unavailable_and_leaves_nothing(
    tmp_path, monkeypatch
) -> None:
    s = LocalStore(tmp_path)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    for write in (s.put, s.put_if_absent):
        with pytest.raises(Unavailable) as info:
            write("k", b"v")
        assert not info.value.outcome_unknown
        assert str(tmp_path) in str(info.value)
    monkeypatch.undo()
    assert _all_files(tmp_path) == [] and s.list("") == []


def test_local_dir_fsync_failure_after_rename_is_outcome_unknown(tmp_path, monkeypatch) -> None:
    from dn.store import local

    s = LocalStore(tmp_path)
    s.put("a/k0", b"dir exists now")

    def failing_dir_fsync(path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(local, "_fsync_dir", failing_dir_fsync)
    for i, write in enumerate((s.put, s.put_if_absent)):
        with pytest.raises(Unavailable) as info:
            write(f"a/k{i + 1}", b"v")
        assert info.value.outcome_unknown
    assert s.get("a/k1") == b"v" and s.get("a/k2") == b"v"


# -- open_store -----------------------------------------------------------------------------------


def test_open_store_paths_and_file_urls(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("rel/dir", retry=NO_RETRY)
    assert isinstance(rel, LocalStore) and rel.root == tmp_path / "rel" / "dir"
    absolute = open_store(str(tmp_path / "abs"), retry=NO_RETRY)
    assert isinstance(absolute, LocalStore) and absolute.url == f"file://{tmp_path}/abs"
    assert open_store(tmp_path / "p", retry=NO_RETRY).root == tmp_path / "p"
    assert open_store(f"file://{tmp_path}/f", retry=NO_RETRY).root == tmp_path / "f"


def test_open_store_memory_names_share_a_store() -> None:
    a = open_store("memory://shared-test", retry=NO_RETRY)
    a.put("k", b"v")
    a.close()
    b = open_store("memory://shared-test", retry=NO_RETRY)
    assert b is a and b.get("k") == b"v"
    fresh1, fresh2 = (
        open_store("memory://", retry=NO_RETRY),
        open_store("memory://", retry=NO_RETRY),
    )
    assert fresh1 is not fresh2


def test_open_store_s3_url_is_lazy() -> None:
    s = open_store("s3://my-bucket/some/prefix", retry=NO_RETRY)
    assert isinstance(s, S3Store)
    assert (s.bucket, s.prefix, s.url) == ("my-bucket", "some/prefix", "s3://my-bucket/some/prefix")
    assert s._client is None  # no client (and no connection) until first use


def test_open_store_wraps_in_retry_unless_one_attempt() -> None:
    wrapped = open_store("memory://")
    assert isinstance(wrapped, RetryingStore) and isinstance(wrapped.inner, MemoryStore)
    policy = RetryPolicy(max_attempts=3)
    assert open_store("memory://", retry=policy).policy is policy
    assert isinstance(open_store("memory://", retry=NO_RETRY), MemoryStore)


@pytest.mark.parametrize(
    "url", ["", "ftp://host/x", "file://otherhost/x", "file://relative", "s3:///nobucket", "x://"]
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(InvalidArgument):
        open_store(url)


def test_open_store_rejects_unknown_s3_options() -> None:
    with pytest.raises(InvalidArgument, match="s3_options"):
        open_store("s3://b/p", s3_options={"no_such_option": 1})


def test_boto3_is_imported_only_for_s3() -> None:
    code = (
        "import sys, dn.store as s; s.open_store('memory://').put('k', b'v'); "
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# -- S3Store --------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_missing_bucket_is_a_clear_invalid_argument(s3_url) -> None:
    _, options = s3_url
    s = open_store("s3://dn-no-such-bucket/x", s3_options=options)
    for call in (lambda: s.get("k"), lambda: s.put("k", b""), lambda: s.list("")):
        with pytest.raises(InvalidArgument, match="dn-no-such-bucket.*does not exist"):
            call()


@pytest.mark.s3
def test_s3_412_maps_to_object_exists_and_prefixes_isolate(s3_url) -> None:
    url, options = s3_url
    a = open_store(url + "/a", retry=NO_RETRY, s3_options=options)
    b = open_store(url + "/ab", retry=NO_RETRY, s3_options=options)
    a.put_if_absent("k", b"1")
    b.put_if_absent("k", b"2")
    with pytest.raises(ObjectExists, match="already exists"):
        a.put_if_absent("k", b"3")
    assert (a.list(""), b.list(""), a.get("k"), b.get("k")) == (["k"], ["k"], b"1", b"2")


@pytest.mark.s3
def test_s3_store_from_environment_and_pickled(s3_url) -> None:
    url, _ = s3_url
    s = open_store(url)  # endpoint and credentials from the AWS_* environment
    s.put("k", b"v")
    copy = pickle.loads(pickle.dumps(s))
    assert copy.get("k") == b"v"
    s.close()
    assert s.get("k") == b"v"  # close drops the client; a later call reconnects


def test_s3_client_does_not_retry_and_defaults_region(monkeypatch, tmp_path) -> None:
    for var in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    client = S3Store("b", endpoint_url="http://127.0.0.1:9").client
    assert client.meta.region_name == "us-east-1"
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert client.meta.config.max_pool_connections == 32


class StubClient:
    """Raises ``error`` from every S3 call."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise self.error

        return call


def _client_error(code: str, status: int) -> bx.ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return bx.ClientError(response, "PutObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "op, error, expected, unknown",
    [
        ("put_if_absent", _client_error("PreconditionFailed", 412), ObjectExists, None),
        ("put_if_absent", _client_error("ConditionalRequestConflict", 409), Unavailable, False),
        ("get", _client_error("NoSuchKey", 404), ObjectNotFound, None),
        ("get", _client_error("SlowDown", 503), Unavailable, False),
        ("put", _client_error("SlowDown", 503), Unavailable, True),
        ("put", _client_error("InternalError", 500), Unavailable, True),
        ("delete", _client_error("RequestTimeout", 400), Unavailable, False),
        ("put", _client_error("AccessDenied", 403), InvalidArgument, None),
        ("list", _client_error("NoSuchBucket", 404), InvalidArgument, None),
        ("put", _client_error("EntityTooLarge", 400), InvalidArgument, None),
        ("put", bx.ReadTimeoutError(endpoint_url="http://x"), Unavailable, True),
        ("put", bx.ConnectionClosedError(endpoint_url="http://x"), Unavailable, True),
        ("put", bx.EndpointConnectionError(endpoint_url="http://x"), Unavailable, False),
        ("put_if_absent", bx.ConnectTimeoutError(endpoint_url="http://x"), Unavailable, False),
        ("get", bx.NoCredentialsError(), InvalidArgument, None),
    ],
)
def test_s3_error_mapping(op: str, error: Exception, expected: type, unknown: bool | None) -> None:
    s = S3Store("bkt", "pre", client=StubClient(error))
    call = {"get": lambda: s.get("k"), "list": lambda: s.list(""), "delete": lambda: s.delete("k")}
    with pytest.raises(expected) as info:
        call.get(op, lambda: getattr(s, op)("k", b"v"))()
    if unknown is not None:
        assert info.value.outcome_unknown is unknown
    if expected is InvalidArgument and op != "get":
        assert "bkt" in str(info.value)


# -- shared directory fsyncs ----------------------------------------------------------------------


def _blocking_fsync(calls: list, gate: threading.Event, fail: set):
    def fsync(path) -> None:
        calls.append(path)
        n = len(calls)
        gate.wait(5)
        if n in fail:
            raise OSError(5, "injected fsync failure")

    return fsync


def test_a_directory_fsync_covers_only_the_entries_made_before_it_began(tmp_path) -> None:
    from dn.store.files import SharedDirSync

    syncs, calls, gate = SharedDirSync(), [], threading.Event()
    fsync = _blocking_fsync(calls, gate, set())
    first = threading.Thread(target=syncs.sync, args=(tmp_path, fsync))
    first.start()
    while not calls:  # the first sync is running (its entry was made before it began)
        time.sleep(0.001)
    later = [threading.Thread(target=syncs.sync, args=(tmp_path, fsync)) for _ in range(5)]
    for t in later:  # their entries come after it began: it must not cover them
        t.start()
    time.sleep(0.05)
    assert len(calls) == 1 and all(t.is_alive() for t in later)
    gate.set()
    for t in [first, *later]:
        t.join(5)
    assert len(calls) == 2  # one more fsync, begun after every later entry, covers all five
    assert not any(t.is_alive() for t in [first, *later])


def test_a_failed_directory_fsync_covers_nobody(tmp_path) -> None:
    from dn.store.files import SharedDirSync

    syncs, calls, gate = SharedDirSync(), [], threading.Event()
    gate.set()
    fsync = _blocking_fsync(calls, gate, {1})
    with pytest.raises(OSError):
        syncs.sync(tmp_path, fsync)
    syncs.sync(tmp_path, fsync)  # its own fsync, not the failed one's
    assert len(calls) == 2
