"""The shard actor's side of slot moves (issue 17): the calls the coordinator drives a move
with, over :class:`dn.upkeep.handoff.Handoff` (decision 0018).

A mixin of :class:`shards.shard.ShardService` (it needs ``self.engine`` and ``self.metrics``).
Each call is idempotent, as the coordinator retries them: ``give_slots`` of a move already
given answers its handover again, ``take_slots`` of one already taken its ``H``, and
``settle_move`` of one settled (or unknown here) does nothing.
"""

from __future__ import annotations

from typing import Any

from dn import Engine


class SlotMoves:
    """Slot-move calls of a shard actor (module docstring)."""

    engine: Engine
    metrics: Any
    shard: int

    def give_slots(self, move_id: int, slots: list[int], count: int, to_shard: int) -> dict:
        """Fence ``slots``, write the buffers out and record the out move; the handover."""
        try:
            return self.engine.handoff.give(move_id, slots, count, to_shard)
        except Exception as exc:
            self.metrics.error(exc)
            raise

    def take_slots(
        self, move_id: int, from_shard: int, slots: list[int], count: int, handover: dict
    ) -> int:
        """Record the in move of ``slots`` from ``from_shard`` (its clock above H); H."""
        try:
            return self.engine.handoff.take(move_id, from_shard, slots, count, handover)
        except Exception as exc:
            self.metrics.error(exc)
            raise

    def flush_to_give(self) -> int:
        """Write the buffers out ahead of a give (a step's rounds), compaction held until
        the move settles (:meth:`dn.upkeep.handoff.Handoff.hold_compaction`)."""
        self.engine.handoff.hold_compaction()
        self.engine.freeze()
        return self.engine.flush()

    def settle_move(self, move_id: int, committed: bool) -> bool:
        """The move passed the coordinator's commit point (done) or not (removed)."""
        return self.engine.handoff.settle(move_id, committed)

    def table_ids(self) -> list:
        """Each live table's ``[db, name, id]`` here (a joining shard maps its tables to
        shard 0's: :meth:`catch_up`)."""
        e = self.engine
        return [[db, t, e.live_table(db, t).id] for db in e.databases() for t in e.tables(db)]

    def catch_up(self, databases: dict, count: int = 0, source_ids: list | None = None) -> int:
        """Make this shard's catalog the cluster's (``databases``: the cluster record's): a
        shard a reshard adds, or brings back after it was retired, missed the DDL made
        meanwhile. Creates what it lacks and drops what the cluster dropped, then records its
        join (``source_ids``: shard 0's :meth:`table_ids`; ``count``: the slot count), so
        that it serves each table at every snapshot shard 0 does. Returns how many DDL
        commands that took."""
        n = self._catch_up(databases)
        if source_ids and self.shard != 0:
            self.engine.handoff.join(count, source_ids)
        return n

    def _catch_up(self, databases: dict) -> int:
        e, n = self.engine, 0
        mine = set(e.databases())
        for db in [d for d in mine if d not in databases]:
            e.drop_database(db)
            n += 1
        for db, entry in databases.items():
            if db not in mine:
                e.create_database(db)
                n += 1
            have = set(e.tables(db))
            for name in have - set(entry["tables"]):
                e.drop_table(db, name)
                n += 1
            for name, t in entry["tables"].items():
                cols = {c: ty for c, ty in t["columns"]}
                if name in have:
                    live = e.live_table(db, name)
                    if dict(live.columns) == cols and list(live.primary_key) == t["primary_key"]:
                        continue
                    e.drop_table(db, name)  # another table of the name since
                    n += 1
                e.create_table(db, name, cols, list(t["primary_key"]))
                n += 1
        return n

    def moves(self) -> dict:
        """The moves this shard took part in, and the slots it refuses writes to."""
        return self.engine.handoff.status()
