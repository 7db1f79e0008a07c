"""Routing: which shard owns a primary key, and splitting a write batch per shard.

The hash is frozen (its name, ``crc32-msgpack-v1``, is stored in the cluster record): the
shard of a key is ``zlib.crc32(msgpack(key)) % shards``, where ``key`` is the primary key as
the engine normalizes it (:meth:`dn.schema.TableDef.check_key`: an int for an int64 column, a
float for a float64 column even if the caller gave an int, a tuple for a composite key). Never
Python's ``hash()``, which is salted per process.

A batch is validated whole before anything is sent (the same checks, and so the same typed
errors, as :meth:`dn.Engine.write`), so bad input never commits part of a batch on some shards.
Then it is split per shard, by column (:func:`split`), into :class:`ShardPart` shares (columns
and keys, unpacked: a writer still merges them); each is packed as one
:class:`dn.write.part.WritePart` when it is sent. Each part commits atomically on its shard;
the parts commit independently (see :mod:`coordinator.client.client` for what that means to a
caller).

Two ways to compute the same owners: one key at a time (``zlib.crc32`` of the packed key; any
key type), and, for a batch whose primary key is one int64 column (:attr:`Batch.int64_key`) of
at least ``VECTOR_MIN_KEYS`` keys, all keys at once with numpy (:func:`dn.slots.int64_slots`,
bit-identical; its docstring has the arithmetic), split with one stable sort of the owners. The
parts hold the batch's own objects, gathered by Python indexes from the stable order; no value
goes through numpy.

Pure functions; no Ray, no I/O. Any thread.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from coordinator.client.slots import SlotMap
from dn.errors import InvalidArgument
from dn.objects.codec import pack
from dn.schema import TableDef
from dn.slots import int64_slots, slots_py

HASH_NAME = "crc32-msgpack-v1"


def shard_of(key: Any, route: int | SlotMap) -> int:
    """The shard owning a normalized primary key under ``route``: a shard count (the fixed
    hash) or a slot map (:mod:`coordinator.client.slots`)."""
    if isinstance(route, SlotMap):
        return route.owners[zlib.crc32(pack(key)) % route.slots]
    return zlib.crc32(pack(key)) % route


@dataclass(frozen=True, slots=True)
class Batch:
    """A whole batch, validated: its upserts by column (column order; ``[]`` when there are
    none), their count, and the normalized primary keys of the upserts then of the
    deletes."""

    cols: list
    nrows: int
    keys: list
    #: The table's primary key is one int64 column: every key is an int in int64 range
    #: (validated), which :func:`split` may hash with numpy.
    int64_key: bool = False

    @property
    def deletes(self) -> list:
        return self.keys[self.nrows :]


@dataclass(frozen=True, slots=True)
class ShardPart:
    """The share of one batch that goes to one shard, unpacked: its upserts by column (``[]``
    when there are none) and the primary keys it deletes. Packed for the shard by
    :meth:`dn.write.part.WritePart.from_columns`."""

    cols: list
    deletes: list

    @property
    def nrows(self) -> int:
        return len(self.cols[0]) if self.cols else 0


def validate_batch(
    table: TableDef, upserts: Any, deletes: Any, max_value_bytes: int, max_batch_rows: int
) -> Batch:
    """A whole batch of row dicts checked like the engine checks it."""
    if isinstance(upserts, dict) or isinstance(upserts, str | bytes):
        raise InvalidArgument("upserts must be a list of row dicts")
    if not isinstance(upserts, list | tuple):
        upserts = list(upserts) if isinstance(upserts, Iterable) else upserts
    cols, n = table.rows_as_columns(upserts, max_value_bytes)
    return _checked(table, cols, n, deletes, max_batch_rows)


def validate_columns(
    table: TableDef, columns: Any, deletes: Any, max_value_bytes: int, max_batch_rows: int
) -> Batch:
    """A whole batch given by column (see :meth:`dn.schema.TableDef.normalize_columns`)
    checked like the engine checks it."""
    cols, n = table.normalize_columns(columns, max_value_bytes)
    return _checked(table, cols, n, deletes, max_batch_rows)


def _checked(table: TableDef, cols: list, n: int, deletes: Any, max_batch_rows: int) -> Batch:
    dels = table.normalize_deletes(deletes)
    keys = table.check_keys(table.column_keys(cols), dels, max_batch_rows)
    pos = table.pk_pos
    return Batch(cols, n, keys, len(pos) == 1 and table.columns[pos[0]][1] == "int64")


#: The fewest keys routed with numpy. Its fixed cost (about 20 numpy calls, 45-50 us for a
#: split) is more than the per-key path's cost for a smaller batch; measured, the two cost
#: the same at 80-100 keys.
VECTOR_MIN_KEYS = 96


def owners(keys: list, route: int | SlotMap, *, int64: bool = False) -> list[int]:
    """The shard of each normalized key (:func:`shard_of`, for a whole list) under ``route``:
    a shard count (the fixed hash) or a slot map. ``int64``: every key is an int in int64
    range (a validated key of one int64 column), so a long list may be hashed with numpy."""
    shards, smap = _route(route)
    if shards == 1:
        return [0] * len(keys)
    mod = shards if smap is None else smap.slots
    vec = int64_slots(keys, mod) if int64 and len(keys) >= VECTOR_MIN_KEYS else None
    if vec is not None:
        return (vec if smap is None else smap.owner_array()[vec]).tolist()
    got = slots_py(keys, mod)
    return got if smap is None else [smap.owners[s] for s in got]


def split(batch: Batch, route: int | SlotMap) -> dict[int, ShardPart]:
    """A validated batch split by shard under ``route`` (a shard count, or a slot map); each
    part keeps the batch's order."""
    shards, smap = _route(route)
    if shards == 1:
        return {0: ShardPart(batch.cols, batch.deletes)}
    if batch.int64_key and len(batch.keys) >= VECTOR_MIN_KEYS:
        own = int64_slots(batch.keys, shards if smap is None else smap.slots)
        if own is not None:
            if smap is not None:
                own = smap.owner_array()[own]
            return _split_sorted(batch, own, shards)
    return _split_py(batch, shards, owners(batch.keys, route))


def _route(route: int | SlotMap) -> tuple[int, SlotMap | None]:
    """(shard count, the slot map when keys must go through their slots: not a direct one,
    which routes as the fixed hash does)."""
    if isinstance(route, SlotMap):
        return route.shards, None if route.direct else route
    return route, None


def _split_py(batch: Batch, shards: int, own: list[int] | None = None) -> dict[int, ShardPart]:
    """:func:`split` one key at a time (``own``: each key's shard; by default the fixed hash
    of ``shards``): any key type, and small batches."""
    if own is None:
        own = slots_py(batch.keys, shards)
    buckets: list[list[int]] = [[] for _ in range(shards)]
    add = [b.append for b in buckets]
    for i, o in enumerate(own):
        add[o](i)
    parts: dict[int, ShardPart] = {}
    nrows, keys = batch.nrows, batch.keys
    for s, idx in enumerate(buckets):
        if not idx:
            continue
        cut = bisect_left(idx, nrows)  # indexes below nrows are upserts, then deletes
        ups = idx[:cut]
        parts[s] = ShardPart(
            [list(map(c.__getitem__, ups)) for c in batch.cols] if ups else [],
            list(map(keys.__getitem__, idx[cut:])),
        )
    return parts


def _split_sorted(batch: Batch, own: Any, shards: int) -> dict[int, ShardPart]:
    """:func:`split` given the owner of every key (a numpy array of small unsigned ints): a
    stable sort of the upserts' owners orders every column by shard and, within a shard, as in
    the batch; each shard's part is then a slice. The deletes likewise. The values are the
    batch's own objects (gathered through Python indexes, never through a numpy array)."""
    nrows, keys = batch.nrows, batch.keys
    none: list = [None] * shards
    ups = _by_shard(batch.cols, own[:nrows], shards) if nrows else none
    dels = _by_shard([keys[nrows:]], own[nrows:], shards) if len(keys) > nrows else none
    return {
        s: ShardPart(u or [], d[0] if d else [])
        for s, (u, d) in enumerate(zip(ups, dels))
        if u or d
    }


def _by_shard(cols: list, own: Any, shards: int) -> list[list[list] | None]:
    """For each shard, its rows of ``cols`` (columns of equal length, ``own`` the owner of
    each row) in their order, as new lists; None for a shard that owns none."""
    order = own.argsort(kind="stable").tolist()  # a radix sort: owners are 8 or 16 bits
    counts = np.bincount(own, minlength=shards).tolist()
    if len(order) == 1:
        sorted_cols = [[c[order[0]]] for c in cols]
    else:
        take = itemgetter(*order)
        sorted_cols = [list(take(c)) for c in cols]
    out: list[list[list] | None] = []
    lo = 0
    for n in counts:
        out.append(
            None
            if not n
            else sorted_cols
            if n == len(order)
            else [c[lo : lo + n] for c in sorted_cols]
        )
        lo += n
    return out
