"""Upkeep of one shard: freezes, buffer checkpoints, checkpoints, compaction, retention and
garbage collection — everything that turns memory into durable objects and keeps them few.

One part of :class:`dn.engine.Engine`, over the shard's :class:`dn.state.ShardState`. Work
here runs on the background thread, or on a writer's thread when backpressure makes a writer
help.

Locks (see :mod:`dn.state`): ``flush_lock`` serializes every manifest commit and the objects
written for it; ``compact_lock`` serializes compactions, whose merging runs outside
``flush_lock`` so buffer checkpoints go on meanwhile; ``cv`` guards the in-memory lists, and
no I/O happens under it; ``manifest_lock`` the manifest commits themselves. After every
manifest commit, memory adopts the manifest's newest state (:meth:`Upkeep._adopt`), the single
source of truth for ranges, checkpoints, the log's low-water mark and the timestamp ceiling
(kept ahead of the clock by :class:`dn.upkeep.ceiling.Ceiling`, from :meth:`Upkeep.maintain`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import Any

from dn.errors import Fenced, Internal, Unavailable
from dn.moves import IN
from dn.objects import checkpoint as ckpt
from dn.objects import codec, rangeobj
from dn.state import ShardState
from dn.upkeep import compaction
from dn.upkeep.ceiling import Ceiling
from dn.write.buffer import Buffer
from dn.write.tokens import window

log = logging.getLogger(__name__)


class Upkeep:
    """Freeze, flush, checkpoint, compact, collect: one shard's upkeep."""

    def __init__(self, state: ShardState) -> None:
        self._s = state
        # a ceiling extension writes no object: its version alone is no reason for a GC scan
        self.ceiling = Ceiling(state, partial(self.commit, garbage=False))
        self.txns: Any = None  # dn.write.txn.Transactions: decides intents before a flush
        # settles done slot moves into the own objects when due (dn.upkeep.handoff)
        self.absorb: Any = None

    def maybe_freeze_locked(self) -> None:
        buf = self._s.mutable
        if buf.empty:
            return
        age = self._s.settings.freeze_interval_s
        if buf.nbytes >= self._s.settings.freeze_bytes or (
            age is not None and self._s.clock.monotonic() - buf.born >= age
        ):
            self._freeze_locked()

    def _freeze_locked(self) -> Buffer | None:
        buf = self._s.mutable
        if buf.empty:
            return None
        buf.freeze()
        self._s.frozen.append(buf)
        self._s.mutable = Buffer(buf.to_ts + 1, self._s.clock.monotonic(), self._s.mirror_room)
        return buf

    def freeze(self) -> tuple[int, int] | None:
        """Freeze the mutable buffer into the checkpoint queue; returns its range (or None if
        it was empty)."""
        self._s.check_usable()
        with self._s.cv:
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
        self._s.check_usable()
        with self._s.flush_lock:
            self.settle_manifest()
            with self._s.cv:
                if not self._s.frozen:
                    return False
                buf = self._s.frozen[0]
                if buf.pending:  # a range object holds only decided commits
                    self.txns.wait_decided_locked(buf.to_ts)
            assert self._s.log is not None and buf.to_ts is not None
            r = (buf.from_ts, buf.to_ts)
            data, stats = rangeobj.build(self._s.shard, buf)
            self._s.store.put(codec.range_key(self._s.shard, *r), data)
            low = self._s.log.finalize(buf.to_ts)
            with self._s.cv:
                self._s.stats[r] = stats  # before the commit: adoption needs them
                self._s.sizes[r] = len(data)
                self._s.commits[r] = buf.ncommits

            def add_range(m):
                if r in m.ranges:
                    return m
                return replace(m, ranges=m.ranges + (r,), log_low_seq=max(m.log_low_seq, low))

            self.commit(add_range)  # adopting the new state drops the buffer
            self._s.counters["buffer_checkpoints"] += 1
            return True

    def commit(self, update, garbage: bool = True) -> None:
        """Commit a manifest update, then make memory agree with the manifest's newest known
        state, whatever happened: after a commit whose outcome was unknown and that did land,
        the next commit finds it and memory catches up here."""
        with self._s.manifest_lock:
            try:
                self._s.manifest.commit(update)
            except Fenced as exc:
                self._s.fail(exc)
                raise
            except BaseException:
                self._s.manifest_unsure = True
                raise
            finally:
                state = self._s.manifest.current
                if state is not None:
                    self._adopt(state, garbage)

    def commit_moves(self, update, undo: int | None = None, ranges: bool = False) -> None:
        """Commit the manifest's slot moves as ``update(moves)`` (:mod:`dn.upkeep.handoff`),
        and ``undo`` among the moves undone. ``ranges``: ``update(moves, live ranges)``, the
        ranges of the very manifest version the moves are committed over (a give names them:
        read earlier, compaction could have replaced one and the collector deleted it)."""

        def change(m):
            undone = m.undone if undo is None or undo in m.undone else (*m.undone, undo)
            new = update(m.moves, m.ranges) if ranges else update(m.moves)
            return replace(m, moves=new, undone=undone)

        with self._s.flush_lock:
            self.settle_manifest()
            self.commit(change, garbage=True)

    def settle_manifest(self) -> None:
        """Under the flush lock, before writing any object: if an earlier manifest commit
        failed in an unknown way, read the manifest back and adopt it, so that nothing
        already committed is written again (a torn rewrite would damage it)."""
        if not self._s.manifest_unsure:
            return
        with self._s.manifest_lock:
            state = self._s.manifest.load()
            if state is None or state.epoch != self._s.epoch:
                exc = Fenced(
                    f"shard {self._s.shard}: a newer incarnation owns the manifest",
                    shard=self._s.shard,
                )
                self._s.fail(exc)
                raise exc
            self._adopt(state)
            self._s.manifest_unsure = False

    def _adopt(self, state, garbage: bool = True) -> None:
        with self._s.cv:
            self._s.ranges = list(state.ranges)
            self._s.checkpoints = list(state.checkpoints)
            self._s.ceiling = max(self._s.ceiling, state.ceiling)  # that version is committed
            if state.moves is not self._s.moves:
                self._s.set_moves_locked(state.moves)
            self._s.undone = frozenset(state.undone)
            top = state.max_range
            while self._s.frozen and top is not None and self._s.frozen[0].to_ts <= top:
                self._s.frozen.pop(0)  # its range object is committed
            if garbage:
                self._s.gc_dirty = True
            self._s.cv.notify_all()
        assert self._s.log is not None
        self._s.log.truncate(
            state.log_low_seq, self._s.clock.monotonic() + self._s.settings.log_delete_grace_s
        )

    def checkpoint(self) -> int | None:
        """Write a checkpoint at the newest range object (if there is one newer than the last
        checkpoint); returns the checkpoint's timestamp, or None if there is none at all."""
        self._s.check_usable()
        with self._s.flush_lock:
            self.settle_manifest()
            with self._s.cv:
                ranges = list(self._s.ranges)
                cps = list(self._s.checkpoints)
                floor = self._s.manifest.current.checkpoint_floor if self._s.manifest.current else 0
                if not ranges or (cps and cps[-1] >= ranges[-1][1]) or ranges[-1][1] <= floor:
                    return cps[-1] if cps else None  # (a floor: dn.upkeep.absorb)
                ts = ranges[-1][1]
                catalog = self._s.catalog.as_of(ts)
                stats = dict(self._s.stats)
                sizes = dict(self._s.sizes)
                remembered = self._s.tokens.snapshot()
            # the tokens recovery needs from here (decision 0014): those still in the window
            tokens = window(remembered, ts, self._token_floor())
            data = ckpt.build(self._s.shard, ts, catalog, ranges, stats, sizes, tokens)
            self._s.store.put(codec.checkpoint_key(self._s.shard, ts), data)

            def add_checkpoint(m):
                if ts in m.checkpoints:
                    return m
                if [r for r in m.ranges if r[1] <= ts] != ranges:
                    # memory lagged the manifest (an earlier commit's outcome was unknown);
                    # the adoption after this attempt catches up, the next checkpoint is right
                    raise Unavailable("the manifest moved while the checkpoint was written; retry")
                return replace(m, checkpoints=m.checkpoints + (ts,))

            self.commit(add_checkpoint)
            with self._s.cv:
                self._s.last_cp_time = self._s.clock.monotonic()
            self._s.counters["checkpoints"] += 1
            return ts

    def maintain(self) -> None:
        """One round of background work: keep the timestamp ceiling ahead of the clock, freeze
        on age, forget idempotency tokens past their window, run queued buffer checkpoints,
        checkpoint on the delta or interval trigger, delete truncated log objects."""
        self._s.check_usable()
        self.ceiling.keep()
        if len(self._s.intents):
            self.txns.decide_stale()  # a transaction whose client went away
        with self._s.cv:
            self.maybe_freeze_locked()
            since = self._s.commits_since_checkpoint_locked()
            self._s.tokens.prune(self._token_floor())  # forget tokens past the window
        self.flush()
        s = self._s.settings
        due_interval = (
            s.checkpoint_interval_s is not None
            and self._s.clock.monotonic() - self._s.last_cp_time >= s.checkpoint_interval_s
        )
        if since >= s.checkpoint_delta or (due_interval and since > 0):
            with self._s.cv:
                self._freeze_locked()
            self.flush()
            self.checkpoint()
        if s.compaction and self._s.clock.monotonic() >= self._s.compaction_hold_until:
            while self.compact():
                pass
        if self._s.moves and self.absorb is not None:
            self.absorb()
        self.collect_garbage()
        assert self._s.log is not None
        self._s.log.collect(self._s.clock.monotonic())

    # -- compaction, retention, garbage collection ------------------------------------------

    def oldest_readable(self) -> int:
        return self._s.oldest_readable()

    def _token_floor(self) -> int:
        """The oldest commit timestamp whose idempotency token is still remembered."""
        return self._s.tokens.floor(self._s.clock.now_ms())

    def compact(self) -> bool:
        """Run one compaction the policy asks for (see dn/upkeep/compaction.py); False if none."""
        self._s.check_usable()
        with self._s.compact_lock:
            with self._s.flush_lock:
                self.settle_manifest()
            with self._s.cv:
                ranges = list(self._s.ranges)
                sized = [(r, self._s.sizes.get(r, 0)) for r in ranges]
                tables = {t.id: (t.pk_pos, t.drop_ts) for t in self._s.catalog.tables()}
            pick = self._s.policy.pick(sized)
            if not pick:
                return False
            horizon = self._s.oldest_readable()
            # not through the cache: the inputs go once merged, and decoded they hold about
            # twice what the cache counts for them (it counts the stored bytes)
            inputs = [self._s.reader.range_uncached(r) for r in pick]
            data, stats = compaction.merge(
                self._s.shard,
                inputs,
                tables,
                horizon,
                # a delete hides nothing older only if no older version can be read besides
                # this shard's objects: not so once it took slots over (dn.moves: references)
                oldest=pick[0] == ranges[0]
                and not any(m.kind == IN and not m.absorbed for m in self._s.moves),
                token_floor=self._token_floor(),
            )
            out = (pick[0][0], pick[-1][1])
            self._s.store.put(codec.range_key(self._s.shard, *out), data)
            first_to = pick[0][1]
            with self._s.cv:
                self._s.stats[out] = stats  # before the commit: adoption needs them
                self._s.sizes[out] = len(data)
                self._s.commits[out] = compaction.commits(inputs)

            def swap(m):
                i = m.ranges.index(pick[0]) if pick[0] in m.ranges else -1
                if i < 0 or list(m.ranges[i : i + len(pick)]) != pick:
                    if out in m.ranges:
                        return m  # this very swap landed already (a lost acknowledgement)
                    raise Internal(f"compaction inputs {pick} are no longer live")
                return replace(
                    m,
                    ranges=m.ranges[:i] + (out,) + m.ranges[i + len(pick) :],
                    checkpoints=tuple(c for c in m.checkpoints if c < first_to),
                )

            with self._s.flush_lock:
                self.commit(swap)
                with self._s.cv:
                    for r in pick:
                        self._s.stats.pop(r, None)
                        self._s.sizes.pop(r, None)
                        self._s.commits.pop(r, None)
            self._s.counters["compactions"] += 1
            log.info(
                "shard %d: compacted %d ranges into %s (%d bytes)",
                self._s.shard,
                len(pick),
                out,
                len(data),
            )
        self.checkpoint()  # record the new live set
        return True

    def collect_garbage(self, force: bool = False) -> int:
        """Drop checkpoints that fell out of the retention window, note unreferenced objects
        and delete those whose grace has passed; returns how many were deleted. Touches the
        store only when something may have changed or a deletion is due (so an idle shard
        makes no requests)."""
        self._s.check_usable()
        now = self._s.clock.monotonic()
        with self._s.flush_lock:
            self._drop_old_checkpoints()
            version = self._s.manifest.current.version if self._s.manifest.current else 0
            try:
                if self._s.gc_dirty or force or self._s.collector.recheck_due(now):
                    self._s.collector.scan(self._s.epoch, now, version)
                    self._s.gc_dirty = False  # only once a scan succeeded
                return self._s.collector.collect(self._s.epoch, now, version)
            except Fenced as exc:
                self._s.fail(exc)
                raise

    def _drop_old_checkpoints(self) -> None:
        """Under the flush lock: a checkpoint whose successor is older than the window can
        serve no permitted read; take it out of the manifest."""
        floor = self._s.oldest_readable()
        with self._s.cv:
            cps = list(self._s.checkpoints)
        stale = {c for c, nxt in zip(cps, cps[1:]) if nxt <= floor}
        if not stale:
            return

        def drop(m):
            return replace(m, checkpoints=tuple(c for c in m.checkpoints if c not in stale))

        self.commit(drop)
