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

    def settle_move(self, move_id: int, committed: bool) -> bool:
        """The move passed the coordinator's commit point (done) or not (removed)."""
        return self.engine.handoff.settle(move_id, committed)

    def moves(self) -> dict:
        """The moves this shard took part in, and the slots it refuses writes to."""
        return self.engine.handoff.status()
