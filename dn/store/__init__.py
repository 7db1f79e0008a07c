"""The object-store layer: the protocol, its backends, retries and fault injection.

``open_store(url)`` is the one way configuration turns into a store:

=================================  =========================================================
url                                store
=================================  =========================================================
``/abs/path``, ``rel/path``        :class:`LocalStore` on that directory (made absolute)
``file:///abs/path``               :class:`LocalStore` (host must be empty or ``localhost``)
``s3://bucket/prefix``             :class:`S3Store`; ``s3_options`` are its keyword arguments
``memory://``                      a fresh :class:`MemoryStore`
``memory://name``                  the process-wide :class:`MemoryStore` called ``name``
=================================  =========================================================

The result is wrapped in :class:`RetryingStore` with ``retry`` (default :class:`RetryPolicy()`)
unless ``retry.max_attempts == 1``. An unknown scheme or malformed url is ``InvalidArgument``.

Invariant: boto3 is imported only when an S3 store is made (``S3Store`` is loaded lazily).

Callers: configuration code in any package; the returned store is safe for any thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from dn.errors import InvalidArgument
from dn.store.base import ObjectStore
from dn.store.faulty import FaultyStore, SimulatedCrash
from dn.store.local import LocalStore
from dn.store.memory import MemoryStore, shared_memory_store
from dn.store.retry import RetryingStore, RetryPolicy

if TYPE_CHECKING:
    from dn.store.s3 import S3Store

__all__ = [
    "FaultyStore",
    "LocalStore",
    "MemoryStore",
    "ObjectStore",
    "RetryPolicy",
    "RetryingStore",
    "S3Store",
    "SimulatedCrash",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "S3Store":
        from dn.store.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _open_raw(url: str, s3_options: dict[str, Any] | None) -> ObjectStore:
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"object store url must be a non-empty string, got {url!r}")
    if "://" not in url:
        return LocalStore(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise InvalidArgument(f"object store url {url!r} must not have a query or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(
                f"file url {url!r} names host {parts.netloc!r}; use file:///absolute/path"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidArgument(f"file url {url!r} must hold an absolute path")
        return LocalStore(path)
    if scheme == "memory":
        name = (parts.netloc + parts.path).strip("/")
        return shared_memory_store(name) if name else MemoryStore()
    if scheme == "s3":
        if not parts.netloc:
            raise InvalidArgument(f"s3 url {url!r} has no bucket; expected s3://bucket/prefix")
        from dn.store.s3 import S3Store

        try:
            return S3Store(parts.netloc, unquote(parts.path), **(s3_options or {}))
        except TypeError as e:
            raise InvalidArgument(f"bad s3_options for {url!r}: {e}") from e
    known = "a path, file:///path, s3://bucket/prefix, memory://[name]"
    raise InvalidArgument(f"unknown object store scheme {parts.scheme!r} in {url!r}; use {known}")


def open_store(
    url: str | os.PathLike[str],
    *,
    retry: RetryPolicy | None = None,
    s3_options: dict[str, Any] | None = None,
) -> ObjectStore:
    """Open the store ``url`` names (see the module docstring). ``s3_options`` is ignored
    for stores other than S3."""
    store = _open_raw(os.fspath(url) if isinstance(url, os.PathLike) else url, s3_options)
    policy = retry if retry is not None else RetryPolicy()
    if policy.max_attempts == 1:
        return store
    return RetryingStore(store, policy)
