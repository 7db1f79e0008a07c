"""A client's part in slot moves and resharding (issue 17, decision 0018): the slot map it
routes and reads by, refreshed when a shard says slots moved, and the calls that move slots.

A mixin of :class:`coordinator.client.client.Client` (it needs ``_tables()``, ``info``,
``_info`` and ``_coord``). Any thread.
"""

from __future__ import annotations

from typing import Any


class SlotOps:
    """Slot-map calls of a client (module docstring)."""

    _coord: Any
    _info: Any
    info: Any

    def _tables(self) -> Any:  # the client's TableCache
        raise NotImplementedError

    @property
    def map_version(self) -> int:
        """The version of the slot map this client routes and reads by."""
        return self._tables().route.version

    def refresh_route(self) -> int:
        """Fetch the slot map again (a shard said slots moved, or the count changed); its
        version."""
        route = self._tables().refresh_route()
        self._info = {**self.info, "shards": route.shards, "slots": route.to_record()}
        return route.version

    def move_slots(self, slots: Any, to_shard: int) -> int:
        """Move ``slots`` to shard ``to_shard`` online, by reference (decision 0018): writes
        and reads go on. Returns the slot map's version after the move."""
        self._coord.call("move_slots", list(slots), to_shard)
        return self.refresh_route()

    def coordinator_status(self) -> dict:
        """The coordinator's status alone (the slot map, a move in progress): cheap to poll."""
        return self._coord.call("status")

    def reshard(self, shards: int) -> dict:
        """Change the shard count online (split or merge, by reference: decision 0018)."""
        done = self._coord.call("reshard", shards)
        self.refresh_route()
        return done
