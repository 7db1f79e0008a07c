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

Not here: Ray, routing, compaction and garbage collection of range objects and checkpoints.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any

from dn import catalog as cat
from dn import checkpoint as ckpt
from dn import codec, compaction, rangeobj
from dn.buffer import Buffer
from dn.catalog import OP_WRITE, Catalog
from dn.clock import LOGICAL_BITS, Clock, HybridClock, SystemClock
from dn.commit import CommitQueue, Pending
from dn.errors import (
    Closed,
    DNError,
    Fenced,
    Internal,
    InvalidArgument,
    Unavailable,
)
from dn.gc import Collector
from dn.log import Log, LogRecord, encode_command
from dn.manifest import Manifest
from dn.plan import Plan, range_plan, snapshot_plan
from dn.reader import ObjectCache, Reader
from dn.run import Run
from dn.schema import TableDef
from dn.settings import Settings
from dn.store import ObjectStore, RetryPolicy, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadView:
    """Everything a reader needs for one read: the table as of the snapshot, the snapshot,
    the plan, and the tail runs copied out of memory."""

    table: TableDef
    snapshot: int
    plan: Plan
    tail: tuple[Run, ...]
    from_ts: int | None = None


class Engine:
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
        settings = settings or Settings()
        if not isinstance(settings, Settings):
            raise InvalidArgument("settings must be a dn.Settings")
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
            store = open_store(str(url), retry=policy)
        if log_store is None:
            log_store = open_store(settings.log_url, retry=policy) if settings.log_url else store
        engine = cls(store, log_store, shard_id, settings, clock or SystemClock())
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
        self._clock = clock
        self._hlc = HybridClock(clock)
        self._cv = threading.Condition(threading.Lock())
        self._flush_lock = threading.Lock()
        self._queue = CommitQueue(self._cv, settings.group_commit_max_bytes)
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
            self._apply_command(ts, op, args, share)
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
        self._check_usable()
        tdef = self._catalog.live_table(db, table)
        rows = tdef.normalize_rows(upserts, self.settings.max_value_bytes)
        dels = tdef.normalize_deletes(deletes)
        n = len(rows) + len(dels)
        if n == 0:
            raise InvalidArgument("a write needs at least one upsert or delete")
        if n > self.settings.max_batch_rows:
            raise InvalidArgument(
                f"batch of {n} rows is over max_batch_rows={self.settings.max_batch_rows}")
        pos = tdef.pk_pos
        keys = (list(map(itemgetter(pos[0]), rows)) if len(pos) == 1
                else [tdef.pk_of(r) for r in rows])
        keys.extend(dels)
        if len(set(keys)) != n:
            seen: set = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise InvalidArgument(
                f"primary key {dup!r} appears twice in one batch of {tdef.db}.{tdef.name}; a "
                "batch may name each key once")
        args = [tdef.id, rows, dels]
        payload = codec.pack(args)
        if len(payload) > self.settings.max_batch_bytes:
            raise InvalidArgument(
                f"batch is {len(payload)} bytes, over max_batch_bytes="
                f"{self.settings.max_batch_bytes}")
        return self._submit(Pending(OP_WRITE, args, payload, tdef, n))

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
        if p.op == OP_WRITE:
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
            for ts, op, args in landed:
                if ts > self._last_applied:
                    self._apply_command(ts, op, args, 64 + _approx_size(args))
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
        if op == OP_WRITE:
            table_id, rows, dels = args
            if tdef is None:  # replayed: msgpack gave lists; keys must be hashable tuples
                tdef = self._catalog.table_by_id(table_id)
                if len(tdef.pk_pos) > 1:
                    dels = [tuple(k) for k in dels]
            buf.apply_write(ts, table_id, len(tdef.columns), tdef.pk_pos, rows, dels, nbytes)
        else:
            cmd = [op, *args]
            self._catalog.apply(cmd, ts)
            buf.apply_ddl(ts, cmd, nbytes)
        self._last_applied = ts

    # -- freezing, buffer checkpoints, checkpoints -------------------------------------------

    def _maybe_freeze_locked(self) -> None:
        buf = self._mutable
        if buf.empty:
            return
        age = self.settings.freeze_interval_s
        if buf.nbytes >= self.settings.freeze_bytes or (
            age is not None and self._clock.monotonic() - buf.born >= age
        ):
            self._freeze_locked()

    def _freeze_locked(self) -> Buffer | None:
        buf = self._mutable
        if buf.empty:
            return None
        buf.freeze()
        self._frozen.append(buf)
        self._mutable = Buffer(buf.to_ts + 1, self._clock.monotonic())
        return buf

    def freeze(self) -> tuple[int, int] | None:
        """Freeze the mutable buffer into the checkpoint queue; returns its range (or None if
        it was empty)."""
        self._check_usable()
        with self._cv:
            buf = self._freeze_locked()
        return None if buf is None else (buf.from_ts, buf.to_ts)

    def flush(self) -> int:
        """Run every queued buffer checkpoint; returns how many ran."""
        n = 0
        while self.flush_one():
            n += 1
        return n

    def flush_one(self) -> bool:
        """Buffer checkpoint of the oldest queued buffer: range object, manifest commit, log
        finalize, buffer dropped. False when the queue is empty."""
        self._check_usable()
        with self._flush_lock:
            self._settle_manifest()
            with self._cv:
                if not self._frozen:
                    return False
                buf = self._frozen[0]
            assert self._log is not None and buf.to_ts is not None
            r = (buf.from_ts, buf.to_ts)
            data, stats = rangeobj.build(self.shard, buf)
            self.store.put(codec.range_key(self.shard, *r), data)
            low = self._log.finalize(buf.to_ts)
            with self._cv:
                self._stats[r] = stats  # before the commit: adoption needs them
                self._sizes[r] = len(data)

            def add_range(m):
                if r in m.ranges:
                    return m
                return replace(m, ranges=m.ranges + (r,), log_low_seq=max(m.log_low_seq, low))

            self._commit(add_range)  # adopting the new state drops the buffer
            self.counters["buffer_checkpoints"] += 1
            return True

    def _commit(self, update) -> None:
        """Commit a manifest update, then make memory agree with the manifest's newest known
        state, whatever happened: after a commit whose outcome was unknown and that did land,
        the next commit finds it and memory catches up here."""
        try:
            self._manifest.commit(update)
        except Fenced as exc:
            self._fail(exc)
            raise
        except BaseException:
            self._manifest_unsure = True
            raise
        finally:
            state = self._manifest.current
            if state is not None:
                self._adopt(state)

    def _settle_manifest(self) -> None:
        """Under the flush lock, before writing any object: if an earlier manifest commit
        failed in an unknown way, read the manifest back and adopt it, so that nothing
        already committed is written again (a torn rewrite would damage it)."""
        if not self._manifest_unsure:
            return
        state = self._manifest.load()
        if state is None or state.epoch != self.epoch:
            exc = Fenced(f"shard {self.shard}: a newer incarnation owns the manifest",
                         shard=self.shard)
            self._fail(exc)
            raise exc
        self._adopt(state)
        self._manifest_unsure = False

    def _adopt(self, state) -> None:
        with self._cv:
            self._ranges = list(state.ranges)
            self._checkpoints = list(state.checkpoints)
            top = state.max_range
            while self._frozen and top is not None and self._frozen[0].to_ts <= top:
                self._frozen.pop(0)  # its range object is committed
            self._gc_dirty = True
            self._cv.notify_all()
        assert self._log is not None
        self._log.truncate(state.log_low_seq,
                           self._clock.monotonic() + self.settings.log_delete_grace_s)

    def checkpoint(self) -> int | None:
        """Write a checkpoint at the newest range object (if there is one newer than the last
        checkpoint); returns the checkpoint's timestamp, or None if there is none at all."""
        self._check_usable()
        with self._flush_lock:
            self._settle_manifest()
            with self._cv:
                ranges = list(self._ranges)
                cps = list(self._checkpoints)
                if not ranges or (cps and cps[-1] >= ranges[-1][1]):
                    return cps[-1] if cps else None
                ts = ranges[-1][1]
                catalog = self._catalog.as_of(ts)
                stats = dict(self._stats)
                sizes = dict(self._sizes)
            data = ckpt.build(self.shard, ts, catalog, ranges, stats, sizes)
            self.store.put(codec.checkpoint_key(self.shard, ts), data)

            def add_checkpoint(m):
                if ts in m.checkpoints:
                    return m
                if [r for r in m.ranges if r[1] <= ts] != ranges:
                    # memory lagged the manifest (an earlier commit's outcome was unknown);
                    # the adoption after this attempt catches up, the next checkpoint is right
                    raise Unavailable("the manifest moved while the checkpoint was written; "
                                      "retry")
                return replace(m, checkpoints=m.checkpoints + (ts,))

            self._commit(add_checkpoint)
            with self._cv:
                self._last_cp_time = self._clock.monotonic()
            self.counters["checkpoints"] += 1
            return ts

    def maintain(self) -> None:
        """One round of background work: freeze on age, run queued buffer checkpoints,
        checkpoint on the delta or interval trigger, delete truncated log objects."""
        self._check_usable()
        with self._cv:
            self._maybe_freeze_locked()
            since = self._commits_since_checkpoint_locked()
        self.flush()
        s = self.settings
        due_interval = (s.checkpoint_interval_s is not None
                        and self._clock.monotonic() - self._last_cp_time
                        >= s.checkpoint_interval_s)
        if since >= s.checkpoint_delta or (due_interval and since > 0):
            with self._cv:
                self._freeze_locked()
            self.flush()
            self.checkpoint()
        if s.compaction:
            while self.compact():
                pass
        self.collect_garbage()
        assert self._log is not None
        self._log.collect(self._clock.monotonic())

    # -- compaction, retention, garbage collection ------------------------------------------

    def oldest_readable(self) -> int:
        """The oldest timestamp snapshot and range reads are served for (0: no limit)."""
        if self.settings.retention_s is None:
            return 0
        ms = self._clock.now_ms() - int(self.settings.retention_s * 1000)
        return max(0, ms << LOGICAL_BITS)

    def compact(self) -> bool:
        """Run one compaction the policy asks for (see dn/compaction.py); False if none."""
        self._check_usable()
        with self._compact_lock:
            with self._flush_lock:
                self._settle_manifest()
            with self._cv:
                ranges = list(self._ranges)
                sized = [(r, self._sizes.get(r, 0)) for r in ranges]
                tables = {t.id: (t.pk_pos, t.drop_ts) for t in self._catalog.tables()}
            pick = self._policy.pick(sized)
            if not pick:
                return False
            horizon = self.oldest_readable()
            inputs = [self.reader.range(r) for r in pick]
            data, stats = compaction.merge(self.shard, inputs, tables, horizon,
                                           oldest=pick[0] == ranges[0])
            out = (pick[0][0], pick[-1][1])
            self.store.put(codec.range_key(self.shard, *out), data)
            first_to = pick[0][1]
            with self._cv:
                self._stats[out] = stats  # before the commit: adoption needs them
                self._sizes[out] = len(data)

            def swap(m):
                i = m.ranges.index(pick[0]) if pick[0] in m.ranges else -1
                if i < 0 or list(m.ranges[i:i + len(pick)]) != pick:
                    if out in m.ranges:
                        return m  # this very swap landed already (a lost acknowledgement)
                    raise Internal(f"compaction inputs {pick} are no longer live")
                return replace(m, ranges=m.ranges[:i] + (out,) + m.ranges[i + len(pick):],
                               checkpoints=tuple(c for c in m.checkpoints if c < first_to))

            with self._flush_lock:
                self._commit(swap)
                with self._cv:
                    for r in pick:
                        self._stats.pop(r, None)
                        self._sizes.pop(r, None)
            self.counters["compactions"] += 1
            log.info("shard %d: compacted %d ranges into %s (%d bytes)", self.shard, len(pick),
                     out, len(data))
        self.checkpoint()  # record the new live set
        return True

    def collect_garbage(self, force: bool = False) -> int:
        """Drop checkpoints that fell out of the retention window, note unreferenced objects
        and delete those whose grace has passed; returns how many were deleted. Touches the
        store only when something may have changed or a deletion is due (so an idle shard
        makes no requests)."""
        self._check_usable()
        now = self._clock.monotonic()
        with self._flush_lock:
            self._drop_old_checkpoints()
            try:
                if self._gc_dirty or force:
                    self._gc_dirty = False
                    self._collector.scan(self.epoch, now)
                return self._collector.collect(self.epoch, now)
            except Fenced as exc:
                self._fail(exc)
                raise

    def _drop_old_checkpoints(self) -> None:
        """Under the flush lock: a checkpoint whose successor is older than the window can
        serve no permitted read; take it out of the manifest."""
        floor = self.oldest_readable()
        with self._cv:
            cps = list(self._checkpoints)
        stale = {c for c, nxt in zip(cps, cps[1:]) if nxt <= floor}
        if not stale:
            return

        def drop(m):
            return replace(m, checkpoints=tuple(c for c in m.checkpoints if c not in stale))

        self._commit(drop)

    def _commits_since_checkpoint_locked(self) -> int:
        last = self._checkpoints[-1] if self._checkpoints else 0
        n = sum(b.ncommits for b in self._frozen) + self._mutable.ncommits
        # ranges after the last checkpoint count too; a range holds at least one commit
        n += sum(1 for r in self._ranges if r[1] > last)
        return n

    # -- reads --------------------------------------------------------------------------------

    def snapshot(self) -> int:
        """A timestamp to pass as ``snapshot=`` for repeatable reads: it covers every write
        acknowledged so far, and no later commit gets a timestamp at or below it."""
        with self._cv:
            return self._resolve_snapshot_locked(None)

    def advance_floor(self, ts: int) -> int:
        """Promise that no later commit gets a timestamp <= ``ts`` and wait for commits in
        flight at or below it; returns ``ts``. Used by cross-shard snapshot reads."""
        with self._cv:
            return self._resolve_snapshot_locked(ts)

    def clock(self) -> int:
        """The newest timestamp this shard has issued or promised."""
        with self._cv:
            return self._hlc.peek()

    def _resolve_snapshot_locked(self, snapshot: int | None) -> int:
        self._check_usable_locked(reading=True)
        if snapshot is None:
            s = self._hlc.peek()
        else:
            if type(snapshot) is not int or snapshot < 0:
                raise InvalidArgument(f"snapshot must be an int64 timestamp, got {snapshot!r}")
            limit = self._hlc.peek() + (int(self.settings.snapshot_future_s * 1000)
                                        << LOGICAL_BITS)
            if snapshot > limit:
                raise InvalidArgument(
                    f"snapshot {snapshot} is too far in the future (shard clock at "
                    f"{self._hlc.peek()})")
            s = snapshot
            oldest = self.oldest_readable()
            if s < oldest:
                raise InvalidArgument(
                    f"snapshot {s} is before the retention window; the oldest readable "
                    f"timestamp is {oldest}", oldest=oldest)
        self._hlc.advance(s)
        while True:
            inflight = self._queue.inflight
            if inflight is not None and inflight[0] <= s:
                self._cv.wait()
                continue
            if self._unknown_lo is not None and self._unknown_lo <= s:
                self._cv.release()
                try:
                    self._settle_for_read()
                finally:
                    self._cv.acquire()
                continue
            return s

    def _settle_for_read(self) -> None:
        with self._cv:
            self._queue.acquire_leadership()
        try:
            if self._log is not None and self._log.unknown:
                self._settle_locked_out()
        finally:
            with self._cv:
                self._queue.release_leadership()

    def read_view(self, db: str, table: str, snapshot: int | None = None,
                  from_ts: int | None = None) -> ReadView:
        """The plan and in-memory tail for one read of ``db.table`` at ``snapshot`` (and,
        for a change feed, from ``from_ts``). Readers in other processes materialize it."""
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            tdef = self._catalog.table_at(db, table, s)
            if from_ts is not None and from_ts < self.oldest_readable():
                oldest = self.oldest_readable()
                raise InvalidArgument(
                    f"from_ts {from_ts} is before the retention window; the oldest readable "
                    f"timestamp is {oldest}", oldest=oldest)
            if from_ts is None:
                plan = snapshot_plan(self._ranges, self._checkpoints, s)
            else:
                plan = range_plan(self._ranges, self._checkpoints, s, from_ts)
            tail: list[Run] = []
            if plan.tail is not None:
                lo, hi = plan.tail
                for buf in [*self._frozen, self._mutable]:
                    run = buf.run(tdef.id, lo, hi)
                    if run is not None and len(run):
                        tail.append(run)
        return ReadView(tdef, s, plan, tuple(tail), from_ts)

    def snapshot_plan(self, ts: int) -> Plan:
        """Seed 001's snapshot-read plan at ``ts``."""
        with self._cv:
            s = self._resolve_snapshot_locked(ts)
            return snapshot_plan(self._ranges, self._checkpoints, s)

    def range_plan(self, snapshot: int, from_ts: int) -> Plan:
        """Seed 001's range-read plan for from_ts <= ts <= snapshot."""
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return range_plan(self._ranges, self._checkpoints, s, from_ts)

    def get(self, db: str, table: str, pk: Any, snapshot: int | None = None,
            columns: list[str] | None = None) -> dict | None:
        """The row with primary key ``pk`` at ``snapshot`` (None: now), or None."""
        view = self.read_view(db, table, snapshot)
        key = view.table.check_key(pk)
        runs = self.reader.runs(view.table, view.plan, list(view.tail), key=key)
        return self.reader.get(view.table, key, view.snapshot, runs, columns)

    def scan(self, db: str, table: str, snapshot: int | None = None,
             columns: list[str] | None = None, start: Any = None, end: Any = None):
        """Rows with start <= pk < end at ``snapshot``, in primary-key order, as dicts."""
        view = self.read_view(db, table, snapshot)
        t = view.table
        start = None if start is None else t.check_key(start)
        end = None if end is None else t.check_key(end)
        runs = self.reader.runs(t, view.plan, list(view.tail))
        return self.reader.scan(t, view.snapshot, runs, columns, start, end)

    def changes(self, db: str, table: str, from_ts: int, snapshot: int | None = None,
                columns: list[str] | None = None):
        """Every change with from_ts <= ts <= snapshot, in (ts, pk) order, as Change
        records (``ts``, ``kind``, ``pk``, ``row``)."""
        if type(from_ts) is not int or from_ts < 0:
            raise InvalidArgument(f"from_ts must be an int64 timestamp, got {from_ts!r}")
        view = self.read_view(db, table, snapshot, from_ts)
        runs = self.reader.runs(view.table, replace(view.plan, checkpoint=None),
                                list(view.tail))
        return self.reader.changes(view.table, from_ts, view.snapshot, runs, columns)

    def databases(self, snapshot: int | None = None) -> list[str]:
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return self._catalog.databases_at(s)

    def tables(self, db: str, snapshot: int | None = None) -> list[str]:
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return self._catalog.tables_at(db, s)

    def table(self, db: str, table: str, snapshot: int | None = None) -> TableDef:
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return self._catalog.table_at(db, table, s)

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
            self._closed = True
            self._queue.fail_all(Closed(f"shard {self.shard} is closed"))

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


def _approx_size(args: Any) -> int:
    return len(codec.pack(args))
