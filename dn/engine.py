"""The engine of one shard: log, buffers, buffer checkpoints, checkpoints, reads, recovery.

Life cycle (seed 001)::

    write -> validate -> group commit: stamp TS, log (durable), apply to the mutable buffer
    freeze (size or age) -> checkpoint queue -> buffer checkpoint -> range object
          -> manifest commit -> log finalize -> buffer dropped
    checkpoint (delta or interval) -> 10/<shard>/<ts> -> manifest commit
    read at S -> plan (checkpoint, ranges, tail from memory) -> reader merges

Threads. Any number of threads may call the public methods. One lock (``_cv``) guards the
in-memory state (catalog, buffers, plan lists, clock); the log is touched only by the current
group-commit leader; buffer checkpoints and checkpoints are serialized by ``_flush_lock`` and
do their I/O outside ``_cv``. With ``Settings.background`` a thread calls :meth:`maintain`.

Failure. A fenced engine (a newer incarnation owns the shard) refuses everything after. A log
write that may or may not have landed makes the engine settle it before the next write or read
at a later timestamp (see :mod:`dn.log`). A failed buffer checkpoint leaves the buffer queued
and is retried; writers are slowed, then refused, while the queue is over its limits.

The class is split by concern: this module opens, recovers and writes; :mod:`dn.upkeep`
(freezes, buffer checkpoints, checkpoints, compaction, garbage collection) and
:mod:`dn.reads` (snapshots and plans) are mixins of :class:`Engine`.

Not here: Ray, routing across shards.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from dn import catalog as cat
from dn import codec, compaction, rangeobj
from dn.aio import AsyncFrontDoor
from dn.buffer import Buffer
from dn.catalog import OP_WRITE, OP_WRITE_COLUMNS, WRITE_OPS, Catalog
from dn.clock import Clock, HybridClock, SystemClock
from dn.commit import CommitQueue, Pending
from dn.errors import (
    Closed,
    Corruption,
    DNError,
    Fenced,
    Internal,
    InvalidArgument,
    Unavailable,
)
from dn.gc import Collector
from dn.log import Log, LogRecord, encode_command
from dn.manifest import Manifest
from dn.reader import ObjectCache, Reader
from dn.reads import Reads, ReadView  # noqa: F401  (ReadView is re-exported)
from dn.schema import TableDef
from dn.settings import Settings
from dn.store import LocalStore, ObjectStore, RetryingStore, RetryPolicy, open_store
from dn.store.locallog import LocalLogStore
from dn.upkeep import Upkeep

log = logging.getLogger(__name__)


class Engine(Upkeep, Reads):
    """One shard. Open with :meth:`Engine.open`."""

    # -- opening and recovery ---------------------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None, shard_id: int = 0, settings: Settings | None = None,
             *, store: ObjectStore | None = None, log_store: ObjectStore | None = None,
             clock: Clock | None = None) -> Engine:
        """Open (or create) shard ``shard_id`` in the store at ``url`` and recover it.

        ``url``: a directory path, ``file:///abs/path``, ``s3://bucket/prefix`` or
        ``memory://name``. ``store``, ``log_store`` and ``clock`` are components that replace
        what ``url`` and ``settings`` would build (tests inject fault-injecting stores and
        manual clocks here).
        """
        settings = Settings() if settings is None else settings
        if not isinstance(settings, Settings):
            raise InvalidArgument("settings must be a dn.Settings")
        if url is not None and not isinstance(url, str | os.PathLike):
            raise InvalidArgument(f"url must be a str or a path, got {type(url).__name__}")
        for name, part in (("store", store), ("log_store", log_store)):
            if part is not None and not isinstance(part, ObjectStore):
                raise InvalidArgument(f"{name} must be a dn.store.ObjectStore, got {part!r}")
        if clock is not None and not (callable(getattr(clock, "now_ms", None))
                                      and callable(getattr(clock, "monotonic", None))):
            raise InvalidArgument(f"clock must be a dn.Clock, got {clock!r}")
        if type(shard_id) is not int or shard_id < 0:
            raise InvalidArgument(f"shard_id must be an int >= 0, got {shard_id!r}")
        policy = RetryPolicy(
            max_attempts=settings.store_retry_attempts,
            base_delay_s=settings.store_retry_base_delay_s,
            max_delay_s=settings.store_retry_max_delay_s,
        )
        if store is None:
            if url is None:
                raise InvalidArgument("give a store url (or a store)")
            store = open_store(os.fspath(url), retry=policy)
        made_log = None
        if log_store is None:
            log_store = _log_store_for(open_store(settings.log_url, retry=policy)
                                       if settings.log_url else store, policy)
            made_log = log_store if log_store is not store else None
        engine = cls(store, log_store, shard_id, settings, clock or SystemClock())
        engine._made_log_store = made_log  # the engine's own: closed with it
        engine._recover()
        if settings.background:
            engine._start_background()
        return engine

    def __init__(self, store: ObjectStore, log_store: ObjectStore, shard: int,
                 settings: Settings, clock: Clock) -> None:
        self.shard = shard
        self.settings = settings
        self.store = store
        self._log_store = log_store
        self._made_log_store: ObjectStore | None = None  # made by open(): closed with the engine
        self._clock = clock
        self._hlc = HybridClock(clock)
        self._cv = threading.Condition(threading.Lock())
        self._flush_lock = threading.Lock()
        self._queue = CommitQueue(self._cv, settings.group_commit_max_bytes)
        self._aio = AsyncFrontDoor(self._submit_all)
        self._manifest = Manifest(store, shard)
        self._catalog = Catalog()
        self._cache = ObjectCache(settings.cache_bytes)
        self.reader = Reader(store, shard, self._cache)
        self._log: Log | None = None
        self._mutable = Buffer(1, clock.monotonic())
        self._frozen: list[Buffer] = []  # the checkpoint queue, oldest first
        self._ranges: list[tuple[int, int]] = []
        self._checkpoints: list[int] = []
        self._stats: dict[tuple[int, int], dict[int, rangeobj.TableStats]] = {}
        self._sizes: dict[tuple[int, int], int] = {}  # encoded bytes of each live range
        self._compact_lock = threading.Lock()
        self._policy = compaction.Policy(settings.compaction_fanout,
                                         settings.compaction_base_bytes,
                                         settings.compaction_max_bytes)
        self._collector = Collector(store, shard, settings.gc_grace_s)
        self._gc_dirty = True  # something may have become garbage since the last scan
        self._manifest_unsure = False  # a commit failed in a way that may have landed
        self._last_applied = 0
        self._unknown_lo: int | None = None
        self._last_cp_time = clock.monotonic()
        self._broken: DNError | None = None
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.epoch = 0
        self.counters = {"buffer_checkpoints": 0, "checkpoints": 0, "compactions": 0,
                         "rows_written": 0, "replayed_commands": 0, "maintain_errors": 0}

    def _recover(self) -> None:
        state = self._manifest.open_epoch()
        self.epoch = state.epoch
        log.info("shard %d: opened epoch %d (manifest version %d)", self.shard, state.epoch,
                 state.version)
        after = 0
        if state.checkpoints:
            cp = self.reader.checkpoint(state.checkpoints[-1])
            self._catalog = Catalog.from_dict(cp.catalog)
            for r in cp.ranges:
                self._stats[r] = {}
                self._sizes[r] = cp.sizes.get(r, 0)
            for table_id, entries in cp.tables.items():
                for r, st in entries:
                    self._stats.setdefault(r, {})[table_id] = st
            after = cp.ts
        later = [r for r in state.ranges if r[1] > after]
        for i, r in enumerate(later):
            ro = self.reader.range(r)
            for ts, cmd in ro.commands:
                self._catalog.apply(cmd, ts)
            self._stats[r] = _range_stats(ro, self._catalog)
            self._sizes[r] = ro.nbytes
            if (i + 1) % 100 == 0:
                log.info("shard %d: recovery read %d/%d ranges", self.shard, i + 1, len(later))
        self._ranges = list(state.ranges)
        self._checkpoints = list(state.checkpoints)
        max_range = state.max_range or 0
        self._last_applied = max(max_range, state.checkpoints[-1] if state.checkpoints else 0)
        self._mutable = Buffer(max_range + 1, self._clock.monotonic())
        self._log = Log(self._log_store, self.shard, state.epoch)
        records = self._log.recover(state.log_low_seq,
                                    self._clock.monotonic() + self.settings.log_delete_grace_s)
        for i, rec in enumerate(records):
            self._replay(rec)
            if (i + 1) % 1000 == 0:
                log.info("shard %d: replayed %d/%d log objects", self.shard, i + 1, len(records))
        for rec in self._log.fence():
            self._replay(rec)
        self._hlc.advance(self._last_applied)
        log.info("shard %d: recovered: %d ranges, %d checkpoints, %d log objects replayed, "
                 "clock at %d", self.shard, len(self._ranges), len(self._checkpoints),
                 len(records), self._hlc.last)
        self._check()

    def _replay(self, rec: LogRecord) -> None:
        share = rec.nbytes // max(1, len(rec.commands))
        for ts, op, args in rec.commands:
            if ts <= self._last_applied:
                continue  # already in a range object, or replayed: never apply twice
            try:
                self._apply_command(ts, op, args, share)
            except (DNError, KeyError, TypeError, ValueError, IndexError) as exc:
                key = codec.log_key(self.shard, rec.seq)  # checksummed, yet not a command
                raise Corruption(f"object {key} holds a command that does not apply: {exc!r}",
                                 key=key) from exc
            self.counters["replayed_commands"] += 1
            self._maybe_freeze_locked()

    # -- public DDL and writes --------------------------------------------------------------

    def create_database(self, db: str) -> int:
        """Create a database; returns the commit timestamp."""
        return self._ddl(cat.ddl_create_database(db))

    def drop_database(self, db: str) -> int:
        """Drop a database and every table in it; returns the commit timestamp."""
        return self._ddl(cat.ddl_drop_database(db))

    def create_table(self, db: str, table: str, schema: dict[str, str],
                     primary_key: str | list[str]) -> int:
        """Create a table; ``schema`` maps column names to type names."""
        return self._ddl(cat.ddl_create_table(db, table, schema, primary_key))

    def drop_table(self, db: str, table: str) -> int:
        """Drop a table; it stays readable at snapshots before the returned timestamp."""
        return self._ddl(cat.ddl_drop_table(db, table))

    def _ddl(self, cmd: list) -> int:
        self._check_usable()
        args = cmd[1:]
        return self._submit(Pending(cmd[0], args, codec.pack(args)))

    def write(self, db: str, table: str, upserts: Any = (), deletes: Any = ()) -> int:
        """Apply upserts (row dicts) and deletes (primary keys) atomically; returns the commit
        timestamp once the batch is durable."""
        p = self._prepare_write(db, table, upserts, deletes)
        return self._submit(p)

    async def write_async(self, db: str, table: str, upserts: Any = (),
                          deletes: Any = ()) -> int:
        """:meth:`write` for asyncio: validation runs in the calling coroutine; the writes of
        all coroutines waiting meanwhile go to the log together (see :mod:`dn.aio`)."""
        p = self._prepare_write(db, table, upserts, deletes)
        return await self._aio.submit(p)

    def _prepare_write(self, db: str, table: str, upserts: Any, deletes: Any) -> Pending:
        self._check_usable()
        tdef = self._catalog.live_table(db, table)
        rows = tdef.normalize_rows(upserts, self.settings.max_value_bytes)
        dels = tdef.normalize_deletes(deletes)
        tdef.check_batch(rows, dels, self.settings.max_batch_rows)
        args = [tdef.id, rows, dels]
        payload = codec.pack(args)
        self._check_size(payload)
        return Pending(OP_WRITE, args, payload, tdef, len(rows) + len(dels))

    def _submit_all(self, ps: list[Pending]) -> None:
        """Commit many prepared commands from one thread (each ends with its ts or error)."""
        try:
            self._admit()
        except DNError as exc:
            for p in ps:
                p.error, p.done = exc, True
            return
        self._queue.submit_all(ps, self._stamp, self._persist, self._apply_group)

    def write_columns(self, db: str, table: str, columns: Any, deletes: Any = ()) -> int:
        """:meth:`write` for rows given by column: ``columns`` maps column names to sequences
        of equal length (lists, tuples, numpy arrays), one value per row; a column left out
        is null in every row. The same checks, atomicity and result as :meth:`write`, without
        a dict or tuple per row."""
        self._check_usable()
        tdef = self._catalog.live_table(db, table)
        cols, _ = tdef.normalize_columns(columns, self.settings.max_value_bytes)
        dels = tdef.normalize_deletes(deletes)
        n = len(tdef.check_keys(tdef.column_keys(cols), dels, self.settings.max_batch_rows))
        chunks = [cols] if cols else []
        args = [tdef.id, chunks, dels]
        return self._submit_write(tdef, args, codec.pack(args), n, OP_WRITE_COLUMNS)

    def write_packed_columns(self, db: str, table: str, chunks: list[bytes] | tuple,
                             dels_blob: bytes = b"\x90", table_id: int | None = None) -> int:
        """:meth:`write_columns` for a batch a client already validated and packed: each of
        ``chunks`` is the msgpack array of a run of rows by column (one array per column, in
        column order, of equal non-zero lengths, values in normal form), so that each travels
        inline in a Ray call; ``dels_blob`` is the msgpack array of primary keys. Checked
        here again (cheaply, column by column), then logged as they are, without packing
        them again. ``table_id``, when given, must be the live table's."""
        self._check_usable()
        tdef = self._catalog.live_table(db, table)
        if table_id is not None and table_id != tdef.id:
            raise InvalidArgument(f"table {db}.{table} is not the table the batch was made for "
                                  "(it was dropped and created again)")
        if (not isinstance(chunks, list | tuple) or not all(isinstance(c, bytes) for c in chunks)
                or not isinstance(dels_blob, bytes)):
            raise InvalidArgument("packed chunks and deletes must be bytes (chunks: a list)")
        try:
            decoded = [codec.unpack_tuples(c) for c in chunks]
            dels = codec.unpack_tuples(dels_blob)
        except Exception as exc:
            raise InvalidArgument(f"packed batch does not decode: {exc}") from None
        keys: list = []
        for cols in decoded:
            tdef.check_packed_columns(cols, self.settings.max_value_bytes)
            keys.extend(tdef.column_keys(cols))
        dels = self._packed_deletes(tdef, dels, dels_blob)
        n = len(tdef.check_keys(keys, dels, self.settings.max_batch_rows))
        payload = (b"\x93" + codec.pack(tdef.id) + codec.array_header(len(chunks))
                   + b"".join(chunks) + dels_blob)
        return self._submit_write(tdef, [tdef.id, decoded, dels], payload, n, OP_WRITE_COLUMNS)

    @staticmethod
    def _packed_deletes(tdef: TableDef, dels: Any, dels_blob: bytes) -> list:
        """The decoded deletes of a packed batch, checked to be in normal form."""
        if not isinstance(dels, list | tuple):
            raise InvalidArgument("packed deletes must be an array of primary keys")
        if not dels:
            return []
        dels = tdef.normalize_deletes(list(dels))
        if codec.pack(dels) != dels_blob:
            raise InvalidArgument("packed deletes are not in normal form")
        return dels

    def _submit_write(self, tdef: TableDef, args: list, payload: bytes, n: int,
                      op: int = OP_WRITE) -> int:
        self._check_size(payload)
        return self._submit(Pending(op, args, payload, tdef, n))

    def _check_size(self, payload: bytes) -> None:
        if len(payload) > self.settings.max_batch_bytes:
            raise InvalidArgument(
                f"batch is {len(payload)} bytes, over max_batch_bytes="
                f"{self.settings.max_batch_bytes}")

    def _submit(self, p: Pending) -> int:
        self._admit()
        return self._queue.submit(p, self._stamp, self._persist, self._apply_group)

    def _admit(self) -> None:
        """Backpressure: slow writers (they run a buffer checkpoint) or refuse them."""
        queued = self._queued_bytes()
        if queued >= self.settings.queue_slow_bytes:
            self.flush_one()
            queued = self._queued_bytes()
        if queued >= self.settings.queue_stop_bytes:
            raise Unavailable(
                f"shard {self.shard} is behind: {queued} bytes await buffer checkpoints "
                f"(limit {self.settings.queue_stop_bytes}); retry later")

    def _queued_bytes(self) -> int:
        # Without the lock: an advisory figure for backpressure, read on every write; a copy
        # of the list is atomic under the GIL and buffers only ever leave it.
        return sum(b.nbytes for b in self._frozen[:])

    def _stamp(self, p: Pending) -> None:
        """Under the lock: re-check against the live catalog and take a timestamp."""
        self._check_usable_locked()
        if p.op in WRITE_OPS:
            live = self._catalog.live_table(p.table.db, p.table.name)
            if live.id != p.table.id:
                raise InvalidArgument(
                    f"table {p.table.db}.{p.table.name} was dropped and created again while "
                    "this write was being prepared; retry it")
        else:
            self._catalog.check([p.op, *p.args], 0)
        p.ts = self._hlc.next()

    def _persist(self, group: list[Pending]) -> None:
        """Outside the lock (leader only): settle an unknown outcome, then log the group."""
        assert self._log is not None
        if self._log.unknown:
            self._settle_locked_out()
        try:
            self._log.append([encode_command(p.ts, p.op, p.payload) for p in group],
                             group[-1].ts)
        except Fenced as exc:
            self._fail(exc)
            raise
        except Unavailable as exc:
            if exc.outcome_unknown:
                with self._cv:
                    self._unknown_lo = group[0].ts
            raise

    def _settle_locked_out(self) -> None:
        """Leader only, lock not held: resolve the log's unknown outcome and apply what had
        landed. Raises Unavailable while the store still fails."""
        assert self._log is not None
        try:
            landed = self._log.resolve()
        except Fenced as exc:
            self._fail(exc)
            raise
        with self._cv:
            if landed is not None:
                self._replay(landed)  # the commands are durable: apply them as recovery would
            self._unknown_lo = None
            self._cv.notify_all()

    def _apply_group(self, group: list[Pending]) -> None:
        try:
            for p in group:
                self._apply_command(p.ts, p.op, p.args, len(p.payload) + 16, p.table)
                self.counters["rows_written"] += p.nrows
            self._maybe_freeze_locked()
        except Exception as exc:
            self._fail(Internal(f"shard {self.shard}: applying a durable group failed: {exc!r}"))
            raise

    def _apply_command(self, ts: int, op: int, args: list, nbytes: int,
                       tdef: TableDef | None = None) -> None:
        """Under the lock: apply one durable command to the mutable buffer (and catalog)."""
        buf = self._mutable
        if buf.empty:
            buf.born = self._clock.monotonic()
        if op in WRITE_OPS:
            table_id, rows, dels = args  # rows: row tuples, or chunks of columns
            if tdef is None:  # replayed: msgpack gave lists; keys must be hashable tuples
                tdef = self._catalog.table_by_id(table_id)
                if len(tdef.pk_pos) > 1:
                    dels = [tuple(k) for k in dels]
            if op == OP_WRITE:
                buf.apply_write(ts, table_id, len(tdef.columns), tdef.pk_pos, rows, dels, nbytes)
            else:
                buf.apply_columns(ts, table_id, len(tdef.columns), tdef.pk_pos, rows, dels,
                                  nbytes)
        else:
            cmd = [op, *args]
            self._catalog.apply(cmd, ts)
            buf.apply_ddl(ts, cmd, nbytes)
        self._last_applied = ts

    # -- state ------------------------------------------------------------------------------

    def status(self) -> dict:
        """The state of the shard at a glance."""
        with self._cv:
            buffers = [self._mutable.describe()] + [b.describe() for b in
                                                    reversed(self._frozen)]
            out = {
                "shard": self.shard,
                "epoch": self.epoch,
                "state": self._state_locked(),
                "clock": self._hlc.last,
                "last_applied": self._last_applied,
                "buffers": buffers,
                "queue_length": len(self._frozen),
                "queue_bytes": sum(b.nbytes for b in self._frozen),
                "ranges": list(self._ranges),
                "checkpoints": list(self._checkpoints),
                "last_checkpoint": self._checkpoints[-1] if self._checkpoints else None,
                "commits_since_checkpoint": self._commits_since_checkpoint_locked(),
                "rows_in_memory": sum(b.rows() for b in [self._mutable, *self._frozen]),
                "group_commits": self._queue.groups,
                "commits": self._queue.commands,
                "counters": dict(self.counters),
            }
        with self._cv:
            sized = [(r, self._sizes.get(r, 0)) for r in self._ranges]
        out["objects"] = {
            "live_ranges": len(sized),
            "live_range_bytes": sum(n for _, n in sized),
            "live_checkpoints": len(out["checkpoints"]),
            "awaiting_gc": len(self._collector.pending),
            "deleted_by_gc": self._collector.deleted,
            "compaction_debt": self._policy.debt(sized),
            "compaction_bound": self._policy.bound(
                sum(n for _, n in sized if n < self.settings.compaction_max_bytes)),
        }
        out["oldest_readable"] = self.oldest_readable()
        out["log"] = self._log.status() if self._log else None
        out["cache"] = self._cache.status()
        out["manifest_version"] = self._manifest.current.version if self._manifest.current else 0
        return out

    def _state_locked(self) -> str:
        if self._closed:
            return "closed"
        if self._broken is not None:
            return "fenced" if isinstance(self._broken, Fenced) else "broken"
        if self._unknown_lo is not None:
            return "settling"
        return "open"

    def close(self) -> None:
        """Stop background work and release the engine. Everything acknowledged is in the
        log already; nothing is lost by closing without a flush."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._cv:
            already = self._closed
            self._closed = True
            self._queue.fail_all(Closed(f"shard {self.shard} is closed"))
        if self._made_log_store is not None and not already:
            self._made_log_store.close()  # its open files; a store passed in is the caller's

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, error: DNError) -> None:
        with self._cv:
            if self._broken is None:
                self._broken = error
                log.error("shard %d stops: %s", self.shard, error)
            self._queue.fail_all(error)

    def _check_usable(self) -> None:
        with self._cv:
            self._check_usable_locked()

    def _check_usable_locked(self, reading: bool = False) -> None:
        if self._closed:
            raise Closed(f"shard {self.shard} is closed")
        if self._broken is not None:
            raise self._broken

    # -- background -------------------------------------------------------------------------

    def _start_background(self) -> None:
        self._thread = threading.Thread(target=self._background, name=f"dn-shard-{self.shard}",
                                        daemon=True)
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

    def _check(self) -> None:
        """Invariants of the whole shard (tests call this after each step)."""
        with self._cv:
            bufs = [*self._frozen, self._mutable]
            for b in bufs:
                b._check()
            for a, b in zip(bufs, bufs[1:]):
                assert a.to_ts is not None and b.from_ts == a.to_ts + 1, "buffers not contiguous"
            if self._ranges:
                assert bufs[0].from_ts == self._ranges[-1][1] + 1, "buffers do not follow ranges"
            for (_, t0), (f1, _) in zip(self._ranges, self._ranges[1:]):
                assert f1 == t0 + 1, "ranges not contiguous"
            assert set(self._stats) >= set(self._ranges), "ranges without statistics"
            assert self._hlc.last >= self._last_applied
            self._catalog._check()


def _log_store_for(store: ObjectStore, policy: RetryPolicy) -> ObjectStore:
    """The store the log writes to: on a local directory, the log's own layout that costs one
    fdatasync per group commit (dn/store/locallog.py); elsewhere the store itself."""
    inner = store.inner if isinstance(store, RetryingStore) else store
    if type(inner) is LocalStore:
        return RetryingStore(LocalLogStore(inner.root), policy)
    return store


def _range_stats(ro: rangeobj.RangeObject, catalog: Catalog) -> dict[int, rangeobj.TableStats]:
    out = {}
    for table_id in ro.tables:
        run = ro.run(table_id, catalog.table_by_id(table_id).pk_pos)
        keys = ([run.pks[0], run.pks[-1]] if run.pks else []) + (
            [run.del_pks[0], run.del_pks[-1]] if run.del_pks else [])
        out[table_id] = rangeobj.TableStats(len(run.ts), len(run.del_ts),
                                            min(keys) if keys else None,
                                            max(keys) if keys else None)
    return out
