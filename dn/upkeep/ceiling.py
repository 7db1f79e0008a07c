"""The timestamp ceiling of one shard: a durable bound above every timestamp it hands out.

The rule (decision 0013): no commit ever gets a timestamp at or below a snapshot that was
already served, across restarts of the shard and whatever the wall clock of the node it
restarts on says. Within one incarnation the clock's floor keeps it
(:meth:`dn.clock.HybridClock.advance`); the ceiling keeps it across incarnations:

- Invariant: every timestamp this incarnation has issued (a commit: the stamp takes one only
  at or below the ceiling, :meth:`dn.clock.HybridClock.next_within`, and the leader calls
  :meth:`Ceiling.reserve` when it found none) or served (a read's result or a floor handed
  out: :meth:`dn.read.snapshots.Snapshots.promise` calls :meth:`Ceiling.cover` first) is <=
  ``ShardState.ceiling``, which is <= the ``ceiling`` of the newest manifest version: memory
  takes a ceiling only from a version known committed (:meth:`Upkeep._adopt`). The clock's
  in-memory floor may lie above it, raised by a read that was then refused; the next stamp
  past it extends the ceiling first.
- Every manifest version's ceiling is >= its predecessor's (:meth:`dn.objects.manifest.
  Manifest.commit` keeps the larger), and recovery starts the clock at the ceiling of the
  newest version (:mod:`dn.recovery`) in the same step that fences every older incarnation,
  which can then raise no ceiling any more (its commits fail ``Fenced``).

An extension is one manifest commit (under ``manifest_lock``, never under ``cv``; fenced like
every commit) to ``max(needed + MARGIN, wall + window)``, ``window`` the lease
(``timestamp_lease_s``) plus the time the last extension took (a store slower than the lease
would otherwise leave every stamp past a ceiling that the wall clock overtook while it was being
written, for ever; not twice that time: a store that took 20 s under faults then made the next
ceiling 40 s ahead, and a restart started the clock there, near ``snapshot_future_s``): while
the clock follows the wall clock, one commit covers a lease's worth of commits, not one each;
while it runs ahead of the wall clock (floors, a restart), ``MARGIN`` covers 65,536 commits.
:meth:`Ceiling.keep` (upkeep's background round) extends it before the lease runs out while the
shard is in use (a commit applied or a read served since the previous round), so writers
normally never wait: at a steady rate a shard commits one manifest version per half lease. A
writer or reader that finds it exhausted extends it itself. An idle shard makes no extension.
A failed extension promised nothing: writers get ``Unavailable`` (nothing was written), a read
is not served.

Callers: the group-commit leader (``reserve``), a read about to hand out its result
(``cover``), the background round (``keep``); none of them holds ``cv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from dn.clock import LOGICAL_BITS
from dn.errors import Unavailable
from dn.objects.manifest import ManifestState
from dn.state import ShardState

#: How far past the timestamp needed an extension reaches at least: one millisecond of
#: timestamps (65,536), for a clock running ahead of the wall clock.
MARGIN = 1 << LOGICAL_BITS
#: Extensions between two garbage-collection scans for the manifest versions they add (an
#: extension alone marks none: on a shard that only serves reads, nothing else would).
GC_EVERY = 32

Update = Callable[[ManifestState], ManifestState]


class Ceiling:
    """Keeps the shard's durable timestamp ceiling above what it issues and promises."""

    def __init__(self, state: ShardState, commit: Callable[[Update], None]) -> None:
        self._s = state
        self._commit = commit  # upkeep's manifest commit: fenced, adopted into memory
        ms = max(1, int(state.settings.timestamp_lease_s * 1000))
        self._lease = ms << LOGICAL_BITS
        self._took = 0  # how long the last extension took, in timestamps
        self._seen: int | None = None  # the newest commit applied, as the last round saw it
        self._served = False  # a read was served since the last round

    def reserve(self, n: int) -> None:
        """Group-commit leader, ``cv`` not held, after a stamp found no room: make room for
        ``n`` more commit timestamps. Reads the clock without the lock (an estimate: the stamp
        checks again under it)."""
        s = self._s
        needed = max(s.hlc.last, s.clock.now_ms() << LOGICAL_BITS) + max(1, n)
        if needed > s.ceiling:
            self.extend(needed)

    def cover(self, ts: int) -> None:
        """``cv`` not held: a read is about to hand out its result at ``ts``: make the durable
        ceiling cover it (see :meth:`extend`), and count the shard as in use."""
        self._served = True
        if ts > self._s.ceiling:  # read without the lock: it only grows, and extend re-checks
            self.extend(ts)

    def extend(self, needed: int) -> None:
        """``cv`` not held: make the durable ceiling >= ``needed``, by one manifest commit
        unless it is already. Raises ``Unavailable`` when the store fails (nothing was
        promised then), ``Fenced`` when a newer incarnation owns the shard."""
        s = self._s
        with s.manifest_lock:
            with s.cv:
                s.check_usable_locked()
                if s.ceiling >= needed:
                    return
                wall = s.clock.now_ms() << LOGICAL_BITS
                target = max(needed + MARGIN, wall + self._lease + self._took)

            def raise_ceiling(m: ManifestState) -> ManifestState:
                return m if m.ceiling >= target else replace(m, ceiling=target)

            try:
                self._commit(raise_ceiling)
            except Unavailable as exc:
                raise Unavailable(
                    f"shard {s.shard} could not extend its timestamp ceiling ({exc}); nothing "
                    "was written or promised, retry"
                ) from exc
            finally:
                self._took = max(0, (s.clock.now_ms() << LOGICAL_BITS) - wall)
            s.counters["ceiling_extensions"] += 1
            if s.counters["ceiling_extensions"] % GC_EVERY == 0:
                with s.cv:
                    s.gc_dirty = True

    def keep(self) -> None:
        """Background round: extend the ceiling once less than half a lease of it is left,
        if the shard is in use (a commit applied or a read served since the previous round;
        not a read refused, whose floor promised nothing). No request when the shard is idle,
        nor after the round that follows its last use."""
        s = self._s
        now = s.clock.now_ms()
        with s.cv:
            last = s.hlc.last
            applied = s.last_applied
            ceiling = s.ceiling
        used = self._served or (self._seen is not None and applied != self._seen)
        self._seen, self._served = applied, False
        if not used:
            return
        wanted = max(last, now << LOGICAL_BITS) + self._lease // 2
        if ceiling < wanted:
            self.extend(wanted)  # to wall + lease: the next one is due in half a lease
