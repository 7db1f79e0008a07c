"""Upkeep of one shard: freezes, buffer checkpoints, checkpoints, compaction, retention and
garbage collection — everything that turns memory into durable objects and keeps them few.

A mixin of :class:`dn.engine.Engine` (it uses the engine's state and locks; it is split out
only to keep each file about one thing). Work here runs on the background thread, or on a
writer's thread when backpressure makes a writer help.

Locks: ``_flush_lock`` serializes every manifest commit and the objects written for it;
``_compact_lock`` serializes compactions, whose merging runs outside ``_flush_lock`` so
buffer checkpoints go on meanwhile; ``_cv`` guards the in-memory lists, and no I/O happens
under it. After every manifest commit, memory adopts the manifest's newest state
(:meth:`Upkeep._adopt`), the single source of truth for ranges, checkpoints and the log's
low-water mark.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from dn import checkpoint as ckpt
from dn import codec, compaction, rangeobj
from dn.buffer import Buffer
from dn.clock import LOGICAL_BITS
from dn.errors import Fenced, Internal, Unavailable

log = logging.getLogger(__name__)


class Upkeep:
    """Freeze, flush, checkpoint, compact, collect (mixed into Engine)."""

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
            version = self._manifest.current.version if self._manifest.current else 0
            try:
                if self._gc_dirty or force:
                    self._collector.scan(self.epoch, now, version)
                    self._gc_dirty = False  # only once a scan succeeded
                return self._collector.collect(self.epoch, now, version)
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
