"""The manifest of one shard: the commit point of its durable state, and its fence.

Each version is a separate object ``00/<shard>/<version>``, created with ``put_if_absent``:
creating version v+1 is the commit, and the conditional put lets only one writer create it.
Opening a shard writes a version with ``epoch + 1``; a stale incarnation's next commit finds
its version taken by a higher epoch and fails :class:`dn.errors.Fenced`.

Body grammar (msgpack, inside the framing of :mod:`dn.objects.codec`, kind ``M``, format
version ``VERSION`` = 2; map keys in the order written)::

    body := {"shard": int, "version": int, "epoch": int,
             "ranges": [[from, to], ...],        committed range objects, ascending, contiguous
             "checkpoints": [ts, ...],           live checkpoints, ascending
             "log_low_seq": int,                 first log object recovery must read
             "ceiling": int,                     the timestamp ceiling (format version 2)
             "moves": [move, ...],               slot moves (format version 3; dn.moves)
             "undone": [id, ...],                moves undone (format 3; absent: none)
             "checkpoint_floor": ts}             checkpoints only above it (format 4; absent: 0)

``version`` is the number in the object's key (a reader checks it); ``epoch`` the incarnation
that wrote it. Contiguous: each range's ``from`` is the ``to`` of the one before it plus one.
``ceiling``: no timestamp the shard has issued (a commit) or promised (a snapshot served) is
above it (:mod:`dn.upkeep.ceiling`, decision 0013); it never decreases from one version to
the next (:meth:`Manifest.commit` and :meth:`Manifest.open_epoch` keep the larger).

A version with slot moves (:class:`dn.moves.Move`, ``Move.to_wire``) is written as format
version 3, one without as version 2 (a shard that never took part in a move writes what it
always did), and as version 4 once a move settled (a move ``absorbed``, a
``checkpoint_floor``: the same body; a version-3 reader must not read it). Versions read
(``READ_VERSIONS``): 4, 3, 2, and 1, the same body without
``ceiling`` (written before the ceiling existed; read as ceiling 0: recovery then derives the
clock from the contents alone). A version-2 body without ``ceiling`` is corrupt.

The current manifest is the newest version. Listings may be stale (an eventually consistent
store, or one that lists from a lagging index): ``load`` reads past the end of a listing, key by
key, until a version is absent (a get of one key is consistent), and it never moves
``current`` back to a version older than one already seen (it raises ``Unavailable``).

A torn newest version (shorter than its header says: a put that failed after writing part of
the object) was never acknowledged, so it is skipped and the next commit goes to the version
after it. Any other corruption raises.

Commits are functions of the current state (``commit(update)``), so that a commit whose
response was lost, and that did land, is found on the retry and the update applied on top of it.
Old versions stay until garbage collection removes them after a grace period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from dn.errors import (
    Corruption,
    Fenced,
    Internal,
    ObjectExists,
    ObjectNotFound,
    Unavailable,
)
from dn.moves import Move
from dn.objects import codec
from dn.store.base import ObjectStore

log = logging.getLogger(__name__)

#: The format version written: its body carries the timestamp ceiling.
VERSION = 2
#: The format version written when the shard has slot moves (its body carries them).
VERSION_MOVES = 3
#: The format version written once moves settled (``absorbed`` moves, ``checkpoint_floor``):
#: a reader of version 3 would read a settled move's slots wrongly, so it must refuse it.
VERSION_SETTLED = 4
#: The format versions read: 1 as well (no ceiling: read as 0).
READ_VERSIONS = (1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class ManifestState:
    version: int
    epoch: int
    ranges: tuple[tuple[int, int], ...] = ()
    checkpoints: tuple[int, ...] = ()
    log_low_seq: int = 0
    ceiling: int = 0
    moves: tuple[Move, ...] = ()
    undone: tuple[int, ...] = ()  # ids of moves undone (a late give or take of one is refused)
    # checkpoints are written only above it: settling moves (dn.upkeep.absorb) dropped those
    # at or below it, whose keys name other contents (format 3; absent: 0)
    checkpoint_floor: int = 0

    @property
    def max_range(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None

    def to_body(self, shard: int) -> dict:
        return {
            "shard": shard,
            "version": self.version,
            "epoch": self.epoch,
            "ranges": [list(r) for r in self.ranges],
            "checkpoints": list(self.checkpoints),
            "log_low_seq": self.log_low_seq,
            "ceiling": self.ceiling,
            **({"moves": [m.to_wire() for m in self.moves]} if self.format >= 3 else {}),
            **({"undone": list(self.undone)} if self.undone else {}),
            **({"checkpoint_floor": self.checkpoint_floor} if self.checkpoint_floor else {}),
        }

    def encode(self, shard: int) -> bytes:
        return codec.encode(codec.KIND_MANIFEST, self.to_body(shard), self.format)

    @property
    def format(self) -> int:
        """The format version this state is written as (module docstring)."""
        if self.checkpoint_floor or any(m.absorbed for m in self.moves):
            return VERSION_SETTLED
        return VERSION_MOVES if self.moves or self.undone else VERSION

    @classmethod
    def from_body(cls, body: dict, version: int = VERSION) -> ManifestState:
        ceiling = body["ceiling"] if version >= 2 else 0
        if type(ceiling) is not int or ceiling < 0:
            raise ValueError(f"ceiling {ceiling!r} is not a timestamp")
        return cls(
            body["version"],
            body["epoch"],
            tuple((a, b) for a, b in body["ranges"]),
            tuple(body["checkpoints"]),
            body["log_low_seq"],
            ceiling,
            tuple(Move.from_wire(w) for w in body["moves"]) if version >= 3 else (),
            tuple(body.get("undone", ())) if version >= 3 else (),
            body.get("checkpoint_floor", 0) if version >= 4 else 0,
        )

    def _check(self) -> None:
        for (_, t0), (f1, t1) in zip(self.ranges, self.ranges[1:]):
            assert f1 == t0 + 1 and t1 >= f1, f"ranges not contiguous at {t0}/{f1}"
        assert list(self.checkpoints) == sorted(set(self.checkpoints))
        assert self.ceiling >= 0


class Manifest:
    """Reads and commits the manifest versions of one shard."""

    def __init__(self, store: ObjectStore, shard: int) -> None:
        self._store = store
        self._shard = shard
        self.current: ManifestState | None = None
        self._next_version = 1

    def load(self) -> ManifestState | None:
        """The newest manifest version that decodes (None for a new shard)."""
        keys = self._store.list(codec.manifest_prefix(self._shard))
        probed: dict[str, bytes] = {}
        n = codec.last_number(keys[-1]) + 1 if keys else 1
        while True:  # a stale listing may miss the newest versions: look past its end
            key = codec.manifest_key(self._shard, n)
            try:
                probed[key] = self._store.get(key)
            except ObjectNotFound:
                break
            keys.append(key)
            n += 1
        self._next_version = n
        for key in reversed(keys):
            try:
                state = self._read(key, probed.get(key))
            except ObjectNotFound:
                continue
            except Corruption as exc:
                if not exc.truncated:
                    raise
                log.warning("skipping torn manifest version (a failed write): %s", exc)
                continue
            self._check_not_stale(state.version)
            self.current = state
            return state
        self._check_not_stale(0)
        self.current = None
        return None

    def _check_not_stale(self, version: int) -> None:
        """A listing that ends below the version this process committed or read is stale (an
        eventually consistent store); adopting it would roll memory back, so refuse."""
        if self.current is not None and version < self.current.version:
            self._next_version = self.current.version + 1
            raise Unavailable(
                f"shard {self._shard}: the store listed manifest versions up to {version}, "
                f"older than version {self.current.version} already seen (a stale listing); "
                "retry"
            )

    def _read(self, key: str, data: bytes | None = None) -> ManifestState:
        if data is None:
            data = self._store.get(key)
        body = codec.decode(codec.KIND_MANIFEST, data, key, READ_VERSIONS)
        try:
            state = ManifestState.from_body(body, codec.version_of(data))
        except (KeyError, TypeError, ValueError) as exc:
            raise Corruption(f"object {key} has a malformed body: {exc}", key=key) from exc
        codec.check_key_numbers(key, (state.version,))
        return state

    def open_epoch(self) -> ManifestState:
        """Take ownership of the shard: commit a version with a higher epoch (and the same
        contents and ceiling as the newest version)."""
        while True:
            prev = self.load()
            epoch = (prev.epoch if prev else 0) + 1
            base = prev or ManifestState(0, 0)
            state = replace(base, version=self._next_version, epoch=epoch)
            try:
                self._put(state)
            except ObjectExists:
                continue  # another opener raced us; read again and go above it
            self.current = state
            return state

    def commit(self, update: Callable[[ManifestState], ManifestState]) -> ManifestState:
        """Commit ``update(current)`` as the next version; Fenced if a newer epoch owns it."""
        assert self.current is not None, "open_epoch first"
        mine = self.current.epoch
        while True:
            prev = self.current
            new = update(prev)
            # the ceiling never goes down: whatever the update, keep the larger
            ceiling = max(new.ceiling, prev.ceiling)
            state = replace(new, version=self._next_version, epoch=mine, ceiling=ceiling)
            state._check()
            data = state.encode(self._shard)
            key = codec.manifest_key(self._shard, state.version)
            try:
                self._store.put_if_absent(key, data)
            except ObjectExists:
                if self._resolve_conflict(key, data, mine):
                    return self.current  # our own write had landed: done
                continue
            self.current = state
            self._next_version = state.version + 1
            return state

    def _resolve_conflict(self, key: str, data: bytes, mine: int) -> bool:
        """Version ``key`` exists. Work out whose it is and move ``current`` accordingly;
        True when it is exactly the version we tried to write (a lost acknowledgement)."""
        try:
            existing = self._store.get(key)
        except ObjectNotFound:
            existing = None
        if existing == data:
            self.current = self._read(key)
            self._next_version = self.current.version + 1
            return True
        newest = self.load()
        if newest is None or newest.epoch > mine:
            raise Fenced(
                f"shard {self._shard}: a newer incarnation (epoch "
                f"{newest.epoch if newest else '?'}) owns the manifest; this one (epoch {mine}) "
                "can no longer commit",
                shard=self._shard,
            )
        if newest.epoch < mine:
            raise Internal(f"manifest of shard {self._shard} went back to epoch {newest.epoch}")
        # Same epoch: an earlier commit of ours whose response was lost, or a torn version.
        # ``load`` made the newest valid one current; the caller applies its update on top.
        return False

    def _put(self, state: ManifestState) -> None:
        data = state.encode(self._shard)
        self._store.put_if_absent(codec.manifest_key(self._shard, state.version), data)
        self._next_version = state.version + 1
