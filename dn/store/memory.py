"""MemoryStore: the object store as a dict, for tests and single-process experiments.

Invariants: the same contract as every store (see :mod:`dn.store.base`), with one lock around
the dict, so ``put_if_absent`` has exactly one winner among threads. Keys follow the same rules
as :class:`dn.store.local.LocalStore` (:func:`dn.store.local.check_key`), so a key accepted here
is accepted by every store. Stored values are immutable ``bytes`` copies of what was put.

Named stores: :func:`shared_memory_store` returns the same instance for the same name within one
process, so a test can "reopen" ``memory://name`` after closing it. ``close`` keeps the data.

Not done: durability (everything is lost with the process), pickling (a copy in another process
would silently diverge, so pickling raises ``TypeError``), size limits.

Callers: any thread.
"""

from __future__ import annotations

import threading

from dn.errors import ObjectExists, ObjectNotFound
from dn.store.local import check_key

_registry: dict[str, MemoryStore] = {}
_registry_lock = threading.Lock()


class MemoryStore:
    """A thread-safe in-memory object store."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.url = f"memory://{name}"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r}, objects={len(self._objects)})"

    def __reduce__(self):
        raise TypeError("a MemoryStore cannot be pickled: its data lives in this process only")

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFound(f"object {key!r} not found in {self.url}", key=key) from None

    reads_ranges = True

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.get(key)[start : start + length]

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        data = bytes(data)
        with self._lock:
            self._objects[key] = data

    def put_if_absent(self, key: str, data: bytes) -> None:
        check_key(key)
        data = bytes(data)
        with self._lock:
            if key in self._objects:
                raise ObjectExists(f"object {key!r} already exists in {self.url}", key=key)
            self._objects[key] = data

    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted. O(n log n) in the number of keys."""
        check_key(prefix, is_prefix=True)
        with self._lock:
            keys = [k for k in self._objects if k.startswith(prefix)]
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def close(self) -> None:
        """Nothing to release; the data stays so a named store can be reopened."""

    def snapshot(self) -> dict[str, bytes]:
        """A copy of every object, for tests."""
        with self._lock:
            return dict(self._objects)


def shared_memory_store(name: str) -> MemoryStore:
    """The process-wide store called ``name``, created on first use."""
    with _registry_lock:
        store = _registry.get(name)
        if store is None:
            store = _registry[name] = MemoryStore(name)
        return store
