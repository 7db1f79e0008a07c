"""Checkpoints: the metadata snapshot of one shard at ``ts``, stored at ``10/<shard>/<ts>``.

A checkpoint is taken at the ``to`` of an existing range object (seed 001: "select an existing
buffer checkpoint [100,130]" -> ``10/$shard/130``). It holds only metadata, never rows:

Body grammar (msgpack, inside the framing of :mod:`dn.codec`, kind ``C``)::

    body    := {"shard": int, "ts": int,
                "catalog": {"databases": [[name, create_ts, drop_ts|nil], ...],
                            "tables": [[db, name, [[col, type], ...], [pk_col, ...],
                                        create_ts, drop_ts|nil], ...]},
                "ranges": [[from, to, bytes], ...],          live range objects <= ts
                "tables": {table_id: [[from, to, rows, deletes, pk_min, pk_max], ...]}}

``tables`` lists, per table, the live objects that hold its versions, with their row counts
and primary-key bounds, so a reader fetches only the objects a table (or a key) needs.
Encoding is deterministic for the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

from dn import codec
from dn.errors import Corruption
from dn.rangeobj import TableStats


@dataclass(frozen=True, slots=True)
class Checkpoint:
    ts: int
    catalog: dict
    ranges: tuple[tuple[int, int], ...]
    sizes: dict[tuple[int, int], int]
    tables: dict[int, tuple[tuple[tuple[int, int], TableStats], ...]]


def build(shard: int, ts: int, catalog: dict, ranges: list[tuple[int, int]],
          stats: dict[tuple[int, int], dict[int, TableStats]],
          sizes: dict[tuple[int, int], int]) -> bytes:
    """Encode a checkpoint; ``stats`` maps each range to its per-table statistics."""
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
    }
    return codec.encode(codec.KIND_CHECKPOINT, body)


def decode(data: bytes, key: str) -> Checkpoint:
    body = codec.decode(codec.KIND_CHECKPOINT, data, key)
    try:
        tables = {
            int(table_id): tuple(
                ((e[0], e[1]), TableStats.from_wire(e[2:])) for e in entries
            )
            for table_id, entries in body["tables"].items()
        }
        codec.check_key_numbers(key, (body["ts"],))
        return Checkpoint(
            body["ts"],
            body["catalog"],
            tuple((a, b) for a, b, _ in body["ranges"]),
            {(a, b): n for a, b, n in body["ranges"]},
            tables,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise Corruption(f"object {key} has a malformed body: {exc}", key=key) from exc
