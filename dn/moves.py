"""Slot moves one shard took part in, and what they mean for its writes and reads (issue 17,
decision 0018).

A cluster routes each key by its slot (``crc32(msgpack(key)) % count``, :mod:`dn.slots`)
through a versioned slot map. Moving a slot set ``X`` from shard ``A`` to shard ``B`` at the
handoff timestamp ``H`` makes map version ``id``; each of the two shards records the move in
its manifest (:mod:`dn.objects.manifest`), ``A`` as an ``out`` move, ``B`` as an ``in`` move:

- every commit of a key of ``X`` at or below ``H`` is ``A``'s, every one above ``H`` is ``B``'s;
- ``B`` starts from *references* to the objects that hold ``X``'s history up to ``H``, read
  filtered: nothing is copied. A reference is a *source* ``(shard, from, to, lo, hi)``: the
  rows of range object ``20/<shard>/<from>_<to>`` of the moved slots with ``lo < ts <= hi``
  (the time that shard owned them). ``A`` hands over its own live objects for ``(L, H]``
  (``L``: when its ownership began) after the sources it read for ``X`` itself, so a
  *group*'s sources are in time order. Slots that came to ``A`` by different moves have
  different histories: a move carries one group per history;
- ``done`` is False until the coordinator tells the shard the move passed its commit point
  (the cluster record's map version ``id``); a move that did not is removed again.

**Writes.** A shard refuses (:class:`dn.errors.Moved`) a write touching a slot whose latest
move here is ``out`` (given away, or being given away), or an ``in`` not ``done`` yet.

**Reads at snapshot S, for a client holding map version c.** The moves *applied* are those
with ``id <= c`` (c None: the ``done`` ones). A ``done`` move not applied makes the read
:class:`dn.errors.Moved` (the client's map is older than the move: refresh it; the new map
serves every snapshot, also those before the move, and the old owner may be retired). A slot
is served, at every snapshot, by the shard the client's map names: the moves say where its
history is. A read lists its sources in an order that puts each key's versions in ascending
ts (readers let a later source's version win):

1. the shard's own objects, leaving out every slot with an applied move;
2. for each slot whose latest applied move is an ``in``: that move's group sources (its
   history up to ``H``, oldest first), then the shard's own objects for ``ts > H`` (what it
   committed since);

and a slot whose latest applied move is an ``out`` is read from none. Each version of a key
is read from exactly one source: the shard that committed it, for the time it owned the slot.

**Joins.** A shard a reshard adds (or brings back) is given the cluster's catalog when it
starts, after the tables were made elsewhere: its own definitions begin then. Its *join*
(:func:`joined`) is the move of no slot from shard 0 at that time, done and settled, whose
``tables`` map its tables to shard 0's: the shard serves each at every snapshot shard 0 does
(holding no row of it from before). Without it a read at an older snapshot found no table
there until the shard took slots, and for ever if a failed reshard left it none.

Pure data and functions; any thread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dn.errors import Moved
from dn.slots import pack_set, unpack_set

OUT = "out"
IN = "in"


#: A reference: rows of range object ``20/<shard>/<from>_<to>`` with ``lo < ts <= hi``.
Source = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Group:
    """Slots with one history, and the sources that hold it, oldest first."""

    slots: frozenset[int]
    sources: tuple[Source, ...]

    def to_wire(self) -> list:
        return [pack_set(self.slots), [list(x) for x in self.sources]]

    @classmethod
    def from_wire(cls, w: list) -> Group:
        return cls(unpack_set(w[0]), tuple((a, b, c, d, e) for a, b, c, d, e in w[1]))


@dataclass(frozen=True, slots=True)
class Move:
    """One move of a slot set, as one of its two shards records it (module docstring)."""

    id: int  # the slot map version the move makes
    kind: str  # OUT or IN
    peer: int  # the other shard
    count: int  # the cluster's slot count
    slots: frozenset[int]
    ts: int  # H
    done: bool = False
    groups: tuple[Group, ...] = ()  # what was handed over (OUT) or taken over (IN)
    # IN: (source shard, own table id, that shard's id of the same table)
    tables: tuple[tuple[int, int, int], ...] = ()
    # its rows settled into the shard's live objects (dn.upkeep.absorb): IN, copied in from the
    # sources (whose references are dropped: ``groups`` empty); OUT, dropped from them
    absorbed: bool = False

    def to_wire(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "peer": self.peer,
            "count": self.count,
            "slots": pack_set(self.slots),
            "ts": self.ts,
            "done": self.done,
            "groups": [g.to_wire() for g in self.groups],
            "tables": [list(t) for t in self.tables],
            **({"absorbed": True} if self.absorbed else {}),
        }

    def source_table(self, source: int, shard: int, table_id: int) -> int | None:
        """The id that source shard ``source`` has for this shard's table ``table_id`` (its
        own id when the source is this shard ``shard``; None: the source has no such table)."""
        if source == shard:
            return table_id
        return next((t for q, mine, t in self.tables if q == source and mine == table_id), None)

    @classmethod
    def from_wire(cls, w: dict) -> Move:
        m = cls(
            w["id"],
            w["kind"],
            w["peer"],
            w["count"],
            unpack_set(w["slots"]),
            w["ts"],
            bool(w["done"]),
            tuple(Group.from_wire(g) for g in w["groups"]),
            tuple((a, b, c) for a, b, c in w["tables"]),
            bool(w.get("absorbed", False)),
        )
        if m.kind not in (OUT, IN) or not all(0 <= s < m.count for s in m.slots):
            raise ValueError(f"malformed move {m.id}")
        return m


#: The id of a shard's join (module docstring): below every move's (a slot map version >= 1).
JOIN = 0


def joined(
    moves: tuple[Move, ...], count: int, ts: int, tables: tuple[tuple[int, int, int], ...]
) -> tuple[Move, ...]:
    """``moves`` with the join recorded at ``ts`` (module docstring): its table mappings
    ``tables`` added to any earlier join's (a shard back after a retirement has one)."""
    old = next((m for m in moves if m.id == JOIN), None)
    have = old.tables if old is not None else ()
    new = tuple(sorted(set(have) | set(tables)))
    if old is not None and new == have:
        return moves
    join = Move(JOIN, IN, 0, count, frozenset(), ts, True, (), new, absorbed=True)
    return (join, *(m for m in moves if m.id != JOIN))


def _latest(moves: tuple[Move, ...]) -> dict[int, Move]:
    """Each slot's latest move."""
    latest: dict[int, Move] = {}
    for m in sorted(moves, key=lambda m: m.id):
        for s in m.slots:
            latest[s] = m
    return latest


def refused(moves: tuple[Move, ...]) -> frozenset[int]:
    """The slots a write here may not touch now (module docstring)."""
    return frozenset(s for s, m in _latest(moves).items() if m.kind == OUT or not m.done)


@dataclass(frozen=True, slots=True)
class ReadSlots:
    """The sources of a read at one snapshot beyond the shard's own objects (module
    docstring): ``moved``, the slots left out of the own objects' first reading; ``after``,
    per in move that is some slots' latest: (its slots here, its groups' sources restricted to
    them, its H: the own objects are read again for those slots above it)."""

    count: int
    moved: frozenset[int]
    after: tuple[tuple[frozenset[int], tuple[tuple[frozenset[int], Source], ...], int, Move], ...]

    @property
    def plain(self) -> bool:
        return not self.moved


NONE = ReadSlots(0, frozenset(), ())


def read_slots(
    moves: tuple[Move, ...], snapshot: int, map_version: int | None, shard: int = -1
) -> ReadSlots:
    """The sources of a read at ``snapshot`` by a client holding ``map_version`` (module
    docstring); raises Moved when that map is older than a move done here."""
    if not moves:
        return NONE
    applied = []
    for m in sorted(moves, key=lambda m: m.id):
        if (map_version is None and m.done) or (map_version is not None and m.id <= map_version):
            applied.append(m)
        elif m.done:  # an older map than a move done here: the new map serves every snapshot
            way = "to" if m.kind == OUT else "from"
            raise Moved(
                f"shard {shard}: slot map version {m.id} moved slots {way} shard {m.peer} at "
                f"{m.ts}; a read at {snapshot} with map version {map_version} must refresh "
                "its map",
                shard=shard,
                map_version=m.id,
                slots=sorted(m.slots)[:16],
            )
    # a slot whose latest move's rows are settled into the live objects is read as any other
    latest = {x: m for x, m in _latest(tuple(applied)).items() if not m.absorbed}
    if not latest:
        return NONE
    mine: dict[int, set[int]] = {}
    for s, m in latest.items():
        if m.kind == IN:
            mine.setdefault(m.id, set()).add(s)
    after = []
    for m in applied:
        if m.id in mine:
            here = frozenset(mine[m.id])
            srcs = tuple((g.slots & here, x) for g in m.groups if g.slots & here for x in g.sources)
            after.append((here, srcs, m.ts, m))
    return ReadSlots(moves[0].count, frozenset(latest), tuple(after))


def handover(
    moves: tuple[Move, ...], slots: frozenset[int], shard: int, ranges: Any, h: int
) -> tuple[Group, ...]:
    """What an out move of ``slots`` at ``h`` hands over: per history, the sources of the
    slots' latest in move here (oldest first), then this shard's live ``ranges`` for the time
    it has owned them (since that move's H, or since the start)."""
    latest = _latest(moves)
    by: dict[int, set[int]] = {}
    for s in slots:
        m = latest.get(s)
        mid = m.id if m is not None and m.kind == IN and not m.absorbed else -1
        by.setdefault(mid, set()).add(s)  # -1: the own objects hold the whole history
    ins = {m.id: m for m in moves}
    out = []
    for mid, here in sorted(by.items()):
        lo = ins[mid].ts if mid >= 0 else 0
        own = [(shard, f, t, lo, h) for f, t in ranges if t > lo]
        if mid < 0:
            out.append(Group(frozenset(here), tuple(own)))
            continue
        for g in ins[mid].groups:  # one history per group of that move
            if g.slots & here:
                out.append(Group(g.slots & here, (*g.sources, *own)))
    return tuple(out)


def settle(moves: tuple[Move, ...], move_id: int, committed: bool) -> tuple[Move, ...]:
    """The moves once ``move_id`` is known committed (marked done) or not (removed)."""
    if committed:
        return tuple(replace(m, done=True) if m.id == move_id else m for m in moves)
    return tuple(m for m in moves if m.id != move_id)


@dataclass(frozen=True, slots=True)
class Absorb:
    """What settling a shard's done moves into its live objects does (:mod:`dn.upkeep.absorb`):
    ``copy``, the sources whose rows come in, as ``(slots, source, move)``, each key's oldest
    first; ``drop``, slot -> ts: the own rows of that slot at or below it go (``NO_TS``: all);
    ``marked``, the moves then absorbed; ``h``, the newest ts of a row copied or dropped;
    ``h_copy``, of a row copied."""

    copy: tuple[tuple[frozenset[int], Source, Move], ...]
    drop: dict[int, int]
    marked: frozenset[int]
    h: int
    h_copy: int


#: ``Absorb.drop``: every own row of the slot goes.
NO_TS = (1 << 63) - 1


def absorbable(moves: tuple[Move, ...]) -> Absorb | None:
    """The done moves whose rows can settle into the live objects now, and how (None: none).

    A move is settled once each of its slots either has it as its latest move or has a later
    move that is done (a pending one may be undone, making this one the latest again). For the
    slots whose latest move it is: an ``in`` move's sources are copied in and the own rows at
    or below its H dropped (they are older periods' rows, which its sources hold too: with
    the copy, the own objects hold the slots' whole history); an ``out`` move's own rows are
    dropped (its peer reads them through the references, which name objects, not live ones).
    An ``in`` move's references go once settled: a later out move handed on those it needs."""
    latest = _latest(moves)
    copy: list[tuple[frozenset[int], Source, Move]] = []
    drop: dict[int, int] = {}
    marked: set[int] = set()
    h = h_copy = 0
    for m in sorted(moves, key=lambda m: m.id):
        if not m.done or m.absorbed:
            continue
        if any(latest[x] is not m and not latest[x].done for x in m.slots):
            continue
        here = frozenset(x for x in m.slots if latest[x] is m)
        marked.add(m.id)
        if not here:
            continue
        h = max(h, m.ts)
        for x in here:
            drop[x] = m.ts if m.kind == IN else NO_TS
        if m.kind == IN:
            h_copy = max(h_copy, m.ts)
            copy.extend((g.slots & here, src, m) for g in m.groups if g.slots & here
                        for src in g.sources)  # fmt: skip
    if not marked:
        return None
    return Absorb(tuple(copy), drop, frozenset(marked), h, h_copy)


def absorbed(moves: tuple[Move, ...], marked: frozenset[int]) -> tuple[Move, ...]:
    """The moves once ``marked`` are settled: absorbed, an in move's references dropped."""
    return tuple(
        replace(m, absorbed=True, groups=() if m.kind == IN else m.groups)
        if m.id in marked else m
        for m in moves
    )  # fmt: skip


def held(shard: int, manifests: dict[int, tuple[Move, ...]]) -> set[tuple[int, int]]:
    """Shard ``shard``'s range objects that some shard's moves still read or may hand on,
    from each shard's moves (``manifests``: shard -> its recorded moves): the sources named by
    every move pending, every in move not yet absorbed, and every out move done whose peer has
    not absorbed its side yet (or whose peer's record was not seen). A reference is only ever
    made from one that holds (a give hands on the giver's own objects or the sources it holds
    itself), so an object no move holds is never referenced again: garbage once not live."""
    out: set[tuple[int, int]] = set()
    for ms in manifests.values():
        for m in ms:
            if m.done and m.kind == OUT:
                peer = manifests.get(m.peer)
                if peer is not None and any(p.id == m.id and p.absorbed for p in peer):
                    continue
            elif m.done and m.absorbed:
                continue
            out |= {(x[1], x[2]) for g in m.groups for x in g.sources if x[0] == shard}
    return out
