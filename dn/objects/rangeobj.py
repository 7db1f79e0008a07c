"""Range objects: what a buffer checkpoint writes to ``20/<shard>/<from>_<to>``.

Body grammar (msgpack, inside the framing of :mod:`dn.objects.codec`, kind ``R``, format
version 1; map keys in the order written)::

    body     := {"shard": int, "from": int, "to": int,
                 "commands": [[ts, [ddl_op, ddl_arg, ...]], ...],  DDL, in commit order
                 "tables": {table_id: table, ...}}          table ids ascending
    table    := {"ts": [int, ...],                          one per row version
                 "cols": [[value, ...], ...],               one list per column, schema order
                 "del_pks": [pk, ...], "del_ts": [int, ...]}   one per delete (tombstone)

``from`` and ``to`` are the commit timestamps the object covers (``from`` is the ``to`` of the
range before it plus one, so it may precede the first command). A DDL command is as the catalog
applies it (:mod:`dn.catalog`): ``[1, db]``, ``[2, db]``, ``[3, db, table, [[col, type], ...],
[pk_col, ...]]``, ``[4, db, table]``. ``tables`` holds the tables written in the range; row
versions are sorted by (primary key, ts), and deletes likewise. A composite primary key is a
msgpack array. ``cols`` is an empty array when a table has no row versions in a compacted object
(:func:`dn.upkeep.compaction.merge`, the other writer of this grammar; :func:`build` writes one
list per column, empty ones included). Encoding is deterministic: the same commands always give
the same bytes, so a stale incarnation that rewrites a key it also wrote writes identical bytes.

``build`` also returns the per-table statistics a checkpoint records: rows, deletes, primary
key min and max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dn.errors import Corruption
from dn.objects import codec
from dn.read.run import Run
from dn.write.buffer import Buffer


@dataclass(frozen=True, slots=True)
class TableStats:
    rows: int
    deletes: int
    pk_min: Any
    pk_max: Any

    def to_wire(self) -> list:
        return [self.rows, self.deletes, self.pk_min, self.pk_max]

    @classmethod
    def from_wire(cls, w: list) -> TableStats:
        rows, deletes, lo, hi = w
        return cls(rows, deletes, _tuple(lo), _tuple(hi))


class RangeObject:
    """A decoded range object. Runs are converted per table on first use and kept."""

    __slots__ = ("from_ts", "to_ts", "commands", "tables", "nbytes", "_runs")

    def __init__(self, from_ts: int, to_ts: int, commands: list, tables: dict, nbytes: int):
        self.from_ts = from_ts
        self.to_ts = to_ts
        self.commands: list[tuple[int, list]] = commands
        self.tables: dict[int, dict] = tables
        self.nbytes = nbytes
        self._runs: dict[int, Run] = {}

    def run(self, table_id: int, pk_pos: tuple[int, ...]) -> Run | None:
        run = self._runs.get(table_id)
        if run is None:
            t = self.tables.get(table_id)
            if t is None:
                return None
            run = self._runs[table_id] = to_run(t, pk_pos)
        return run


def build(shard: int, buf: Buffer) -> tuple[bytes, dict[int, TableStats]]:
    """Merge-sort a frozen buffer's blocks into a range object; return bytes and stats."""
    assert buf.frozen and buf.to_ts is not None
    tables: dict[int, dict] = {}
    stats: dict[int, TableStats] = {}
    for table_id in sorted(buf.tables):
        block = buf.tables[table_id]
        pks = block.pks()
        # Rows were appended in ts order, so a stable sort by pk gives (pk, ts) order.
        order = sorted(range(len(pks)), key=pks.__getitem__)
        cols = [[c[i] for i in order] for c in block.cols]
        ts = [block.ts[i] for i in order]
        dorder = sorted(range(len(block.del_pks)), key=block.del_pks.__getitem__)
        del_pks = [block.del_pks[i] for i in dorder]
        del_ts = [block.del_ts[i] for i in dorder]
        tables[table_id] = {"ts": ts, "cols": cols, "del_pks": del_pks, "del_ts": del_ts}
        keys = [pks[order[0]], pks[order[-1]]] if order else []
        if del_pks:
            keys += [del_pks[0], del_pks[-1]]
        stats[table_id] = TableStats(
            len(ts), len(del_ts), min(keys) if keys else None, max(keys) if keys else None
        )
    body = {
        "shard": shard,
        "from": buf.from_ts,
        "to": buf.to_ts,
        "commands": [[ts, cmd] for ts, cmd in buf.commands],
        "tables": tables,
    }
    return codec.encode(codec.KIND_RANGE, body), stats


def decode(data: bytes, key: str) -> RangeObject:
    """Decode and check a range object; raises Corruption naming ``key``."""
    body = codec.decode(codec.KIND_RANGE, data, key)
    try:
        commands = [(ts, cmd) for ts, cmd in body["commands"]]
        tables = body["tables"]
        for t in tables.values():
            n = len(t["ts"])
            if any(len(c) != n for c in t["cols"]) or len(t["del_pks"]) != len(t["del_ts"]):
                raise ValueError("column and timestamp lengths differ")
        ro = RangeObject(body["from"], body["to"], commands, tables, len(data))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise Corruption(f"object {key} has a malformed body: {exc}", key=key) from exc
    codec.check_key_numbers(key, (ro.from_ts, ro.to_ts))
    return ro


def to_run(t: dict, pk_pos: tuple[int, ...]) -> Run:
    cols = t["cols"]
    ts = t["ts"]
    if len(pk_pos) == 1:
        pks = cols[pk_pos[0]] if ts else []
        del_pks = t["del_pks"]
    else:
        pks = list(zip(*(cols[p] for p in pk_pos))) if ts else []
        del_pks = [tuple(k) for k in t["del_pks"]]
    if (ts and any(len(c) != len(ts) for c in cols)) or len(t["del_pks"]) != len(t["del_ts"]):
        raise ValueError("column and timestamp lengths differ")
    # by column: a scan picks from the columns, and row tuples are made only if asked for
    return Run(pks, ts, None, del_pks, t["del_ts"], sorted_by_pk=True, cols=cols)


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
