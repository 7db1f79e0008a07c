"""The client: DN's public API across every shard, for drivers, Ray tasks and actors.

A :class:`Client` is cheap and picklable: it holds the namespace, the cached shard map
(``info``) and its causality token; actor handles, table definitions and the reader cache are
fetched lazily in whichever process it lands in. Pass one to a Ray task as an argument.

Methods take the same arguments and give the same results (and typed errors) as
:class:`dn.Engine`, across all shards:

- DDL goes through the coordinator, which applies it to every shard.
- ``write`` validates the whole batch (bad input: nothing is written anywhere), routes rows by
  primary key (:mod:`coordinator.client.routing`) and sends each shard its part directly, in
  parallel (:mod:`coordinator.client.writes`; atomic ones: :mod:`coordinator.client.txn`).
- ``get``/``scan``/``changes`` read at one snapshot across shards
  (:mod:`coordinator.client.fanout`); a snapshot or ``from_ts`` may be a time
  (:mod:`dn.timestamps`); ``scan``/``changes`` return iterators, ``scan_pages`` lists.
- ``writer`` gives a :class:`coordinator.client.writer.BatchWriter` for ingest: batches are
  buffered per shard and sent as large parts; durable on ``flush()``.

Atomicity across shards, plainly. A plain ``write`` is atomic *per shard*: its parts commit
independently, each at its own timestamp, so a reader may see one shard's part and not
another's, and a part that fails for good (after ``retry_s``) leaves the others committed (the
error's ``details["committed"]`` = {shard: ts}). ``write(..., atomic=True)`` (and
``write_columns``) commits every part at **one** timestamp, returned: every snapshot read and
every change feed shows all of the batch or none of it; a failure applies none of it. While
an atomic batch is being decided (milliseconds), a read at or above its timestamp waits for
the decision, at most ``txn_wait_s`` (then it rolls an undecided batch back itself).
``transaction()`` gives a :class:`coordinator.client.txn.Transaction` with *snapshot
isolation*: reads at its snapshot, and a commit that raises :class:`dn.errors.Conflict` (nothing
applied) if another commit wrote one of its keys after that snapshot. Commit timestamps are
never at or below a snapshot already served (decision 0013), on any shard. Everything this
promises, with its bounds: ``docs/guarantees.md``.

Retries: a write whose shard is unavailable is retried for ``retry_s`` seconds, then raises
``Unavailable``; its parts carry idempotency tokens, so each is applied once (decision 0014);
one refused with ``StaleTable`` is validated again and resent. Causality: each write carries
the newest timestamp the client has seen; with the shards' commit wait this orders writes
across shards (:mod:`shards.shard`). Settings: ``client.settings``. Thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from coordinator.actor.handle import CoordinatorHandle
from coordinator.client import fanout, live, queries
from coordinator.client.commits import CommitGroup
from coordinator.client.readerpool import ReaderPool
from coordinator.client.routing import validate_batch, validate_columns
from coordinator.client.slotops import SlotOps
from coordinator.client.slots import SlotMap
from coordinator.client.tables import TableCache
from coordinator.client.txn import Transaction, TxnContext, commit_atomic
from coordinator.client.writer import BatchWriter
from coordinator.client.writes import (
    Causality,
    Limits,
    TokenMinter,
    listed,
    reusable,
    write_batch,
)
from dn import arrowpool
from dn.backoff import Backoff
from dn.errors import InvalidArgument
from dn.read.change import Change
from dn.schema import check_name
from dn.settings import ShellSettings
from dn.timestamps import to_timestamp
from shards.group import ShardGroup


class Client(SlotOps):
    """DN across all shards of the deployment in ``namespace``."""

    def __init__(
        self,
        namespace: str = "dn",
        info: dict[str, Any] | None = None,
        token: int = 0,
        *,
        coordinator: Any = None,
        shards: fanout.ShardCalls | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Usually made by :func:`coordinator.connect`. ``coordinator`` and ``shards``
        replace the Ray handles (tests run the whole client in-process with them);
        ``backoff`` replaces the one the settings give (tests)."""
        self.namespace = namespace
        self._info = info
        self._causality = Causality(token)
        self._tokens = TokenMinter()  # not pickled: each copy (each Ray task) has its own id
        self._coord = coordinator if coordinator is not None else CoordinatorHandle(namespace)
        self._commits = CommitGroup(self._coord, self._tokens)  # this copy's commits, grouped
        self._group: Any = shards
        self._backoff = backoff
        self._settings: ShellSettings | None = None
        self._table_cache: TableCache | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "info": self._info, "token": self.token}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["namespace"], state["info"], state["token"])

    def __repr__(self) -> str:
        n = self._info["shards"] if self._info else "?"
        return f"<dn Client namespace={self.namespace!r} shards={n}>"

    # -- cached cluster facts ---------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """The shard map and settings, fetched from the coordinator once."""
        if self._info is None:  # the deployment's retry_s is not known before: its own budget
            self._info = self._coord.call("info", retry_s=10.0)
        return self._info

    @property
    def settings(self) -> ShellSettings:
        """The deployment's settings of clients and shard actors."""
        if self._settings is None:
            self._settings = ShellSettings.from_dict(self.info.get("shell"))
            if isinstance(self._coord, CoordinatorHandle):  # made before they were known
                self._coord = CoordinatorHandle(self.namespace, self._settings)
        return self._settings

    @property
    def shards(self) -> fanout.ShardCalls:
        if self._group is None:
            self._group = ShardGroup(self.namespace, self.info["shards"], self.settings)
        return self._group

    @property
    def retry_s(self) -> float:
        return float(self.settings.retry_s)

    @property
    def token(self) -> int:
        """The newest timestamp this client has seen (writes are ordered after it)."""
        return self._causality.token

    def reader_pool(self) -> ReaderPool:
        return ReaderPool.for_url(self.info["store"], self.settings.client_cache_bytes)

    def _tables(self) -> TableCache:
        if self._table_cache is None:
            cfg = self.settings
            backoff = self._backoff if self._backoff is not None else cfg.backoff()
            route = SlotMap.from_record(self.info.get("slots"), self.info["shards"])
            self._table_cache = TableCache(self._coord, self.shards, cfg.retry_s, backoff, route)
        return self._table_cache

    def observe(self, ts: int) -> None:
        self._causality.observe(ts)

    # -- DDL --------------------------------------------------------------------------------

    def _ddl(self, op: str, *args: Any) -> int:
        ts = self._coord.call(op, *args)
        self._tables().clear()
        self.observe(ts)
        return ts

    def create_database(self, db: str) -> int:
        """Create a database on every shard; returns the newest shard commit timestamp."""
        return self._ddl("create_database", db)

    def drop_database(self, db: str) -> int:
        return self._ddl("drop_database", db)

    def create_table(
        self, db: str, table: str, schema: dict[str, str], primary_key: str | list[str]
    ) -> int:
        return self._ddl("create_table", db, table, schema, primary_key)

    def drop_table(self, db: str, table: str) -> int:
        return self._ddl("drop_table", db, table)

    def databases(self) -> list[str]:
        return self._coord.call("databases", retry_s=self.retry_s)

    def tables(self, db: str) -> list[str]:
        return self._coord.call("tables", db, retry_s=self.retry_s)

    # -- writes -----------------------------------------------------------------------------

    def write(
        self, db: str, table: str, upserts: Any = (), deletes: Any = (), *, atomic: bool = False
    ) -> int:
        """Upserts (row dicts) and deletes (primary keys); atomic per shard, or across every
        shard with ``atomic=True`` (one commit timestamp). Returns the newest commit timestamp
        of the shards' parts (with ``atomic``, the one)."""
        return max(self.write_each(db, table, upserts, deletes, atomic=atomic).values())

    def write_columns(
        self, db: str, table: str, columns: Any, deletes: Any = (), *, atomic: bool = False
    ) -> int:
        """:meth:`write` for rows given by column: ``columns`` maps column names to sequences
        of equal length (lists, tuples, numpy arrays), one value per row; a column left out
        is null in every row. No dict or tuple is made per row."""
        lim = self._limits(db, table)
        deletes = reusable(deletes)  # validated again if the table is redefined meanwhile

        def validate(t: Any) -> Any:
            return validate_columns(t, columns, deletes, lim.max_value_bytes, lim.max_batch_rows)

        return max(self._write(db, table, validate, atomic).values())

    def transaction(self, snapshot: Any = None) -> Transaction:
        """A snapshot-isolation transaction (:class:`coordinator.client.txn.Transaction`) at
        ``snapshot`` (a timestamp or a time; None: the newest of the shards' clocks and this
        client's causality token, as a read without a snapshot takes)."""
        if snapshot is None:  # each shard resolves it when first read (no floor call here)
            snapshot = fanout.choose_snapshot(self.shards, self.token, self.retry_s)
            self.observe(snapshot)
        return Transaction(self, self.snapshot_at(snapshot))

    def txn_context(self) -> TxnContext:
        """What :func:`coordinator.client.txn.commit_atomic` needs of this client."""
        backoff = self._backoff if self._backoff is not None else self.settings.backoff()
        c, t, pool = self._causality, self._tokens, self.reader_pool()
        return TxnContext(self._commits, self._tables(), pool.store, c, t, self.retry_s, backoff)

    def write_each(
        self, db: str, table: str, upserts: Any = (), deletes: Any = (), atomic: bool = False
    ) -> dict[int, int]:
        """Like :meth:`write`; returns {shard: commit timestamp} of each part."""
        lim = self._limits(db, table)
        upserts, deletes = listed(upserts), reusable(deletes)
        mv, mr = lim.max_value_bytes, lim.max_batch_rows
        return self._write(db, table, lambda t: validate_batch(t, upserts, deletes, mv, mr), atomic)

    def _limits(self, db: str, table: str) -> Limits:
        """The deployment's batch limits, once the names are known to be names."""
        check_name("database", db)  # a typed error for a name that is not even a str
        check_name("table", table)
        return Limits.from_info(self.info)

    def _write(self, db: str, table: str, validate: Any, atomic: bool = False) -> dict[int, int]:
        if atomic:  # every part at one timestamp
            return commit_atomic(self.txn_context(), [(db, table, validate)])
        c, t = self._causality, self._tokens
        return write_batch(self.shards, self._tables(), c, t, self.retry_s, db, table, validate)

    def writer(self, db: str, table: str, **options: Any) -> BatchWriter:
        """A buffered writer for ingest (see :mod:`coordinator.client.writer`): ``write``
        returns at once, rows go to each shard in parts of ``part_bytes`` (or after
        ``linger_s``), and ``flush()`` (or leaving a ``with`` block) waits until everything is
        durable. Options: ``part_bytes``, ``linger_s``, ``max_buffer_bytes``, ``on_durable``;
        left out, the deployment's settings (``writer_*``)."""
        t, lim = self._tables().get(db, table), self._limits(db, table)
        c, cfg = self._causality, self.settings
        return BatchWriter(self.shards, t, c, lim, cfg, backoff=self._backoff, **options)

    # -- reads ------------------------------------------------------------------------------

    def snapshot(self) -> int:
        """A timestamp for repeatable reads (pass as ``snapshot=``): every write acknowledged
        before this call is visible at it, and no later write lands at or below it."""
        s = fanout.choose_snapshot(self.shards, self.token, self.retry_s)
        fanout.raise_first(
            self.shards.call_each(
                {i: ("advance_floor", (s,)) for i in range(len(self.shards))}, self.retry_s
            )
        )
        self.observe(s)
        return s

    def snapshot_at(self, when: Any) -> int:
        """The snapshot of the state at time ``when`` (an aware datetime or ISO-8601 string):
        every commit made at or before it, to the millisecond (:mod:`dn.timestamps`)."""
        if type(s := to_timestamp(when)) is not int:
            raise InvalidArgument(f"when must be a time or a timestamp, got {when!r}")
        return s

    def get(self, db: str, table: str, pk: Any, snapshot: Any = None, columns: Any = None):
        """The row with primary key ``pk`` at ``snapshot`` (None: now), or None."""
        return self.get_many(db, table, [pk], snapshot, columns)[0]

    def get_many(
        self, db: str, table: str, keys: Any, snapshot: Any = None, columns: Any = None
    ) -> list[dict | None]:
        """The rows of ``keys`` at ``snapshot`` (None for a key without one), in order: one
        point read per shard, which sends only the keys' versions from memory."""
        pool, s = self.reader_pool(), to_timestamp(snapshot)
        t, r = self._tables(), self.retry_s
        return fanout.get_routed(self.shards, t, pool, r, db, table, list(keys), s, columns)

    def scan(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        columns: list[str] | None = None,
        start: Any = None,
        end: Any = None,
        tasks: bool | None = None,
    ) -> Iterator[dict]:
        """Rows with start <= pk < end at ``snapshot`` (None: now), in primary-key order
        across shards, as an iterator of dicts. ``tasks``: read each shard in a Ray task
        (True), in this process (False), or decide (None: tasks when the cluster has more
        than one node and the shards' plans name ``settings.large_read_objects`` objects or
        more, or their in-memory tails hold ``settings.large_read_tail_rows`` rows or more; on
        one machine the tasks only add copies)."""
        return queries.scan(self, db, table, snapshot, columns, start, end, tasks)

    def on_ray(self) -> bool:  # a deployment on Ray, not in-process stand-ins (tests)
        return isinstance(self._coord, CoordinatorHandle)

    def scan_arrow(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        columns: list[str] | None = None,
        start: Any = None,
        end: Any = None,
    ) -> pa.Table:
        """:meth:`scan` as one Arrow table (:mod:`dn.columnar`'s types); ``to_pandas()``
        on it gives a DataFrame."""
        with arrowpool.for_task():  # DN's Arrow memory from jemalloc (decision 0020)
            return queries.scan_arrow(self, db, table, snapshot, columns, start, end)

    def scan_batches(self, db: str, table: str, *a: Any, batch_rows: int = 65_536, **kw: Any):
        """:meth:`scan_arrow`'s rows in batches of at most ``batch_rows``, streamed:
        queries.scan_batches."""
        return arrowpool.pooled(
            queries.scan_batches(self, db, table, *a, batch_rows=batch_rows, **kw)
        )

    def changes_batches(self, db: str, table: str, *a: Any, batch_rows: int = 65_536, **kw: Any):
        """:meth:`changes_arrow`'s arguments; record batches of at most ``batch_rows`` rows."""
        return iter(self.changes_arrow(db, table, *a, **kw).to_batches(max_chunksize=batch_rows))

    def scan_pages(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        columns: list[str] | None = None,
        start: Any = None,
        end: Any = None,
        page_rows: int = 1000,
    ) -> Iterator[list[dict]]:
        """:meth:`scan` in lists of at most ``page_rows`` rows."""
        if type(page_rows) is not int or page_rows <= 0:
            raise InvalidArgument("page_rows must be a positive int")
        rows = self.scan(db, table, snapshot, columns, start, end)
        return fanout.pages(rows, page_rows)

    def changes(
        self,
        db: str,
        table: str,
        from_ts: int,
        snapshot: int | None = None,
        columns: list[str] | None = None,
    ) -> Iterator[Change]:
        """Every change with from_ts <= ts <= snapshot, in (ts, pk) order across shards, with
        its ``change_type`` (:mod:`dn.read.cdc`)."""
        return queries.changes(self, db, table, from_ts, snapshot, columns)

    def changes_arrow(
        self,
        db: str,
        table: str,
        from_ts: int,
        snapshot: int | None = None,
        columns: list[str] | None = None,
        before_images: bool = False,
    ) -> pa.Table:
        """:meth:`changes` as an Arrow table: the row's columns, ``_commit_ts`` and
        ``_change_type`` (``insert``, ``update_postimage``, ``delete``; with
        ``before_images`` also ``update_preimage``), in (``_commit_ts``, key) order."""
        with arrowpool.for_task():
            return queries.changes_arrow(self, db, table, from_ts, snapshot, columns, before_images)

    def subscribe(self, db: str, table: str, from_ts: Any, columns: Any = None, **kw: Any):
        """The live change feed from ``from_ts`` (resume at the last ``_commit_ts`` seen + 1):
        an Arrow table per batch of commits as they land, forever, in (``_commit_ts``, key)
        order across shards with no gap or repeat (``as_dicts=True``: Change records;
        ``poll_s``, ``stop``: :func:`coordinator.client.live.subscribe`)."""
        return arrowpool.pooled(live.subscribe(self, db, table, from_ts, columns, **kw))

    # -- operations -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The coordinator's view and every shard's status (an error string for a shard that
        does not answer)."""
        return fanout.cluster_status(self.namespace, self._coord, self.shards)
