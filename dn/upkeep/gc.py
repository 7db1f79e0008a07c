"""Garbage collection of one shard's objects in the store.

An object is live when the shard's *current* manifest (read afresh from the store) references
it: its range objects; the range objects slot moves still hold (:func:`dn.moves.held`: its own
moves and, once it gave slots away, the other shards' moves, from their manifests, until the
shard that took the slots settled them into its own objects); its checkpoints; the newest
``keep_manifests`` manifest versions; and (for the log, which :mod:`dn.write.log` truncates
itself) nothing here. Everything else under the shard's
``00/``, ``10/`` and ``20/`` prefixes is garbage: inputs of finished compactions, checkpoints that
fell out of the window, old manifest versions, and orphans of flushes or compactions that crashed
before their commit.

Grace. A key is deleted only after it has been seen unreferenced for ``grace_s`` seconds, so a
reader holding a plan (which fetches its objects when the read starts) never finds them gone,
and a commit in flight (object written, manifest not yet) is never collected. After a restart
the grace starts again.

Fencing. Before deleting, the collector checks that the current manifest's epoch is its own;
a stale incarnation raises :class:`dn.errors.Fenced` instead of deleting what a newer one wrote.

Stale listings. A manifest read afresh that is older than the version the engine knows it
committed came from a stale listing: the collector raises ``Unavailable`` and deletes nothing
(what that old version does not reference may be live).

Who calls: the engine's maintenance, under its flush lock; no other thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dn import moves
from dn.errors import Fenced, Unavailable
from dn.objects import codec
from dn.objects.manifest import Manifest, ManifestState
from dn.store.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Collector:
    store: ObjectStore
    shard: int
    grace_s: float
    keep_manifests: int = 8
    pending: dict[str, float] = field(default_factory=dict)  # key -> first seen unreferenced
    deleted: int = 0
    references_s: float = 60.0  # how often the other shards' moves are read again
    others: dict[int, tuple] | None = None  # their moves, as last read (_held)
    others_at: float = 0.0
    waiting: int = 0  # objects out of the live list that moves held at the last scan

    def recheck_due(self, now: float) -> bool:
        """Whether to scan again though nothing changed here: objects only moves held at
        the last scan, and the other shards' moves are due to be read again (their shards
        settle without this one committing anything)."""
        return (
            self.waiting > 0
            and self.others is not None
            and now - self.others_at >= self.references_s
        )

    def scan(self, epoch: int, now: float, version: int = 0) -> int:
        """List the shard's objects and note the unreferenced ones; returns how many await
        deletion. ``version``: the newest manifest version the caller knows is committed."""
        state = self._current(epoch, version)
        live = {codec.range_key(self.shard, a, b) for a, b in state.ranges}
        # and those slot moves still reference (dn.moves): another shard reads them
        held = self._held(state, now) - set(state.ranges)
        self.waiting = len(held)
        live |= {codec.range_key(self.shard, a, b) for a, b in held}
        live |= {codec.checkpoint_key(self.shard, c) for c in state.checkpoints}
        live |= {
            codec.manifest_key(self.shard, v)
            for v in range(max(1, state.version - self.keep_manifests + 1), state.version + 1)
        }
        garbage = set()
        for prefix in (
            codec.range_prefix(self.shard),
            codec.checkpoint_prefix(self.shard),
            codec.manifest_prefix(self.shard),
        ):
            for key in self.store.list(prefix):
                if key in live:
                    continue
                if (
                    prefix == codec.manifest_prefix(self.shard)
                    and codec.last_number(key) > state.version
                ):
                    continue  # a newer version than the one read: never garbage
                garbage.add(key)
        self.pending = {k: self.pending.get(k, now) for k in garbage}
        return len(self.pending)

    def _held(self, state: ManifestState, now: float) -> set[tuple[int, int]]:
        """This shard's objects that slot moves still hold (:func:`dn.moves.held`): its own
        moves' (from the manifest just read), and once it gave slots away (only then can
        another shard reference its objects), the other shards' (their manifests, read again
        every ``references_s``: an object no move holds is never referenced again, so an older
        reading errs only towards keeping)."""
        if not state.moves:
            return set()
        if not any(m.kind == moves.OUT for m in state.moves):
            return moves.held(self.shard, {self.shard: state.moves})
        if self.others is None or now - self.others_at >= self.references_s:
            found: dict[int, tuple] = {}
            for shard in sorted({int(k.split("/")[1]) for k in self.store.list("00/")}):
                if shard != self.shard:
                    other = Manifest(self.store, shard).load()
                    found[shard] = other.moves if other is not None else ()
            self.others, self.others_at = found, now
        return moves.held(self.shard, {**self.others, self.shard: state.moves})

    def collect(self, epoch: int, now: float, version: int = 0) -> int:
        """Delete the pending keys whose grace has passed; returns how many."""
        due = sorted(k for k, t in self.pending.items() if now - t >= self.grace_s)
        if not due:
            return 0
        self._current(epoch, version)  # fenced incarnations delete nothing
        for key in due:
            self.store.delete(key)
            del self.pending[key]
        self.deleted += len(due)
        log.info("shard %d: garbage collection deleted %d objects", self.shard, len(due))
        return len(due)

    def _current(self, epoch: int, version: int):
        state = Manifest(self.store, self.shard).load()
        if state is None or state.version < version:
            # an older manifest than the caller committed: a stale listing, not a fence; what
            # it does not reference may well be live
            raise Unavailable(
                f"shard {self.shard}: the store listed manifest version "
                f"{state.version if state else 'none'}, older than committed version {version} "
                "(a stale listing); collecting nothing"
            )
        if state.epoch != epoch:
            raise Fenced(
                f"shard {self.shard}: the manifest belongs to epoch "
                f"{state.epoch if state else '?'}, not {epoch}; collecting nothing",
                shard=self.shard,
            )
        return state
