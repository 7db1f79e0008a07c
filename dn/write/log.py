"""The log (WAL) of one shard: one object per group commit, numbered by sequence.

A group commit is written as ``30/<shard>/<seq>`` with ``put_if_absent``; the write is
durable, and its commands may be acknowledged, once that put returns. Sequence numbers are
consecutive from the first one the manifest says recovery must read (``log_low_seq``).

Record grammar (msgpack, inside the framing of :mod:`dn.objects.codec`, kind ``L``, format
version 1)::

    record  := [epoch, seq, [command, ...]]        an empty list: a skip or fence record
    command := [ts, OP_WRITE, [table_id, [row, ...], [pk, ...]]]           op 0
             | [ts, OP_WRITE_COLUMNS, [table_id, [chunk, ...], [pk, ...]]] op 5
             | [ts, OP_WRITE_COLUMNS_TOKEN,
                    [table_id, [chunk, ...], [pk, ...], token]]            op 6
             | [ts, ddl_op, [ddl_arg, ...]]        ops 1-4, see dn.catalog
    row     := [value, ...]                        every column, in column order
    chunk   := [column, ...]                       one array per column, in column order,
                                                   all of the same non-zero length

``epoch`` is the writer's incarnation, ``seq`` the number in the object's key (a reader checks
it), ``ts`` each command's commit timestamp (ascending), ``table_id`` the table's creation
timestamp. The ``[pk, ...]`` of a write are its deletes; a composite primary key is an array.
A write by column holds the rows op 0 would, column by column, in zero or more chunks (none
when it only deletes). DDL arguments are those of the catalog's command without its op:
``[db]`` (1 create database, 2 drop database), ``[db, table, [[col, type], ...], [pk_col,
...]]`` (3 create table), ``[db, table]`` (4 drop table). The engine logs a DDL command alone
in its group commit; a write shares one with other writes. Op 6 is op 5 with the idempotency
token of the part it came from (32 bytes, :mod:`dn.write.tokens`; decision 0014).

Commands arrive pre-encoded (each writer packs its own arguments outside the engine's lock);
the record is assembled from those bytes without unpacking them.

Fencing. Opening a shard writes a fence record (no commands) at the next sequence number with
its new epoch. A stale incarnation's next put lands on an existing object; seeing a record of a
higher epoch there, it raises :class:`dn.errors.Fenced` and stops.

Unknown outcomes. When a put fails, the log enters the *unknown* state (sticky, like leveldb's
failed sync) and the caller gets ``Unavailable`` with ``outcome_unknown``: whatever the
exception — ``Unavailable``, a definite-looking error such as ``InvalidArgument`` (a 403 on a
retry may follow an attempt whose acknowledgement was lost), or anything else — the put may
have landed, and only reading the store can tell. Only ``Fenced`` (a newer incarnation's
record is there) and ``Internal`` (an invariant broke) are raised as they are. Before any
further write, :meth:`Log.resolve` settles the sequence number: it creates a skip record there,
which succeeds only if the failed put never landed; if the put did land, its commands are
returned so the engine applies them (they are durable). A failure of the skip record's own put
leaves the log unknown and is raised as ``Unavailable(outcome_unknown=True)`` too; so is a
failure of the fence record's put (the shard does not open, and the next opening recovers
whatever landed).

Finalizing. After a range object covering timestamps up to T is committed, the objects whose
commands are all <= T are no longer needed: :meth:`Log.finalize` returns the new low sequence
number to record in the manifest; the objects below it are deleted after a grace period (so a
stale incarnation paused for less than the grace cannot write into a hole they leave).

Only the engine's current group-commit leader calls ``append``/``resolve`` (one at a time).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

from dn.errors import (
    Corruption,
    DNError,
    Fenced,
    Internal,
    ObjectExists,
    ObjectNotFound,
    Unavailable,
)
from dn.objects import codec
from dn.store.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogRecord:
    seq: int
    epoch: int
    commands: list
    nbytes: int = 0


class Log:
    """Appends group commits; recovers and finalizes them."""

    def __init__(self, store: ObjectStore, shard: int, epoch: int) -> None:
        self._store = store
        self._shard = shard
        self.epoch = epoch
        self.next_seq = 0
        self.low_seq = 0
        self.index: deque[tuple[int, int]] = deque()  # (seq, max ts) of live objects
        self._unknown: tuple[int, bytes, int] | None = None
        self._doomed: list[tuple[float, int]] = []  # (delete after, seq)
        self._lock = threading.Lock()  # guards index and _doomed against the flusher
        self.bytes_written = 0
        self.objects_written = 0

    @property
    def unknown(self) -> bool:
        return self._unknown is not None

    def _key(self, seq: int) -> str:
        return codec.log_key(self._shard, seq)

    def _encode(self, seq: int, commands: list[bytes]) -> bytes:
        head = codec.array_header(len(commands))
        body = b"\x93" + codec.pack(self.epoch) + codec.pack(seq) + head
        return codec.frame(codec.KIND_LOG, body + b"".join(commands))

    def _decode(self, data: bytes, key: str) -> LogRecord:
        value = codec.decode(codec.KIND_LOG, data, key)
        try:
            epoch, seq, commands = value
            for ts, op, _ in commands:
                if type(ts) is not int or type(op) is not int:
                    raise ValueError(f"command stamped {ts!r} with op {op!r}")
        except (TypeError, ValueError) as exc:
            raise Corruption(f"object {key} has a malformed body: {exc}", key=key) from exc
        codec.check_key_numbers(key, (seq,))
        return LogRecord(seq, epoch, commands, len(data))

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, low_seq: int, delete_after: float = 0.0) -> list[LogRecord]:
        """Every record from ``low_seq`` on, in order. A torn object (shorter than its header
        says: a put that failed half-way, never acknowledged) counts as a skip record."""
        self.low_seq = low_seq
        keys = self._store.list(codec.log_prefix(self._shard))
        seqs = [codec.last_number(k) for k in keys]
        self._doomed = [(delete_after, s) for s in seqs if s < low_seq]
        records = []
        expected = low_seq
        for seq in (s for s in seqs if s >= low_seq):
            key = self._key(seq)
            if seq != expected:
                raise Corruption(
                    f"log of shard {self._shard} has a gap: expected {self._key(expected)}, "
                    f"found {key}",
                    key=self._key(expected),
                )
            expected += 1
            rec = self._read_existing(key, self._store.get(key))
            records.append(rec if rec is not None else LogRecord(seq, 0, []))
        self.next_seq = expected
        self.index = deque((r.seq, max((c[0] for c in r.commands), default=0)) for r in records)
        return records

    def _read_existing(self, key: str, data: bytes) -> LogRecord | None:
        """Decode a stored record; None for a torn one (a failed, unacknowledged put)."""
        try:
            return self._decode(data, key)
        except Corruption as exc:
            if not exc.truncated:
                raise
            log.warning("log object %s is torn (a failed, unacknowledged write); skipping it", key)
            return None

    def _skip(self, seq: int) -> None:
        self.next_seq = seq + 1
        with self._lock:
            self.index.append((seq, 0))

    def _maybe_landed(self, what: str, seq: int, exc: Exception) -> Unavailable:
        """The error for a failed log write that may or may not have landed; ``cause`` names
        the first error (the store's own, when the store already wrapped it)."""
        cause = exc.details.get("cause") if isinstance(exc, DNError) else None
        return Unavailable(
            f"{what} {self._key(seq)} failed and may or may not have landed: {exc}",
            outcome_unknown=True,
            key=self._key(seq),
            cause=cause or repr(exc),
        )

    def _fenced(self, rec: LogRecord, key: str) -> Fenced:
        return Fenced(
            f"shard {self._shard}: a newer incarnation (epoch {rec.epoch}) wrote {key}; "
            f"this one (epoch {self.epoch}) can no longer commit",
            shard=self._shard,
        )

    def fence(self) -> list[LogRecord]:
        """Write this epoch's fence record at the next sequence number. Returns records a
        stale incarnation appended since ``recover`` (to be replayed before the fence)."""
        extra = []
        while True:
            seq = self.next_seq
            try:
                self._put_new(seq, self._encode(seq, []), 0)
                return extra
            except ObjectExists:
                pass
            except Exception as exc:  # the shard does not open; the next opening reads it
                raise self._maybe_landed("log fence write", seq, exc) from exc
            key = self._key(seq)
            rec = self._read_existing(key, self._store.get(key))
            if rec is None:
                self._skip(seq)
                continue
            if rec.epoch > self.epoch:
                raise self._fenced(rec, key)
            extra.append(rec)
            with self._lock:
                self.index.append((seq, max((c[0] for c in rec.commands), default=0)))
            self.next_seq = seq + 1

    # -- appending --------------------------------------------------------------------------

    def append(self, commands: list[bytes], max_ts: int) -> int:
        """Make ``commands`` (each an encoded command) durable as one record; returns its
        sequence number."""
        if self._unknown is not None:
            raise Internal("log append while an earlier outcome is unknown; resolve first")
        while True:
            seq = self.next_seq
            data = self._encode(seq, commands)
            try:
                if self._attempt(seq, data, max_ts):
                    return seq
            except (Fenced, Internal):
                raise
            except BaseException as exc:  # whatever failed, the put may have landed
                self._unknown = (seq, data, max_ts)
                if not isinstance(exc, Exception):
                    raise  # an interrupt or a simulated crash: not the log's to turn into an error
                raise self._maybe_landed("log write", seq, exc) from exc

    def _attempt(self, seq: int, data: bytes, max_ts: int) -> bool:
        """One try at ``seq``: True once ``data`` is there, False if ``seq`` held a torn
        object and was skipped. Any exception but Fenced and Internal means the outcome is
        unknown."""
        try:
            self._put_new(seq, data, max_ts)
            return True
        except ObjectExists:
            pass
        key = self._key(seq)
        existing = self._store.get(key)
        if existing == data:  # our own put landed; its acknowledgement was lost
            self._landed(seq, len(data), max_ts)
            return True
        rec = self._read_existing(key, existing)
        if rec is None:
            self._skip(seq)
            return False
        if rec.epoch > self.epoch:
            raise self._fenced(rec, key)
        raise Internal(f"log object {key} holds a record of epoch {rec.epoch}")

    def _put_new(self, seq: int, data: bytes, max_ts: int) -> None:
        self._store.put_if_absent(self._key(seq), data)
        self._landed(seq, len(data), max_ts)

    def _landed(self, seq: int, nbytes: int, max_ts: int) -> None:
        self.next_seq = seq + 1
        with self._lock:
            self.index.append((seq, max_ts))
        self.bytes_written += nbytes
        self.objects_written += 1

    def resolve(self) -> LogRecord | None:
        """Settle an unknown outcome. Returns the record of the failed put if it did land
        (its commands are durable and must be applied), else None. Raises Unavailable (with
        ``outcome_unknown``; the log stays unknown) if the store still fails, Fenced if a newer
        incarnation took over."""
        if self._unknown is None:
            return None
        seq, data, max_ts = self._unknown
        key = self._key(seq)
        skip = self._encode(seq, [])
        try:
            self._store.put_if_absent(key, skip)
        except ObjectExists:
            pass
        except Exception as exc:  # the skip record may have landed, or the failed put
            raise self._maybe_landed("log skip write", seq, exc) from exc
        else:
            self._unknown = None
            self._landed(seq, 0, 0)
            return None
        try:
            existing = self._store.get(key)
        except ObjectNotFound:
            return self.resolve()
        except Exception as exc:  # still unknown: no error of this read may read as definite
            raise self._maybe_landed("settling of log write", seq, exc) from exc
        if existing == skip:  # our skip record landed; its acknowledgement was lost
            self._unknown = None
            self._landed(seq, len(skip), 0)
            return None
        if existing == data:
            self._unknown = None
            self._landed(seq, len(data), max_ts)
            return self._decode(data, key)
        rec = self._read_existing(key, existing)
        if rec is None:
            self._unknown = None
            self._skip(seq)
            return None
        if rec.epoch > self.epoch:
            raise self._fenced(rec, key)
        raise Internal(f"log object {key} holds another record of epoch {rec.epoch}")

    # -- finalizing -------------------------------------------------------------------------

    def finalize(self, upto_ts: int) -> int:
        """The lowest sequence number that recovery still needs once everything up to
        ``upto_ts`` is in range objects."""
        with self._lock:
            low = self.index[-1][0] + 1 if self.index else self.next_seq
            for seq, max_ts in self.index:
                if max_ts > upto_ts:
                    low = seq
                    break
        return low

    def truncate(self, low_seq: int, delete_after: float) -> None:
        """Forget objects below ``low_seq`` (the manifest now says so); delete them once
        ``delete_after`` has passed (see :meth:`collect`)."""
        with self._lock:
            while self.index and self.index[0][0] < low_seq:
                seq, _ = self.index.popleft()
                self._doomed.append((delete_after, seq))
            self.low_seq = max(self.low_seq, low_seq)

    def collect(self, now: float) -> int:
        """Delete the truncated objects whose grace has passed; returns how many."""
        with self._lock:
            due = [s for t, s in self._doomed if t <= now]
        if not due:
            return 0
        for seq in due:
            self._store.delete(self._key(seq))
        done = set(due)
        with self._lock:
            self._doomed = [(t, s) for t, s in self._doomed if s not in done]
        return len(due)

    def status(self) -> dict:
        with self._lock:
            live, doomed = len(self.index), len(self._doomed)
        return {
            "next_seq": self.next_seq,
            "low_seq": self.low_seq,
            "live_objects": live,
            "awaiting_delete": doomed,
            "unknown": self.unknown,
            "objects_written": self.objects_written,
            "bytes_written": self.bytes_written,
        }


def encode_command(ts: int, op: int, payload: bytes) -> bytes:
    """One command, ``[ts, op, args]``, from its already-packed ``args``."""
    return b"\x93" + codec.pack(ts) + codec.pack(op) + payload
