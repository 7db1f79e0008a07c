"""The state of one shard, shared by the parts of :class:`dn.engine.Engine`.

An engine is composed of three parts that each own one concern and share this object: the
write path (:class:`dn.write.path.WritePath`), upkeep (:class:`dn.upkeep.scheduler.Upkeep`)
and the read side (:class:`dn.read.snapshots.Snapshots`). This module holds the fields they
share and the few rules every part applies the same way: whether the shard may be used, how
it stops for good, and the oldest readable timestamp.

Locks, and what each guards:

- ``cv`` (a condition over one lock): the in-memory state — catalog, buffers, range and
  checkpoint lists, statistics, the clock and its ceiling, the unknown-outcome mark, the
  idempotency tokens (``tokens``, :class:`dn.write.tokens.TokenTable`), the undecided intents
  (``intents``, :class:`dn.write.intents.Intents`). No I/O happens under it.
- ``flush_lock``: every manifest commit that commits objects, and the objects written for it
  (buffer checkpoints, checkpoints, compaction swaps, retention drops, garbage collection).
- ``manifest_lock`` (reentrant): the manifest itself — every commit or read-back and the
  adoption after it. Upkeep takes it inside ``flush_lock``; an extension of the timestamp
  ceiling (:mod:`dn.upkeep.ceiling`), which writes no object, takes it alone, so it never
  waits behind an upload. Order: ``flush_lock``, then ``manifest_lock``, then ``cv``.
- ``compact_lock``: one compaction at a time (its merging runs outside ``flush_lock``).

The log is touched only by the current group-commit leader (:class:`dn.write.commit.
CommitQueue`). Any thread may read a field under the lock that guards it.

Not here: any behaviour of a part; I/O.
"""

from __future__ import annotations

import logging
import threading

from dn import moves
from dn.catalog import Catalog
from dn.clock import LOGICAL_BITS, Clock, HybridClock
from dn.errors import Closed, DNError, Fenced
from dn.objects import rangeobj
from dn.objects.manifest import Manifest
from dn.read.cache import ObjectCache
from dn.read.reader import Reader
from dn.settings import Settings
from dn.store.base import ObjectStore
from dn.upkeep import compaction
from dn.upkeep.gc import Collector
from dn.write.buffer import Buffer
from dn.write.commit import CommitQueue
from dn.write.intents import Intents
from dn.write.log import Log
from dn.write.tokens import TokenTable

log = logging.getLogger(__name__)


class ShardState:
    """The fields of one open shard (see the module docstring for which lock guards what)."""

    def __init__(
        self,
        store: ObjectStore,
        log_store: ObjectStore,
        shard: int,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.shard = shard
        self.settings = settings
        self.store = store
        self.log_store = log_store
        self.clock = clock
        self.hlc = HybridClock(clock)
        self.cv = threading.Condition(threading.Lock())
        self.flush_lock = threading.Lock()
        self.manifest_lock = threading.RLock()
        self.compact_lock = threading.Lock()
        self.queue = CommitQueue(self.cv, settings.group_commit_max_bytes)
        self.manifest = Manifest(store, shard)
        self.catalog = Catalog()
        self.cache = ObjectCache(settings.cache_bytes)
        self.reader = Reader(store, shard, self.cache)
        self.log: Log | None = None  # set by recovery
        self.epoch = 0
        # the timestamp ceiling of the newest manifest version known committed: no timestamp
        # is issued or promised above it (raised only after the commit that holds it)
        self.ceiling = 0
        # buffers: the mutable one, and the checkpoint queue (frozen, oldest first)
        self.mutable = Buffer(1, clock.monotonic(), self.mirror_room)
        self.frozen: list[Buffer] = []
        # what the manifest says is live, adopted after each manifest commit
        self.ranges: list[tuple[int, int]] = []
        self.checkpoints: list[int] = []
        self.stats: dict[tuple[int, int], dict[int, rangeobj.TableStats]] = {}
        self.sizes: dict[tuple[int, int], int] = {}  # encoded bytes of each live range
        # commits each live range holds: known for every range after the newest checkpoint
        # (flush and compaction set them, recovery reads them from those range objects)
        self.commits: dict[tuple[int, int], int] = {}
        self.policy = compaction.Policy(
            settings.compaction_fanout,
            settings.compaction_base_bytes,
            settings.compaction_max_bytes,
        )
        self.collector = Collector(
            store, shard, settings.gc_grace_s, references_s=settings.gc_references_s
        )
        self.gc_dirty = True  # something may have become garbage since the last scan
        self.manifest_unsure = False  # a manifest commit failed in a way that may have landed
        self.last_applied = 0  # the newest commit ts applied to memory
        self.unknown_lo: int | None = None  # lowest ts of a log write whose outcome is unknown
        # the write parts' tokens: committed ones inside the window, claimed, unsettled
        self.tokens = TokenTable(settings.token_window_s)
        # the transactions' intents applied here and not decided yet (dn.write.txn)
        self.intents = Intents()
        # slot moves this shard took part in (dn.moves; the manifest's, adopted with it), and
        # the slots a write may not touch because of them
        self.moves: tuple = ()
        self.undone: frozenset[int] = frozenset()  # moves undone here (dn.upkeep.handoff)
        self.fencing: frozenset[int] = frozenset()  # being given or taken, not yet recorded
        self.refused: frozenset[int] = frozenset()
        # the read filters of the moves, by (map version, table id, key columns) (dn.read.
        # snapshots.moved_plan): what every read by that map would build again
        self.moved_reads: dict = {}
        self.slot_count = 0
        # compaction waits until then (monotonic): a move's settling rewrites the same ranges,
        # without the slots given away (dn.upkeep.handoff.Handoff.hold_compaction)
        self.compaction_hold_until = 0.0
        self.last_cp_time = clock.monotonic()
        self.broken: DNError | None = None
        self.closed = False
        self.counters = {
            "buffer_checkpoints": 0,
            "checkpoints": 0,
            "compactions": 0,
            "rows_written": 0,
            "replayed_commands": 0,
            "maintain_errors": 0,
            "ceiling_extensions": 0,
            "duplicate_parts": 0,  # parts whose token had committed: answered, not applied
            "txn_prepared": 0,  # intents applied (prepared or replayed)
            "txn_committed": 0,
            "txn_aborted": 0,
            "txn_decided_here": 0,  # intents this shard decided from the store after waiting
        }

    # -- whether the shard may be used ------------------------------------------------------

    def check_usable(self) -> None:
        with self.cv:
            self.check_usable_locked()

    def check_usable_locked(self) -> None:
        if self.closed:
            raise Closed(f"shard {self.shard} is closed")
        if self.broken is not None:
            raise self.broken

    def fail(self, error: DNError) -> None:
        """Stop the shard for good (fenced, or memory no longer matches the log): every
        waiting and later call gets ``error``."""
        with self.cv:
            if self.broken is None:
                self.broken = error
                log.error("shard %d stops: %s", self.shard, error)
            self.queue.fail_all(error)

    def mirror_room(self) -> int:
        """The bytes the buffers' Arrow mirrors may still take (``arrow_mirror_bytes`` less
        what they hold; :mod:`dn.write.arrowmirror`). Any thread: an advisory figure."""
        bufs = [self.mutable, *self.frozen[:]]
        return self.settings.arrow_mirror_bytes - sum(b.mirror_bytes() for b in bufs)

    def state_locked(self) -> str:
        if self.closed:
            return "closed"
        if self.broken is not None:
            return "fenced" if isinstance(self.broken, Fenced) else "broken"
        if self.unknown_lo is not None:
            return "settling"
        return "open"

    def set_moves_locked(self, recorded: tuple) -> None:
        """Adopt the manifest's slot moves (:mod:`dn.moves`) and the writes they refuse."""
        self.moves = recorded
        self.moved_reads = {}  # read filters by (map version, table): made again
        if recorded:
            self.slot_count = recorded[0].count
        self.refused = moves.refused(recorded) | self.fencing

    # -- time ---------------------------------------------------------------------------------

    def future_bound(self) -> int:
        """The latest timestamp the wall clock allows a shard to serve or commit at now: the
        end of its current millisecond plus ``snapshot_future_s`` (decision 0013)."""
        future_ms = int(self.settings.snapshot_future_s * 1000)
        return ((self.clock.now_ms() + future_ms + 1) << LOGICAL_BITS) - 1

    # -- retention ----------------------------------------------------------------------------

    def oldest_readable(self) -> int:
        """The oldest timestamp snapshot and range reads are served for (0: no limit)."""
        if self.settings.retention_s is None:
            return 0
        ms = self.clock.now_ms() - int(self.settings.retention_s * 1000)
        return max(0, ms << LOGICAL_BITS)

    # -- status --------------------------------------------------------------------------------

    def commits_since_checkpoint_locked(self) -> int:
        last = self.checkpoints[-1] if self.checkpoints else 0
        n = sum(b.ncommits for b in self.frozen) + self.mutable.ncommits
        # and the commits of the ranges after the last checkpoint (seed 003 counts commit ids);
        # a range without a known count (recovery took it from a checkpoint a compaction has
        # since dropped) holds at least one, until the checkpoint that compaction writes
        n += sum(self.commits.get(r, 1) for r in self.ranges if r[1] > last)
        return n

    def status(self) -> dict:
        """The state of the shard at a glance."""
        with self.cv:
            buffers = [self.mutable.describe()] + [b.describe() for b in reversed(self.frozen)]
            out = {
                "shard": self.shard,
                "epoch": self.epoch,
                "state": self.state_locked(),
                "clock": self.hlc.last,
                "ceiling": self.ceiling,
                "last_applied": self.last_applied,
                "buffers": buffers,
                "queue_length": len(self.frozen),
                "queue_bytes": sum(b.nbytes for b in self.frozen),  # encoded
                # estimated heap bytes (dn.write.buffer): of the queue, and of every buffer,
                # the figure backpressure bounds (queue_slow_bytes, queue_stop_bytes)
                "queue_memory_bytes": sum(b.memory for b in self.frozen),
                "buffer_memory_bytes": sum(b.memory for b in [self.mutable, *self.frozen]),
                "ranges": list(self.ranges),
                "checkpoints": list(self.checkpoints),
                "last_checkpoint": self.checkpoints[-1] if self.checkpoints else None,
                "commits_since_checkpoint": self.commits_since_checkpoint_locked(),
                "rows_in_memory": sum(b.rows() for b in [self.mutable, *self.frozen]),
                "group_commits": self.queue.groups,
                "commits": self.queue.commands,
                "counters": dict(self.counters),
                "tokens": len(self.tokens),
                "intents": len(self.intents),
            }
        with self.cv:
            sized = [(r, self.sizes.get(r, 0)) for r in self.ranges]
        out["objects"] = {
            "live_ranges": len(sized),
            "live_range_bytes": sum(n for _, n in sized),
            "live_checkpoints": len(out["checkpoints"]),
            "awaiting_gc": len(self.collector.pending),
            # objects out of the live list that slot moves still reference (dn.moves.held)
            "held_by_moves": self.collector.waiting,
            "deleted_by_gc": self.collector.deleted,
            "compaction_debt": self.policy.debt(sized),
            "compaction_bound": self.policy.bound(
                sum(n for _, n in sized if n < self.settings.compaction_max_bytes)
            ),
        }
        out["oldest_readable"] = self.oldest_readable()
        out["log"] = self.log.status() if self.log else None
        out["cache"] = self.cache.status()
        out["manifest_version"] = self.manifest.current.version if self.manifest.current else 0
        return out

    # -- invariants ---------------------------------------------------------------------------

    def _check(self) -> None:
        """Invariants of the whole shard (tests call this after each step)."""
        with self.cv:
            bufs = [*self.frozen, self.mutable]
            for b in bufs:
                b._check()
            for a, b in zip(bufs, bufs[1:]):
                assert a.to_ts is not None and b.from_ts == a.to_ts + 1, "buffers not contiguous"
            if self.ranges:
                assert bufs[0].from_ts == self.ranges[-1][1] + 1, "buffers do not follow ranges"
            for (_, t0), (f1, _) in zip(self.ranges, self.ranges[1:]):
                assert f1 == t0 + 1, "ranges not contiguous"
            assert set(self.stats) >= set(self.ranges), "ranges without statistics"
            assert self.hlc.last >= self.last_applied
            self.catalog._check()
