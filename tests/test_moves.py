"""Slot moves on the engine (issue 17, decision 0018): shards give and take slot sets by
reference, and every read at every snapshot still equals the model.

Engines of one cluster share one memory store and are driven in-process the way the
coordinator drives them (:mod:`dn.upkeep.handoff`): ``give`` on the old owner, ``take`` on the
new one, then ``settle``. A model keeps every committed version; reads at recorded snapshots
(before, at and after each move, and after restarts, compaction and garbage collection) are
checked against it through every read path: dict scans, Arrow scans, streaming batches, point
reads and change feeds with their change types. A key's versions must come from exactly one
shard (the union of the shards' reads has no key twice). No Ray.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from dn import moves
from dn.engine import Engine
from dn.errors import InvalidArgument, Moved
from dn.objects import codec
from dn.settings import Settings
from dn.slots import slots_py
from dn.write.part import WritePart
from dn.write.tokens import TokenMinter

TABLES = {
    "t": ({"k": "int64", "v": "string"}, "k"),
    "s": ({"k": "string", "v": "int64"}, "k"),
    "c": ({"a": "string", "b": "int64", "v": "float64"}, ["a", "b"]),
}
COUNT = 32
MINT = TokenMinter()


def _settings() -> Settings:
    # small objects compact at once: moves must survive their inputs being collected
    # and the other shards' moves read at every collection
    return Settings(background=False, gc_grace_s=0.0, compaction_fanout=2, gc_references_s=0.0)


class Cluster:
    """Engines over one store, a slot map (slot -> shard), and a model of every commit."""

    def __init__(self, shards: int, seed: int) -> None:
        self.url = f"memory://moves-{uuid.uuid4().hex[:8]}"
        self.engines = [Engine.open(self.url, i, _settings()) for i in range(shards)]
        for e in self.engines:
            e.create_database("d")
            for name, (schema, pk) in TABLES.items():
                e.create_table("d", name, schema, pk)
        self.owner = {s: s % shards for s in range(COUNT)}
        self.version = 0
        self.log: list[tuple[int, str, object, object]] = []  # (ts, table, key, row or None)
        self.rng = random.Random(seed)
        self.t0 = self.snapshot()  # after the tables were made: feeds start after it

    # -- the model ---------------------------------------------------------------------------

    def state(self, table: str, snapshot: int) -> dict:
        out: dict = {}
        for ts, t, k, row in sorted(self.log, key=lambda x: x[0]):
            if t == table and ts <= snapshot:
                if row is None:
                    out.pop(k, None)
                else:
                    out[k] = row
        return out

    def changes(self, table: str, lo: int, hi: int) -> list[tuple]:
        before = self.state(table, lo - 1)
        out = []
        for ts, t, k, row in sorted(self.log, key=lambda x: (x[0], repr(x[2]))):
            if t != table or ts < lo or ts > hi:
                continue
            if row is None:
                kind = "delete"
                before.pop(k, None)
            else:
                kind = "update_postimage" if k in before else "insert"
                before[k] = row
            out.append((ts, kind, k, row))
        return out

    # -- driving the engines -----------------------------------------------------------------

    def owned(self, shard: int) -> tuple[int, int]:
        """A slot ``shard`` owns, and an int key of it."""
        slot = next(s for s in range(COUNT) if self.owner[s] == shard)
        return slot, next(k for k in range(1000) if slots_py([k], COUNT)[0] == slot)

    def shard_of(self, key: object) -> int:
        return self.owner[slots_py([key], COUNT)[0]]

    def key(self, table: str) -> object:
        n = self.rng.randrange(60)
        return {"t": n, "s": f"k{n}", "c": (f"a{n % 7}", n)}[table]

    def row(self, table: str, key: object) -> dict:
        v = self.rng.randrange(1000)
        if table == "t":
            return {"k": key, "v": f"v{v}"}
        if table == "s":
            return {"k": key, "v": v}
        return {"a": key[0], "b": key[1], "v": v / 4}

    def write(self) -> None:
        table = self.rng.choice(list(TABLES))
        live = self.state(table, 1 << 62)
        ups, dels = {}, set()
        for _ in range(self.rng.randrange(1, 12)):
            k = self.key(table)
            if k in live and self.rng.random() < 0.3:
                dels.add(k)
                ups.pop(k, None)
            elif k not in dels:
                ups[k] = self.row(table, k)
        by: dict[int, tuple[list, list]] = {}
        for k, r in ups.items():
            by.setdefault(self.shard_of(k), ([], []))[0].append((k, r))
        for k in dels:
            by.setdefault(self.shard_of(k), ([], []))[1].append(k)
        for shard, (rows, ks) in by.items():
            pks = [list(k) if isinstance(k, tuple) else k for k in ks]
            ts = self.engines[shard].write("d", table, [r for _, r in rows], pks)
            self.log.extend((ts, table, k, r) for k, r in rows)
            self.log.extend((ts, table, k, None) for k in ks)

    def random_steps(self, n: int, restarts: bool = True) -> list[int]:
        """``n`` random steps: writes, moves, upkeep of a shard, restarts (if ``restarts``)
        and snapshots; returns the snapshots taken (also one every ten steps)."""
        snaps = []
        for step in range(n):
            roll = self.rng.random()
            if roll < 0.55:
                self.write()
            elif roll < 0.75:
                self.random_move()
            elif roll < 0.85:
                self.upkeep(self.rng.randrange(len(self.engines)))
            elif roll < 0.92 and restarts:
                self.reopen(self.rng.randrange(len(self.engines)))
            else:
                snaps.append(self.snapshot())
            if step % 10 == 9:
                snaps.append(self.snapshot())
        return snaps

    def touch(self, shard: int) -> None:
        """One write to a key ``shard`` owns."""
        _, key = self.owned(shard)
        row = self.row("t", key)
        ts = self.engines[shard].write("d", "t", [row])
        self.log.append((ts, "t", key, row))

    def snapshot(self) -> int:
        s = max(e.snapshot() for e in self.engines)
        for e in self.engines:
            e.advance_floor(s)
        return s

    def move(self, slots: set[int], to: int) -> None:
        (src,) = {self.owner[s] for s in slots}
        self.version += 1
        a, b = self.engines[src], self.engines[to]
        handover = a.handoff.give(self.version, slots, COUNT, to)
        b.handoff.take(self.version, src, slots, COUNT, handover)
        a.handoff.settle(self.version, True)
        b.handoff.settle(self.version, True)
        for s in slots:
            self.owner[s] = to

    def random_move(self) -> None:
        src = self.rng.randrange(len(self.engines))
        mine = [s for s, o in self.owner.items() if o == src]
        if not mine:
            return
        to = self.rng.choice([i for i in range(len(self.engines)) if i != src])
        self.move(set(self.rng.sample(mine, self.rng.randint(1, len(mine)))), to)

    def reopen(self, i: int) -> None:
        self.engines[i].close()
        self.engines[i] = Engine.open(self.url, i, _settings())

    def upkeep(self, i: int, absorb: bool | None = None) -> None:
        """Write out, checkpoint, compact, settle the done moves (``absorb``; None: at
        random), collect garbage."""
        e = self.engines[i]
        e.freeze()
        e.flush()
        e.checkpoint()
        while e.compact():
            pass
        if absorb or (absorb is None and self.rng.random() < 0.5):
            e.handoff.absorb()
        e.collect_garbage(force=True)

    def close(self) -> None:
        for e in self.engines:
            e.close()

    # -- checks ------------------------------------------------------------------------------

    def check(self, snapshot: int) -> None:
        for table in TABLES:
            want = self.state(table, snapshot)
            assert self._union(self._scan(table, snapshot)) == want, (table, snapshot)
            assert self._union(self._arrow(table, snapshot)) == want, (table, snapshot)
            assert self._union(self._batches(table, snapshot)) == want, (table, snapshot)
            keys = [self.key(table) for _ in range(8)]
            for k in keys:  # a point read goes to the key's owner now, at any snapshot
                e = self.engines[self.shard_of(k)]
                got = e.get_many("d", table, [list(k) if isinstance(k, tuple) else k], snapshot)
                assert got[0] == want.get(k), (table, k, snapshot)

    def check_feed(self, lo: int, hi: int) -> None:
        for table in TABLES:
            got = []
            for e in self.engines:
                for c in e.changes("d", table, lo, hi):
                    k = tuple(c.pk) if isinstance(c.pk, (list, tuple)) else c.pk
                    got.append((c.ts, c.change_type, k, c.row))
            got.sort(key=lambda x: (x[0], repr(x[2])))
            assert got == self.changes(table, lo, hi), (table, lo, hi)

    def _key_of(self, table: str, row: dict) -> object:
        return (row["a"], row["b"]) if table == "c" else row["k"]

    def _scan(self, table: str, snapshot: int) -> Iterator[tuple]:
        for e in self.engines:
            for row in e.scan("d", table, snapshot):
                yield self._key_of(table, row), row

    def _arrow(self, table: str, snapshot: int) -> Iterator[tuple]:
        for e in self.engines:
            for row in e.scan_arrow("d", table, snapshot).to_pylist():
                yield self._key_of(table, row), row

    def _batches(self, table: str, snapshot: int) -> Iterator[tuple]:
        for e in self.engines:
            for b in e.scan_batches("d", table, snapshot, batch_rows=7):
                for row in b.to_pylist():
                    yield self._key_of(table, row), row

    @staticmethod
    def _union(rows: Iterator[tuple]) -> dict:
        out: dict = {}
        for k, row in rows:
            assert k not in out, f"key {k!r} read from two shards"
            out[k] = row
        return out


@pytest.mark.parametrize("seed", range(4))
def test_reads_at_every_snapshot_equal_the_model_through_moves_restarts_and_compaction(seed):
    c = Cluster(3, seed)
    try:
        snaps = [c.snapshot(), *c.random_steps(40)]
        snaps.append(c.snapshot())
        snaps = sorted(set(snaps))
        for s in snaps:
            c.check(s)
        for lo, hi in zip(snaps, snaps[2:]):
            c.check_feed(lo + 1, hi)
        c.check_feed(c.t0 + 1, snaps[-1])
    finally:
        c.close()


def test_a_slot_set_that_moves_back_and_forth_keeps_each_version_once():
    """A -> B -> A -> B of the same slots, with writes between: each shard's objects hold
    versions from several periods of ownership, read in time order."""
    c = Cluster(2, 7)
    try:
        slots = {s for s in range(COUNT) if c.owner[s] == 0}
        moved = set(sorted(slots)[:5])
        snaps = []
        for i in range(4):
            for _ in range(6):
                c.write()
            c.upkeep(i % 2)
            snaps.append(c.snapshot())
            c.move(moved, 1 - c.owner[next(iter(moved))])
        for _ in range(6):
            c.write()
        snaps.append(c.snapshot())
        for s in snaps:
            c.check(s)
        c.check_feed(c.t0 + 1, snaps[-1])
        for i in range(2):
            c.reopen(i)
            c.upkeep(i)
        for s in snaps:
            c.check(s)
    finally:
        c.close()


def test_a_write_to_a_slot_given_away_is_refused_and_changes_nothing():
    c = Cluster(2, 1)
    try:
        slot, key = c.owned(0)
        c.engines[0].write("d", "t", [{"k": key, "v": "before"}])
        s0 = c.snapshot()
        c.move({slot}, 1)
        with pytest.raises(Moved) as err:
            c.engines[0].write("d", "t", [{"k": key, "v": "stale"}])
        assert slot in err.value.details["slots"]
        c.engines[1].write("d", "t", [{"k": key, "v": "after"}])
        assert c.engines[1].get("d", "t", key) == {"k": key, "v": "after"}
        assert c.engines[1].get("d", "t", key, s0) == {"k": key, "v": "before"}
        assert c.engines[0].get("d", "t", key) is None
    finally:
        c.close()


def test_a_move_not_committed_is_rolled_back_on_both_shards_also_after_a_restart():
    c = Cluster(2, 2)
    try:
        slot, key = c.owned(0)
        c.engines[0].write("d", "t", [{"k": key, "v": "a"}])
        handover = c.engines[0].handoff.give(1, {slot}, COUNT, 1)
        c.engines[1].handoff.take(1, 0, {slot}, COUNT, handover)
        # pending: neither shard writes the slot, and reads by the old map see it on shard 0
        for e in c.engines:
            with pytest.raises(Moved):
                e.write("d", "t", [{"k": key, "v": "x"}])
        c.reopen(0)  # a crash before the commit point: the fence is durable
        c.reopen(1)
        with pytest.raises(Moved):
            c.engines[0].write("d", "t", [{"k": key, "v": "x"}])
        s = c.snapshot()
        view0 = c.engines[0].read_view("d", "t", s, map_version=0)
        view1 = c.engines[1].read_view("d", "t", s, map_version=0)
        assert view0.plan.own is None and view1.plan.own is None  # the old map: no filter
        for e in c.engines:  # the coordinator resolves it backwards
            assert e.handoff.settle(1, False)
        c.engines[0].write("d", "t", [{"k": key, "v": "b"}])
        assert c.engines[0].get("d", "t", key) == {"k": key, "v": "b"}
        assert [m for e in c.engines for m in e.handoff.status()["moves"]] == []
    finally:
        c.close()


def test_a_read_with_a_map_older_than_a_done_move_must_refresh():
    c = Cluster(2, 3)
    try:
        c.write()
        s0 = c.snapshot()
        slot, _ = c.owned(0)
        c.move({slot}, 1)
        s1 = c.snapshot()
        for e in c.engines:  # an older map than a move done here: refresh, whatever the time
            for s in (s0, s1):
                with pytest.raises(Moved):
                    e.read_view("d", "t", s, map_version=0)
                e.read_view("d", "t", s, map_version=1)
    finally:
        c.close()


def test_a_write_the_old_owner_committed_and_that_is_resent_to_it_after_the_move_applies_once():
    """The shard calls resend a part to the shard they sent it to: the old owner answers with
    its commit (the token is known before the fence is checked), and nothing is written."""
    c = Cluster(2, 4)
    try:
        slot, key = c.owned(0)
        token = MINT.mint()
        t = c.engines[0].live_table("d", "t")
        cols, _ = t.normalize_columns({"k": [key], "v": ["once"]}, 1 << 20)
        part = WritePart.from_columns(t, cols, [], token=token)
        ts = c.engines[0].write_packed_columns(part)  # its answer is lost
        c.move({slot}, 1)
        c.engines[1].write("d", "t", [{"k": key, "v": "later"}])
        assert c.engines[0].write_packed_columns(part) == ts  # the resend, after the move
        c.reopen(0)  # and after a restart (the token is recovered from the range object)
        assert c.engines[0].write_packed_columns(part) == ts
        assert c.engines[1].get("d", "t", key) == {"k": key, "v": "later"}
        feed = [x for e in c.engines for x in e.changes("d", "t", c.t0 + 1) if x.pk == key]
        assert [x.row["v"] for x in feed] == ["once", "later"]
        fresh = WritePart.from_columns(t, cols, [], token=MINT.mint())
        with pytest.raises(Moved):  # a new part of the slot is refused there
            c.engines[0].write_packed_columns(fresh)
    finally:
        c.close()


def test_gc_keeps_the_objects_a_move_handed_over_and_deletes_the_rest():
    c = Cluster(2, 5)
    try:
        for _ in range(10):
            c.write()
        c.upkeep(0)
        s0 = c.snapshot()
        slots = {s for s in range(COUNT) if c.owner[s] == 0}
        c.move(set(sorted(slots)[:4]), 1)
        for _ in range(10):
            c.write()
        for i in range(2):
            c.upkeep(i, absorb=False)
            c.upkeep(i, absorb=False)
        store = c.engines[0].store
        held = {
            codec.range_key(x[0], x[1], x[2])
            for e in c.engines
            for m in e._state.moves
            for g in m.groups
            for x in g.sources
        }
        live = {codec.range_key(0, a, b) for a, b in c.engines[0]._state.ranges}
        on_store = set(store.list(codec.range_prefix(0)))
        held = {k for k in held if k.startswith(codec.range_prefix(0))}
        assert held - live, "the test needs an object kept only by the move"
        assert held <= on_store, "an object a move handed over was collected"
        assert on_store <= held | live, "garbage left behind"
        c.check(s0)
        c.check(c.snapshot())
    finally:
        c.close()


def _range_keys(e: Engine) -> tuple[set[str], set[str]]:
    """A shard's live range objects, and those in the store."""
    live = {codec.range_key(e.shard, a, b) for a, b in e._state.ranges}
    return live, set(e.store.list(codec.range_prefix(e.shard)))


@pytest.mark.parametrize("seed", range(3))
def test_settled_moves_read_the_same_unfiltered_and_leave_only_live_objects(seed):
    """Moves settled into the shards' own objects (dn.upkeep.absorb) at random points, then
    everywhere: every read at every snapshot still equals the model, reads by the current
    map are unfiltered, and garbage collection leaves exactly the live objects."""
    c = Cluster(3, seed)
    try:
        snaps = [c.snapshot(), *c.random_steps(50, restarts=False)]
        for i in range(3):  # each shard that took slots writes after the last move
            if i in c.owner.values():
                c.touch(i)
        for _ in range(2):
            for i in range(3):
                c.upkeep(i, absorb=True)
        snaps.append(c.snapshot())
        assert sum(e.counters.get("absorbed_moves", 0) for e in c.engines) > 0
        for i, e in enumerate(c.engines):
            assert all(m.absorbed for m in e._state.moves), i
            view = e.read_view("d", "t", snaps[-1])
            assert view.plan.own is None and not view.plan.refs
            live, stored = _range_keys(e)
            assert stored == live, f"shard {i}: {sorted(stored - live)} left behind"
        for x in sorted(set(snaps)):
            c.check(x)
        c.check_feed(c.t0 + 1, snaps[-1])
        for i in range(3):  # and after restarts
            c.reopen(i)
        c.check(snaps[0])
        c.check(snaps[-1])
    finally:
        c.close()


def test_gc_keeps_handed_over_objects_until_every_shard_that_reads_them_settled():
    """A gives slots to B, B gives some of them on to C before settling: A's objects are read
    by C through B's handover. A settling (dropping the rows it gave) and B settling (its in
    move superseded) release nothing; only once C settled are A's objects garbage."""
    c = Cluster(3, 11)
    try:
        for _ in range(12):
            c.write()
        c.upkeep(0, absorb=False)
        s0 = c.snapshot()
        mine = sorted(s for s in range(COUNT) if c.owner[s] == 0)
        c.move(set(mine[:4]), 1)
        c.move(set(mine[:2]), 2)
        for _ in range(12):
            c.write()
        old, _ = _range_keys(c.engines[0])  # shard 0's objects at the handover
        for i in (0, 1):
            c.upkeep(i, absorb=True)
        for i in (0, 1):
            c.upkeep(i, absorb=False)
        _, stored = _range_keys(c.engines[0])
        assert old <= stored, "collected while shard 2 still reads them"
        assert old - _range_keys(c.engines[0])[0], "the test needs objects kept only as references"
        assert c.engines[0].status()["objects"]["held_by_moves"] > 0
        c.check(s0)
        c.upkeep(2, absorb=True)  # the last reader settles: now they go
        c.upkeep(1, absorb=True)
        c.engines[0].collect_garbage()  # nothing committed here: a due re-read finds out
        live, stored = _range_keys(c.engines[0])
        assert stored == live and not old & stored
        assert c.engines[0].status()["objects"]["held_by_moves"] == 0
        c.check(s0)
        c.check(c.snapshot())
    finally:
        c.close()


def test_gc_that_read_the_other_shards_before_a_take_keeps_what_its_done_move_handed_over():
    """The old owner reads the other shards' moves at most every ``gc_references_s``: one
    read while its give was pending does not show the take. Its done out move holds what it
    handed over until the peer is seen to have settled, also once compaction took those
    objects out of its live list."""
    c = Cluster(2, 13)
    try:
        c.engines[0].close()
        c.engines[0] = Engine.open(c.url, 0, _settings().replace(gc_references_s=3600.0))
        a, b = c.engines
        for _ in range(3):
            for _ in range(4):
                c.write()
            c.upkeep(0, absorb=False)
        s0 = c.snapshot()
        mine = sorted(x for x in range(COUNT) if c.owner[x] == 0)
        moving = set(mine[:3])
        handover = a.handoff.give(1, moving, COUNT, 1)
        a.collect_garbage(force=True)  # reads shard 1's moves now: no take there yet
        b.handoff.take(1, 0, moving, COUNT, handover)
        for e in (a, b):
            e.handoff.settle(1, True)
        for x in moving:
            c.owner[x] = 1
        handed = {codec.range_key(0, x[1], x[2]) for g in a._state.moves[0].groups
                  for x in g.sources}  # fmt: skip
        for _ in range(3):
            for _ in range(4):
                c.write()
            c.upkeep(0, absorb=False)
        live, stored = _range_keys(a)
        assert handed - live, "the test needs compaction to have replaced a handed-over object"
        assert handed <= stored
        c.check(s0)
        c.check(c.snapshot())
    finally:
        c.close()


def test_settling_waits_until_the_shards_ranges_pass_the_handoff():
    """A range holds only rows of its own time span: rows at or below H are copied only into
    a rewrite that reaches H, so a shard with nothing written since the move waits."""
    c = Cluster(2, 12)
    try:
        for _ in range(6):
            c.write()
        slot, key = c.owned(0)
        c.engines[0].advance_floor(c.engines[1].clock())
        c.touch(0)  # H (the old owner's last commit) past this shard's last one
        c.move({slot}, 1)
        b = c.engines[1]
        b.freeze()
        b.flush()
        assert b._state.ranges[-1][1] < b._state.moves[0].ts  # nothing written here since
        assert not b.handoff.absorb()
        b.write("d", "t", [{"k": key, "v": "after"}])
        c.log.append((b.snapshot(), "t", key, {"k": key, "v": "after"}))
        b.freeze()
        b.flush()
        assert b.handoff.absorb()
        assert not b.handoff.absorb()  # nothing left to settle
        c.check(c.snapshot())
    finally:
        c.close()


def test_maintenance_settles_a_move_once_due_and_an_idle_shard_waits_without_trying_again():
    c = Cluster(2, 16)
    try:
        for i in range(2):
            c.engines[i].close()
            c.engines[i] = Engine.open(c.url, i, _settings().replace(absorb_after_s=0.0))
        for _ in range(6):
            c.write()
        slot, key = c.owned(0)
        c.engines[1].freeze()
        c.engines[1].flush()
        c.engines[0].advance_floor(c.engines[1].clock())
        c.touch(0)  # H (the old owner's last commit) past the new owner's last one
        c.move({slot}, 1)
        a, b = c.engines
        a.maintain()  # the old owner only drops rows: it settles at once
        assert all(m.absorbed for m in a._state.moves)
        b.maintain()  # nothing written here since the move: it waits
        assert not b._state.moves[0].absorbed
        assert not b.handoff.absorber.due()  # and does not try again while nothing comes
        c.touch(1)
        assert b.handoff.absorber.due()
        b.maintain()
        assert b._state.moves[0].absorbed
        c.check(c.snapshot())
    finally:
        c.close()


def _moved_and_written(c: Cluster, writes: int, slots: int) -> Engine:
    """``writes`` writes, then ``slots`` of shard 0's slots moved to shard 1, which writes
    after the move and writes it out (so it can settle); returns shard 1."""
    for _ in range(writes):
        c.write()
    mine = sorted(x for x in range(COUNT) if c.owner[x] == 0)
    c.move(set(mine[:slots]), 1)
    c.touch(1)
    b = c.engines[1]
    b.freeze()
    b.flush()
    return b


def test_settling_never_writes_over_an_object_a_fenced_incarnation_put_under_its_key():
    """A restart fences the old incarnation, which may not know it yet and settle the same
    moves from the same ranges: the same first key. Whichever writes second must not replace
    what the other wrote (the live one may have committed it, and readers cached it)."""
    c = Cluster(2, 14)
    try:
        b = _moved_and_written(c, 6, 3)
        plan = moves.absorbable(b._state.moves)
        run = [r for r in b._state.ranges if r[0] <= plan.h]
        first = min([run[0][0]] + [x[1] for _, x, _ in plan.copy]) - 1
        taken = codec.range_key(1, first, run[-1][1])
        b.store.put(taken, b"written by a fenced incarnation")
        assert b.handoff.absorb()
        assert b._state.ranges[0] == (first - 1, run[-1][1])
        assert b.store.get(taken) == b"written by a fenced incarnation"
        c.check(c.snapshot())
    finally:
        c.close()


def test_a_reader_that_cached_a_checkpoint_before_settling_reads_the_rows_copied_in():
    """Settling drops the checkpoints (they name the ranges it replaced). One written again at
    the same timestamp (the last range's end) would have the key of the old one, which readers
    cached: they would read the replaced ranges, without the rows the settling copied in."""
    c = Cluster(2, 15)
    try:
        b = _moved_and_written(c, 8, 4)
        cp = b.checkpoint()
        s = c.snapshot()
        c.check(s)  # the readers cache checkpoint cp
        assert b.read_view("d", "t", s).plan.checkpoint == cp
        assert b.handoff.absorb()
        assert b.read_view("d", "t", s).plan.checkpoint != cp
        c.check(s)
        c.touch(1)
        b.freeze()
        b.flush()
        assert b.checkpoint() > cp  # the next one, at a newer range's end
        c.check(c.snapshot())
        c.reopen(1)  # the floor is in the manifest
        c.check(s)
    finally:
        c.close()


def test_a_give_names_only_objects_the_collector_cannot_have_deleted(monkeypatch):
    """A give hands over the live ranges of the manifest version its move is committed over:
    ranges read before it could be replaced by a compaction meanwhile and deleted by the
    collector (as here, from another thread, when the handover is made) before the move
    names them."""
    c = Cluster(2, 17)
    try:
        a = c.engines[0]
        for _ in range(4):
            for _ in range(3):
                c.write()
            a.freeze()
            a.flush()
        real = moves.handover
        racer: list[threading.Thread] = []

        def upkeep_meanwhile() -> None:
            while a.compact():
                pass
            a.collect_garbage(force=True)

        def handover(*args, **kw):
            if not racer:
                racer.append(threading.Thread(target=upkeep_meanwhile))
                racer[0].start()
                racer[0].join(0.5)  # done, unless the give holds what it needs
            return real(*args, **kw)

        monkeypatch.setattr(moves, "handover", handover)
        mine = sorted(x for x in range(COUNT) if c.owner[x] == 0)
        c.move(set(mine[:4]), 1)
        racer[0].join()
        a.collect_garbage(force=True)
        named = {codec.range_key(x[0], x[1], x[2]) for m in c.engines[1]._state.moves
                 for g in m.groups for x in g.sources}  # fmt: skip
        assert named and named <= set(a.store.list(codec.range_prefix(0)))
        c.check(c.snapshot())
    finally:
        c.close()


def test_give_refuses_slots_the_shard_does_not_hold():
    c = Cluster(2, 6)
    try:
        slot, _ = c.owned(0)
        c.move({slot}, 1)
        with pytest.raises(InvalidArgument):
            c.engines[0].handoff.give(2, {slot}, COUNT, 1)
        with pytest.raises(InvalidArgument):
            c.engines[1].handoff.give(2, {slot}, COUNT + 1, 0)
    finally:
        c.close()


# -- found by review: each of these failed before its fix -------------------------------------


def _key_in(slot: int, start: int = 0) -> int:
    return next(k for k in range(start, 100_000) if slots_py([k], COUNT)[0] == slot)


def test_compaction_on_the_new_owner_keeps_a_delete_that_hides_the_old_owners_version():

    url = f"memory://moves-{uuid.uuid4().hex[:8]}"
    s = Settings(background=False, gc_grace_s=0.0, compaction_fanout=2, retention_s=0.05)
    a, b = Engine.open(url, 0, s), Engine.open(url, 1, s)
    try:
        for e in (a, b):
            e.create_database("d")
            e.create_table("d", "t", {"k": "int64", "v": "string"}, "k")
        slot = 0
        k = _key_in(slot)
        a.write("d", "t", [{"k": k, "v": "from-a"}])
        b.handoff.take(1, 0, {slot}, COUNT, a.handoff.give(1, {slot}, COUNT, 1))
        for e in (a, b):
            e.handoff.settle(1, True)
        other = _key_in(1)
        b.write("d", "t", [{"k": other, "v": "x"}])
        b.freeze()
        b.flush()
        b.write("d", "t", [], [k])
        b.freeze()
        b.flush()
        assert b.get("d", "t", k) is None
        time.sleep(0.2)  # the delete is now older than the retention window
        for _ in range(3):
            b.write("d", "t", [{"k": other, "v": "y"}])
            b.freeze()
            b.flush()
        while b.compact():
            pass
        assert b.get("d", "t", k) is None  # not the old owner's version again
    finally:
        a.close()
        b.close()


def test_a_transaction_whose_snapshot_predates_a_move_of_its_keys_conflicts():
    from dn.errors import Conflict

    c = Cluster(2, 8)
    try:
        a, b = c.engines
        slot, _ = c.owned(0)
        k = _key_in(slot)
        b.write(
            "d", "t", [{"k": _key_in(next(s for s in range(COUNT) if c.owner[s] == 1)), "v": "o"}]
        )
        snap = c.snapshot()
        a.write("d", "t", [{"k": k, "v": "T2"}])  # after the snapshot, on the old owner
        c.move({slot}, 1)
        t = b.live_table("d", "t")
        cols, _ = t.normalize_columns({"k": [k], "v": ["T1"]}, 1 << 20)
        part = WritePart.from_columns(t, cols, [])
        at = max(e.clock() for e in c.engines) + (5 << 16)
        with pytest.raises(Conflict):
            b.prepare(MINT.mint(), at, [part], snap)
    finally:
        c.close()


def test_a_repeated_give_or_take_records_the_move_once_and_an_undone_move_stays_undone():
    import threading

    c = Cluster(2, 9)
    try:
        a, b = c.engines
        for _ in range(5):
            c.write()
        slots = {s for s in range(COUNT) if c.owner[s] == 0}
        got: list = []
        ts = [threading.Thread(target=lambda: got.append(a.handoff.give(1, slots, COUNT, 1)))
              for _ in range(3)]  # fmt: skip
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(got) == 3 and all(g == got[0] for g in got)
        took: list = []

        def take() -> None:
            took.append(b.handoff.take(1, 0, slots, COUNT, got[0]))

        ts = [threading.Thread(target=take) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert [m["id"] for e in c.engines for m in e.handoff.status()["moves"]] == [1, 1]
        with pytest.raises(InvalidArgument):  # the same id for other slots
            a.handoff.give(1, {next(iter(slots))}, COUNT, 1)
        # a move undone before a late give of it arrives: the late give is refused
        assert a.handoff.settle(2, False) is False
        with pytest.raises(InvalidArgument):
            a.handoff.give(2, {next(iter(slots))}, COUNT, 1)
        with pytest.raises(InvalidArgument):  # a shard cannot commit a move it never had
            b.handoff.settle(3, True)
    finally:
        c.close()


def test_the_write_fence_hashes_each_table_of_a_transaction_by_its_own_key_type():
    url = f"memory://moves-{uuid.uuid4().hex[:8]}"
    a, b = Engine.open(url, 0, _settings()), Engine.open(url, 1, _settings())
    try:
        for e in (a, b):
            e.create_database("d")
            e.create_table("d", "i", {"k": "int64", "v": "int64"}, "k")
            e.create_table("d", "s", {"k": "string", "v": "int64"}, "k")
            e.create_table("d", "f", {"k": "bool", "v": "int64"}, "k")
        slot_true = slots_py([True], COUNT)[0]
        b.handoff.take(1, 0, {slot_true}, COUNT, a.handoff.give(1, {slot_true}, COUNT, 1))
        for e in (a, b):
            e.handoff.settle(1, True)

        def part(e, table, keys):
            t = e.live_table("d", table)
            cols, _ = t.normalize_columns({"k": keys, "v": [1] * len(keys)}, 1 << 20)
            return WritePart.from_columns(t, cols, [])

        ok = [k for k in range(200) if slots_py([k], COUNT)[0] != slot_true][:70]
        strs = [s for s in (f"s{i}" for i in range(200)) if slots_py([s], COUNT)[0] != slot_true]
        at = max(e.clock() for e in (a, b)) + (5 << 16)
        a.prepare(MINT.mint(), at, [part(a, "i", ok), part(a, "s", strs[:10])])  # no crash
        at = max(e.clock() for e in (a, b)) + (5 << 16)
        with pytest.raises(Moved):  # True is a bool key, not the int 1
            a.prepare(MINT.mint(), at, [part(a, "i", ok[:70]), part(a, "f", [True])])
    finally:
        a.close()
        b.close()


def test_a_join_merges_its_table_mappings_once_and_changes_no_read_or_write():
    """A shard's join (``dn.moves.joined``): recorded once, its mappings merged with an earlier
    join's (a shard back after a retirement), the other moves kept; it refuses no slot, names
    no source, and no map version is too old for it (a read never raises Moved for it)."""
    out = moves.Move(3, moves.OUT, 1, COUNT, frozenset({1, 2}), 50, True)
    ms = moves.joined((out,), COUNT, 70, ((0, 60, 10),))
    join = ms[0]
    assert (join.id, join.kind, join.slots, join.done, join.absorbed) == (
        moves.JOIN, moves.IN, frozenset(), True, True)  # fmt: skip
    assert ms[1:] == (out,) and join.count == COUNT
    assert moves.joined(ms, COUNT, 80, ((0, 60, 10),)) is ms  # recorded already
    again = moves.joined(ms, COUNT, 90, ((0, 75, 40),))
    assert again[0].tables == ((0, 60, 10), (0, 75, 40)) and again[1:] == (out,)
    assert moves.refused(again) == frozenset({1, 2})  # the out move's, nothing of the join's
    assert moves.read_slots(again, 100, 3).moved == frozenset({1, 2})
    assert moves.read_slots(moves.joined((), COUNT, 70, ((0, 60, 10),)), 100, 1).plain
    assert moves.Move.from_wire(join.to_wire()) == join
    assert moves.held(0, {5: again}) == set()


def test_compaction_waits_for_the_moves_settling_and_at_most_the_hold(monkeypatch):
    """An old owner's compaction after a give would rewrite the rows the move's settling
    drops (and settle rewrites the same ranges again): maintenance does not compact until the
    moves settle, nor longer than ``COMPACTION_HOLD_S``."""
    from dn.upkeep import handoff

    c = Cluster(2, 17)
    try:
        a = c.engines[0]

        def ranges_here() -> None:  # two new ranges on shard 0: the policy merges them
            for _ in range(2):
                for _ in range(3):
                    c.write()
                c.touch(0)
                a.freeze()
                a.flush()

        def compacted() -> int:
            before = a.counters["compactions"]
            a.maintain()
            return a.counters["compactions"] - before

        ranges_here()
        assert compacted() > 0  # no move: it compacts
        slot, _ = c.owned(0)
        c.move({slot}, 1)
        ranges_here()
        assert compacted() == 0  # the move waits to settle (absorb_after_s, 30 s)
        assert a.handoff.absorb()
        assert compacted() > 0  # settled: it compacts again
        monkeypatch.setattr(handoff, "COMPACTION_HOLD_S", 0.3)
        slot, _ = c.owned(0)
        c.move({slot}, 1)
        ranges_here()
        assert compacted() == 0
        time.sleep(0.35)
        assert compacted() > 0  # the hold ran out, the move still unsettled
        assert not all(m.absorbed for m in a._state.moves)
        c.check(c.snapshot())
    finally:
        c.close()
