"""Stores for the benchmark: a request-counting wrapper, a moto S3 server, SlateDB's stores.

:class:`CountingStore` wraps any :class:`dn.store.ObjectStore` and counts requests by
operation and the bytes put; the engine takes it as its ``store`` component, so every request
the engine makes (log, range objects, manifest, checkpoints) is seen.

:class:`MotoServer` starts ``python -m moto.server`` on 127.0.0.1 at a free port in a child
process (its own interpreter, so it does not compete for our GIL) and stops it on exit.

Not here: anything that measures.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from dn.store.base import read_range, reads_ranges

CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


class CountingStore:
    """Counts the requests made to ``inner`` (thread-safe)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self._lock = threading.Lock()
        self.counts = {"get": 0, "put": 0, "put_if_absent": 0, "list": 0, "delete": 0}
        self.bytes_put = 0

    def snapshot(self) -> tuple[dict[str, int], int]:
        with self._lock:
            return dict(self.counts), self.bytes_put

    def requests(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _count(self, op: str, nbytes: int = 0) -> None:
        with self._lock:
            self.counts[op] += 1
            self.bytes_put += nbytes

    def get(self, key: str) -> bytes:
        self._count("get")
        return self.inner.get(key)

    @property
    def reads_ranges(self) -> bool:
        return reads_ranges(self.inner)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._count("get")  # a GET to S3, ranged
        return read_range(self.inner, key, start, length)

    def put(self, key: str, data: bytes) -> None:
        self._count("put", len(data))
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._count("put_if_absent", len(data))
        self.inner.put_if_absent(key, data)

    def list(self, prefix: str) -> list[str]:
        self._count("list")
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


def objects_written(
    before: tuple[dict[str, int], int], after: tuple[dict[str, int], int]
) -> tuple[int, int]:
    """(objects put, bytes put) between two :meth:`CountingStore.snapshot` calls."""
    (c0, b0), (c1, b1) = before, after
    objs = (c1["put"] - c0["put"]) + (c1["put_if_absent"] - c0["put_if_absent"])
    return objs, b1 - b0


def dir_usage(path: str) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = size = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                size += os.path.getsize(os.path.join(root, n))
                files += 1
            except OSError:
                pass
    return files, size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A moto S3 server on 127.0.0.1 in a child process. Use as a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> MotoServer:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).read()
                return self
            except Exception:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def new_bucket(self) -> str:
        import boto3

        c = CREDENTIALS
        bucket = f"dnbench-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=c["access_key_id"],
            aws_secret_access_key=c["secret_access_key"],
            region_name=c["region"],
        ).create_bucket(Bucket=bucket)
        return bucket

    def s3_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, **CREDENTIALS}


@contextlib.contextmanager
def node_env(moto: MotoServer) -> Iterator[None]:
    """This process, and the Ray node it starts (so every worker), with the moto server's
    endpoint and test credentials; restored after."""
    c = CREDENTIALS
    env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_DEFAULT_REGION": c["region"]}
    env.update(AWS_ACCESS_KEY_ID=c["access_key_id"], AWS_SECRET_ACCESS_KEY=c["secret_access_key"])
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
