"""Staged parts: the shard's side of an atomic dataset write (``DNDatasink(atomic=True)``).

A dataset written atomically commits all of its rows at one timestamp, as one transaction
(decision 0015). Its rows do not travel through the driver. Each write task packs its blocks
into write parts, one per shard, and puts each part in the store as an object of its own
(``50/sink/<sink id>/parts/...``: the arguments of :meth:`dn.write.part.WritePart.to_call`,
msgpack). When every task is done, the driver:

1. ``stage(key, objects)`` on every shard: the shard reads its parts from the store, merges them
   into one part per table, and checks and decodes them (:meth:`dn.write.txn.Transactions.
   decode`, bounded by ``max_staged_rows``). They are held here under ``key``; nothing is
   logged or applied. A duplicate key across the dataset is an InvalidArgument here, as in
   any one batch.
2. commits one transaction whose share on each shard is ``[("staged", key)]``: its prepare
   takes the decoded parts from here, so a prepare costs no more than a small one between
   the committer picking the commit timestamp and the shard stamping it (decoding 500k rows
   there would let the shard's clock pass the timestamp: TimestampPassed on every attempt).
3. ``unstage(key)`` on every shard, and deletes the objects.

Staged parts are memory only: a shard that restarts between 1 and 2 has none, its prepare is
refused with Unavailable, and the driver stages again and commits with a new token. Parts not
taken within ``ttl_s`` are dropped. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dn.errors import InvalidArgument, Unavailable
from dn.objects import codec
from dn.write.intents import Decoded
from dn.write.part import WritePart

#: The share of a transaction that names staged parts: ``("staged", key)``.
STAGED = "staged"
#: Staged parts are dropped this long after their stage call (seconds).
TTL_S = 1800.0


def is_staged(calls: Any) -> bool:
    """Whether a prepare's calls name staged parts instead of carrying parts."""
    return (
        isinstance(calls, list | tuple)
        and len(calls) == 1
        and isinstance(calls[0], list | tuple)
        and len(calls[0]) == 2
        and calls[0][0] == STAGED
    )


class Staging:
    """One shard's staged parts, by key (see the module docstring)."""

    def __init__(self, engine: Any, ttl_s: float = TTL_S) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._staged: dict[bytes, tuple[Decoded, float, tuple[str, ...]]] = {}

    def stage(self, key: bytes, objects: list[str]) -> int:
        """Read, merge, check and decode the parts in ``objects``; hold them under ``key``
        (a second stage of the same objects under the same key reads nothing). Returns their
        rows."""
        if not isinstance(key, bytes) or not key:
            raise InvalidArgument("a staging key must be non-empty bytes")
        if not isinstance(objects, list | tuple) or not objects:
            raise InvalidArgument("staging needs the keys of the parts' objects")
        if not all(isinstance(k, str) and k.startswith("50/sink/") for k in objects):
            raise InvalidArgument("staged parts live under 50/sink/")
        with self._lock:
            held = self._staged.get(key)
        if held is not None and held[2] == tuple(objects):  # staged already (a later attempt)
            return held[0].nrows
        store = self._engine.store
        parts = []
        for k in objects:
            call = codec.unpack_tuples(store.get(k))
            if not isinstance(call, list | tuple) or len(call) < 2:
                raise InvalidArgument(f"object {k} is not a packed write part")
            parts.append(WritePart.from_call(*call))
        settings = self._engine.settings
        decoded = self._engine.transactions.decode(merge(parts), settings.max_staged_rows)
        now = time.monotonic()
        with self._lock:
            for k in [k for k, (_, t, _) in self._staged.items() if t < now]:
                del self._staged[k]
            self._staged[key] = (decoded, now + self._ttl_s, tuple(objects))
        return decoded.nrows

    def take(self, calls: Any) -> Decoded:
        """The decoded parts a prepare's ``[("staged", key)]`` names (kept for a resend)."""
        key = calls[0][1]
        with self._lock:
            got = self._staged.get(key)
        if got is None:
            raise Unavailable(
                "no staged parts under this key (the shard restarted, or they expired): "
                "stage them again",
                outcome_unknown=False,
            )
        return got[0]

    def unstage(self, key: bytes) -> bool:
        with self._lock:
            return self._staged.pop(key, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._staged)


def merge(parts: list[WritePart]) -> list[WritePart]:
    """One part per table: the chunks of every part of a table in order, their deletes
    together (a prepare takes one part per table). InvalidArgument if two parts of one table
    were routed against different definitions of it."""
    by_table: dict[tuple[str, str], list[WritePart]] = {}
    for p in parts:
        by_table.setdefault((p.db, p.table), []).append(p)
    out = []
    for (db, table), ps in by_table.items():
        first = ps[0]
        if any((p.table_id, p.pk_signature) != (first.table_id, first.pk_signature) for p in ps):
            raise InvalidArgument(f"staged parts of {db}.{table} name two of its definitions")
        if any(p.token is not None for p in ps):
            raise InvalidArgument("staged parts carry no tokens: the transaction has one")
        chunks = tuple(c for p in ps for c in p.chunks)
        deletes = [k for p in ps for k in codec.unpack(p.deletes)]
        out.append(
            WritePart(db, table, first.table_id, first.pk_signature, 0, codec.pack(deletes), chunks)
        )
    return out
