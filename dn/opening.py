"""Opening a shard: the arguments of :meth:`dn.Engine.open` checked, and the stores built.

:func:`open_components` turns a url and settings (or components a caller passes: tests inject
fault-injecting stores and manual clocks) into the data store and the log's store, each behind
the retry policy the settings give. No I/O beyond opening the stores.
"""

from __future__ import annotations

import os

from dn.clock import Clock
from dn.errors import InvalidArgument
from dn.settings import Settings
from dn.store import LocalStore, ObjectStore, RetryingStore, RetryPolicy, open_store
from dn.store.locallog import LocalLogStore


def open_components(
    url: str | os.PathLike | None,
    shard_id: int,
    settings: Settings,
    store: ObjectStore | None,
    log_store: ObjectStore | None,
    clock: Clock | None,
) -> tuple[ObjectStore, ObjectStore, ObjectStore | None]:
    """The data store, the log's store and, if it was made here (to be closed with the
    engine), the log's store again; InvalidArgument for anything malformed."""
    if not isinstance(settings, Settings):
        raise InvalidArgument("settings must be a dn.Settings")
    if url is not None and not isinstance(url, str | os.PathLike):
        raise InvalidArgument(f"url must be a str or a path, got {type(url).__name__}")
    for name, part in (("store", store), ("log_store", log_store)):
        if part is not None and not isinstance(part, ObjectStore):
            raise InvalidArgument(f"{name} must be a dn.store.ObjectStore, got {part!r}")
    if clock is not None and not (
        callable(getattr(clock, "now_ms", None)) and callable(getattr(clock, "monotonic", None))
    ):
        raise InvalidArgument(f"clock must be a dn.Clock, got {clock!r}")
    if type(shard_id) is not int or shard_id < 0:
        raise InvalidArgument(f"shard_id must be an int >= 0, got {shard_id!r}")
    policy = RetryPolicy(
        max_attempts=settings.store_retry_attempts,
        base_delay_s=settings.store_retry_base_delay_s,
        max_delay_s=settings.store_retry_max_delay_s,
    )
    if store is None:
        if url is None:
            raise InvalidArgument("give a store url (or a store)")
        store = open_store(os.fspath(url), retry=policy)
    made_log = None
    if log_store is None:
        log_store = _log_store_for(
            open_store(settings.log_url, retry=policy) if settings.log_url else store, policy
        )
        made_log = log_store if log_store is not store else None
    return store, log_store, made_log


def _log_store_for(store: ObjectStore, policy: RetryPolicy) -> ObjectStore:
    """The store the log writes to: on a local directory, the log's own layout that costs one
    fdatasync per group commit (dn/store/locallog.py); elsewhere the store itself."""
    inner = store.inner if isinstance(store, RetryingStore) else store
    if type(inner) is LocalStore:
        return RetryingStore(LocalLogStore(inner.root), policy)
    return store
