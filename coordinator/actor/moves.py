"""The coordinator's side of slot moves (issue 17, decision 0018): moving slots between shards
online, by reference, with the cluster record's slot map as the commit point.

:meth:`SlotMover.move` moves a set of slots to one shard. Slots of several owners move in one
step per owner, each its own map version ``v``:

1. the intent, ``move = {id: v, from: A, to: B, slots}``, is committed to the cluster record;
2. ``A.give_slots``: ``A`` fences the slots, picks the handoff timestamp ``H``, writes its
   buffers out and records the out move; it answers the handover (references, no data);
3. ``B.take_slots``: ``B`` raises its clock above ``H`` and records the in move;
4. the commit point: the cluster record's slot map at version ``v``, the slots owned by ``B``;
5. both shards settle the move (``A`` first: from then it refuses reads by older maps above
   ``H``; then ``B``: from then it takes writes to the slots), and the intent is cleared.

A failure before step 4 undoes the move on both shards; a coordinator that restarts with an
intent recorded settles it from the record alone (:meth:`SlotMover.resolve`): done on both
shards if the map reached version ``v``, else undone. Until it is settled, writes to the moving
slots are refused (retryably) by both shards, so nothing is lost or applied twice whichever
way it goes; reads stay right throughout (:mod:`dn.moves`).

Not thread-safe: the coordinator calls it under its DDL lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from coordinator.actor.cluster_catalog import ClusterCatalog
from coordinator.client.slots import SlotMap
from dn.errors import DNError, InvalidArgument
from dn.slots import pack_set

log = logging.getLogger(__name__)


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
        by_owner: dict[int, list[int]] = {}
        for s in wanted:
            if smap.owners[s] != to_shard:
                by_owner.setdefault(smap.owners[s], []).append(s)
        for src, some in sorted(by_owner.items()):
            smap = self._one(smap, src, to_shard, some)
        return smap.version

    def _one(self, smap: SlotMap, src: int, to: int, slots: list[int]) -> SlotMap:
        mid, count = self._catalog.next_move_id(), smap.slots
        self._catalog.begin_move({"id": mid, "from": src, "to": to, "slots": pack_set(slots)})
        log.info("move %d: %d slots from shard %d to shard %d", mid, len(slots), src, to)
        try:
            handover = self._call(src, "give_slots", (mid, slots, count, to))
            self._call(to, "take_slots", (mid, src, slots, count, handover))
        except BaseException:
            self.settle_quietly()  # undone on both shards: the map did not reach mid
            raise
        new = smap.moved(slots, to, mid)
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
        shard owns about as many (:meth:`SlotMap.balanced`), then shrink the count
        (``retire`` stops the shards left without slots). Returns what moved."""
        self.resolve()
        st = self._catalog.state
        assert st is not None
        before = st.shards
        plan = st.slot_map.balanced(shards)  # checks the count
        if shards > before:
            self._catalog.set_shards(shards)
            grow(shards)
            for i in range(before, shards):  # new, or back after a retirement: missed DDL
                self._call(i, "catch_up", (st.databases,))
        moved = 0
        total = sum(len(v) for v in plan.values())
        for to, slots in sorted(plan.items()):
            progress(f"reshard: {moved}/{total} slots moved; moving {len(slots)} to shard {to}")
            self.move(slots, to)
            moved += len(slots)
        if shards < before:
            self._catalog.set_shards(shards)
            retire(list(range(shards, before)))
        progress(f"reshard: {before} -> {shards} shards, {moved} slots moved")
        return {
            "shards": shards,
            "before": before,
            "moved_slots": moved,
            "map_version": self._map().version,
        }

    def resolve(self) -> None:
        """Settle the move the cluster record holds, if any, on both its shards (done if the
        slot map reached its version, else undone), then clear it. Raises what a shard
        raised (the move stays recorded, to be settled by the next call)."""
        st = self._catalog.state
        if st is None or st.move is None:
            return
        st = self._catalog.load()  # a commit whose answer was lost may have landed
        if st is None or st.move is None:
            return
        mid = st.move["id"]
        done = st.slot_map.version >= mid
        failed: list[BaseException] = []
        for shard in (st.move["from"], st.move["to"]):  # the old owner first
            try:
                self._call(shard, "settle_move", (mid, done))
            except DNError as exc:
                if done:  # the new owner takes writes only once the old one refuses old maps
                    raise
                failed.append(exc)  # undone: each shard on its own (the giver's writes flow)
        if failed:
            raise failed[0]
        self._catalog.end_move()
        log.info("move %d settled: %s", mid, "done" if done else "undone")

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
        r = self._shards.call_each({shard: (method, args)}, self._retry_s)[shard]
        if isinstance(r, BaseException):
            raise r
        return r
