"""The object-store protocol every DN component writes to.

An object store maps string keys (``/``-separated, no leading slash) to immutable byte strings.
Five operations, all synchronous and safe to call from several threads at once:

- ``get(key) -> bytes``: raises :class:`dn.errors.ObjectNotFound` when the key is absent.
- ``put(key, data)``: creates or replaces the object atomically: a reader sees the old bytes
  or the new bytes, never a mix.
- ``put_if_absent(key, data)``: creates the object only if the key is absent; raises
  :class:`dn.errors.ObjectExists` otherwise. This is the commit point and fence of the log and
  the manifest, so it must be atomic against every other writer of the same store.
- ``list(prefix) -> list[str]``: every key starting with ``prefix``, sorted ascending.
- ``delete(key)``: removes the key; deleting an absent key is not an error.

Transient failures (throttling, server errors, timeouts, connection resets) raise
:class:`dn.errors.Unavailable`; the :class:`dn.store.retry.RetryingStore` wrapper retries them
with backoff and jitter. A put whose response was lost may have landed: callers that need to
know (the log, the manifest) use ``put_if_absent`` and compare the stored bytes on
``ObjectExists``.

One optional operation: ``get_range(key, start, length) -> bytes``, the object's bytes from
``start``, at most ``length`` (> 0) of them (fewer at its end; none past it), raising as
``get``; a store that has it says so with ``reads_ranges = True`` (:func:`reads_ranges`). The
project's stores have it (an S3 ranged GET, a seek on a file) and its wrappers pass it on when
their inner store has it; :func:`read_range` falls back to ``get`` for one that does not. A
streaming scan reads a range object's parts with it (:mod:`dn.objects.rangeparts`), and reads
objects whole from a store without it.

Not in the protocol: appends, object metadata. Implementations do not cache.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ObjectStore(Protocol):
    """What the engine needs of a store. See the module docstring for the contract."""

    url: str

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def close(self) -> None: ...


def reads_ranges(store: ObjectStore) -> bool:
    """Whether ``store`` reads part of an object without fetching it whole."""
    return bool(getattr(store, "reads_ranges", False))


def read_range(store: ObjectStore, key: str, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` of the object at ``key`` (fewer at its end), through
    the store's ``get_range`` when it has one, else a whole ``get``."""
    if reads_ranges(store):
        return store.get_range(key, start, length)  # type: ignore[attr-defined]
    return store.get(key)[start : start + length]
