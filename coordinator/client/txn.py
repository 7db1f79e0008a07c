"""Atomic batches and snapshot-isolation transactions across shards: the client's side.

:func:`commit_atomic` commits the writes of one or more tables, spread over any shards, at
**one** commit timestamp (decision 0015; the shard's side is :mod:`dn.write.txn`):

1. pick a commit timestamp ``C``: after every timestamp this client has seen and a few
   milliseconds past its wall clock (:class:`CommitClock` learns how far the shards' clocks
   run ahead of this one, and the margin a prepare needs to arrive before its shard's clock
   reaches ``C``);
2. prepare every shard's parts at ``C``, in parallel (one shard call each, resent with the
   same token while a shard is unavailable: a shard prepares a token once);
3. all prepared: decide, by creating the decision object ``40/txn/<token>`` in the store (the
   commit point, :mod:`dn.objects.decision`); any prepare refused: decide an abort;
4. resolve: tell every shard the decision (each waits out its commit wait, so a write that
   starts after the commit returned gets a later timestamp anywhere); a shard that misses it
   reads the decision itself.

A prepare refused because a shard's clock had passed ``C`` (``TimestampPassed``) is retried at
a later ``C`` with a new token; a table redefined meanwhile (``StaleTable``), after looking it
up again. ``Conflict`` (a key written after the snapshot, or held by another transaction) is
raised: nothing was applied, and a new transaction may succeed.

:class:`Transaction` is the snapshot-isolation transaction of ``client.transaction()``: reads
at its snapshot (seeing its own writes), writes buffered in the client, and one
:func:`commit_atomic` with the snapshot at ``commit()``, which makes the shards refuse it with
``Conflict`` if another commit wrote one of its keys after the snapshot.

Any thread; a Transaction is for one thread at a time and pickles (it may be passed to a Ray
task, whose commit is then the one that counts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from coordinator.client.routing import Batch, split, validate_batch, validate_columns
from coordinator.client.tables import TableCache
from coordinator.client.writes import Causality, Limits
from dn.clock import LOGICAL_BITS
from dn.errors import Conflict, DNError, InvalidArgument, StaleTable, TimestampPassed
from dn.objects import decision
from dn.schema import TableDef, check_name
from dn.store.base import ObjectStore
from dn.write.part import WritePart
from dn.write.tokens import TokenMinter
from shards.shard import ShardService

PREPARE = ShardService.prepare.__name__
RESOLVE = ShardService.resolve.__name__
#: Prepares of one commit at most (a new commit timestamp, or a redefined table, each time).
ATTEMPTS = 8


class CommitClock:
    """Picks commit timestamps a little past every participant's clock. ``offset_ms``: how
    far the shards' clocks have been seen ahead of this process's wall clock; ``margin_ms``:
    how far past that a prepare is aimed (doubled after a prepare found its timestamp passed,
    shrunk back after each commit). Shared by the clients of a process; thread-safe."""

    MIN_MARGIN_MS = 2
    MAX_MARGIN_MS = 500

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.offset_ms = 0
        self.margin_ms = self.MIN_MARGIN_MS

    def pick(self, after: int) -> int:
        with self._lock:
            wall = time.time_ns() // 1_000_000 + self.offset_ms + self.margin_ms
        return max(after + 1, wall << LOGICAL_BITS)

    def passed(self, clock: int) -> None:
        """A shard's clock was at ``clock``, at or past the timestamp asked for."""
        with self._lock:
            ahead = (clock >> LOGICAL_BITS) - time.time_ns() // 1_000_000
            self.offset_ms = max(self.offset_ms, ahead)
            self.margin_ms = min(self.MAX_MARGIN_MS, self.margin_ms * 2)

    def committed(self) -> None:
        with self._lock:
            self.margin_ms = max(self.MIN_MARGIN_MS, self.margin_ms - 1)
            self.offset_ms = max(0, self.offset_ms - 1)


CLOCK = CommitClock()


@dataclass
class TxnContext:
    """What a commit needs of its client."""

    shards: Any  # coordinator.client.fanout.ShardCalls
    tables: TableCache
    store: ObjectStore
    causality: Causality
    minter: TokenMinter
    retry_s: float


#: One table's share of a commit: (db, table, validate(table definition) -> Batch).
Share = tuple[str, str, Callable[[TableDef], Batch]]


def commit_atomic(
    ctx: TxnContext, shares: list[Share], snapshot: int | None = None
) -> dict[int, int]:
    """Commit every share at one timestamp (see the module docstring); returns {shard: that
    timestamp} for every shard written."""
    stale: set[tuple[str, str]] = set()
    last: DNError | None = None
    for _ in range(ATTEMPTS):
        parts = _parts(ctx, shares, stale)
        stale = set()
        token = ctx.minter.mint()
        at = CLOCK.pick(max(ctx.causality.token, snapshot or 0))
        calls = {
            s: (PREPARE, (token, at, snapshot, [p.to_call() for p in ps]))
            for s, ps in parts.items()
        }
        results = ctx.shards.call_each(calls, ctx.retry_s)
        errors = {s: r for s, r in results.items() if isinstance(r, BaseException)}
        outcome = decision.decide(ctx.store, token, decision.ABORTED if errors else at, [*calls])
        _resolve(ctx, token, outcome, [*calls], at)
        if not errors:
            if outcome == decision.ABORTED:
                raise Conflict(
                    "a reader rolled the transaction back after waiting txn_wait_s for its "
                    "decision; nothing was applied, run it again"
                )
            ctx.causality.observe(at)
            CLOCK.committed()
            return dict.fromkeys(calls, at)
        for _, err in sorted(errors.items()):
            if isinstance(err, TimestampPassed):
                CLOCK.passed(err.details.get("clock", at))
            elif isinstance(err, StaleTable):
                stale.add((err.details.get("database"), err.details.get("table")))
            else:
                raise err
        last = errors[min(errors)]
    assert last is not None
    raise last


def _parts(ctx: TxnContext, shares: list[Share], stale: set) -> dict[int, list[WritePart]]:
    n = len(ctx.shards)
    out: dict[int, list[WritePart]] = {}
    for db, table, validate in shares:
        routed = ctx.tables.get(db, table, refresh=(db, table) in stale)
        for s, share in split(validate(routed.table), n).items():
            out.setdefault(s, []).append(routed.part(s, share, 0))
    if not out:
        raise InvalidArgument("an atomic write needs at least one row or delete")
    return out


def _resolve(ctx: TxnContext, token: bytes, outcome: int, shards: list[int], at: int) -> None:
    """Tell the participants the decision. One that does not answer reads it itself; then
    the commit wait is done here, on this process's clock."""
    got = ctx.shards.call_each({s: (RESOLVE, (token, outcome)) for s in shards}, 0.0)
    if outcome and any(isinstance(r, BaseException) for r in got.values()):
        wait_s = ((at >> LOGICAL_BITS) + 1) / 1000 - time.time()
        if 0 < wait_s < 1.0:
            time.sleep(wait_s)


class Transaction:
    """A snapshot-isolation transaction (see the module docstring): ``get``/``scan`` at
    :attr:`snapshot` with its own writes applied, ``write``/``write_columns`` buffered,
    ``commit()`` (one timestamp, or Conflict) or ``abort()``; as a context manager, commits
    on success and aborts on an exception."""

    def __init__(self, client: Any, snapshot: int) -> None:
        self._client = client
        self.snapshot = snapshot
        self._writes: dict[tuple[str, str], dict[Any, tuple | None]] = {}
        self._defs: dict[tuple[str, str], TableDef] = {}
        self.state = "open"  # open, committed, aborted
        self.commit_ts: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_defs"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _defs={})

    def __repr__(self) -> str:
        n = sum(len(w) for w in self._writes.values())
        return f"<dn Transaction snapshot={self.snapshot} writes={n} {self.state}>"

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.state != "open":
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _table(self, db: str, table: str) -> TableDef:
        t = self._defs.get((db, table))
        if t is None:
            t = self._defs[(db, table)] = self._client.txn_context().tables.get(db, table).table
        return t

    def _check_open(self) -> None:
        if self.state != "open":
            raise InvalidArgument(f"the transaction is {self.state}")

    # -- writes ---------------------------------------------------------------------------------

    def write(self, db: str, table: str, upserts: Any = (), deletes: Any = ()) -> None:
        """Buffer upserts (row dicts) and deletes (primary keys), validated now; the last
        write of a key in the transaction wins."""
        self._check_open()
        lim: Limits = _limits(self._client, db, table)
        t = self._table(db, table)
        self._add(db, table, t, validate_batch(t, upserts, deletes, lim.max_value_bytes, 1 << 62))

    def write_columns(self, db: str, table: str, columns: Any, deletes: Any = ()) -> None:
        """:meth:`write` for rows given by column."""
        self._check_open()
        lim: Limits = _limits(self._client, db, table)
        t = self._table(db, table)
        batch = validate_columns(t, columns, deletes, lim.max_value_bytes, 1 << 62)
        self._add(db, table, t, batch)

    def _add(self, db: str, table: str, t: TableDef, batch: Batch) -> None:
        mine = self._writes.setdefault((db, table), {})
        rows = list(zip(*batch.cols)) if batch.cols else []
        mine.update(zip(batch.keys[: batch.nrows], rows))
        mine.update(dict.fromkeys(batch.deletes))

    # -- reads ----------------------------------------------------------------------------------

    def get(self, db: str, table: str, pk: Any, columns: list[str] | None = None) -> dict | None:
        """The row of ``pk`` at the snapshot, with this transaction's writes applied."""
        self._check_open()
        t = self._table(db, table)
        mine = self._writes.get((db, table), {})
        key = t.check_key(pk)
        if key in mine:
            return _row(t, mine[key], columns)
        return self._client.get(db, table, pk, snapshot=self.snapshot, columns=columns)

    def scan(
        self,
        db: str,
        table: str,
        columns: list[str] | None = None,
        start: Any = None,
        end: Any = None,
    ) -> Iterator[dict]:
        """Rows with start <= pk < end at the snapshot, with this transaction's writes
        applied, in primary-key order."""
        self._check_open()
        t = self._table(db, table)
        lo = None if start is None else t.check_key(start)
        hi = None if end is None else t.check_key(end)
        mine = {
            k: v
            for k, v in self._writes.get((db, table), {}).items()
            if (lo is None or k >= lo) and (hi is None or k < hi)
        }
        base = self._client.scan(db, table, self.snapshot, None, start, end)
        return _overlay(t, base, mine, columns)

    # -- the end --------------------------------------------------------------------------------

    def commit(self) -> int:
        """Commit every write at one timestamp and return it (the snapshot, if there were
        none). Conflict if a key written here was committed by another after the snapshot
        (nothing is applied; run the transaction again)."""
        self._check_open()
        if not any(self._writes.values()):
            self.state, self.commit_ts = "committed", self.snapshot
            return self.snapshot
        shares: list[Share] = []
        lim = None
        for (db, table), mine in self._writes.items():
            if not mine:
                continue
            lim = _limits(self._client, db, table)
            rows = [(k, v) for k, v in mine.items() if v is not None]
            dels = [k for k, v in mine.items() if v is None]
            shares.append((db, table, _rebuild(rows, dels, lim)))
        try:
            ts = max(commit_atomic(self._client.txn_context(), shares, self.snapshot).values())
        except Conflict:
            self.state = "aborted"
            raise
        self.state, self.commit_ts = "committed", ts
        return ts

    def abort(self) -> None:
        """Drop every write; nothing was sent anywhere."""
        if self.state == "open":
            self.state = "aborted"
        self._writes.clear()


def _limits(client: Any, db: str, table: str) -> Limits:
    check_name("database", db)
    check_name("table", table)
    return Limits.from_info(client.info)


def _rebuild(rows: list, dels: list, lim: Limits) -> Callable[[TableDef], Batch]:
    """The validation of a transaction's buffered writes against the table as routed now."""

    def validate(t: TableDef) -> Batch:
        cols = {name: [r[1][i] for r in rows] for i, (name, _) in enumerate(t.columns)}
        return validate_columns(
            t, cols if rows else {}, dels, lim.max_value_bytes, lim.max_batch_rows
        )

    return validate


def _row(t: TableDef, row: tuple | None, columns: list[str] | None) -> dict | None:
    if row is None:
        return None
    names = [c for c, _ in t.columns]
    full = dict(zip(names, row))
    return full if columns is None else {c: full[c] for c in columns}


def _overlay(
    t: TableDef, base: Iterator[dict], mine: dict, columns: list[str] | None
) -> Iterator[dict]:
    """Merge the snapshot's rows with the transaction's writes, by primary key."""
    pos = t.pk_pos
    names = [c for c, _ in t.columns]

    def key_of(row: dict) -> Any:
        return row[names[pos[0]]] if len(pos) == 1 else tuple(row[names[p]] for p in pos)

    pending = sorted(mine)
    i = 0
    for row in base:
        k = key_of(row)
        while i < len(pending) and pending[i] < k:
            out = _row(t, mine[pending[i]], columns)
            if out is not None:
                yield out
            i += 1
        if i < len(pending) and pending[i] == k:
            out = _row(t, mine[k], columns)
            i += 1
        else:
            out = row if columns is None else {c: row[c] for c in columns}
        if out is not None:
            yield out
    for k in pending[i:]:
        out = _row(t, mine[k], columns)
        if out is not None:
            yield out
