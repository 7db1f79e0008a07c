"""The engine of one shard: log, buffers, buffer checkpoints, checkpoints, reads, recovery.

Life cycle (seed 001)::

    write -> validate -> group commit: stamp TS, log (durable), apply to the mutable buffer
    freeze (size or age) -> checkpoint queue -> buffer checkpoint -> range object
          -> manifest commit -> log finalize -> buffer dropped
    checkpoint (delta or interval) -> 10/<shard>/<ts> -> manifest commit
    read at S -> plan (checkpoint, ranges, tail from memory) -> reader merges

:class:`Engine` is a facade over three parts that share one :class:`dn.state.ShardState`
(which also says which lock guards what):

- :class:`dn.write.path.WritePath` — DDL and writes: validate, stamp, log, apply; replay;
- :class:`dn.upkeep.scheduler.Upkeep` — freezes, buffer checkpoints, checkpoints,
  compaction, retention and garbage collection;
- :class:`dn.read.snapshots.Snapshots` — snapshots, floors, plans and read views, which
  :mod:`dn.read.view` materializes into rows and changes;
- :class:`dn.upkeep.handoff.Handoff` (``Engine.handoff``) — slot moves, given and taken.

This module opens a shard, recovers it, and runs the background thread that calls
:meth:`Engine.maintain`. Any number of threads may call the public methods.

Failure. A fenced engine (a newer incarnation owns the shard) refuses everything after. A log
write that may or may not have landed makes the engine settle it before the next write or read
at a later timestamp (see :mod:`dn.write.log`). A failed buffer checkpoint leaves the buffer
queued and is retried; writers are slowed, then refused, while the queue is over its limits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from dn.clock import Clock, SystemClock
from dn.errors import Closed
from dn.opening import open_components
from dn.read import arrowfeed, cdc, stream
from dn.read.arrowscan import scan_table
from dn.read.change import Change
from dn.read.plan import Plan, check_from_ts
from dn.read.reader import Reader
from dn.read.snapshots import Snapshots
from dn.read.view import ReadView, before_view, materialize, materialize_many
from dn.recovery import recover
from dn.schema import TableDef
from dn.settings import Settings
from dn.state import ShardState
from dn.store import ObjectStore
from dn.upkeep.background import Background
from dn.upkeep.handoff import Handoff
from dn.upkeep.scheduler import Upkeep
from dn.write.part import WritePart
from dn.write.path import WritePath
from dn.write.txn import Transactions

log = logging.getLogger(__name__)


class Engine:
    """One shard. Open with :meth:`Engine.open`."""

    # -- opening and recovery ---------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str | None = None,
        shard_id: int = 0,
        settings: Settings | None = None,
        *,
        store: ObjectStore | None = None,
        log_store: ObjectStore | None = None,
        clock: Clock | None = None,
    ) -> Engine:
        """Open (or create) shard ``shard_id`` in the store at ``url`` (a directory,
        ``file:///abs/path``, ``s3://bucket/prefix``, ``memory://name``) and recover it.
        ``store``, ``log_store`` and ``clock`` replace what ``url`` and ``settings`` would
        build (tests inject fault-injecting stores and manual clocks)."""
        settings = Settings() if settings is None else settings
        parts = open_components(url, shard_id, settings, store, log_store, clock)
        store, log_store, made_log = parts
        engine = cls(store, log_store, shard_id, settings, clock or SystemClock())
        engine._made_log_store = made_log  # the engine's own: closed with it
        recover(engine._state, engine._writes.replay)
        if settings.background:
            engine._background = Background(
                engine.maintain, settings.background_interval_s, engine.counters, shard_id
            ).start()
        return engine

    def __init__(
        self,
        store: ObjectStore,
        log_store: ObjectStore,
        shard: int,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self._state = ShardState(store, log_store, shard, settings, clock)
        self._upkeep = Upkeep(self._state)
        self._writes = WritePath(self._state, self._upkeep)
        self._txns = self._upkeep.txns = self._writes.txns = Transactions(self._state, self._writes)
        ceiling = self._upkeep.ceiling  # extended before a read's result is handed out
        decided = self._txns.wait_decided_locked
        self._reads = Snapshots(self._state, self._writes.settle_for_read, ceiling.cover, decided)
        self.handoff = Handoff(self._state, self._upkeep, self._reads)  # slot moves
        self._txns.reads = lambda db, t, s, f: self._reads.read_view(db, t, s, f)
        self._made_log_store: ObjectStore | None = None  # made by open(): closed with the engine
        self._background: Background | None = None  # the thread of maintain(), if on

    @property
    def shard(self) -> int:
        return self._state.shard

    @property
    def settings(self) -> Settings:
        return self._state.settings

    @property
    def store(self) -> ObjectStore:
        return self._state.store

    @property
    def epoch(self) -> int:
        """The writer epoch this incarnation holds in the manifest."""
        return self._state.epoch

    @property
    def counters(self) -> dict[str, int]:
        return self._state.counters

    @property
    def reader(self) -> Reader:  # objects fetched through the engine's cache
        return self._state.reader

    # -- DDL and writes (dn.write.path) ------------------------------------------------------

    def create_database(self, db: str) -> int:
        """Create a database; returns the commit timestamp."""
        return self._writes.create_database(db)

    def drop_database(self, db: str) -> int:
        """Drop a database and every table in it; returns the commit timestamp."""
        return self._writes.drop_database(db)

    def create_table(
        self, db: str, table: str, schema: dict[str, str], primary_key: str | list[str]
    ) -> int:
        """Create a table; ``schema`` maps column names to type names."""
        return self._writes.create_table(db, table, schema, primary_key)

    def drop_table(self, db: str, table: str) -> int:
        """Drop a table; it stays readable at snapshots before the returned timestamp."""
        return self._writes.drop_table(db, table)

    def write(self, db: str, table: str, upserts: Any = (), deletes: Any = ()) -> int:
        """Apply upserts (row dicts) and deletes (primary keys) atomically; returns the commit
        timestamp once the batch is durable."""
        return self._writes.write(db, table, upserts, deletes)

    async def write_async(self, db: str, table: str, upserts: Any = (), deletes: Any = ()) -> int:
        """:meth:`write` for asyncio: validation runs in the calling coroutine; the writes of
        all coroutines waiting meanwhile go to the log together (see :mod:`dn.write.aio`)."""
        return await self._writes.write_async(db, table, upserts, deletes)

    def write_columns(self, db: str, table: str, columns: Any, deletes: Any = ()) -> int:
        """:meth:`write` for rows given by column: ``columns`` maps column names to sequences
        of equal length (lists, tuples, numpy arrays; or an Arrow table or record batch, or a
        pandas DataFrame: :mod:`dn.columnar`); a column left out is null in every row."""
        return self._writes.write_columns(db, table, columns, deletes)

    def write_packed_columns(self, part: WritePart) -> int:
        """:meth:`write_columns` for a part a client validated and packed
        (:class:`dn.write.part.WritePart`): checked again, logged as it came; StaleTable for a
        part of a redefined table; a part with a token is applied once (decision 0014)."""
        return self._writes.write_packed_columns(part)

    def queued_bytes(self) -> int:
        """The buffers' estimated heap bytes (what backpressure counts: dn/write/backpressure)."""
        return self._writes.queued_bytes()

    # -- transactions across shards (dn.write.txn, decision 0015) ------------------------------

    def prepare(
        self, token: bytes, at: int, parts: list[WritePart], snapshot: int | None = None
    ) -> int:
        """Prepare transaction ``token``'s writes here (``parts``, one per table) as an
        undecided intent at commit timestamp ``at``; with ``snapshot``, refuse with Conflict a
        key committed after it. Returns ``at`` once durable."""
        return self._txns.prepare(token, at, parts, snapshot)

    @property
    def transactions(self) -> Transactions:
        """The shard's side of transactions (batches: ``prepare_many``, ``resolve_many``)."""
        return self._txns

    def resolve(self, token: bytes, ts: int) -> None:
        """Apply the decision on transaction ``token`` (its commit timestamp, or 0: abort),
        once it is durable in its decision object (:mod:`dn.objects.decision`)."""
        self._txns.resolve(token, ts)

    # -- upkeep (dn.upkeep.scheduler) ---------------------------------------------------------

    def freeze(self) -> tuple[int, int] | None:
        """Freeze the mutable buffer into the checkpoint queue; its range (None: empty)."""
        return self._upkeep.freeze()

    def flush(self) -> int:
        """Run every queued buffer checkpoint; returns how many ran."""
        return self._upkeep.flush()

    def flush_one(self) -> bool:
        """Buffer checkpoint of the oldest queued buffer; False when the queue is empty."""
        return self._upkeep.flush_one()

    def checkpoint(self) -> int | None:
        """Write a checkpoint at the newest range object (if there is one newer than the last
        checkpoint); returns the checkpoint's timestamp, or None if there is none at all."""
        return self._upkeep.checkpoint()

    def maintain(self) -> None:
        """One round of background work: freeze on age, run queued buffer checkpoints,
        checkpoint on the delta or interval trigger, compact, collect garbage."""
        self._upkeep.maintain()

    def compact(self) -> bool:
        """Run one compaction the policy asks for; False if none."""
        return self._upkeep.compact()

    def collect_garbage(self, force: bool = False) -> int:
        """Delete objects nothing references any more (after a grace period); how many."""
        return self._upkeep.collect_garbage(force)

    def oldest_readable(self) -> int:
        """The oldest timestamp snapshot and range reads are served for (0: no limit)."""
        return self._state.oldest_readable()

    # -- reads (dn.read.snapshots, dn.read.view) ----------------------------------------------

    def snapshot(self) -> int:
        """A timestamp for repeatable reads: covers every acknowledged write, below all later."""
        return self._reads.snapshot()

    def advance_floor(self, ts: int) -> int:
        """Promise no later commit at or below ``ts``; wait for those in flight below it."""
        return self._reads.advance_floor(ts)

    def clock(self) -> int:
        """The newest timestamp this shard has issued or promised."""
        return self._reads.clock()

    def read_view(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        from_ts: int | None = None,
        columns: list[str] | None = None,
        keys: Any = (),
        **routing: Any,
    ) -> ReadView:
        """The plan and in-memory tail for one read of ``db.table`` at ``snapshot`` (from
        ``from_ts`` for a change feed; ``keys``: a point read's; all checked first); once slots
        moved, ``routing``: the reader's ``map_version`` (Snapshots.read_view)."""
        r = self._reads
        return r.checked_view(db, table, snapshot, from_ts, columns, (*keys,), **routing)[0]

    def snapshot_plan(self, ts: int) -> Plan:
        """Seed 001's snapshot-read plan at ``ts``."""
        return self._reads.snapshot_plan(ts)

    def range_plan(self, snapshot: int, from_ts: int) -> Plan:
        """Seed 001's range-read plan for from_ts <= ts <= snapshot."""
        return self._reads.range_plan(snapshot, from_ts)

    def get(self, db: str, table: str, pk: Any, snapshot: Any = None, columns: Any = None):
        """The row with primary key ``pk`` at ``snapshot`` (None: now), or None."""
        return self.get_many(db, table, [pk], snapshot, columns)[0]

    def get_many(
        self, db: str, table: str, keys: Any, snapshot: Any = None, columns: Any = None
    ) -> list[dict | None]:
        """The rows of ``keys`` at ``snapshot`` (None for a key without one), in order; the
        buffers are searched through their key index, not copied."""
        view, checked = self._reads.checked_view(db, table, snapshot, columns=columns, keys=keys)
        return materialize_many(self._state.reader, view, checked, columns)

    def scan(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        columns: list[str] | None = None,
        start: Any = None,
        end: Any = None,
    ) -> Iterator[dict]:
        """Rows with start <= pk < end at ``snapshot``, in primary-key order, as dicts."""
        view, (start, end) = self._reads.checked_view(
            db, table, snapshot, columns=columns, bounds=(start, end)
        )
        return materialize(self._state.reader, view, columns=columns, start=start, end=end)

    def changes(
        self,
        db: str,
        table: str,
        from_ts: int,
        snapshot: int | None = None,
        columns: list[str] | None = None,
    ) -> Iterator[Change]:
        """Every change with from_ts <= ts <= snapshot, in (ts, pk) order, as Change
        records (``ts``, ``kind``, ``pk``, ``row``, ``change_type``: :mod:`dn.read.cdc`)."""
        view, _ = self._reads.checked_view(db, table, snapshot, check_from_ts(from_ts), columns)
        return iter(cdc.feed(self._state.reader, view, self._reads.read_view, columns)[1])

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
        ``_change_type`` (with ``before_images``, ``update_preimage`` rows too)."""
        view, _ = self._reads.checked_view(db, table, snapshot, check_from_ts(from_ts), columns)
        before = before_view(self._reads.read_view, view)
        return arrowfeed.changes_table(self._state.reader, view, before, columns, before_images)

    def scan_batches(self, db: str, table: str, *a: Any, **kw: Any) -> Iterator[pa.RecordBatch]:
        """:meth:`scan_arrow`'s rows in batches of at most ``batch_rows``: dn.read.stream."""
        return stream.scan_batches(self._reads.checked_view, self.reader, db, table, *a, **kw)

    def changes_batches(self, db: str, table: str, *a: Any, batch_rows: int = 65_536, **kw: Any):
        """:meth:`changes_arrow`'s arguments; record batches of at most ``batch_rows`` rows."""
        return iter(self.changes_arrow(db, table, *a, **kw).to_batches(max_chunksize=batch_rows))

    def scan_arrow(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        columns: list[str] | None = None,
        start: Any = None,
        end: Any = None,
    ) -> pa.Table:
        """:meth:`scan` as an Arrow table (the types of :mod:`dn.columnar`)."""
        bounds = (start, end)
        view, (lo, hi) = self._reads.checked_view(
            db, table, snapshot, columns=columns, bounds=bounds
        )
        return scan_table(self._state.reader, view, lo, hi, columns)

    def databases(self, snapshot: int | None = None) -> list[str]:
        return self._reads.databases(snapshot)

    def tables(self, db: str, snapshot: int | None = None) -> list[str]:
        return self._reads.tables(db, snapshot)

    def live_table(self, db: str, table: str) -> TableDef:
        """The table as it is now, without waiting for commits in flight (a catalog lookup:
        for checks on the write path, not for reads)."""
        return self._reads.live_table(db, table)

    def table(self, db: str, table: str, snapshot: int | None = None) -> TableDef:
        return self._reads.table(db, table, snapshot)

    # -- state ------------------------------------------------------------------------------

    def status(self) -> dict:
        """The state of the shard at a glance."""
        return self._state.status()

    def close(self) -> None:
        """Stop background work and release the engine. Everything acknowledged is in the
        log already; nothing is lost by closing without a flush."""
        s = self._state
        if self._background is not None:
            self._background.stop()
        with s.cv:
            already = s.closed
            s.closed = True
            s.queue.fail_all(Closed(f"shard {s.shard} is closed"))
        if self._made_log_store is not None and not already:
            self._made_log_store.close()  # its open files; a store passed in is the caller's

    def __enter__(self) -> Engine:  # noqa: D105
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> None:
        """Invariants of the whole shard (tests call this after each step)."""
        self._state._check()
