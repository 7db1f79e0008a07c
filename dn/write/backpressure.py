"""Backpressure: a shard's writers are slowed, then refused, as its buffers fill memory
(DESIGN.md §5 promise 7).

What is bounded is the estimated heap the shard's buffers hold — the mutable buffer and the
checkpoint queue of frozen buffers (:attr:`dn.write.buffer.Buffer.memory`) — not their encoded
bytes: the decoded rows of a write cost one to ten times their encoding (a list slot and an
object header per value), so a bound on encoded bytes let a shard grow to several times it.
The per-value figures of that estimate are here (:func:`column_cost`, :func:`value_extra`);
the buffers add them up as writes apply (:mod:`dn.write.buffer`).

Rule, checked once per write call (or per batch of calls) before it joins a group commit:

- at or over ``queue_slow_bytes`` the writer helps: it freezes the mutable buffer when that
  holds at least half of the memory (so there is a sizeable buffer to checkpoint; upkeep
  freezes by encoded size, which may be far behind), then runs one buffer checkpoint (if the
  store refuses it, the write goes on — the log may still take it — and no writer tries
  again for ``HELP_BACKOFF_S``; the background upkeep goes on trying);
- at or over ``queue_stop_bytes`` after that it is refused with :class:`Unavailable`
  (retryable): the checkpoints are behind, retry later.

So the buffers hold at most ``queue_stop_bytes`` plus what one round of admitted writes adds
(every writer admitted below the bound, each at most ``max_batch_bytes`` encoded). The process
holds that plus its idle baseline, the transient of one buffer checkpoint (building a range
object takes about 1.5 times the estimate of the buffer it writes out), per writer thread its
batch in flight and its malloc arena's slack (a few MiB), and the allocator's fragmentation
(measured at 5-20% of the bound). ``tests/trials/memory.py`` measures it;
``docs/reliability.md`` has the figures.

Not done: counting other memory (the reader cache is bounded by ``cache_bytes``, the
idempotency tokens by their window); waiting instead of refusing.

Callers: the write path, from any writer's thread, without the shard's lock: the figures are
read without it (advisory; a copy of the frozen list is atomic under the GIL, and buffers
only ever leave it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dn.errors import Unavailable

if TYPE_CHECKING:  # both import dn.write.buffer, which takes its estimate from here
    from dn.state import ShardState
    from dn.upkeep.scheduler import Upkeep

#: One list slot: a pointer, and the list's over-allocation (up to an eighth while it grows).
SLOT = 9
#: What a commit costs beyond its rows: its timestamp (one int, shared by its rows).
COMMIT_COST = 32
#: An idempotency token noted in a buffer: its tuple and bytes objects and its slot.
TOKEN_COST = 136


def _encoded_int(v: int) -> int:
    """Bytes of ``v`` in msgpack (the 2-byte forms counted as 3: close enough)."""
    if -32 <= v < 128:
        return 1
    if -(1 << 15) <= v < 1 << 16:
        return 3
    return 5 if -(1 << 31) <= v < 1 << 32 else 9


def _header(n: int) -> int:
    """Bytes of a msgpack str/bin header of a value ``n`` bytes long."""
    return 1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5


def value_extra(v: Any) -> int:
    """Heap bytes one value costs beyond its msgpack encoding (which ``nbytes`` counts):
    the object's size rounded to pymalloc's 16 bytes, less its encoded size. May be
    negative (a shared object: a cached small int, a bool, None)."""
    t = type(v)
    if t is int:
        enc = _encoded_int(v)
        if -5 <= v <= 256:
            return -enc  # CPython's cached small ints: shared
        return (32 if -(1 << 60) < v < 1 << 60 else 48) - enc
    if t is str:
        n = len(v)
        if v.isascii():
            return 57 - _header(n)
        utf8 = len(v.encode("utf-8", "surrogatepass"))
        return sys.getsizeof(v) + 8 - utf8 - _header(utf8)  # its UTF-8 copy, if any, counted
    if t is float:
        return 23
    if t is bytes:
        return 41 - _header(len(v))
    if t is tuple:  # a composite key
        return 40 + 8 * len(v) + sum(map(value_extra, v))
    return -1  # None, a bool: shared; one byte encoded


def column_cost(values: Sequence) -> int:
    """Estimated heap bytes of a column of values appended to a list, beyond their encoded
    bytes: a slot each, plus the mean extra of three samples. O(1) in the length."""
    n = len(values)
    if n == 0:
        return 0
    if n < 3:
        return n * SLOT + sum(map(value_extra, values))
    extra = value_extra(values[0]) + value_extra(values[n >> 1]) + value_extra(values[-1])
    return n * SLOT + n * extra // 3


#: After a writer's buffer checkpoint failed, writers stop trying one for this long (seconds):
#: each try builds a whole range object, and a storm of them only churns memory.
HELP_BACKOFF_S = 1.0


class Backpressure:
    """Admission of one shard's writes by the memory its buffers hold."""

    def __init__(self, state: ShardState, upkeep: Upkeep) -> None:
        self._s = state
        self._upkeep = upkeep
        self._help_after = 0.0  # no writer helps before this (monotonic s): one just failed
        self._failure = ""

    def held_bytes(self) -> int:
        """Estimated heap bytes of the shard's buffers: the mutable one and the frozen ones
        awaiting their buffer checkpoint."""
        s = self._s
        return s.mutable.memory + sum(b.memory for b in s.frozen[:])

    def admit(self) -> None:
        """Let a write in, after helping with a buffer checkpoint if memory is over
        ``queue_slow_bytes``; raise :class:`Unavailable` if it is over ``queue_stop_bytes``."""
        s = self._s
        held = self.held_bytes()
        why = ""
        if held >= s.settings.queue_slow_bytes:
            if s.mutable.memory * 2 >= held:
                self._upkeep.freeze()
            now = s.clock.monotonic()
            if now >= self._help_after:
                try:
                    self._upkeep.flush_one()
                except Unavailable as exc:  # the store fails: admitted all the same below stop
                    # only its message is kept: the exception's frames hold the range object
                    self._failure = f" (a buffer checkpoint failed: {exc})"
                    self._help_after = now + HELP_BACKOFF_S
            why = self._failure if now < self._help_after else ""
            held = self.held_bytes()
        if held >= s.settings.queue_stop_bytes:
            raise Unavailable(
                f"shard {s.shard} is behind: its buffers hold about {held} bytes of memory "
                f"awaiting buffer checkpoints (limit queue_stop_bytes="
                f"{s.settings.queue_stop_bytes}){why}; retry later"
            )
