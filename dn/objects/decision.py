"""Transaction decisions: the one durable commit point of a transaction across shards.

A transaction (an atomic batch, or :class:`coordinator.client.txn.Transaction`) prepares an
intent on every shard it writes (:mod:`dn.write.txn`), all at one commit timestamp ``C``. It is
committed when, and only when, its decision object says so. The object is created once, with a
conditional put, by whoever decides first: the client that prepared every intent (commit at
``C``), or anyone who gave up waiting for it (abort). Every later decider reads the first one
back, so all shards apply the same outcome (decision 0015).

Key: ``40/txn/<token hex>`` (the transaction's idempotency token, 32 bytes, as 64 hex digits).

Body (kind ``D``, version 1): the msgpack map ``{"ts": C, "shards": [i, ...]}``: ``ts`` is the
commit timestamp, or 0 for an abort; ``shards`` the participants the decider knew of (an
aborting reader knows only its own shard).

Any thread, any process: pure functions over a store.
"""

from __future__ import annotations

from dn.errors import Corruption, ObjectExists, ObjectNotFound, Unavailable
from dn.objects import codec
from dn.store.base import ObjectStore

PREFIX = "40/txn/"
VERSION = 1

#: The decision of an abort.
ABORTED = 0


def key(token: bytes) -> str:
    return PREFIX + token.hex()


def encode(ts: int, shards: list[int]) -> bytes:
    return codec.encode(codec.KIND_DECISION, {"ts": ts, "shards": sorted(shards)}, VERSION)


def decode(data: bytes, name: str) -> int:
    """The decision stored at ``name``: the commit timestamp, or :data:`ABORTED`."""
    return decode_body(data, name)[0]


def decode_body(data: bytes, name: str) -> tuple[int, list[int]]:
    """The decision stored at ``name`` and its participants: ``(ts, shards)``."""
    body = codec.decode(codec.KIND_DECISION, data, name, (VERSION,))
    if (
        not isinstance(body, dict)
        or type(body.get("ts")) is not int
        or body["ts"] < 0
        or not isinstance(body.get("shards"), list)
        or not all(type(i) is int for i in body["shards"])
    ):
        raise Corruption(f"object {name} is not a transaction decision", key=name)
    return body["ts"], body["shards"]


def lookup(store: ObjectStore, token: bytes) -> int | None:
    """The decision on ``token``'s transaction, or None while there is none."""
    name = key(token)
    try:
        return decode(store.get(name), name)
    except ObjectNotFound:
        return None


def decide(store: ObjectStore, token: bytes, ts: int, shards: list[int]) -> int:
    """Decide ``token``'s transaction: commit at ``ts`` (> 0) or abort (:data:`ABORTED`),
    unless it is decided already. Returns the decision that holds, which may be another
    decider's. Raises ``Unavailable(outcome_unknown=True)`` when the store fails and the
    decision cannot be read back: it may or may not have been made."""
    name = key(token)
    try:
        store.put_if_absent(name, encode(ts, shards))
        return ts
    except ObjectExists:
        pass  # decided before, by another or by a put of ours whose answer was lost
    except Unavailable as exc:
        try:
            got = lookup(store, token)
        except Unavailable:
            got = None
        if got is None:
            raise Unavailable(
                f"the decision on transaction {token.hex()[:16]}... may or may not have been "
                f"made: {exc}",
                outcome_unknown=True,
            ) from exc
        return got
    try:
        got = lookup(store, token)
    except Unavailable as exc:  # decided by someone, and we cannot read which way
        raise Unavailable(
            f"the decision on transaction {token.hex()[:16]}... exists and cannot be read: {exc}",
            outcome_unknown=True,
        ) from exc
    if got is None:  # deleted already: only decisions long applied everywhere are collected
        raise Corruption(f"decision {name} exists and then does not", key=name)
    return got
