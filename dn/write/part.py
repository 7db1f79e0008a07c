"""A write part: one shard's share of one write batch, pre-packed by column, and its one codec.

A client validates a batch whole, splits it by shard and sends each shard a :class:`WritePart`
(decisions 0007, 0009, 0010). The part says everything that shard needs:

- ``db``, ``table``: the table's name;
- ``table_id``: the id of the table *on that shard* the client validated and routed the batch
  for (ids are per shard: a table's id is its creation timestamp there). A shard refuses a
  part whose id is not its live table's with :class:`dn.errors.StaleTable`: the table was
  dropped and created again since, maybe with other columns or another primary key;
- ``pk_signature``: the primary-key columns and their types the rows were routed by
  (:func:`pk_signature`, computed here and nowhere else);
- ``after``: the causality timestamp, the newest one the client has seen: the commit
  timestamp must be greater;
- ``deletes``: the msgpack array of the primary keys to delete (in normal form);
- ``chunks``: the upserts, as msgpack arrays of columns (one array per column, in column order,
  of equal non-zero lengths, values in normal form), each over a run of consecutive rows;
- ``token``: the part's idempotency token (:mod:`dn.write.tokens`), or None. Minted once, before
  the part is first sent, and sent again with every resend of the part: a shard applies a
  token once and answers it again with the first commit's timestamp (decision 0014).

The codec, end to end:

1. packed once, on the client: :meth:`WritePart.from_columns` (chunks of at most
   :data:`MAX_CHUNK_BYTES`, :func:`pack_columns`);
2. carried as the arguments of one shard call: :meth:`WritePart.to_call` gives
   ``(head, deletes, chunk, chunk, ...)`` with the small fields in ``head`` (the token last, when
   there is one); every chunk is an
   argument of its own so that Ray passes each inline with the call (an argument over
   100 KiB goes through Ray's object store, which makes the call much slower: decision
   0009); the shard takes them back with :meth:`WritePart.from_call`;
3. checked and decoded by the engine against its live table (:meth:`WritePart.decode`), then
   logged as the very bytes that were sent (:meth:`WritePart.log_payload`: op 5 of
   ``docs/formats.md``, or op 6 with the token; nothing is packed twice).

Invariants: a WritePart's fields have their types (checked when it is made, so a malformed
call is refused with :class:`dn.errors.InvalidArgument` before anything else); a part that
:meth:`decode` accepted logs exactly ``[table_id, [chunk, ...], deletes]`` (op 5), or
``[table_id, [chunk, ...], deletes, token]`` (op 6), the same bytes as ``codec.pack`` of the
decoded values.

Not done here: validating a caller's batch (:mod:`dn.batch`, through :class:`TableDef`),
routing (the client's), committing (:mod:`dn.write.path`). No I/O, no Ray; pure values. Any
module, any thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dn.catalog import OP_WRITE_COLUMNS, OP_WRITE_COLUMNS_TOKEN
from dn.errors import InvalidArgument, StaleTable
from dn.objects import codec
from dn.schema import TableDef
from dn.write.tokens import TOKEN_BYTES, is_token

#: The largest chunk of a part, in bytes. A fact of Ray, not a tunable: Ray passes an argument
#: of up to 100 KiB inline with a call, and a larger one through its object store, which costs
#: much more per call (decision 0009); 90 KiB leaves room for the argument's own framing.
MAX_CHUNK_BYTES = 90 * 1024

#: The shard's signature of a part routed by a table's primary key ``(column, type), ...``.
Signature = tuple[tuple[str, str], ...]


def pk_signature(table: TableDef) -> Signature:
    """The primary-key columns of ``table`` with their types: all that routing depends on.
    Two definitions with the same signature route every key to the same shard."""
    types = dict(table.columns)
    return tuple((c, types[c]) for c in table.primary_key)


def pack_columns(cols: list, limit: int = MAX_CHUNK_BYTES) -> list[bytes]:
    """Columns of equal, non-zero length packed as chunks: each the msgpack array of the
    columns over a run of consecutive rows, at most ``limit`` bytes unless a single row is
    larger. The rows per chunk are estimated from a sample; a chunk that comes out too large
    (uneven rows) is split again."""
    n = len(cols[0])
    step = max(1, n // 32)
    sampled = len(range(0, n, step))
    per_row = len(codec.pack([c[::step] for c in cols])) / sampled
    nchunks = max(1, -int(-n * per_row // (limit * 0.85)))
    per = -(-n // nchunks)  # rows per chunk, the chunks of about equal size
    if per >= n:
        whole = codec.pack(cols)
        if len(whole) <= limit or n <= 1:
            return [whole]
        per = max(1, n // 2)
    out: list[bytes] = []
    for i in range(0, n, per):
        chunk = [c[i : i + per] for c in cols]
        blob = codec.pack(chunk)
        if len(blob) > limit and per > 1:
            out.extend(pack_columns(chunk, limit))
        else:
            out.append(blob)
    return out


@dataclass(frozen=True, slots=True)
class DecodedPart:
    """A part as the engine applies it: the decoded chunks (columns as tuples), the decoded
    deletes (keys in normal form), and its row count (upserts plus deletes)."""

    chunks: list
    deletes: list
    nrows: int


@dataclass(frozen=True, slots=True)
class WritePart:
    """One shard's share of one batch, packed (see the module docstring for each field)."""

    db: str
    table: str
    table_id: int
    pk_signature: Signature
    after: int
    deletes: bytes
    chunks: tuple[bytes, ...]
    token: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.db, str) or not isinstance(self.table, str):
            raise InvalidArgument("a write part's database and table must be names (str)")
        for name in ("table_id", "after"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise InvalidArgument(f"a write part's {name} must be an int >= 0, got {value!r}")
        sig = self.pk_signature
        if (
            not isinstance(sig, list | tuple)
            or not sig
            or not all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
                for p in sig
            )
        ):
            raise InvalidArgument("a write part's pk_signature must be (column, type) pairs")
        chunks = self.chunks
        if (
            not isinstance(chunks, list | tuple)
            or not all(type(c) is bytes for c in chunks)
            or type(self.deletes) is not bytes
        ):
            raise InvalidArgument(
                "a write part's packed chunks and deletes must be bytes (chunks: a list of them)"
            )
        if self.token is not None and not is_token(self.token):
            raise InvalidArgument(f"a write part's token must be {TOKEN_BYTES} bytes or None")
        if type(sig) is not tuple or not all(type(p) is tuple for p in sig):
            object.__setattr__(self, "pk_signature", tuple(tuple(p) for p in sig))
        if type(chunks) is not tuple:
            object.__setattr__(self, "chunks", tuple(chunks))

    # -- 1. packing, on the client ----------------------------------------------------------

    @classmethod
    def from_columns(
        cls,
        table: TableDef,
        cols: list,
        deletes: list,
        after: int = 0,
        *,
        chunk_bytes: int = MAX_CHUNK_BYTES,
        token: bytes | None = None,
    ) -> WritePart:
        """The part of a validated batch share: ``cols`` its upserts by column (column order,
        values in normal form; ``[]`` when there are none), ``deletes`` its primary keys.
        ``table`` is the definition the share was validated against, *as the receiving shard
        has it*: its ``id`` is that shard's table id. ``token``: the part's idempotency token
        (a new one for each new part; None: a part without one)."""
        chunks = pack_columns(cols, chunk_bytes) if cols and cols[0] else []
        return cls(
            table.db,
            table.name,
            table.id,
            pk_signature(table),
            after,
            codec.pack(deletes),
            tuple(chunks),
            token,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of packed rows and deletes."""
        return sum(map(len, self.chunks)) + len(self.deletes)

    # -- 2. the shard call ------------------------------------------------------------------

    def to_call(self) -> tuple:
        """The arguments of the shard call: ``(head, deletes, *chunks)``, ``head`` holding the
        small fields (and the token last, if the part has one). Each chunk is an argument of
        its own (inline in a Ray call)."""
        head: tuple = (self.db, self.table, self.table_id, self.pk_signature, self.after)
        if self.token is not None:
            head += (self.token,)
        return (head, self.deletes, *self.chunks)

    @classmethod
    def from_call(cls, head: Any, deletes: Any, *chunks: Any) -> WritePart:
        """The part from the arguments :meth:`to_call` gave; InvalidArgument if they are not
        such arguments."""
        if not isinstance(head, list | tuple) or len(head) not in (5, 6):
            raise InvalidArgument(
                "a write part's head must be (db, table, table_id, pk_signature, after[, token])"
            )
        db, table, table_id, sig, after, *token = head
        return cls(db, table, table_id, sig, after, deletes, chunks, token[0] if token else None)

    # -- 3. checking, decoding and logging, in the engine ------------------------------------

    def decode(self, live: TableDef, max_value_bytes: int, max_batch_rows: int) -> DecodedPart:
        """Check the part against ``live``, the shard's live table of its name, and decode it.
        StaleTable when it was made for another table of that name; InvalidArgument when it
        is malformed in any way (each chunk is checked column by column, as
        :meth:`TableDef.check_packed_columns` says; the deletes must be in normal form)."""
        if self.table_id != live.id:
            raise StaleTable(
                f"table {self.db}.{self.table} was redefined (dropped and created again, now "
                f"with primary key {list(pk_signature(live))}) after this write was prepared; "
                "refresh its definition and retry",
                database=self.db,
                table=self.table,
            )
        if self.pk_signature != pk_signature(live):
            raise InvalidArgument(
                f"a write part for {self.db}.{self.table} was routed by primary key "
                f"{list(self.pk_signature)}, not its table's {list(pk_signature(live))}"
            )
        try:
            decoded = [codec.unpack_tuples(c) for c in self.chunks]
            dels = codec.unpack_tuples(self.deletes)
        except Exception as exc:
            raise InvalidArgument(f"packed batch does not decode: {exc}") from None
        keys: list = []
        for cols in decoded:
            live.check_packed_columns(cols, max_value_bytes)
            keys.extend(live.column_keys(cols))
        dels = _normal_deletes(live, dels, self.deletes)
        n = len(live.check_keys(keys, dels, max_batch_rows))
        return DecodedPart(decoded, dels, n)

    @property
    def log_op(self) -> int:
        """The op the part is logged as: 5, or 6 with its token."""
        return OP_WRITE_COLUMNS if self.token is None else OP_WRITE_COLUMNS_TOKEN

    def log_payload(self) -> bytes:
        """The arguments of the log command :attr:`log_op`, ``[table_id, [chunk, ...],
        deletes]`` (op 5) or ``[table_id, [chunk, ...], deletes, token]`` (op 6), assembled from
        the bytes sent (only for a part :meth:`decode` accepted)."""
        head = b"\x93" if self.token is None else b"\x94"
        tail = b"" if self.token is None else codec.pack(self.token)
        return (
            head
            + codec.pack(self.table_id)
            + codec.array_header(len(self.chunks))
            + b"".join(self.chunks)
            + self.deletes
            + tail
        )


def _normal_deletes(table: TableDef, dels: Any, dels_blob: bytes) -> list:
    """The decoded deletes of a part, checked to be in normal form."""
    if not isinstance(dels, list | tuple):
        raise InvalidArgument("packed deletes must be an array of primary keys")
    if not dels:
        return []
    dels = table.normalize_deletes(list(dels))
    if codec.pack(dels) != dels_blob:
        raise InvalidArgument("packed deletes are not in normal form")
    return dels


__all__ = [
    "MAX_CHUNK_BYTES",
    "DecodedPart",
    "Signature",
    "WritePart",
    "pack_columns",
    "pk_signature",
]
