"""Range objects: what a buffer checkpoint writes to ``20/<shard>/<from>_<to>``.

Stored body (inside the framing of :mod:`dn.objects.codec`, kind ``R``, format version
``VERSION`` = 5): a msgpack meta (the keys of version 3's body below, but for ``tables``: where
each table's streams lie) followed by each table's rows and deletes as Arrow IPC streams in
parts cut between keys (:mod:`dn.objects.rangeparts` has the layout,
:mod:`dn.objects.rangecols` the streams' grammar), so that a scan into Arrow reads them near a
memory copy (:mod:`dn.read.arrowscan`) and a streaming scan one part at a time, with ranged
reads (:mod:`dn.read.arrowstream`).

Version 4 (still read) stored the same streams, each one record batch, inside the msgpack
body::

    body     := {"shard": int, "from": int, "to": int,
                 "commits": int, "commands": [...], "tokens": bin,   as in version 3 below
                 "tables": {table_id: {"rows": bin, "dels": bin}, ...}}   table ids ascending

Each table holds the same row versions and deletes, in the same order, as version 3's
``table`` below; :meth:`RangeObject.run` and :attr:`RangeObject.tables` give them in that
form, made from the Arrow batches on first use, so every Python read path is unchanged. The
writer falls back to version 3 for an object with a value no stored Arrow type takes
(:class:`dn.objects.rangecols.Unencodable`; normal form never has one).

Version 3 (still read): the msgpack ``body`` below, compressed with zstd (level 1)::

    stored   := raw_len:u64 (big-endian) zstd_frame       raw_len: the msgpack body's length

and the body (msgpack; map keys in the order written)::

    body     := {"shard": int, "from": int, "to": int,
                 "commits": int,                            commands (commits) it holds
                 "commands": [[ts, [ddl_op, ddl_arg, ...]], ...],  DDL, in commit order
                 "tables": {table_id: table, ...},          table ids ascending
                 "tokens": bin}                             (ts, token) entries, see below
    table    := {"ts": [int, ...],                          one per row version
                 "cols": [[value, ...], ...],               one list per column, schema order
                 "del_pks": [pk, ...], "del_ts": [int, ...]}   one per delete (tombstone)

``from`` and ``to`` are the commit timestamps the object covers (``from`` is the ``to`` of the
range before it plus one, so it may precede the first command). ``commits`` counts the commands
the range holds, DDL and writes alike, each a commit with a timestamp of its own (so 1 <=
commits <= to - from + 1): a buffer checkpoint writes its buffer's count, compaction the sum of
its inputs' (the commits the output covers, whatever versions it drops). The checkpoint trigger
counts commits since the last checkpoint with it (seed 003). ``tokens`` are the idempotency
tokens of the range's writes that carried one, with their commit timestamps: 40-byte entries
``ts:u64 token:32`` (big-endian), ``ts`` strictly ascending and in ``[from, to]``
(:mod:`dn.write.tokens`); recovery reads them from the ranges after the newest checkpoint.
Compaction keeps those still inside the token window. A DDL command is as the catalog
applies it (:mod:`dn.catalog`): ``[1, db]``, ``[2, db]``, ``[3, db, table, [[col, type], ...],
[pk_col, ...]]``, ``[4, db, table]``. ``tables`` holds the tables written in the range; row
versions are sorted by (primary key, ts), and deletes likewise. A composite primary key is a
msgpack array. ``cols`` is an empty array when a table has no row versions in a compacted object
(:func:`dn.upkeep.compaction.merge`, the other writer of this grammar; :func:`build` writes one
list per column, empty ones included). Encoding is deterministic: the same commands always give
the same bytes, so a stale incarnation that rewrites a key it also wrote writes identical bytes.

Versions read (``READ_VERSIONS``): 5, 4 (each stream one record batch: the same grammar, read
by the same code) and 3, as above; 2, the same body stored uncompressed
(the framed body is the msgpack body itself); and 1, the same body without ``commits`` and
``tokens`` (written before ranges counted their commits; it holds no tokens). A version-1 object's
count is derived when it is decoded (:attr:`RangeObject.ncommits`): the number of distinct
timestamps it holds, at least 1; exact for a buffer checkpoint (every write holds a row or a delete,
so every commit left its timestamp), a lower bound for a compaction that dropped versions. A
version-2, -3, -4 or -5 object without a valid ``commits`` or ``tokens`` is corrupt, and so is a
version-3 body that does not decompress to ``raw_len`` bytes, or a version-4 or -5 table whose
streams do not follow :mod:`dn.objects.rangecols` (when the object is decoded, or its batches
read); code that reads only older versions refuses newer ones as corrupt. Why compressed
(version 3 and up): row versions sorted by (key, ts) compress well (keys, timestamps and
repeated values), about 2-3x for typical rows; that is stored bytes, GET bytes and time on S3,
for a decompression that costs about a tenth of decoding the msgpack. Why Arrow (version 4): a
scan into Arrow then decompresses the stored buffers instead of building a Python object per
value and converting them back. Why parts (version 5): an object the engine freezes by itself
holds millions of rows (tens of MB of Arrow), and compaction makes bigger ones; a streaming
scan that decoded each whole would hold that much, where it now holds one part.

``build`` also returns the per-table statistics a checkpoint records: rows, deletes, primary
key min and max.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dn.errors import Corruption
from dn.objects import codec, rangecols, rangeparts
from dn.objects.rangecols import ArrowTable
from dn.read.run import Run
from dn.write.buffer import Buffer
from dn.write.tokens import check_entries, pack_entries

#: The format version written: each table's rows and deletes as Arrow IPC streams in parts.
VERSION = rangeparts.VERSION
#: Version 4: the same, each stream one record batch (read as version 5).
V4 = 4
#: Version 3: the whole msgpack body zstd-compressed, tables as msgpack arrays.
V3 = 3
#: The format versions read: 4, 3, 2 (uncompressed) and 1 (its count of commits derived) as well.
READ_VERSIONS = (1, 2, 3, 4, 5)
#: zstd, through pyarrow (a dependency already); level 1: fast, and most of the gain.
_CODEC = pa.Codec("zstd", compression_level=1)
_RAW_LEN = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class TableStats:
    rows: int
    deletes: int
    pk_min: Any
    pk_max: Any

    def to_wire(self) -> list:
        return [self.rows, self.deletes, self.pk_min, self.pk_max]

    @classmethod
    def spanning(cls, rows: int, deletes: int, ends: list) -> TableStats:
        """The statistics of a table whose sorted versions and deletes begin and end at the
        keys ``ends`` (empty: no key)."""
        return cls(rows, deletes, min(ends) if ends else None, max(ends) if ends else None)

    @classmethod
    def from_wire(cls, w: list) -> TableStats:
        rows, deletes, lo, hi = w
        return cls(rows, deletes, _tuple(lo), _tuple(hi))


class RangeObject:
    """A decoded range object. Runs are converted per table on first use and kept. The
    tables of a version-4 or -5 object are :class:`ArrowTable`, of older ones version-3 dicts."""

    __slots__ = (
        "from_ts",
        "to_ts",
        "ncommits",
        "commands",
        "_tables",
        "nbytes",
        "tokens",
        "_runs",
        "_dicts",
    )

    def __init__(
        self,
        from_ts: int,
        to_ts: int,
        ncommits: int,
        commands: list,
        tables: dict,
        nbytes: int,
        tokens: bytes = b"",
    ):
        self.from_ts = from_ts
        self.to_ts = to_ts
        self.ncommits = ncommits  # the commits (commands) it holds
        self.commands: list[tuple[int, list]] = commands
        self._tables: dict[int, dict | ArrowTable] = tables
        self.nbytes = nbytes
        self.tokens = tokens  # (ts, token) entries, packed (dn.write.tokens.unpack_entries)
        self._runs: dict[int, Run] = {}
        self._dicts: dict[int, dict] | None = None

    @property
    def table_ids(self) -> list[int]:
        """The ids of the tables the object holds, ascending."""
        return list(self._tables)

    @property
    def tables(self) -> dict[int, dict]:
        """Every table as version 3's ``table`` dict (an Arrow object's made once)."""
        if self._dicts is None:
            self._dicts = {tid: _as_dict(t) for tid, t in self._tables.items()}
        return self._dicts

    def arrow(self, table_id: int) -> ArrowTable | None | bool:
        """The table of a version-4 or -5 object as Arrow (None: the object holds none of it);
        False for an object of an older version (read it through :meth:`run`)."""
        t = self._tables.get(table_id)
        if t is None:
            return None
        return t if isinstance(t, ArrowTable) else False

    def run(self, table_id: int, pk_pos: tuple[int, ...]) -> Run | None:
        run = self._runs.get(table_id)
        if run is None:
            t = self._tables.get(table_id)
            if t is None:
                return None
            run = self._runs[table_id] = to_run(_as_dict(t), pk_pos)
        return run


def build(shard: int, buf: Buffer) -> tuple[bytes, dict[int, TableStats]]:
    """Sort a frozen buffer's blocks into a range object; return bytes and stats. Each table's
    rows go straight into Arrow (:func:`rangecols.encode_rows`); an object with a value no
    stored Arrow type takes is built as version 3 from sorted lists (:func:`_sorted`)."""
    assert buf.frozen and buf.to_ts is not None
    streams: dict[int, dict] | None = {}
    stats: dict[int, TableStats] = {}
    for table_id in sorted(buf.tables):
        block = buf.tables[table_id]
        del_pks, del_ts = _sorted_dels(block)
        try:
            rows, keys = rangecols.encode_rows(block.cols, block.ts, block.pk_pos)
            dels = rangecols.encode_dels(del_pks, del_ts)
        except rangecols.Unencodable:
            streams = None
            break
        streams[table_id] = {"rows": rows, "dels": dels}
        if del_pks:
            keys += [del_pks[0], del_pks[-1]]
        stats[table_id] = TableStats.spanning(len(block.ts), len(del_ts), keys)
    commands = [[ts, cmd] for ts, cmd in buf.commands]
    at = {tid: buf.tables[tid].pk_pos for tid in buf.tables}
    head = (shard, buf.from_ts, buf.to_ts, buf.ncommits, commands)
    if streams is None:
        tables, stats = _sorted(buf)
        return encode(*head, tables, buf.tokens, at), stats
    return encode(*head, {}, buf.tokens, at, streams), stats


def _sorted(buf: Buffer) -> tuple[dict[int, dict], dict[int, TableStats]]:
    """A frozen buffer's tables as version 3's ``table`` dicts (rows and deletes sorted by
    (key, ts)), and their stats."""
    tables: dict[int, dict] = {}
    stats: dict[int, TableStats] = {}
    for table_id in sorted(buf.tables):
        block = buf.tables[table_id]
        pks = block.pks()
        # Rows were appended in ts order, so a stable sort by pk gives (pk, ts) order.
        order = sorted(range(len(pks)), key=pks.__getitem__)
        cols = [[c[i] for i in order] for c in block.cols]
        ts = [block.ts[i] for i in order]
        del_pks, del_ts = _sorted_dels(block)
        tables[table_id] = {"ts": ts, "cols": cols, "del_pks": del_pks, "del_ts": del_ts}
        keys = [pks[order[0]], pks[order[-1]]] if order else []
        if del_pks:
            keys += [del_pks[0], del_pks[-1]]
        stats[table_id] = TableStats.spanning(len(ts), len(del_ts), keys)
    return tables, stats


def _sorted_dels(block: Any) -> tuple[list, list[int]]:
    """A buffer table's deletes sorted by (key, ts): keys, timestamps (a stable sort by key:
    they were appended in ts order)."""
    order = sorted(range(len(block.del_pks)), key=block.del_pks.__getitem__)
    return [block.del_pks[i] for i in order], [block.del_ts[i] for i in order]


def encode(
    shard: int,
    from_ts: int,
    to_ts: int,
    ncommits: int,
    commands: list,
    tables: dict,
    tokens: list[tuple[int, bytes]],
    pk_pos: dict[int, tuple[int, ...]] | None = None,
    streams: dict[int, dict] | None = None,
) -> bytes:
    """The range object of the grammar above, in format version ``VERSION`` (both writers;
    ``tables`` as version 3's dicts, each table's rows in parts cut between the keys at its
    ``pk_pos``: one part when not given), or version 3 when a value has no stored Arrow type.
    ``streams``: the tables already as :func:`rangecols.encode_table` makes them."""
    pk_pos = pk_pos or {}
    arrow: dict | None = streams
    try:
        if arrow is None:
            arrow = {tid: rangecols.encode_table(t, pk_pos.get(tid)) for tid, t in tables.items()}
    except rangecols.Unencodable:
        arrow = None
    # Arrow's allocator keeps what the IPC writer freed (measured: ~30 MiB resident after a
    # 6 MiB object); a writer short of memory builds objects over and over: give it back.
    pa.default_memory_pool().release_unused()
    body = {
        "shard": shard,
        "from": from_ts,
        "to": to_ts,
        "commits": ncommits,
        "commands": commands,
        "tables": tables,
        "tokens": pack_entries(tokens),
    }
    if arrow is not None:
        del body["tables"]
        return codec.frame_parts(codec.KIND_RANGE, rangeparts.pack_parts(body, arrow), VERSION)
    raw = codec.pack(body)
    stored = _RAW_LEN.pack(len(raw)) + _CODEC.compress(raw, asbytes=True)
    return codec.frame(codec.KIND_RANGE, stored, V3)


def decode(data: bytes, key: str) -> RangeObject:
    """Decode and check a range object; raises Corruption naming ``key``."""
    try:
        body = _body(data, key)
        commands = [(ts, cmd) for ts, cmd in body["commands"]]
        tables = body["tables"]
        if codec.version_of(data) == V4:
            if list(tables) != sorted(tables) or any(type(t) is not int for t in tables):
                raise ValueError("table ids that are not ascending ints")
            tables = {tid: ArrowTable.from_v4(t, key) for tid, t in tables.items()}
        elif codec.version_of(data) != VERSION:
            for t in tables.values():
                n = len(t["ts"])
                if any(len(c) != n for c in t["cols"]) or len(t["del_pks"]) != len(t["del_ts"]):
                    raise ValueError("column and timestamp lengths differ")
        tokens = b""
        if codec.version_of(data) == 1:
            ncommits = _derived_commits(commands, tables)
        else:
            ncommits = body["commits"]
            if type(ncommits) is not int or not 1 <= ncommits <= body["to"] - body["from"] + 1:
                raise ValueError(f"commits {ncommits!r} is not a count of the range's commits")
            tokens = check_entries(body["tokens"], body["from"], body["to"])
        ro = RangeObject(body["from"], body["to"], ncommits, commands, tables, len(data), tokens)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise Corruption(f"object {key} has a malformed body: {exc}", key=key) from exc
    codec.check_key_numbers(key, (ro.from_ts, ro.to_ts))
    return ro


def _body(data: bytes, key: str) -> Any:
    """The msgpack body of a range object of any version read (of version 5: its meta, the
    tables as :class:`ArrowTable` over views of ``data``)."""
    if len(data) >= codec.HEADER_SIZE and codec.version_of(data) == VERSION:
        return rangeparts.unpack(codec.unframe(codec.KIND_RANGE, data, key, READ_VERSIONS), key)
    if len(data) < codec.HEADER_SIZE or codec.version_of(data) != V3:
        return codec.decode(codec.KIND_RANGE, data, key, READ_VERSIONS)
    stored = codec.unframe(codec.KIND_RANGE, data, key, READ_VERSIONS)
    try:
        (n,) = _RAW_LEN.unpack_from(stored)
        raw = _CODEC.decompress(stored[_RAW_LEN.size :], decompressed_size=n, asbytes=True)
        if len(raw) != n:
            raise ValueError(f"{len(raw)} bytes, not {n}")
        return codec.unpack(raw)
    except Exception as exc:  # zstd and msgpack raise several unrelated types
        raise Corruption(f"object {key} does not decompress or decode: {exc}", key=key) from exc


def _derived_commits(commands: list, tables: dict) -> int:
    """The commits of a version-1 object: its distinct timestamps, at least 1."""
    seen = {ts for ts, _ in commands}
    for t in tables.values():
        seen.update(t["ts"])
        seen.update(t["del_ts"])
    return max(1, len(seen))


def _as_dict(t: dict | ArrowTable) -> dict:
    return t.to_dict() if isinstance(t, ArrowTable) else t


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
