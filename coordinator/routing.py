"""Routing: which shard owns a primary key, and splitting a write batch per shard.

The hash is frozen (its name, ``crc32-msgpack-v1``, is stored in the cluster record): the
shard of a key is ``zlib.crc32(msgpack(key)) % shards``, where ``key`` is the primary key as
the engine normalizes it (:meth:`dn.schema.TableDef.check_key`: an int for an int64 column, a
float for a float64 column even if the caller gave an int, a tuple for a composite key). Never
Python's ``hash()``, which is salted per process.

A batch is validated whole before anything is sent (the same checks, and so the same typed
errors, as :meth:`dn.Engine.write`), so bad input never commits part of a batch on some shards.
Then it is split per shard, by column (:func:`split`): each part commits atomically on its
shard; the parts commit independently (see :mod:`coordinator.client` for what that means to a
caller).

Pure functions; no Ray, no I/O. Any thread.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
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


#: The largest chunk of a packed part sent as one argument of a shard call. Ray passes an
#: argument up to 100 KiB inline with the call; a larger one goes through the object store,
#: which costs about four times as much per call on one machine. A part is sent as several
#: chunks under this size instead (the shard logs them as they are, without packing again).
CHUNK_BYTES = 90 * 1024


@dataclass(frozen=True, slots=True)
class Batch:
    """A whole batch, validated: its upserts by column (column order; ``[]`` when there are
    none), their count, and the normalized primary keys of the upserts then of the
    deletes."""

    cols: list
    nrows: int
    keys: list

    @property
    def deletes(self) -> list:
        return self.keys[self.nrows:]


@dataclass(frozen=True, slots=True)
class ShardPart:
    """The share of one batch that goes to one shard: its upserts by column (``[]`` when
    there are none) and the primary keys it deletes."""

    cols: list
    deletes: list

    @property
    def nrows(self) -> int:
        return len(self.cols[0]) if self.cols else 0

    def packed(self) -> tuple[list[bytes], bytes]:
        """The part as the shard takes it (:meth:`dn.Engine.write_packed_columns`): the
        upserts as chunks of columns of at most about ``CHUNK_BYTES`` each, and the msgpack
        array of the deletes; packed once here and logged as they are by the shard."""
        return (pack_columns(self.cols) if self.cols else []), pack(self.deletes)


def pack_columns(cols: list, limit: int = CHUNK_BYTES) -> list[bytes]:
    """Columns of equal, non-zero length packed as chunks: each the msgpack array of the
    columns over a run of consecutive rows, at most ``limit`` bytes unless a single row is
    larger. The rows per chunk are estimated from a sample; a chunk that comes out too large
    (uneven rows) is split again."""
    n = len(cols[0])
    step = max(1, n // 32)
    sampled = len(range(0, n, step))
    per_row = len(pack([c[::step] for c in cols])) / sampled
    nchunks = max(1, -int(-n * per_row // (limit * 0.85)))
    per = -(-n // nchunks)  # rows per chunk, the chunks of about equal size
    if per >= n:
        whole = pack(cols)
        if len(whole) <= limit or n <= 1:
            return [whole]
        per = max(1, n // 2)
    out: list[bytes] = []
    for i in range(0, n, per):
        chunk = [c[i:i + per] for c in cols]
        blob = pack(chunk)
        if len(blob) > limit and per > 1:
            out.extend(pack_columns(chunk, limit))
        else:
            out.append(blob)
    return out


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
    return Batch(cols, n, table.check_keys(table.column_keys(cols), dels, max_batch_rows))


def owners(keys: list, shards: int) -> list[int]:
    """The shard of each normalized key (:func:`shard_of`, for a whole list)."""
    if shards == 1:
        return [0] * len(keys)
    crc = zlib.crc32
    pk = msgpack.Packer(use_bin_type=True).pack  # same bytes as dn.codec.pack, reused
    return [crc(pk(k)) % shards for k in keys]


def split(batch: Batch, shards: int) -> dict[int, ShardPart]:
    """A validated batch split by shard; each part keeps the batch's order."""
    if shards == 1:
        return {0: ShardPart(batch.cols, batch.deletes)}
    buckets: list[list[int]] = [[] for _ in range(shards)]
    add = [b.append for b in buckets]
    for i, o in enumerate(owners(batch.keys, shards)):
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
