"""A client's durable writes: one batch validated whole, split by shard, sent as write parts.

:func:`write_batch` is ``Client.write``/``write_columns``/``write_each``: validate the batch
against the table (bad input: nothing is written anywhere), split it by shard, pack each share
as one :class:`dn.write.part.WritePart` and send every part at once (shard method
:data:`WRITE_PART`). Each part carries an idempotency token of its own (:mod:`dn.write.tokens`),
minted here before it is first sent: the shard calls' resends of that part (after a timeout, a lost
response, a restarted shard) carry the same token, and a shard applies it once (decision 0014). A
part refused with :class:`dn.errors.StaleTable` (the table was dropped and created again since the
client cached it) makes the client look the table up again, validate the batch against the new
definition and send the parts that did not commit, as new parts with new tokens (made for the new
table: a part of the old one that did commit stays with the table it was made for); at most
:data:`ATTEMPTS` times in all. A part refused with :class:`dn.errors.Moved` (its slots moved to
another shard, or are moving: nothing of it was written) makes the client fetch the slot map
again and send the rows that did not commit, split by the new map, as new parts, waiting out a
move in progress (for ``retry_s``). Only the map is fetched, not the table: a move changes no
table (a new shard count does drop the cached tables, :meth:`TableCache.refresh_route`), and
while a move is in progress every writer retries every 100 ms, which with a lookup on every
shard each time would crowd the very shards and coordinator the move waits for. A part the
new owner refused only because it has not settled a move the client's map already names
(``Moved.details["taking"]``) is sent there again without asking the coordinator. Any other
failure is raised, with ``details["committed"]`` = {shard: ts} for the parts that did commit.

Also here, shared with the buffered writer (:mod:`coordinator.client.writer`): the causality
token (:class:`Causality`) and the batch limits of the deployment (:class:`Limits`).

Not done here: retrying an unavailable shard (the shard calls do, for ``retry_s``), buffering.
Any thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.client.routing import Batch, ShardPart, split
from coordinator.client.tables import RoutedTable, TableCache
from dn.errors import DNError, InvalidArgument, Moved, NotFound, StaleTable
from dn.schema import TableDef
from dn.write.tokens import TokenMinter
from shards.shard import ShardService

if TYPE_CHECKING:
    from coordinator.client.fanout import ShardCalls

#: The shard method that takes a write part (its arguments: ``WritePart.to_call()``).
WRITE_PART = ShardService.write_part.__name__
#: Sends of one batch at most: the first, and one per redefinition of the table met.
ATTEMPTS = 3
#: The first wait after a part was refused because its slots moved or are moving (doubled
#: each time, up to MOVED_WAIT_MAX_S, for the shard calls' ``retry_s`` in all).
MOVED_WAIT_S = 0.005
MOVED_WAIT_MAX_S = 0.1


class Causality:
    """The newest timestamp a client has seen (its writes, its snapshots). Writes carry it
    (``WritePart.after``), so they commit after everything the client saw. Thread-safe."""

    def __init__(self, token: int = 0) -> None:
        self._lock = threading.Lock()
        self._token = token

    @property
    def token(self) -> int:
        return self._token

    def observe(self, ts: int) -> None:
        """Note a timestamp seen; the token only moves forward."""
        with self._lock:
            if ts > self._token:
                self._token = ts


@dataclass(frozen=True, slots=True)
class Limits:
    """The engine's batch limits of the deployment, which a client checks before sending."""

    max_value_bytes: int
    max_batch_rows: int
    max_batch_bytes: int

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Limits:
        return cls(info["max_value_bytes"], info["max_batch_rows"], info["max_batch_bytes"])


def write_batch(
    shards: ShardCalls,
    tables: TableCache,
    causality: Causality,
    tokens: TokenMinter,
    retry_s: float,
    db: str,
    table: str,
    validate: Callable[[TableDef], Batch],
) -> dict[int, int]:
    """Validate a batch against the table (``validate(tdef)``), split it by shard and send
    every part at once, each with a token from ``tokens``; returns {shard: commit ts}. See the
    module docstring."""
    done: dict[int, int] = {}
    sent: set = set()  # keys of the rows whose parts committed (kept after a partial failure)
    errors: dict[int, BaseException] = {}
    stale = moved = 0
    deadline = time.monotonic() + retry_s
    while True:
        routed = tables.get(db, table, refresh=stale > 0)
        try:
            batch = validate(routed.table)
        except DNError as exc:  # only after a redefinition: the batch fits the old table
            raise with_committed(exc, done) from None
        if sent:
            batch = without(routed.table, batch, sent)
        shares = split(batch, routed.route)
        after = causality.token
        calls = {
            s: (WRITE_PART, routed.part(s, share, after, tokens.mint()).to_call())
            for s, share in shares.items()
        }
        results = shards.call_each(calls, retry_s)
        for s, r in results.items():
            if isinstance(r, int):
                done[s] = max(r, done.get(s, 0))
                causality.observe(r)
        errors = {s: r for s, r in results.items() if isinstance(r, BaseException)}
        if not errors:
            return done
        other = {s: e for s, e in errors.items() if not isinstance(e, StaleTable | Moved)}
        if other:
            first = other[min(other)]
            if isinstance(first, NotFound):
                tables.forget(db, table)
            raise with_committed(first, done)
        sent.update(k for s in results if s not in errors for k in share_keys(routed, shares[s]))
        refused = [e for e in errors.values() if isinstance(e, Moved)]
        if len(refused) < len(errors):  # a StaleTable: the next round looks the table up
            stale += 1
            if stale >= ATTEMPTS:
                break
        if refused:
            # slots moved, or are moving: refresh the map, and wait out a move in progress
            moved += 1
            if time.monotonic() >= deadline:
                break
            time.sleep(min(MOVED_WAIT_MAX_S, MOVED_WAIT_S * 2 ** min(moved, 8)))
            if not all(waits_on_taker(e, routed.route) for e in refused):
                tables.refresh_route()
    raise with_committed(errors[min(errors)], done)


def waits_on_taker(error: Moved, route: Any) -> bool:
    """Whether ``error`` refused a part only because its shard is taking the slots over in a
    move whose commit point ``route`` has passed (its version at least the move's id; a later
    step begins only once this one is settled on every shard, so such a move is done): the map
    is current, and the part goes to the same shard again once that shard settles."""
    taking = error.details.get("taking")
    return taking is not None and route.version >= taking


def share_keys(routed: RoutedTable, share: ShardPart) -> list:
    """The primary keys of a share's rows and deletes, hashable (composite keys as tuples)."""
    keys = routed.table.column_keys(share.cols) + list(share.deletes)
    return [tuple(k) if isinstance(k, list) else k for k in keys]


def without(table: TableDef, batch: Batch, keys: set) -> Batch:
    """``batch`` without the rows and deletes of ``keys`` (those already committed)."""
    own = [tuple(k) if isinstance(k, list) else k for k in batch.keys]
    rows = [i for i in range(batch.nrows) if own[i] not in keys]
    dels = [k for k, h in zip(batch.deletes, own[batch.nrows :]) if h not in keys]
    cols = [[c[i] for i in rows] for c in batch.cols] if rows else []
    return Batch(cols, len(rows), table.column_keys(cols) + dels, batch.int64_key)


def reusable(values: Any) -> Any:
    """A one-shot iterable of values as a list (a batch may be validated again on a retry);
    anything else as it is, for validation to accept or refuse."""
    if isinstance(values, list | tuple | str | bytes | dict) or not hasattr(values, "__iter__"):
        return values
    return values.tolist() if hasattr(values, "tolist") else list(values)


def with_committed(err: BaseException, done: dict[int, int]) -> BaseException:
    """The error to raise, noting which shards' parts did commit."""
    if isinstance(err, DNError) and done:
        return type(err)(err.message, **{**err.details, "committed": dict(done)})
    return err


def listed(upserts: Any) -> Any:
    """Row dicts as a list (validated again if the table is redefined meanwhile)."""
    if isinstance(upserts, dict):
        raise InvalidArgument("upserts must be a list of row dicts")
    if upserts is not None and not isinstance(upserts, list | tuple | dict | str | bytes):
        return list(upserts)
    return upserts
