"""Atomic batches and snapshot-isolation transactions across shards: the client's side.

:func:`commit_atomic` commits the writes of one or more tables, spread over any shards, at
**one** commit timestamp (decision 0015): it validates and splits them by shard as a plain write
does, mints the transaction's token, and hands the parts to the coordinator's committer
(:mod:`coordinator.actor.committer`; concurrent commits of one process share a call:
:mod:`coordinator.client.commits`), which commits concurrent transactions in batches that
share their shard calls: every shard prepares its share as an undecided intent at the
transaction's timestamp (:mod:`dn.write.txn`), one decision object per client group (the
transactions a process sends in one call; a transaction sent alone has its own) commits or
aborts it, and every shard is told. The result is that timestamp, or:

- ``TimestampPassed`` (a shard's clock had passed the timestamp): sent again, new token;
- ``StaleTable`` (a table was redefined): looked up again, validated again, sent again;
- ``Moved`` (slots moved to another shard, or are moving): the slot map fetched again, the
  writes split again by it, sent again (waiting out a move in progress, for ``retry_s``);
- ``Conflict`` (a key written after the snapshot, or held by another transaction deciding):
  raised, nothing applied;
- ``Unavailable`` from the coordinator (it died, or did not answer in time; or a reader rolled
  the attempt's group back after waiting for its decision): the client settles the attempt
  itself by creating its group's abort decision, unless a decision is there already (if it
  holds the attempt's commit, that is the result); an aborted attempt is sent again, new
  token, for ``retry_s``. So every transaction is applied once or not at all, and the caller knows
  which, unless the store itself fails (``Unavailable(outcome_unknown=True)``).

:class:`Transaction` is the snapshot-isolation transaction of ``client.transaction()``: reads
at its snapshot (seeing its own writes), writes buffered in the client, and one
:func:`commit_atomic` with the snapshot at ``commit()``, which makes the shards refuse it with
``Conflict`` if another commit wrote one of its keys after the snapshot.

Any thread; a Transaction is for one thread at a time and pickles (it may be passed to a Ray
task, whose commit is then the one that counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from coordinator.client.commits import CommitGroup
from coordinator.client.routing import Batch, split, validate_batch, validate_columns
from coordinator.client.tables import TableCache
from coordinator.client.writes import Causality, Limits
from dn.backoff import Backoff
from dn.errors import (
    Conflict,
    DNError,
    InvalidArgument,
    Moved,
    StaleTable,
    TimestampPassed,
    Unavailable,
)
from dn.objects import decision
from dn.schema import TableDef, check_name
from dn.store.base import ObjectStore
from dn.write.part import WritePart
from dn.write.tokens import TokenMinter, is_token

#: Attempts of one commit at most (a new token, or a redefined table, each time).
ATTEMPTS = 8


@dataclass
class TxnContext:
    """What a commit needs of its client."""

    commits: CommitGroup  # to the coordinator's committer, grouped with this process's others
    tables: TableCache
    store: ObjectStore
    causality: Causality
    minter: TokenMinter
    retry_s: float
    backoff: Backoff


#: One table's share of a commit: (db, table, validate(table definition) -> Batch).
Share = tuple[str, str, Callable[[TableDef], Batch]]


def commit_atomic(
    ctx: TxnContext, shares: list[Share], snapshot: int | None = None
) -> dict[int, int]:
    """Commit every share at one timestamp (see the module docstring); returns {shard: that
    timestamp} for every shard written."""

    def calls(stale: set) -> dict[int, list]:
        return {s: [p.to_call() for p in ps] for s, ps in _parts(ctx, shares, stale).items()}

    return commit_calls(ctx, calls, snapshot)


def commit_calls(
    ctx: TxnContext, make_calls: Callable[[set], dict[int, list]], snapshot: int | None = None
) -> dict[int, int]:
    """:func:`commit_atomic` of the shard calls ``make_calls(stale)`` gives, made again for
    each attempt (``stale``: the (db, table) a shard found redefined in the last one)."""
    stale: set[tuple[str, str]] = set()
    retries = ctx.backoff.within(ctx.retry_s)
    last: DNError | None = None
    for _ in range(ATTEMPTS):
        calls = make_calls(stale)
        stale = set()
        token = ctx.minter.mint()
        try:
            ts = ctx.commits.commit(token, ctx.causality.token, snapshot, calls)
        except Unavailable as exc:  # the committer failed: this attempt's fate is ours to seal
            group = exc.details.get("group")  # sent in a client group: decided with it
            group = group if is_token(group) else None
            ts = decision.decide(ctx.store, token, decision.ABORTED, [*calls], group)
            if ts == decision.ABORTED:
                last = exc
                if not retries.wait():
                    break
                continue
        except TimestampPassed as exc:
            last = exc
            continue
        except StaleTable as exc:
            stale.add((exc.details.get("database"), exc.details.get("table")))
            last = exc
            continue
        except Moved as exc:  # slots moved (or are moving): split again by the new map
            last = exc
            ctx.tables.refresh_route()
            if not retries.wait():
                break
            continue
        ctx.causality.observe(ts)
        return dict.fromkeys(calls, ts)
    assert last is not None
    raise last


def _parts(ctx: TxnContext, shares: list[Share], stale: set) -> dict[int, list[WritePart]]:
    out: dict[int, list[WritePart]] = {}
    for db, table, validate in shares:
        routed = ctx.tables.get(db, table, refresh=(db, table) in stale)
        for s, share in split(validate(routed.table), routed.route).items():
            out.setdefault(s, []).append(routed.part(s, share, 0))
    if not out:
        raise InvalidArgument("an atomic write needs at least one row or delete")
    return out


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
