"""Checkpoints: the metadata snapshot of one shard at ``ts``, stored at ``10/<shard>/<ts>``.

A checkpoint is taken at the ``to`` of an existing range object (seed 001: "select an existing
buffer checkpoint [100,130]" -> ``10/$shard/130``). It holds only metadata, never rows.

Body grammar (msgpack, inside the framing of :mod:`dn.objects.codec`, kind ``C``, format version
``VERSION`` = 3; map keys in the order written)::

    body     := {"shard": int, "ts": int,
                 "catalog": {"databases": [database, ...], "tables": [table, ...]},
                 "ranges": [[from, to, bytes], ...],       every live range object, ascending
                 "tables": {table_id: [entry, ...], ...},  table ids ascending
                 "tokens": bin}                            (ts, token) entries, see below
    database := [name, create_ts, drop_ts|nil]             sorted by (create_ts, name)
    table    := [db, name, [[col, type], ...], [pk_col, ...], create_ts, drop_ts|nil]
                                                           sorted by create_ts
    entry    := [from, to, rows, deletes, pk_min|nil, pk_max|nil]
                                                           the ranges holding the table, in
                                                           the order of "ranges"

``catalog`` is the catalog as it stood at ``ts`` (``dn.catalog.Catalog.as_of``): every version
of a database or table created at or before ``ts``, its ``drop_ts`` nil unless dropped at or
before ``ts``. ``bytes`` is the size of the range object (0 when the writer did not know it).
``rows`` and ``deletes`` count the table's row versions and tombstones in that range object;
``pk_min`` and ``pk_max`` are the smallest and largest primary key among them (a composite key is an
array), so a reader fetches only the objects a table (or a key) needs. ``tokens`` are the
idempotency tokens committed at or before ``ts`` and still inside the token window when the
checkpoint was written, with their commit timestamps (decision 0014): 40-byte entries ``ts:u64
token:32`` (big-endian), ``ts`` strictly ascending (:mod:`dn.write.tokens`; one byte string, so a
snapshot read that decodes the checkpoint pays nothing per token). Recovery remembers them, and
those of the ranges after ``ts``, without reading older ranges. Encoding is deterministic for the
same state.

Versions read (``READ_VERSIONS``): 3, as above; 2, the same body without ``tokens`` (written
before tokens existed; it holds none); and 1, whose ranges are ``[from, to]`` (written before
range sizes were recorded; the sizes are then unknown and absent from
:attr:`Checkpoint.sizes`) or ``[from, to, bytes]`` (the same body as version 2). A version-2 or
version-3 object whose ranges lack ``bytes`` is corrupt, and so is a version-3 object without
valid ``tokens``. Code that reads only older versions refuses a newer checkpoint as corrupt
(unknown format version).
"""

from __future__ import annotations

from dataclasses import dataclass

from dn.errors import Corruption
from dn.objects import codec
from dn.objects.rangeobj import TableStats
from dn.write.tokens import check_entries, pack_entries

#: The format version written: ranges ``[from, to, bytes]``, and the tokens.
VERSION = 3
#: The format versions read: 2 (no tokens) and 1 (ranges ``[from, to]`` or ``[from, to,
#: bytes]``) as well.
READ_VERSIONS = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    ts: int
    catalog: dict
    ranges: tuple[tuple[int, int], ...]
    sizes: dict[tuple[int, int], int]
    tables: dict[int, tuple[tuple[tuple[int, int], TableStats], ...]]
    tokens: bytes = b""  # (ts, token) entries, packed (dn.write.tokens.unpack_entries)


def build(
    shard: int,
    ts: int,
    catalog: dict,
    ranges: list[tuple[int, int]],
    stats: dict[tuple[int, int], dict[int, TableStats]],
    sizes: dict[tuple[int, int], int],
    tokens: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """Encode a checkpoint; ``stats`` maps each range to its per-table statistics, ``tokens``
    are ``(ts, token)`` ascending."""
    tables: dict[int, list] = {}
    for r in ranges:
        for table_id, st in sorted(stats[r].items()):
            tables.setdefault(table_id, []).append([r[0], r[1], *st.to_wire()])
    body = {
        "shard": shard,
        "ts": ts,
        "catalog": catalog,
        "ranges": [[r[0], r[1], sizes.get(r, 0)] for r in ranges],
        "tables": dict(sorted(tables.items())),
        "tokens": pack_entries(tokens),
    }
    return codec.encode(codec.KIND_CHECKPOINT, body, VERSION)


def decode(data: bytes, key: str) -> Checkpoint:
    body = codec.decode(codec.KIND_CHECKPOINT, data, key, READ_VERSIONS)
    try:
        tables = {
            int(table_id): tuple(((e[0], e[1]), TableStats.from_wire(e[2:])) for e in entries)
            for table_id, entries in body["tables"].items()
        }
        codec.check_key_numbers(key, (body["ts"],))
        version = codec.version_of(data)
        ranges, sizes = _ranges(body["ranges"], version)
        tokens = check_entries(body["tokens"], 0, body["ts"]) if version >= 3 else b""
        return Checkpoint(body["ts"], body["catalog"], ranges, sizes, tables, tokens)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise Corruption(f"object {key} has a malformed body: {exc}", key=key) from exc


def _ranges(
    entries: list, version: int
) -> tuple[tuple[tuple[int, int], ...], dict[tuple[int, int], int]]:
    """The live ranges and their sizes in bytes (only those the object records)."""
    ranges: list[tuple[int, int]] = []
    sizes: dict[tuple[int, int], int] = {}
    for e in entries:
        if len(e) == 3:
            r = (e[0], e[1])
            sizes[r] = e[2]
        elif len(e) == 2 and version == 1:
            r = (e[0], e[1])  # written before the size was recorded: unknown
        else:
            raise ValueError(f"range entry {e!r} is not [from, to, bytes]")
        ranges.append(r)
    return tuple(ranges), sizes
