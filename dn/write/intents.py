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

from dn.errors import InvalidArgument
from dn.schema import TableDef
from dn.write.buffer import Buffer
from dn.write.part import WritePart
from dn.write.tokens import is_token


@dataclass(slots=True)
class Intent:
    """An undecided intent applied to ``buffer`` at ``ts``, holding ``keys`` per table id."""

    token: bytes
    ts: int
    buffer: Buffer
    keys: dict[int, list]
    born: float  # monotonic seconds when applied here (or replayed)
    group: bytes  # the token its decision object is keyed by (its own, alone)
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


@dataclass(slots=True)
class Prepare:
    """A prepare on its way to the log: the checked parts and what its stamp checks."""

    at: int
    tables: list[TableDef]  # in the order of its writes (the Pending's args)
    keys: dict[int, list]
    snapshot: int | None
    checked_to: int  # versions of its keys committed at or below this were checked already


@dataclass(slots=True)
class Decoded:
    """A prepare's parts, checked and decoded: what :meth:`Transactions.decode` gives."""

    parts: list[WritePart]
    tables: list[TableDef]
    writes: list  # (chunks, deletes) per part
    keys: dict[int, list]
    nrows: int


def check_args(
    token: bytes, at: int, parts: list | Decoded, snapshot: int | None, group: bytes | None = None
) -> None:
    """The arguments of a prepare, checked (InvalidArgument)."""
    if group is not None and not is_token(group):
        raise InvalidArgument("a transaction's group is named by a token (32 bytes)")
    if type(at) is not int or at <= 0:
        raise InvalidArgument(f"a commit timestamp must be an int > 0, got {at!r}")
    if snapshot is not None and (type(snapshot) is not int or not 0 <= snapshot < at):
        raise InvalidArgument(f"a transaction's snapshot must be an int below {at}")
    if isinstance(parts, Decoded):
        parts = parts.parts
    if not isinstance(parts, list | tuple) or not all(isinstance(p, WritePart) for p in parts):
        raise InvalidArgument("a prepare's parts must be a list of write parts")
    if not parts or len({(p.db, p.table) for p in parts}) != len(parts):
        raise InvalidArgument("a prepare takes one part per table, at least one")
    if any(p.token is not None for p in parts):
        raise InvalidArgument("the parts of a prepare carry no tokens: the prepare has one")
