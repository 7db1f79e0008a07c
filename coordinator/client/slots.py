"""Slots: a key hashes to one of a fixed number of slots, and a versioned map gives each slot's
shard (issue 17: the ground resharding moves on).

``slot = crc32(msgpack(key)) % slots``: the frozen hash of :mod:`coordinator.client.routing`
(``crc32-msgpack-v1``) with a modulus fixed when the cluster is created,
:func:`slot_count`: ``SLOTS`` (4,096) when the shard count divides it, else the first multiple
of the shard count above it. The map (:class:`SlotMap`) names the shard of every slot, and its
``version`` grows with every change of owner.

A cluster starts with the *direct* map, slot ``s`` → shard ``s % shards``. Because the shard
count divides the slot count, ``crc % slots % shards == crc % shards``: the direct map routes
every key exactly as the fixed hash did, so routing under it is the hash itself (the fast
paths of :mod:`coordinator.client.routing` stay as they are), and a cluster made before slots
existed (its record holds no map) reads and writes its data unchanged: it has the direct map of
its shard count, version 0. A map that is not direct routes each key through its slot. A map
may name any shard count over its slots (4,096 slots over 3 shards, after a reshard from 4 to
3): it is direct only when the shard count divides the slot count.

Record form, inside the cluster record (:mod:`coordinator.actor.cluster_catalog`; msgpack)::

    slots := {"count": int, "version": int, "owners": bin}   owners: a big-endian u16 per slot

Pure values; no I/O; any thread.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dn.errors import InvalidArgument

#: The slot count of a cluster whose shard count divides it (any power of two up to 4,096).
SLOTS = 4096
#: The most slots (and shards) a map can name: owners are 16-bit.
MAX_SLOTS = 1 << 16


def slot_count(shards: int) -> int:
    """The slot count of a new cluster of ``shards`` shards: a multiple of ``shards``, at least
    ``SLOTS``."""
    if type(shards) is not int or not 1 <= shards <= MAX_SLOTS // 2:
        raise InvalidArgument(f"a cluster has 1 to {MAX_SLOTS // 2} shards, not {shards!r}")
    return SLOTS if SLOTS % shards == 0 else shards * -(-SLOTS // shards)


@dataclass(frozen=True)
class SlotMap:
    """The shard of every slot, at one version (see the module docstring)."""

    shards: int
    owners: tuple[int, ...]  # owners[slot] = its shard
    version: int = 0
    direct: bool = field(init=False, compare=False)  # slot s -> s % shards for every s

    def __post_init__(self) -> None:
        n = len(self.owners)
        if not 1 <= n <= MAX_SLOTS:
            raise InvalidArgument(f"a slot map has 1 to {MAX_SLOTS} slots, not {n}")
        if any(type(o) is not int or not 0 <= o < self.shards for o in self.owners):
            raise InvalidArgument(f"every slot's owner must be a shard below {self.shards}")
        if type(self.version) is not int or self.version < 0:
            raise InvalidArgument("a slot map's version is an int >= 0")
        # direct only when the shard count divides the slot count: then, and only then, does
        # slot s -> s % shards route every key as the fixed hash does (the fast paths)
        direct = n % self.shards == 0 and all(
            o == s % self.shards for s, o in enumerate(self.owners)
        )
        object.__setattr__(self, "direct", direct)
        object.__setattr__(self, "_array", None)

    @classmethod
    def initial(cls, shards: int, version: int = 0) -> SlotMap:
        """The direct map of a new cluster of ``shards`` shards."""
        n = slot_count(shards)
        return cls(shards, tuple(s % shards for s in range(n)), version)

    @property
    def slots(self) -> int:
        return len(self.owners)

    def slots_of(self, shard: int) -> list[int]:
        """The slots ``shard`` owns, ascending."""
        return [s for s, o in enumerate(self.owners) if o == shard]

    def per_shard(self) -> dict[int, int]:
        """How many slots each shard owns (every shard listed)."""
        counts = Counter(self.owners)
        return {s: counts.get(s, 0) for s in range(self.shards)}

    def owner_array(self) -> Any:
        """The owners as a numpy array (uint16, made once), for vectorized routing."""
        if self._array is None:  # type: ignore[has-type]
            object.__setattr__(self, "_array", np.array(self.owners, dtype=np.uint16))
        return self._array

    def moved(self, slots: list[int], to_shard: int, version: int | None = None) -> SlotMap:
        """This map with ``slots`` owned by ``to_shard``, at ``version`` (default: the next)."""
        if type(to_shard) is not int or not 0 <= to_shard < self.shards:
            raise InvalidArgument(f"no shard {to_shard!r} in a cluster of {self.shards}")
        owners = list(self.owners)
        for s in slots:
            if type(s) is not int or not 0 <= s < self.slots:
                raise InvalidArgument(f"no slot {s!r} among {self.slots}")
            owners[s] = to_shard
        return SlotMap(self.shards, tuple(owners), self.version + 1 if version is None else version)

    def with_shards(self, shards: int) -> SlotMap:
        """This map over ``shards`` shards (every owner must be one of them), same version."""
        return SlotMap(shards, self.owners, self.version)

    def balanced(self, shards: int) -> dict[int, list[int]]:
        """The slots to move so that ``shards`` shards own about as many slots each (the
        first ``slots % shards`` one more), moving as few as possible: {to shard: slots}.
        Shards at or above ``shards`` end with none."""
        if type(shards) is not int or not 1 <= shards <= min(self.slots, MAX_SLOTS // 2):
            raise InvalidArgument(f"a cluster of {self.slots} slots has 1 to {self.slots} shards")
        quota = [self.slots // shards + (i < self.slots % shards) for i in range(shards)]
        kept = [0] * shards
        pool: list[int] = []
        for s, o in enumerate(self.owners):
            if o < shards and kept[o] < quota[o]:
                kept[o] += 1
            else:
                pool.append(s)
        # by owner: a shard takes its slots from as few shards as it can (a split from n to 2n
        # moves half of each old shard's slots to one new shard), so fewer moves, and fewer
        # shards read each referenced object
        pool.sort(key=lambda s: (self.owners[s], s))
        out: dict[int, list[int]] = {}
        for i in range(shards):
            take, pool = pool[: quota[i] - kept[i]], pool[quota[i] - kept[i] :]
            if take:
                out[i] = take
        return out

    # -- the record --------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "count": self.slots,
            "version": self.version,
            "owners": struct.pack(f">{self.slots}H", *self.owners),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None, shards: int) -> SlotMap:
        """The map a cluster record holds; a record without one (made before slots): the
        direct map of its shard count, version 0."""
        if record is None:
            return cls.initial(shards)
        count, raw = record["count"], record["owners"]
        if type(count) is not int or not isinstance(raw, bytes) or len(raw) != 2 * count:
            raise InvalidArgument("a slot map record needs count and 2 bytes of owner per slot")
        return cls(shards, struct.unpack(f">{count}H", raw), record["version"])
