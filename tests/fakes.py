"""Injected components shared by the tests: a clock that moves only when slept on, and
object-store wrappers that tap or count what goes through them."""

from __future__ import annotations

from typing import Any


class SleepClock:
    """An injected ``sleep`` and ``clock`` pair (for ``RetryPolicy`` and ``Backoff``):
    sleeping records the delay and advances the clock, instantly."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def clock(self) -> float:
        return self.now


class PassThroughStore:
    """An object store that hands every operation to ``inner`` (a ``dn.store.ObjectStore``);
    tests subclass it and override the operations they tap. ``close`` leaves ``inner`` open:
    it is the test's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = getattr(inner, "url", None)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        pass


class CountingStore(PassThroughStore):
    """Records every key read through it (``gets``), e.g. to count the objects a read fetched."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gets: list[str] = []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return self.inner.get(key)
