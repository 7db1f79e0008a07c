"""One shard's side of a slot move: giving slots away, taking them over, settling the move
(issue 17; what a move is and means: :mod:`dn.moves`; the protocol: decision 0018).

The coordinator drives a move of slots ``X`` from shard ``A`` to shard ``B`` as map version
``id``; each step is idempotent (a retry after a lost answer does nothing twice):

1. ``A.give(id, X, count, B)``: ``A`` refuses writes to ``X`` from now (in memory at once, so
   no commit of ``X`` can take a timestamp above the ``H`` it is about to pick); ``H`` = its
   clock, made a floor (every commit at or below it has landed, every intent at or below it
   is decided: :meth:`dn.read.snapshots.Snapshots.advance_floor`); its buffers are written
   out, so every version of ``X`` at or below ``H`` is in range objects; then the ``out`` move
   is committed to its manifest (so a restarted ``A`` still refuses ``X``), and the handover
   returned: the sources holding ``X``'s history (:func:`dn.moves.handover`), the table ids
   they use, and ``A``'s catalog (to match tables by name).
2. ``B.take(id, A, X, count, handover)``: ``B``'s clock goes above ``H`` (durably: its ceiling
   covers ``H``), so each commit of ``X`` on ``B`` is above ``H``; the ``in`` move is committed to
   its manifest with the sources and the tables matched. ``B`` refuses writes to
   ``X`` until the move is done.
3. The coordinator's commit point: its cluster record's slot map version ``id``.
4. ``A.settle(id, True)``, then ``B.settle(id, True)``: both mark the move done (``B`` then
   takes writes to ``X``); ``settle(id, False)`` before the commit point removes it (``A``
   takes writes to ``X`` again). A coordinator that restarts resolves a pending move from its
   record: forward if the map version was committed, else back.

Reads stay right throughout: a reader names its map version, and each shard reads by the
moves up to it (:func:`dn.moves.read_slots`); before ``B`` takes writes no version of ``X``
exists above ``H``, so the states before and after the move agree until then.

Writes are checked here too (:func:`check_command_locked`): under the lock, at stamp time, a
command touching a refused slot raises :class:`dn.errors.Moved`. Only a shard with refused
slots hashes keys.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dn import moves
from dn.catalog import OP_WRITE, WRITE_OPS
from dn.errors import Conflict, InvalidArgument, Moved
from dn.moves import IN, OUT, Group, Move
from dn.slots import key_slots
from dn.state import ShardState
from dn.upkeep.absorb import Absorber

log = logging.getLogger(__name__)

#: How long a shard's background compaction waits once it is about to give slots, or gave or
#: took some (seconds, at most: settling the moves ends the wait). Settling rewrites the
#: history the moves name (an old owner's without the slots it gave, a new owner's with the
#: rows it took): a compaction of those ranges in between is done again, and it comes just
#: as the step writes the old owners' buffers out (more ranges), when readers first go
#: through the references and the writers first meet the new map (decision 0018 item 22).
COMPACTION_HOLD_S = 120.0

#: A give writes the buffers out before it fences, up to this many times while what came in
#: meanwhile is at least ``PREFLUSH_BYTES`` (encoded): writes to the moving slots wait only
#: for the last, small write-out.
PREFLUSH_ROUNDS = 3
PREFLUSH_BYTES = 1 << 20


class Handoff:
    """Give, take and settle slot moves on one shard (module docstring)."""

    def __init__(self, state: ShardState, upkeep: Any, snapshots: Any) -> None:
        self._s = state
        self._up = upkeep
        self._snap = snapshots
        # one give, take, settle or absorb at a time: a resend that arrives while the first
        # call still runs waits for it and then finds the move recorded (or undone); a give
        # reads the moves and the live ranges an absorb changes together
        self._lock = threading.Lock()
        self.absorber = Absorber(state, upkeep)
        upkeep.absorb = self.absorb_due

    def absorb(self) -> bool:
        """Settle the done moves into this shard's own objects now (:mod:`dn.upkeep.absorb`);
        False when there was nothing to settle yet."""
        with self._lock:
            return self.absorber.run()

    def absorb_due(self) -> bool:
        """From maintenance: :meth:`absorb` once a move waited ``absorb_after_s``, unless a
        move step holds the lock now (the next round tries again)."""
        if not self.absorber.due() or not self._lock.acquire(blocking=False):
            return False
        try:
            return self.absorber.run()
        finally:
            self._lock.release()

    def hold_compaction(self) -> None:
        """Background compaction waits (:data:`COMPACTION_HOLD_S` at most): a move is about
        to be given here, or was given or taken, and its settling rewrites these ranges."""
        s = self._s
        with s.cv:
            until = s.clock.monotonic() + COMPACTION_HOLD_S
            s.compaction_hold_until = max(s.compaction_hold_until, until)

    def give(self, move_id: int, slots: Any, count: int, to_shard: int) -> dict:
        """Step 1 (module docstring): fence ``slots``, pick ``H``, write the buffers out,
        record the out move; returns the handover (also for a move already recorded)."""
        self.hold_compaction()
        with self._lock:
            return self._give(move_id, frozenset(slots), count, to_shard)

    def _give(self, move_id: int, slots: frozenset[int], count: int, to_shard: int) -> dict:
        s = self._s
        found = self._recorded(move_id, OUT, slots, to_shard)
        if found is not None:
            return self._handover(found)
        # the buffers written out first, with the slots still taking writes, again while what
        # came meanwhile is large: the fenced time below writes out only a little
        for _ in range(PREFLUSH_ROUNDS):
            self._up.freeze()
            self._up.flush()
            with s.cv:
                if s.mutable.nbytes < PREFLUSH_BYTES:
                    break
        with s.cv:
            s.check_usable_locked()
            self._check_count(count)
            gone = slots & s.refused
            if gone or not slots:
                raise InvalidArgument(
                    f"shard {s.shard} cannot give slots it does not hold now: {sorted(gone)[:16]}"
                )
            s.slot_count = count
            s.fencing |= slots  # from now no commit of these slots takes a ts
            s.refused |= slots
            h = s.hlc.peek()
        try:
            h = self._snap.advance_floor(h)  # every commit at or below H landed, intents decided
            self._up.freeze()
            self._up.flush()  # every version at or below H is in a range object

            def record(ms: tuple[Move, ...], ranges: tuple) -> tuple[Move, ...]:
                # what it hands over: the live ranges of the version it is committed over
                groups = moves.handover(ms, slots, s.shard, list(ranges), h)
                return _added(ms, Move(move_id, OUT, to_shard, count, slots, h, False, groups))

            self._up.commit_moves(record, ranges=True)
            move = next(m for m in s.moves if m.id == move_id)  # as committed
        finally:
            with s.cv:  # recorded, or not: then the slots are this shard's again
                s.fencing -= slots
                s.set_moves_locked(s.moves)
        log.info("shard %d: gives %d slots to shard %d at %d (move %d)",
                 s.shard, len(slots), to_shard, h, move_id)  # fmt: skip
        return self._handover(move)

    def take(self, move_id: int, from_shard: int, slots: Any, count: int, handover: dict) -> int:
        """Step 2 (module docstring): record the in move of ``slots`` from ``from_shard`` at
        the handover's ``H``, with this shard's clock above it; returns ``H``."""
        self.hold_compaction()
        with self._lock:
            return self._take(move_id, from_shard, frozenset(slots), count, handover)

    def _take(
        self, move_id: int, from_shard: int, slots: frozenset[int], count: int, handover: dict
    ) -> int:
        s = self._s
        found = self._recorded(move_id, IN, slots, from_shard)
        if found is not None:
            return found.ts
        h = handover["ts"]
        with s.cv:
            s.check_usable_locked()
            self._check_count(count)
            s.slot_count = count
            s.hlc.advance(h)  # each later commit here is above H
            s.fencing |= slots  # until the move is done
            s.refused |= slots
            mine = _by_name(s.catalog.tables())
        try:
            self._snap.promise(h)  # durable: a restart starts the clock above H too
            theirs = {tid: tuple(key) for *key, tid in handover["catalog"]}
            tables = tuple(
                (q, mine[theirs[ptid]], qtid)
                for q, ptid, qtid in handover["tables"]
                if theirs.get(ptid) in mine
            )
            groups = tuple(Group.from_wire(g) for g in handover["groups"])
            move = Move(move_id, IN, from_shard, count, slots, h, False, groups, tables)
            self._up.commit_moves(lambda ms: _added(ms, move))
        finally:
            with s.cv:
                s.fencing -= slots
                s.set_moves_locked(s.moves)
        log.info("shard %d: takes %d slots from shard %d at %d (move %d)",
                 s.shard, len(slots), from_shard, h, move_id)  # fmt: skip
        return h

    def settle(self, move_id: int, committed: bool) -> bool:
        """Step 4 (module docstring): the move passed the coordinator's commit point (done)
        or did not (removed, and its id kept as undone: a late give or take of it is refused).
        False when there was nothing to do (settled already); InvalidArgument for a commit of
        a move this shard never recorded."""
        with self._lock:
            found = next((m for m in self._s.moves if m.id == move_id), None)
            if committed:
                if found is None:
                    raise InvalidArgument(f"shard {self._s.shard} has no move {move_id} to commit")
                if found.done:
                    return False
                self._up.commit_moves(lambda ms: moves.settle(ms, move_id, True))
                return True
            if found is None and move_id in self._s.undone:
                return False
            self._up.commit_moves(lambda ms: moves.settle(ms, move_id, False), undo=move_id)
            return found is not None

    def join(self, count: int, source_ids: list) -> bool:
        """Record this shard's join (:func:`dn.moves.joined`): it was given the catalog after
        the tables were made; ``source_ids``, shard 0's ``[db, name, id]`` of each live table.
        Its live tables of those names are served from shard 0's ids on. False: recorded
        already (or nothing to map)."""
        with self._lock:
            s = self._s
            with s.cv:
                s.check_usable_locked()
                mine = {(t.db, t.name): t.id for t in s.catalog.tables() if t.drop_ts is None}
                ts = s.hlc.peek()
            tables = tuple(
                (0, mine[(db, name)], tid) for db, name, tid in source_ids if (db, name) in mine
            )
            if not tables or moves.joined(s.moves, count, ts, tables) is s.moves:
                return False
            self._up.commit_moves(lambda ms: moves.joined(ms, count, ts, tables))
            with s.cv:
                s.set_moves_locked(s.moves)
            log.info("shard %d: joined: %d table(s) served from shard 0's ids", s.shard,
                     len(tables))  # fmt: skip
            return True

    def status(self) -> dict:
        """The moves and refused slots at a glance."""
        with self._s.cv:
            ms = self._s.moves
            return {
                "slot_count": self._s.slot_count,
                "refused_slots": len(self._s.refused),
                "moves": [
                    {
                        "id": m.id,
                        "kind": m.kind,
                        "peer": m.peer,
                        "slots": len(m.slots),
                        "ts": m.ts,
                        "done": m.done,
                        "absorbed": m.absorbed,
                        "sources": sum(len(g.sources) for g in m.groups),
                    }  # fmt: skip
                    for m in ms
                    if m.id != moves.JOIN
                ],
                "joined": any(m.id == moves.JOIN for m in ms),
                "pending_moves": [m.id for m in ms if not m.done],
                **self.absorber.pending(ms),
            }

    def _recorded(self, move_id: int, kind: str, slots: frozenset, peer: int) -> Move | None:
        """The move ``move_id`` if this shard recorded it (the same move: else, or if it was
        undone, InvalidArgument)."""
        if move_id in self._s.undone:
            raise InvalidArgument(f"move {move_id} was undone on shard {self._s.shard}")
        for m in self._s.moves:
            if m.id == move_id:
                if (m.kind, m.slots, m.peer) != (kind, slots, peer):
                    raise InvalidArgument(
                        f"move {move_id} is recorded on shard {self._s.shard} as another move "
                        f"({m.kind} {len(m.slots)} slots, peer {m.peer})"
                    )
                return m
        return None

    def _check_count(self, count: int) -> None:
        if type(count) is not int or count < 1 or count > 1 << 16:
            raise InvalidArgument(f"slot count {count!r} is not in 1..65536")
        if self._s.slot_count and count != self._s.slot_count:
            raise InvalidArgument(
                f"slot count {count} differs from this shard's moves' {self._s.slot_count}"
            )

    def _handover(self, move: Move) -> dict:
        """What ``take`` needs of an out move (module docstring)."""
        s = self._s
        with s.cv:
            catalog = [[*key, tid] for key, tid in _by_name(s.catalog.tables()).items()]
            ids = [t.id for t in s.catalog.tables()]
            tables = [[s.shard, tid, tid] for tid in ids]
            for m in s.moves:  # the ids of the sources of other shards this one hands on
                if m.kind == IN:
                    tables.extend([q, mine, theirs] for q, mine, theirs in m.tables)
        return {
            "id": move.id,
            "ts": move.ts,
            "groups": [g.to_wire() for g in move.groups],
            "tables": tables,
            "catalog": catalog,
        }


def _by_name(tables: list) -> dict[tuple, int]:
    """Each table version's (db, name, how many versions of that name came after it) -> id:
    how two shards, whose ids of a table differ (its create timestamp there), match them. The
    newest versions match first: a shard added by a reshard has only the live one."""
    seen: dict[tuple[str, str], int] = {}
    out: dict[tuple, int] = {}
    for t in sorted(tables, key=lambda t: -t.create_ts):
        n = seen.get((t.db, t.name), 0)
        seen[(t.db, t.name)] = n + 1
        out[(t.db, t.name, n)] = t.id
    return out


def _added(ms: tuple[Move, ...], move: Move) -> tuple[Move, ...]:
    """``ms`` with ``move`` (once: a commit retried after a lost answer finds it there)."""
    return ms if any(m.id == move.id for m in ms) else (*ms, move)


def check_command_locked(s: ShardState, p: Any) -> None:
    """Under the lock, for a shard with slot moves, at stamp time: Moved when command ``p`` (a
    write, or a transaction's prepare) touches a slot this shard may not write now; Conflict
    when a transaction's snapshot is older than the move that brought one of its slots here
    (what the old owner committed after the snapshot is not in this shard's memory, which
    the check against the snapshot reads). Keys are hashed only when either can apply, and
    then before the lock where they can be (:func:`command_slots`, ``Pending.slots``)."""
    stale: set[int] = set()
    if p.txn is not None and p.txn.snapshot is not None:
        stale = {x for m in s.moves if m.kind == IN and m.ts > p.txn.snapshot for x in m.slots}
    if not s.refused and not stale:
        return
    slots = p.slots if p.slots is not None else command_slots(s.slot_count, p)
    hit = s.refused & slots
    if hit:
        # taking: the id of a move in that this shard has not settled yet and that every one
        # of these slots waits on (a client whose map is at least that new has nothing to
        # refresh: it waits and sends here again)
        taking = {m.id for m in s.moves if m.kind == IN and not m.done and hit <= m.slots}
        raise Moved(
            f"shard {s.shard}: slots {sorted(hit)[:16]} are not this shard's to write now (a "
            "slot move gave them away or is in progress); refresh the slot map and retry",
            shard=s.shard,
            slots=sorted(hit)[:16],
            taking=min(taking) if taking else None,
        )
    if stale & slots:
        raise Conflict(
            f"shard {s.shard}: slots {sorted(stale & slots)[:16]} moved here after the "
            "transaction's snapshot; run it again from a newer snapshot"
        )


def hash_slots(s: ShardState, ps: list) -> None:
    """Lock not held: on a shard with slots fenced, each command's slots (``Pending.slots``),
    so that the check under the lock only intersects them."""
    if s.refused and s.slot_count:
        for p in ps:
            if p.txn is not None or p.op in WRITE_OPS:
                p.slots = command_slots(s.slot_count, p)


def command_slots(count: int, p: Any) -> set[int]:
    """The slots of the keys command ``p`` writes (each table's keys hashed by its own key
    type); no lock needed."""
    if p.txn is not None:
        by_id = {t.id: t for t in p.txn.tables}
        per_table = [(by_id[tid], list(ks)) for tid, ks in p.txn.keys.items()]
    else:
        t, data, dels = p.table, p.args[1], p.args[2]
        if p.op == OP_WRITE:
            pos = t.pk_pos
            if len(pos) == 1:
                keys = [r[pos[0]] for r in data]
            else:
                keys = [tuple(r[i] for i in pos) for r in data]
        else:
            keys = [k for cols in data for k in t.column_keys(cols)]
        per_table = [(t, keys + list(dels))]
    slots: set[int] = set()
    for t, keys in per_table:
        int64 = len(t.pk_pos) == 1 and t.columns[t.pk_pos[0]][1] == "int64"
        slots.update(key_slots(keys, count, int64))
    return slots
