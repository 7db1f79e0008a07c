"""The undecided intents of one shard's transactions, by token and by the keys they hold.

An intent (:mod:`dn.write.txn`) is applied to a buffer at its commit timestamp and stays
undecided until its decision is known here. While it does, it *holds* its keys: a prepare of
a snapshot-isolation transaction writing one of them is refused with Conflict (an atomic
batch without a snapshot is not: it commits after the holder, and both may stand). A prepare
claims its keys when it is stamped (before its log write) so that two prepares of one group
see each other; a log write that fails frees them again.

Under the shard's lock (``cv``); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from dn.write.buffer import Buffer


@dataclass(slots=True)
class Intent:
    """An undecided intent applied to ``buffer`` at ``ts``, holding ``keys`` per table id."""

    token: bytes
    ts: int
    buffer: Buffer
    keys: dict[int, list]
    born: float  # monotonic seconds when applied here (or replayed)
    looked: float = 0.0  # monotonic seconds of the last look at its decision object


class Intents:
    """The shard's undecided intents, by token and by the keys they hold (under ``cv``)."""

    def __init__(self) -> None:
        self.by_token: dict[bytes, Intent] = {}
        self._holders: dict[tuple[int, object], set[bytes]] = {}
        self.claimed: dict[bytes, list[tuple[int, object]]] = {}  # stamped, not yet applied

    def __len__(self) -> int:
        return len(self.by_token)

    def get(self, token: bytes) -> Intent | None:
        return self.by_token.get(token)

    def holder(self, table_id: int, keys: list, but: bytes | None = None) -> bytes | None:
        """The token of an intent (applied or stamped) other than ``but`` holding one of
        ``keys``, or None."""
        h = self._holders
        for k in keys:
            for token in h.get((table_id, k), ()):
                if token != but:
                    return token
        return None

    def claim(self, token: bytes, keys: dict[int, list]) -> None:
        held = [(t, k) for t, ks in keys.items() for k in ks]
        h = self._holders
        for hk in held:
            tokens = h.get(hk)
            if tokens is None:
                h[hk] = {token}
            else:
                tokens.add(token)
        self.claimed[token] = held

    def _free(self, token: bytes, held) -> None:
        h = self._holders
        for hk in held:
            tokens = h.get(hk)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del h[hk]

    def unclaim(self, token: bytes) -> None:
        self._free(token, self.claimed.pop(token, ()))

    def add(self, intent: Intent) -> None:
        self.unclaim(intent.token)
        self.claim(intent.token, intent.keys)
        del self.claimed[intent.token]
        self.by_token[intent.token] = intent

    def remove(self, token: bytes) -> Intent | None:
        intent = self.by_token.pop(token, None)
        if intent is not None:
            self._free(token, [(t, k) for t, ks in intent.keys.items() for k in ks])
        return intent

    def oldest_through(self, ts: int) -> Intent | None:
        """The undecided intent at the lowest timestamp <= ``ts``, or None."""
        hits = [i for i in self.by_token.values() if i.ts <= ts]
        return min(hits, key=lambda i: i.ts) if hits else None
