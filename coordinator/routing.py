"""Routing: which shard owns a primary key, and splitting a write batch per shard.

The hash is frozen (its name, ``crc32-msgpack-v1``, is stored in the cluster record): the
shard of a key is ``zlib.crc32(msgpack(key)) % shards``, where ``key`` is the primary key as
the engine normalizes it (:meth:`dn.schema.TableDef.check_key`: an int for an int64 column, a
float for a float64 column even if the caller gave an int, a tuple for a composite key). Never
Python's ``hash()``, which is salted per process.

A batch is validated whole before anything is sent (the same checks, and so the same typed
errors, as :meth:`dn.Engine.write`), so bad input never commits part of a batch on some shards.
Then it is split per shard: each part commits atomically on its shard; the parts commit
independently (see :mod:`coordinator.client` for what that means to a caller).

Pure functions; no Ray, no I/O. Any thread.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from dn.codec import pack
from dn.errors import InvalidArgument
from dn.schema import TableDef

HASH_NAME = "crc32-msgpack-v1"


def shard_of(key: Any, shards: int) -> int:
    """The shard owning a normalized primary key."""
    return zlib.crc32(pack(key)) % shards


def pk_signature(table: TableDef) -> tuple[tuple[str, str], ...]:
    """The primary-key columns with their types: what routing depends on. A shard refuses a
    write routed with a different signature (the table was dropped and created again)."""
    types = dict(table.columns)
    return tuple((c, types[c]) for c in table.primary_key)


@dataclass(frozen=True, slots=True)
class ShardPart:
    """The share of one batch that goes to one shard: validated rows (tuples in column order)
    and normalized primary keys."""

    rows: list[tuple]
    deletes: list

    def packed(self) -> tuple[bytes, bytes]:
        """The part as the shard takes it (:meth:`dn.Engine.write_packed`): two msgpack
        arrays, packed once here and logged as they are by the shard."""
        return pack(self.rows), pack(self.deletes)


def split_batch(
    table: TableDef,
    upserts: Any,
    deletes: Any,
    shards: int,
    max_value_bytes: int,
    max_batch_rows: int,
) -> dict[int, ShardPart]:
    """Validate a whole batch like the engine does, then split it by shard.

    Upserts travel as validated row tuples and deletes as normalized keys; the client packs
    each part once (:meth:`ShardPart.packed`) and the shard checks the packed part again,
    column by column, before logging those very bytes.
    """
    if isinstance(upserts, dict) or isinstance(upserts, str | bytes):
        raise InvalidArgument("upserts must be a list of row dicts")
    if not isinstance(upserts, list | tuple):
        upserts = list(upserts) if isinstance(upserts, Iterable) else upserts
    rows = table.normalize_rows(upserts, max_value_bytes)
    dels = table.normalize_deletes(deletes)
    keys = table.check_batch(rows, dels, max_batch_rows)
    parts: dict[int, ShardPart] = {}
    crc = zlib.crc32
    packer = msgpack.Packer(use_bin_type=True)  # same bytes as dn.codec.pack, reused
    pk = packer.pack
    for i, s in enumerate([crc(pk(k)) % shards for k in keys]):
        part = parts.get(s)
        if part is None:
            part = parts[s] = ShardPart([], [])
        if i < len(rows):
            part.rows.append(rows[i])
        else:
            part.deletes.append(keys[i])
    return parts
