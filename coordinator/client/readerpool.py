"""The reader pool: one object store, one object cache and one reader per shard for each
store a client process reads, shared by every client of the process (so Ray tasks and
drivers reuse decoded objects), and the readers of one scan that reads several shards' views
one after another (:meth:`ReaderPool.readers`: the objects several of them read held from
first use to last, :class:`dn.read.cache.Pins`).

Thread-safe: the pools' map has a lock; a pool's cache and readers are thread-safe.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

from dn.read.cache import ObjectCache, Pins
from dn.read.reader import Reader
from dn.read.view import ReadView
from dn.store import open_store
from dn.store.base import ObjectStore

#: Stores whose reader pools (and object caches) a process keeps at once.
POOLS_KEPT = 2


class ReaderPool:
    """One object store, one cache and one Reader per shard for a store URL, shared by every
    client of this process (so Ray tasks and drivers reuse decoded objects)."""

    _pools: dict[tuple[str, int], ReaderPool] = {}
    _lock = threading.Lock()

    def __init__(self, store: ObjectStore, cache_bytes: int) -> None:
        self.store = store
        self.cache = ObjectCache(cache_bytes)
        self._readers: dict[int, Reader] = {}

    @classmethod
    def for_url(cls, url: str, cache_bytes: int) -> ReaderPool:
        """The pool of ``url``: made once, kept while it is among the :data:`POOLS_KEPT`
        stores this process read last (one that connects to deployment after deployment
        kept every one's cache before)."""
        with cls._lock:
            pool = cls._pools.pop((url, cache_bytes), None)
            if pool is None:
                pool = cls(open_store(url), cache_bytes)
            cls._pools[(url, cache_bytes)] = pool  # the newest last
            while len(cls._pools) > POOLS_KEPT:
                del cls._pools[next(iter(cls._pools))]
            return pool

    @classmethod
    def forget(cls, url: str) -> None:
        """Let go of the pools of ``url`` (whatever their cache size), and so of the objects
        they hold decoded: for a process done with a deployment (``coordinator.shutdown``).
        A benchmark that deployed run after run held its last two runs' caches (4 GiB of a
        24 GB node in ``bench/reshard.py``, which then ran out of memory)."""
        with cls._lock:
            for key in [k for k in cls._pools if k[0] == url]:
                del cls._pools[key]

    def reader(self, shard: int) -> Reader:
        r = self._readers.get(shard)
        if r is None:
            r = self._readers[shard] = Reader(self.store, shard, self.cache)
        return r

    def readers(self, views: Mapping[int, ReadView]) -> dict[int, Reader]:
        """A reader per shard of ``views`` for one read that reads them one after another,
        in the order to read them: the objects several shards read (a moved slot's, by its old
        owner and through a reference by its new) held from first use to last
        (:class:`dn.read.cache.Pins`), and a shard read right after the shard whose objects
        it references (so those are held briefly)."""
        keys = {i: self.reader(i).object_keys(v.table, v.plan) for i, v in views.items()}
        uses = Counter(k for ks in keys.values() for _, k in ks)
        pins = Pins(dict(uses))

        def home(i: int) -> tuple[int, int]:
            return (min([i, *(shard for shard, k in keys[i] if uses[k] > 1)]), i)

        return {i: self.reader(i).pinned(pins) for i in sorted(views, key=home)}
