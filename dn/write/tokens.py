"""Idempotency tokens: every write part carries one, so a part sent again is applied once.

A token names one write part (:class:`dn.write.part.WritePart`), not its contents: it is minted
before the part is first sent and sent again, unchanged, with every resend of that part (the
shells' retries after a timeout, a lost response or a restarted shard). A shard that has
committed a token answers a part carrying it again with the original commit timestamp and
changes nothing (decision 0014).

Token format (:data:`TOKEN_BYTES` = 32 bytes)::

    token := client_id:16 minted_ms:u64 seq:u64      big-endian

``client_id`` is random, made once per :class:`TokenMinter` in each process (a minter that
lands in another process by pickling or forking makes a new one, so that two copies of one
client never mint the same token); ``minted_ms`` is the minting process's wall clock (Unix
ms); ``seq`` counts the minter's tokens from 1.

The window. A shard remembers a committed token for ``token_window_s`` (``W``) after its
commit timestamp, and takes a part only if its token was minted at most ``W/2`` before and
``W/4`` after the shard's wall clock (:meth:`TokenTable.check_minted`; else
:class:`dn.errors.InvalidArgument`, nothing written). So a part is taken at most ``W/2`` after it
was minted, its first commit is at most ``W/4`` before it was minted, and a token is still
remembered whenever a part carrying it can be taken, with ``W/4`` to spare for the skew
between shard nodes' clocks. A resend later than ``W/2`` after minting is refused rather than
applied a second time.

:class:`TokenTable` is the shard's memory of tokens; every method is called with the shard's
lock (``ShardState.cv``) held. It holds:

- ``committed``: token -> commit timestamp, for the tokens whose commit timestamp is inside the
  window (older ones are dropped by :meth:`TokenTable.prune`);
- ``claims``: the tokens of parts being committed right now (a second part with the same token
  waits for the first one's outcome);
- ``unsettled``: the tokens of a log write whose outcome is unknown (a part carrying one must
  wait until the write path has settled it: it may have landed).

Stored entries. Range objects and checkpoints carry tokens with their commit timestamps as one
byte string (:func:`pack_entries`), so that a reader that has no use for them (every snapshot
read decodes checkpoints) pays one bytes object for however many there are::

    entries := entry*            ts strictly ascending
    entry   := ts:u64 token:32   big-endian (40 bytes)

Not done here: the write path's use of the table (:mod:`dn.write.path`), durability (the log's
op 6, buffers, range objects and checkpoints carry the tokens: ``docs/formats.md``).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from dn.clock import LOGICAL_BITS
from dn.errors import InvalidArgument

#: The size of a token in bytes.
TOKEN_BYTES = 32
_CLIENT_ID_BYTES = 16
_TAIL = struct.Struct(">QQ")  # minted_ms, seq
#: One stored entry: commit timestamp and token.
ENTRY = struct.Struct(">Q32s")
_ENTRY_DTYPE = np.dtype([("ts", ">u8"), ("token", "S32")])


def make_token(client_id: bytes, minted_ms: int, seq: int) -> bytes:
    """The token of the format above."""
    if len(client_id) != _CLIENT_ID_BYTES:
        raise InvalidArgument(f"a token's client id is {_CLIENT_ID_BYTES} bytes")
    return client_id + _TAIL.pack(minted_ms, seq)


def minted_ms(token: bytes) -> int:
    """When ``token`` was minted (Unix ms, the minting process's clock)."""
    return _TAIL.unpack_from(token, _CLIENT_ID_BYTES)[0]


def is_token(value: object) -> bool:
    """Whether ``value`` has a token's form (bytes of :data:`TOKEN_BYTES`)."""
    return type(value) is bytes and len(value) == TOKEN_BYTES


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class TokenMinter:
    """Mints the tokens of one client (or writer) in one process. Thread-safe. Pickling gives
    a new minter (with a new client id on first use), as does forking."""

    def __init__(self, now_ms: Callable[[], int] | None = None) -> None:
        self._now_ms = now_ms if now_ms is not None else _wall_ms
        self._lock = threading.Lock()
        self._pid = -1
        self._id = b""
        self._seq = 0

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def mint(self) -> bytes:
        """A token no minter has made before (its client id random, its seq new)."""
        with self._lock:
            pid = os.getpid()
            if pid != self._pid:  # first use, or a forked copy: a client id of its own
                self._pid, self._id, self._seq = pid, os.urandom(_CLIENT_ID_BYTES), 0
            self._seq += 1
            return make_token(self._id, self._now_ms(), self._seq)

    @property
    def client_id(self) -> bytes:
        """This minter's client id in this process (empty before the first token)."""
        return self._id if self._pid == os.getpid() else b""


class TokenTable:
    """A shard's tokens (see the module docstring); the caller holds the shard's lock."""

    __slots__ = ("window_ms", "committed", "claims", "unsettled", "_order")

    def __init__(self, window_s: float) -> None:
        self.window_ms = int(window_s * 1000)
        self.committed: dict[bytes, int] = {}
        self.claims: set[bytes] = set()
        self.unsettled: set[bytes] = set()
        self._order: deque[tuple[int, bytes]] = deque()  # (ts, token), as committed

    def __len__(self) -> int:
        return len(self.committed)

    def floor(self, now_ms: int) -> int:
        """The oldest commit timestamp whose token is still remembered at ``now_ms``."""
        return max(0, now_ms - self.window_ms) << LOGICAL_BITS

    def check_minted(self, token: bytes, now_ms: int) -> None:
        """InvalidArgument unless a part carrying ``token`` may be taken at ``now_ms``: minted
        at most half the window before it and a quarter of the window after it."""
        m = minted_ms(token)
        if m < now_ms - self.window_ms // 2:
            raise InvalidArgument(
                f"the write part's token was minted {(now_ms - m) / 1000:.1f} s ago, more than "
                f"half of token_window_s ({self.window_ms / 1000:g} s): an earlier attempt of "
                "this part may have committed, and this one is not applied (or the client's "
                "clock is behind)",
                minted_ms=m,
                window_s=self.window_ms / 1000,
            )
        if m > now_ms + self.window_ms // 4:
            raise InvalidArgument(
                f"the write part's token was minted {(m - now_ms) / 1000:.1f} s after this "
                "shard's clock, more than a quarter of token_window_s: the client's clock is "
                "ahead; nothing was written",
                minted_ms=m,
                window_s=self.window_ms / 1000,
            )

    def note(self, ts: int, token: bytes) -> None:
        """``token`` committed at ``ts`` (a commit, a replayed command, a recovered entry)."""
        if self.committed.get(token) == ts:
            return  # recovered twice (a checkpoint and a range object both hold it)
        self.committed[token] = ts
        self._order.append((ts, token))
        self.unsettled.discard(token)

    def load(self, entries: Iterable[tuple[int, bytes]], floor_ts: int) -> None:
        """Recovery: note the entries (``(ts, token)``, ascending) still inside the window."""
        for ts, token in entries:
            if ts >= floor_ts:
                self.note(ts, token)

    def prune(self, floor_ts: int) -> int:
        """Forget the tokens committed before ``floor_ts``; returns how many."""
        n = 0
        order, committed = self._order, self.committed
        while order and order[0][0] < floor_ts:
            ts, token = order.popleft()
            if committed.get(token) == ts:
                del committed[token]
                n += 1
        return n

    def snapshot(self) -> list[tuple[int, bytes]]:
        """Every remembered ``(ts, token)``, in the order noted (a copy, cheap under the
        lock; :func:`window` picks a checkpoint's entries from it outside the lock)."""
        return list(self._order)


def window(
    entries: list[tuple[int, bytes]], upto_ts: int, floor_ts: int
) -> list[tuple[int, bytes]]:
    """The entries committed in ``[floor_ts, upto_ts]``, ascending (what a checkpoint at
    ``upto_ts`` records)."""
    return sorted(e for e in entries if floor_ts <= e[0] <= upto_ts)


def pack_entries(entries: Iterable[tuple[int, bytes]]) -> bytes:
    """``(ts, token)`` entries, ascending, as stored (the grammar above)."""
    return b"".join(ENTRY.pack(ts, token) for ts, token in entries)


def unpack_entries(blob: bytes) -> list[tuple[int, bytes]]:
    """Stored entries (checked by :func:`check_entries`) as ``(ts, token)`` tuples."""
    return list(ENTRY.iter_unpack(blob))


def check_entries(blob: object, lo: int, hi: int) -> bytes:
    """``blob`` if it is stored entries whose timestamps are strictly ascending and in
    ``[lo, hi]``; else ValueError."""
    if type(blob) is not bytes or len(blob) % ENTRY.size:
        raise ValueError(f"tokens are not {ENTRY.size}-byte entries")
    if blob:
        ts = np.frombuffer(blob, dtype=_ENTRY_DTYPE)["ts"]
        if int(ts[0]) < lo or int(ts[-1]) > hi or not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError(f"token timestamps are not ascending within [{lo}, {hi}]")
    return blob


__all__ = [
    "ENTRY",
    "TOKEN_BYTES",
    "TokenMinter",
    "TokenTable",
    "check_entries",
    "is_token",
    "make_token",
    "minted_ms",
    "pack_entries",
    "unpack_entries",
    "window",
]
