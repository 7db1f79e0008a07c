"""One durable write on S3 is one store request and one HTTP request.

The floor of a durable write on S3 is one conditional PUT: the engine's single write must make
exactly one store request (the log's ``put_if_absent``) and the store exactly one HTTP request
for it, with nothing else on the writer's path (no read-back, no listing, no ceiling
extension: the ceiling is extended ahead of the writes).
"""

from __future__ import annotations

import http.client
from typing import Any

import pytest

import dn
from dn.store import open_store

pytestmark = pytest.mark.s3


class Counting:
    """Counts the store requests made through it, as (op, key)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.url = inner, inner.url
        self.calls: list[tuple[str, str]] = []

    def get(self, key: str) -> bytes:
        self.calls.append(("get", key))
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.calls.append(("put", key))
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.calls.append(("put_if_absent", key))
        self.inner.put_if_absent(key, data)

    def list(self, prefix: str) -> list[str]:
        self.calls.append(("list", prefix))
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


def test_one_durable_write_is_one_store_request_and_one_http_request(
    s3_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = s3_url
    store = Counting(open_store(url, s3_options=options))
    # no background round: nothing but the writes themselves touches the store; a long lease:
    # the ceiling extended while opening covers every write below
    settings = dn.Settings(background=False, timestamp_lease_s=600.0)
    engine = dn.Engine.open(store=store, settings=settings)
    try:
        engine.create_database("d")
        engine.create_table("d", "t", {"k": "int64", "v": "bytes"}, "k")
        engine.write("d", "t", upserts=[{"k": -1, "v": b"warm"}])
        http_requests: list[str] = []
        putrequest = http.client.HTTPConnection.putrequest

        def counted(self: http.client.HTTPConnection, method: str, path: str, *a, **k) -> Any:
            http_requests.append(f"{method} {path}")
            return putrequest(self, method, path, *a, **k)

        monkeypatch.setattr(http.client.HTTPConnection, "putrequest", counted)
        for i in range(20):
            before = len(store.calls)
            http_requests.clear()
            engine.write("d", "t", upserts=[{"k": i, "v": b"x" * 100}])
            made = store.calls[before:]
            assert len(made) == 1, made
            op, key = made[0]
            assert op == "put_if_absent" and key.startswith("30/"), made
            assert len(http_requests) == 1 and http_requests[0].startswith("PUT "), http_requests
        monkeypatch.undo()
        assert engine.get("d", "t", 19)["v"] == b"x" * 100
    finally:
        engine.close()
    reopened = dn.Engine.open(store=open_store(url, s3_options=options), settings=settings)
    try:
        assert sorted(r["k"] for r in reopened.scan("d", "t")) == list(range(-1, 20))
    finally:
        reopened.close()
