"""The coordinator's side of slot moves (issue 17, decision 0018): moving slots between shards
online, by reference, with the cluster record's slot map as the commit point.

Slots move in **steps**. A step is one or more parts, each a move of some slots from one shard
(``A``) to another (``B``) with an id of its own; no shard both gives and takes in one step.
Ids are consecutive, the last is the step's ``v``, and every part passes one commit point:

1. the intent, ``move = {id: v, from: A, to: B, slots}`` (one part) or ``{id: v, parts:
   [...]}``, is committed to the cluster record;
2. every ``A.give_slots``, at once: ``A`` fences its slots, picks its handoff timestamp ``H``,
   writes its buffers out and records the out move; it answers the handover (references, no
   data). The old owners first write their buffers out side by side, their slots still
   taking writes, in rounds until one is short (:data:`STEP_FLUSH_ROUNDS`,
   :data:`STEP_FLUSH_SHORT_S`), so that each fences with little left to write and the parts'
   fences begin together;
3. every ``B.take_slots``: ``B`` raises its clock above its part's ``H`` and records the in
   move (a shard taking several parts takes them one after another);
4. the commit point: the cluster record's slot map at version ``v``, every part's slots owned
   by its ``B``;
5. the shards settle the parts (every ``A`` first: from then it refuses reads by older maps
   above ``H``; then every ``B``: from then it takes writes to the slots), and the intent is
   cleared.

A failure before step 4 undoes every part on both shards; a coordinator that restarts with an
intent recorded settles it from the record alone (:meth:`SlotMover.resolve`): done on every
shard if the map reached version ``v``, else undone. Until it is settled, writes to the moving
slots are refused (retryably) by both shards, so nothing is lost or applied twice whichever
way it goes; reads stay right throughout (:mod:`dn.moves`).

A reshard moves in as few steps as it can (one for a split or a merge: the shards that give
are not those that take), so a writer's batch waits for one handoff, not one per old shard,
and the old shards write their buffers out side by side.

Not thread-safe: the coordinator calls it under its DDL lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from coordinator.actor.cluster_catalog import ClusterCatalog
from coordinator.client.slots import SlotMap
from dn.errors import DNError, InvalidArgument
from dn.slots import pack_set

log = logging.getLogger(__name__)

#: Rounds of writing the old owners' buffers out before a step's gives: at least the first,
#: at most the second (each round writes out, unfenced, what came during the one before; the
#: give then fences and writes only what came during the last)...
STEP_FLUSH_ROUNDS = (2, 6)
#: ...stopping once a round took less than this (seconds): what comes in meanwhile is little.
#: A reshard that started its shards for half a minute left that much in the old owners'
#: buffers, two rounds left seconds of it to write fenced (decision 0018, item 17).
STEP_FLUSH_SHORT_S = 0.5


class SlotMover:
    """Moves slots between the shards of one cluster (module docstring)."""

    def __init__(self, catalog: ClusterCatalog, shards: Any, retry_s: float) -> None:
        self._catalog = catalog
        self._shards = shards
        self._retry_s = retry_s

    def move(self, slots: Any, to_shard: int) -> int:
        """Move ``slots`` to ``to_shard`` (those it owns already stay); returns the slot map's
        version after the move."""
        self.resolve()
        smap = self._map()
        if type(to_shard) is not int or not 0 <= to_shard < smap.shards:
            raise InvalidArgument(f"no shard {to_shard!r} in a cluster of {smap.shards}")
        if isinstance(slots, int | str | bytes) or not hasattr(slots, "__iter__"):
            raise InvalidArgument("slots must be a collection of slot numbers")
        wanted = sorted(set(slots))
        bad = [s for s in wanted if type(s) is not int or not 0 <= s < smap.slots]
        if bad:
            raise InvalidArgument(f"no slots {bad[:8]!r} among {smap.slots}")
        for step in steps(smap, {to_shard: wanted}):  # one at most: a single shard takes
            smap = self._step(smap, step)
        return smap.version

    def _step(self, smap: SlotMap, parts: list[tuple[int, int, list[int]]]) -> SlotMap:
        """One step (module docstring): ``parts`` as (from, to, slots), no shard in two roles."""
        first, count = self._catalog.next_move_id(), smap.slots
        recs = [
            {"id": first + k, "from": src, "to": to, "slots": pack_set(slots)}
            for k, (src, to, slots) in enumerate(parts)
        ]
        last = recs[-1]["id"]
        self._catalog.begin_move(recs[0] if len(recs) == 1 else {"id": last, "parts": recs})
        for r, (src, to, slots) in zip(recs, parts):
            log.info("move %d: %d slots from shard %d to shard %d", r["id"], len(slots), src, to)
        try:
            # the old owners write their buffers out first, side by side, with their slots
            # still taking writes, in rounds until one is short (each writes what came during
            # the one before): then each give fences its slots with little left to write, and
            # the parts' fences begin together (a fast one does not wait on a slow one)
            givers = sorted({src for src, _, _ in parts})
            least, most = STEP_FLUSH_ROUNDS
            for k in range(most):
                t = time.monotonic()
                _raised(self._calls([(src, "flush_to_give", ()) for src in givers]))
                if k + 1 >= least and time.monotonic() - t < STEP_FLUSH_SHORT_S:
                    break
            gives = [
                (src, "give_slots", (r["id"], sl, count, to))
                for r, (src, to, sl) in zip(recs, parts)
            ]
            handovers = _raised(self._calls(gives))
            takes = [
                (to, "take_slots", (r["id"], src, sl, count, handover))
                for r, (src, to, sl), handover in zip(recs, parts, handovers)
            ]
            _raised(self._calls(takes))
        except BaseException:
            self.settle_quietly()  # undone on every shard: the map did not reach the step's id
            raise
        new = smap
        for _src, to, slots in parts:
            new = new.moved(slots, to, last)
        self._catalog.commit_move(new)  # the commit point
        self.settle_quietly()
        return new

    def reshard(
        self,
        shards: int,
        grow: Callable[[int], None],
        retire: Callable[[list[int]], None],
        progress: Callable[[str], None] = log.info,
    ) -> dict[str, Any]:
        """Change the cluster's shard count to ``shards`` online: grow the count (``grow``
        starts the new shard actors; each is seeded with the catalog), move slots so every
        shard owns about as many (:meth:`SlotMap.balanced`) in as few steps as no shard both
        gives and takes in one (:func:`steps`), then shrink the count (``retire`` stops the
        shards left without slots). Returns what moved."""
        self.resolve()
        st = self._catalog.state
        assert st is not None
        before = st.shards
        plan = st.slot_map.balanced(shards)  # checks the count
        t0 = time.monotonic()
        if shards > before:
            self._catalog.set_shards(shards)
            grow(shards)
        self.catch_up(range(before, shards))
        t1 = time.monotonic()
        moved = 0
        total = sum(len(v) for v in plan.values())
        for step in steps(st.slot_map, plan):
            n = sum(len(slots) for _, _, slots in step)
            progress(f"reshard: {moved}/{total} slots moved; moving {n} in {len(step)} part(s)")
            self._step(self._map(), step)
            moved += n
        if shards < before:
            self._catalog.set_shards(shards)
            retire(list(range(shards, before)))
        progress(f"reshard: {before} -> {shards} shards, {moved} slots moved")
        return {
            "shards": shards,
            "before": before,
            "moved_slots": moved,
            "map_version": self._map().version,
            "start_s": round(t1 - t0, 3),  # the new shards' start
            "move_s": round(time.monotonic() - t1, 3),  # the steps (and any retirement)
        }

    def catch_up(self, new: Iterable[int] = ()) -> None:
        """Give shards ``new`` (added, or back after a retirement: they missed DDL) and every
        shard without slots (one a reshard that stopped half-way left so, its count recorded)
        the catalog; each joins (:func:`dn.moves.joined`), serving each table at every
        snapshot shard 0 does. A shard with nothing to catch up on commits nothing."""
        st = self._catalog.state
        assert st is not None
        owned = st.slot_map.per_shard()
        ids = sorted({*new, *(i for i in range(1, st.shards) if not owned[i])})
        if ids:
            source = self._call(0, "table_ids", ())
            args = (st.databases, st.slot_map.slots, source)
            _raised(self._calls([(i, "catch_up", args) for i in ids]))

    def resolve(self) -> None:
        """Settle the step the cluster record holds, if any, on every shard of its parts
        (done if the slot map reached its version, else undone), then clear it. Raises what
        a shard raised (the step stays recorded, to be settled by the next call)."""
        st = self._catalog.state
        if st is None or st.move is None:
            return
        st = self._catalog.load()  # a commit whose answer was lost may have landed
        if st is None or st.move is None:
            return
        done = st.slot_map.version >= st.move["id"]
        parts = move_parts(st.move)
        failed: list[BaseException] = []
        for role in ("from", "to"):  # every old owner first
            got = self._calls([(p[role], "settle_move", (p["id"], done)) for p in parts])
            errors = [r for r in got if isinstance(r, DNError)]
            if errors and done:  # a new owner takes writes only once the old ones refuse
                raise errors[0]  # old maps
            failed.extend(errors)  # undone: each shard on its own (the givers' writes flow)
        if failed:
            raise failed[0]
        self._catalog.end_move()
        log.info("move %d settled: %s", st.move["id"], "done" if done else "undone")

    def in_progress(self) -> dict | None:
        st = self._catalog.state
        return None if st is None or st.move is None else dict(st.move)

    def settle_quietly(self) -> None:
        try:
            self.resolve()
        except DNError as exc:
            log.warning("slot move not settled yet (the next call or a restart will): %s", exc)

    def _map(self) -> SlotMap:
        st = self._catalog.state
        assert st is not None
        return st.slot_map

    def _call(self, shard: int, method: str, args: tuple) -> Any:
        return _raised(self._calls([(shard, method, args)]))[0]

    def _calls(self, calls: list[tuple[int, str, tuple]]) -> list[Any]:
        """Each (shard, method, args), shards at once and a shard's calls in order; each
        call's result or the DNError it raised, in the order given."""
        out: list[Any] = [None] * len(calls)
        left = list(enumerate(calls))
        while left:
            batch: dict[int, int] = {}  # shard -> index: at most one call per shard a round
            later = []
            for k, (shard, _m, _a) in left:
                if shard in batch:
                    later.append((k, calls[k]))
                else:
                    batch[shard] = k
            got = self._shards.call_each(
                {shard: calls[k][1:] for shard, k in batch.items()}, self._retry_s
            )
            for shard, k in batch.items():
                out[k] = got[shard]
            left = later
        return out


def move_parts(intent: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a step's intent (one part: the intent itself)."""
    return list(intent["parts"]) if "parts" in intent else [intent]


def steps(smap: SlotMap, plan: dict[int, list[int]]) -> list[list[tuple[int, int, list[int]]]]:
    """``plan`` ({to shard: slots}) as steps of (from, to, slots) parts, one per old owner and
    new owner, each part in the first step where neither of its shards has the other role."""
    out: list[tuple[set, set, list]] = []  # (givers, takers, parts)
    for to, slots in sorted(plan.items()):
        by_owner: dict[int, list[int]] = {}
        for s in slots:
            if smap.owners[s] != to:
                by_owner.setdefault(smap.owners[s], []).append(s)
        for src, some in sorted(by_owner.items()):
            step = next((st for st in out if src not in st[1] and to not in st[0]), None)
            if step is None:
                step = (set(), set(), [])
                out.append(step)
            step[0].add(src)
            step[1].add(to)
            step[2].append((src, to, some))
    return [parts for _, _, parts in out]


def _raised(results: list[Any]) -> list[Any]:
    """``results``, raising the first exception among them."""
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results
