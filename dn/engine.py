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
  :mod:`dn.read.view` materializes into rows and changes.

This module opens a shard (components from a url and settings), recovers it, and runs the
background thread that calls :meth:`Engine.maintain`. Any number of threads may call the
public methods.

Failure. A fenced engine (a newer incarnation owns the shard) refuses everything after. A log
write that may or may not have landed makes the engine settle it before the next write or read
at a later timestamp (see :mod:`dn.write.log`). A failed buffer checkpoint leaves the buffer
queued and is retried; writers are slowed, then refused, while the queue is over its limits.

Not here: Ray, routing across shards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from dn.clock import Clock, SystemClock
from dn.errors import Closed, DNError, Fenced
from dn.opening import open_components
from dn.read.change import Change
from dn.read.plan import Plan, check_from_ts
from dn.read.reader import Reader
from dn.read.snapshots import Snapshots
from dn.read.view import ReadView, materialize, materialize_get
from dn.recovery import recover
from dn.schema import TableDef
from dn.settings import Settings
from dn.state import ShardState
from dn.store import ObjectStore
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
        """Open (or create) shard ``shard_id`` in the store at ``url`` and recover it.

        ``url``: a directory path, ``file:///abs/path``, ``s3://bucket/prefix`` or
        ``memory://name``. ``store``, ``log_store`` and ``clock`` are components that replace
        what ``url`` and ``settings`` would build (tests inject fault-injecting stores and
        manual clocks here).
        """
        settings = Settings() if settings is None else settings
        parts = open_components(url, shard_id, settings, store, log_store, clock)
        store, log_store, made_log = parts
        engine = cls(store, log_store, shard_id, settings, clock or SystemClock())
        engine._made_log_store = made_log  # the engine's own: closed with it
        engine._recover()
        if settings.background:
            engine._start_background()
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
        self._txns.reads = lambda db, t, s, f: self._reads.read_view(db, t, s, f)
        self._made_log_store: ObjectStore | None = None  # made by open(): closed with the engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
    def reader(self) -> Reader:
        """This shard's reader (objects fetched through the engine's cache)."""
        return self._state.reader

    def _recover(self) -> None:
        recover(self._state, self._writes.replay)

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
        of equal length (lists, tuples, numpy arrays), one value per row; a column left out
        is null in every row. The same checks, atomicity and result as :meth:`write`, without
        a dict or tuple per row."""
        return self._writes.write_columns(db, table, columns, deletes)

    def write_packed_columns(self, part: WritePart) -> int:
        """:meth:`write_columns` for a batch a client validated and packed
        (:class:`dn.write.part.WritePart`): checked here again (cheaply, column by column),
        then logged as it came, without packing it again. A part made for another table of
        its name raises :class:`dn.errors.StaleTable`; a malformed one InvalidArgument. A part
        with a token is applied once (decision 0014)."""
        return self._writes.write_packed_columns(part)

    def queued_bytes(self) -> int:
        """Encoded bytes waiting in the checkpoint queue (what backpressure counts)."""
        return self._writes.queued_bytes()

    # -- transactions across shards (dn.write.txn, decision 0015) ------------------------------

    def prepare(
        self, token: bytes, at: int, parts: list[WritePart], snapshot: int | None = None
    ) -> int:
        """Prepare transaction ``token``'s writes here (``parts``, one per table) as an
        undecided intent at commit timestamp ``at``; with ``snapshot``, refuse with Conflict a
        key committed after it. Returns ``at`` once durable."""
        return self._txns.prepare(token, at, parts, snapshot)

    def prepare_many(self, items: list) -> list:
        """:meth:`prepare` for many transactions, ``(token, at, parts, snapshot)`` each,
        logged together; each one's timestamp or the DNError that refused it."""
        return self._txns.prepare_many(items)

    def resolve_many(self, decisions: list) -> None:
        """:meth:`resolve` for ``(token, ts)`` pairs."""
        self._txns.resolve_many(decisions)

    def resolve(self, token: bytes, ts: int) -> None:
        """Apply the decision on transaction ``token`` (its commit timestamp, or 0: abort),
        once it is durable in its decision object (:mod:`dn.objects.decision`)."""
        self._txns.resolve(token, ts)

    # -- upkeep (dn.upkeep.scheduler) ---------------------------------------------------------

    def freeze(self) -> tuple[int, int] | None:
        """Freeze the mutable buffer into the checkpoint queue; returns its range (or None if
        it was empty)."""
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
        """Delete objects nothing references any more (after a grace period); returns how many
        were deleted."""
        return self._upkeep.collect_garbage(force)

    def oldest_readable(self) -> int:
        """The oldest timestamp snapshot and range reads are served for (0: no limit)."""
        return self._state.oldest_readable()

    # -- reads (dn.read.snapshots, dn.read.view) ----------------------------------------------

    def snapshot(self) -> int:
        """A timestamp to pass as ``snapshot=`` for repeatable reads: it covers every write
        acknowledged so far, and no later commit gets a timestamp at or below it."""
        return self._reads.snapshot()

    def advance_floor(self, ts: int) -> int:
        """Promise that no later commit gets a timestamp <= ``ts`` and wait for commits in
        flight at or below it; returns ``ts``. Used by cross-shard snapshot reads."""
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
    ) -> ReadView:
        """The plan and in-memory tail for one read of ``db.table`` at ``snapshot`` (from
        ``from_ts`` for a change feed; ``columns`` checked first), for any process to read."""
        return self._reads.checked_view(db, table, snapshot, from_ts, columns)[0]

    def snapshot_plan(self, ts: int) -> Plan:
        """Seed 001's snapshot-read plan at ``ts``."""
        return self._reads.snapshot_plan(ts)

    def range_plan(self, snapshot: int, from_ts: int) -> Plan:
        """Seed 001's range-read plan for from_ts <= ts <= snapshot."""
        return self._reads.range_plan(snapshot, from_ts)

    def get(
        self,
        db: str,
        table: str,
        pk: Any,
        snapshot: int | None = None,
        columns: list[str] | None = None,
    ) -> dict | None:
        """The row with primary key ``pk`` at ``snapshot`` (None: now), or None."""
        view, (key,) = self._reads.checked_view(db, table, snapshot, columns=columns, keys=(pk,))
        return materialize_get(self._state.reader, view, key, columns)

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
        records (``ts``, ``kind``, ``pk``, ``row``)."""
        view, _ = self._reads.checked_view(db, table, snapshot, check_from_ts(from_ts), columns)
        return materialize(self._state.reader, view, columns=columns)

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
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with s.cv:
            already = s.closed
            s.closed = True
            s.queue.fail_all(Closed(f"shard {s.shard} is closed"))
        if self._made_log_store is not None and not already:
            self._made_log_store.close()  # its open files; a store passed in is the caller's

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> None:
        """Invariants of the whole shard (tests call this after each step)."""
        self._state._check()

    # -- background -------------------------------------------------------------------------

    def _start_background(self) -> None:
        self._thread = threading.Thread(
            target=self._background, name=f"dn-shard-{self.shard}", daemon=True
        )
        self._thread.start()

    def _background(self) -> None:
        while not self._stop.wait(self.settings.background_interval_s):
            try:
                self.maintain()
            except (Fenced, Closed):
                return
            except DNError as exc:
                self.counters["maintain_errors"] += 1
                log.warning("shard %d: background work failed, will retry: %s", self.shard, exc)
            except Exception:
                self.counters["maintain_errors"] += 1
                log.exception("shard %d: background work failed", self.shard)
