"""The object cache: a byte-bounded LRU of decoded immutable objects.

Range objects and checkpoints never change once written, so a decoded one can be shared by
every read that names it. The cache maps an object's key to its decoded value and counts each
entry at the size of its stored bytes; past ``capacity`` bytes it drops the least recently used
entries (always keeping the newest one, however large).

Invariants: the byte count is the sum of the entries' sizes; values are never mutated by the
cache or by its users. Not here: fetching or decoding (the caller's ``load`` does both, outside
the lock, so two threads may load the same key at once; the first to finish is kept).

:class:`Pins` holds, for one read, the objects it will use more than once (after slots moved,
an object is read by its old owner, filtered, and by the new owner through a reference),
from their first use to their last, whatever the shared cache evicts in between.

Thread-safe: one lock guards the entries and the counters (a :class:`Pins`, its own).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class ObjectCache:
    """A byte-bounded LRU of decoded immutable objects."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, load: Callable[[], tuple[Any, int]]) -> Any:
        """The value cached at ``key``; on a miss, ``load()`` gives (value, size in bytes)."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        value, size = load()
        with self._lock:
            if key not in self._items:
                self._items[key] = (value, size)
                self._bytes += size
                while self._bytes > self.capacity and len(self._items) > 1:
                    _, (_, s) = self._items.popitem(last=False)
                    self._bytes -= s
        return value

    def peek(self, key: str, count: bool = True) -> Any:
        """The value cached at ``key`` (counted as a hit), or None (a miss) without loading
        or caching anything: for a streaming scan, which must neither fill the cache with a
        whole table nor keep alive the objects it has passed (:mod:`dn.read.stream`).
        ``count`` False: neither counted nor made more recent (a look for a copy that may
        be there, on the way to loading what is counted)."""
        with self._lock:
            item = self._items.get(key)
            if not count:
                return None if item is None else item[0]
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def take(self, key: str) -> Any:
        """The value cached at ``key``, taken out of the cache (not counted as a hit or a
        miss), or None."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def status(self) -> dict:
        with self._lock:
            return {
                "objects": len(self._items),
                "bytes": self._bytes,
                "hits": self.hits,
                "misses": self.misses,
            }


class Pins:
    """The objects one read uses several times, held from first use to last: ``uses`` maps
    an object's key to how many times the read will ask for it (keys used once are not
    held). Before, a scan of a table larger than the cache read every object a move had
    split between two shards twice from the store, the first copy evicted before the second
    use (``bench/reshard.py``'s 7c)."""

    def __init__(self, uses: dict[str, int]) -> None:
        self._left = {k: n for k, n in uses.items() if n > 1}
        self._held: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        """The object at ``key``: held, or ``load()`` (then held if used again)."""
        with self._lock:
            held = self._held.get(key)  # only keys still to be used again are held
        value = held if held is not None else load()
        with self._lock:
            n = self._left.get(key)
            if n is not None:
                if n <= 1:
                    del self._left[key]
                    self._held.pop(key, None)
                else:
                    self._left[key] = n - 1
                    self._held[key] = value
        return value
