"""Transaction decisions: the one durable commit point of a transaction across shards.

A transaction (an atomic batch, or :class:`coordinator.client.txn.Transaction`) prepares an
intent on every shard it writes (:mod:`dn.write.txn`), all at one commit timestamp ``C``. It is
committed when, and only when, its decision object says so. The object is created once, with a
conditional put, by whoever decides first: the committer that prepared every intent (commit at
``C``), or anyone who gave up waiting for it (abort). Every later decider reads the first one
back, so all shards apply the same outcome (decision 0015).

A **group** of transactions, the ones a client sent in one call (its group commit), shares one
decision object: each intent names the group's key, the committer decides every transaction of
the group in one put, and anyone who gives up waiting on one intent of the group aborts the
whole group (the group's transactions are all in flight together, so none of them has been
acknowledged yet). A transaction alone is a group of one, keyed by its own token.

Key: ``40/txn/<group hex>``: the group's 32-byte token as 64 hex digits: minted for the call
when the client sends it, after every token of the group (so the coordinator's collection, which
ages a decision by its key, cannot delete it while one of its intents may still be prepared);
a transaction alone: its own token.

Bodies (kind ``D``):

- version 1, ``{"ts": C, "shards": [i, ...]}``: one outcome for every transaction the key
  decides: ``ts`` the commit timestamp, or 0 for an abort (an abort is always version 1);
- version 2, ``{"txns": [[token, C], ...], "shards": [i, ...]}``: a group's outcomes, each
  transaction's commit timestamp or 0; a transaction not listed is aborted.

``shards``: the participants the decider knew of (an aborting reader knows only its own shard).

Any thread, any process: pure functions over a store.
"""

from __future__ import annotations

from dn.errors import Corruption, ObjectExists, ObjectNotFound, Unavailable
from dn.objects import codec
from dn.store.base import ObjectStore
from dn.write.tokens import is_token

PREFIX = "40/txn/"
VERSION = 1  # one outcome
GROUP_VERSION = 2  # a group's outcomes, one per transaction

#: The decision of an abort.
ABORTED = 0


def key(group: bytes) -> str:
    return PREFIX + group.hex()


def encode(ts: int, shards: list[int]) -> bytes:
    """One outcome for every transaction the key decides (always the form of an abort)."""
    return codec.encode(codec.KIND_DECISION, {"ts": ts, "shards": sorted(shards)}, VERSION)


def encode_group(outcomes: dict[bytes, int], shards: list[int]) -> bytes:
    """A group's outcomes: each transaction's commit timestamp, or :data:`ABORTED`."""
    txns = [[t, ts] for t, ts in sorted(outcomes.items())]
    body = {"txns": txns, "shards": sorted(shards)}
    return codec.encode(codec.KIND_DECISION, body, GROUP_VERSION)


class Outcomes:
    """A decoded decision: the outcome of each transaction its key decides."""

    __slots__ = ("every", "by_token", "shards")

    def __init__(self, every: int, by_token: dict[bytes, int] | None, shards: list[int]) -> None:
        self.every = every  # version 1: the outcome of every transaction
        self.by_token = by_token  # version 2: each transaction's; the unlisted are aborted
        self.shards = shards

    def of(self, token: bytes) -> int:
        """The commit timestamp of ``token``'s transaction, or :data:`ABORTED`."""
        if self.by_token is None:
            return self.every
        return self.by_token.get(token, ABORTED)

    def newest(self) -> int:
        """The newest commit timestamp decided here (0: every transaction aborted)."""
        if self.by_token is None:
            return self.every
        return max(self.by_token.values(), default=ABORTED)


def _ts(v: object) -> bool:
    return type(v) is int and v >= 0


def decode_outcomes(data: bytes, name: str) -> Outcomes:
    """The decision stored at ``name``."""
    body = codec.decode(codec.KIND_DECISION, data, name, (VERSION, GROUP_VERSION))
    shards = body.get("shards") if isinstance(body, dict) else None
    if not isinstance(shards, list) or not all(type(i) is int for i in shards):
        raise Corruption(f"object {name} is not a transaction decision", key=name)
    if codec.version_of(data) == VERSION and _ts(body.get("ts")):
        return Outcomes(body["ts"], None, shards)
    txns = body.get("txns")
    if codec.version_of(data) == GROUP_VERSION and isinstance(txns, list):
        pairs = [p for p in txns if isinstance(p, list) and len(p) == 2]
        if len(pairs) == len(txns) and all(is_token(t) and _ts(ts) for t, ts in pairs):
            return Outcomes(ABORTED, {t: ts for t, ts in pairs}, shards)
    raise Corruption(f"object {name} is not a transaction decision", key=name)


def decode(data: bytes, name: str, token: bytes) -> int:
    """The outcome of ``token``'s transaction in the decision stored at ``name``."""
    return decode_outcomes(data, name).of(token)


def decode_body(data: bytes, name: str) -> tuple[int, list[int]]:
    """The newest commit timestamp the decision at ``name`` holds (0: none) and its
    participants: ``(ts, shards)``."""
    o = decode_outcomes(data, name)
    return o.newest(), o.shards


def lookup(store: ObjectStore, token: bytes, group: bytes | None = None) -> int | None:
    """The decision on ``token``'s transaction (of ``group``: by default alone), or None while
    there is none."""
    name = key(group or token)
    try:
        return decode(store.get(name), name, token)
    except ObjectNotFound:
        return None


def decide(
    store: ObjectStore, token: bytes, ts: int, shards: list[int], group: bytes | None = None
) -> int:
    """Decide ``token``'s transaction: commit at ``ts`` (> 0) or abort (:data:`ABORTED`),
    unless it is decided already. In a ``group`` only an abort is decided this way, and it
    aborts the whole group. Returns the decision that holds for ``token``, which may be
    another decider's. Raises ``Unavailable(outcome_unknown=True)`` when the store fails and
    the decision cannot be read back: it may or may not have been made."""
    if group is not None and ts != ABORTED:
        raise ValueError("a group's commits are decided together: decide_group")
    return _settle(store, group or token, encode(ts, shards)).of(token)


def decide_group(
    store: ObjectStore, group: bytes, outcomes: dict[bytes, int], shards: list[int]
) -> Outcomes:
    """Decide every transaction of ``group`` at once (``outcomes``: each one's commit
    timestamp or :data:`ABORTED`), unless the group is decided already; the decision that
    holds. A transaction alone (``outcomes`` names only ``group``) gets a version 1 body.
    Raises as :func:`decide`."""
    if list(outcomes) == [group]:
        return _settle(store, group, encode(outcomes[group], shards))
    return _settle(store, group, encode_group(outcomes, shards))


def _settle(store: ObjectStore, group: bytes, data: bytes) -> Outcomes:
    """Create the decision ``data`` under ``group``'s key unless one is there: the one that
    holds."""
    name = key(group)
    what = f"the decision on transaction group {group.hex()[:16]}..."
    try:
        store.put_if_absent(name, data)
        return decode_outcomes(data, name)
    except ObjectExists:
        pass  # decided before, by another or by a put of ours whose answer was lost
    except Unavailable as exc:
        try:
            got = store.get(name)
        except (Unavailable, ObjectNotFound):
            raise Unavailable(
                f"{what} may or may not have been made: {exc}", outcome_unknown=True
            ) from exc
        return decode_outcomes(got, name)
    try:
        return decode_outcomes(store.get(name), name)
    except Unavailable as exc:  # decided by someone, and we cannot read which way
        raise Unavailable(f"{what} exists and cannot be read: {exc}", outcome_unknown=True) from exc
    except ObjectNotFound:  # deleted already: only decisions long applied everywhere go
        raise Corruption(f"decision {name} exists and then does not", key=name) from None
