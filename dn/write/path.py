"""The write path of one shard: validate, stamp, log, apply.

One part of :class:`dn.engine.Engine` (see :mod:`dn.state` for the state it shares)::

    write -> validate against the live catalog -> group commit (dn.write.commit):
        under the lock: re-check the table, stamp a TS            (stamp)
        leader, no lock, if a stamp found no room: extend ceiling  (reserve)
        leader, no lock: settle an unknown outcome, log the group  (persist)
        under the lock: apply to the mutable buffer, maybe freeze  (apply_group)
    -> the commit TS, once the command is durable

A client's pre-packed part (:class:`dn.write.part.WritePart`) is checked and decoded by the
part's own codec and logged as the bytes that were sent. A write prepared for a table that was
dropped and created again before it was stamped is refused with :class:`StaleTable`.

Exactly once (decision 0014): a part with an idempotency token is applied once. A token
committed before gets that commit's TS back and changes nothing; a part whose token is being
committed waits for that outcome; a token in a log write whose outcome is unknown is settled
first. Applying a command with a token records it (:class:`dn.write.tokens.TokenTable`, the
buffer), and so does replaying one (op 6).

Recovery replays log records through :meth:`WritePath.replay`, the same apply step.

Timestamps: a commit's TS is at or below the shard's durable timestamp ceiling
(:mod:`dn.upkeep.ceiling`, decision 0013). The background round keeps the ceiling ahead; when
a stamp finds no room under it, the group ends there and the leader extends the ceiling (one
manifest commit, without the lock) before stamping the rest. A command its stamp refuses
never causes an extension.

Backpressure (:mod:`dn.write.backpressure`): a writer that finds the buffers' estimated memory
over ``queue_slow_bytes`` runs a buffer checkpoint itself; over ``queue_stop_bytes`` it is
refused with :class:`Unavailable`.

Failure: a log write whose outcome is unknown marks the lowest TS it held; the next leader (or
a read at or above that TS) settles it before going on (:meth:`WritePath.settle`). A fenced
log stops the shard. Any thread may call the public methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dn import catalog as cat
from dn.catalog import OP_PREPARE, OP_WRITE, OP_WRITE_COLUMNS, OP_WRITE_COLUMNS_TOKEN, WRITE_OPS
from dn.errors import (
    Corruption,
    DNError,
    Fenced,
    Internal,
    InvalidArgument,
    StaleTable,
    Unavailable,
)
from dn.objects import codec
from dn.schema import TableDef
from dn.state import ShardState
from dn.upkeep.handoff import check_command_locked, hash_slots
from dn.upkeep.scheduler import Upkeep
from dn.write.aio import AsyncFrontDoor
from dn.write.backpressure import Backpressure
from dn.write.commit import Pending
from dn.write.log import LogRecord, encode_command
from dn.write.part import WritePart
from dn.write.tokens import is_token


class WritePath:
    """DDL and row writes of one shard, and the replay of logged commands."""

    def __init__(self, state: ShardState, upkeep: Upkeep) -> None:
        self._s = state
        self._upkeep = upkeep
        self._aio = AsyncFrontDoor(self.submit_all)
        self._backpressure = Backpressure(state, upkeep)
        self.txns: Any = None  # dn.write.txn.Transactions: stamps and applies prepares
        self.reserve_to = 0  # a prepare's timestamp the ceiling must reach (the leader's)

    # -- DDL ----------------------------------------------------------------------------------

    def create_database(self, db: str) -> int:
        return self._ddl(cat.ddl_create_database(db))

    def drop_database(self, db: str) -> int:
        return self._ddl(cat.ddl_drop_database(db))

    def create_table(
        self, db: str, table: str, schema: dict[str, str], primary_key: str | list[str]
    ) -> int:
        return self._ddl(cat.ddl_create_table(db, table, schema, primary_key))

    def drop_table(self, db: str, table: str) -> int:
        return self._ddl(cat.ddl_drop_table(db, table))

    def _ddl(self, cmd: list) -> int:
        self._s.check_usable()
        args = cmd[1:]
        return self._submit(Pending(cmd[0], args, codec.pack(args)))

    # -- row writes ---------------------------------------------------------------------------

    def write(self, db: str, table: str, upserts: Any = (), deletes: Any = ()) -> int:
        return self._submit(self._prepare_write(db, table, upserts, deletes))

    async def write_async(self, db: str, table: str, upserts: Any = (), deletes: Any = ()) -> int:
        p = self._prepare_write(db, table, upserts, deletes)
        return await self._aio.submit(p)

    def _prepare_write(self, db: str, table: str, upserts: Any, deletes: Any) -> Pending:
        s = self._s
        s.check_usable()
        tdef = s.catalog.live_table(db, table)
        rows = tdef.normalize_rows(upserts, s.settings.max_value_bytes)
        dels = tdef.normalize_deletes(deletes)
        tdef.check_batch(rows, dels, s.settings.max_batch_rows)
        args = [tdef.id, rows, dels]
        payload = codec.pack(args)
        self._check_size(payload)
        return Pending(OP_WRITE, args, payload, tdef, len(rows) + len(dels))

    def write_columns(self, db: str, table: str, columns: Any, deletes: Any = ()) -> int:
        s = self._s
        s.check_usable()
        tdef = s.catalog.live_table(db, table)
        cols, _ = tdef.normalize_columns(columns, s.settings.max_value_bytes)
        dels = tdef.normalize_deletes(deletes)
        n = len(tdef.check_keys(tdef.column_keys(cols), dels, s.settings.max_batch_rows))
        chunks = [cols] if cols else []
        args = [tdef.id, chunks, dels]
        return self._submit_write(tdef, args, codec.pack(args), n, OP_WRITE_COLUMNS)

    def write_packed_columns(self, part: WritePart) -> int:
        """Commit a client's pre-packed part (:mod:`dn.write.part`): checked and decoded
        against the live table, logged as the bytes that were sent. A part with a token is
        applied once: see :meth:`once`."""
        self._s.check_usable()
        if part.token is not None:
            return self.once(part.token, lambda: self._write_part(part))
        return self._write_part(part)

    def _write_part(self, part: WritePart) -> int:
        s = self._s
        tdef = s.catalog.live_table(part.db, part.table)
        d = part.decode(tdef, s.settings.max_value_bytes, s.settings.max_batch_rows)
        args = [tdef.id, d.chunks, d.deletes]
        return self._submit_write(tdef, args, part.log_payload(), d.nrows, part.log_op, part.token)

    def once(
        self,
        token: bytes,
        commit: Callable[[], int],
        pending: Callable[[bytes], int | None] | None = None,
    ) -> int:
        """Run ``commit`` for a write with a token, once (decision 0014). A token minted
        outside the window is refused; one committed before gives that commit's TS (nothing
        changes, not even for a table dropped since), and so does one ``pending`` knows (an
        intent prepared and undecided: its TS); one another call is committing right now is
        waited for (its TS, or this call goes on if it failed); one held by a log write whose
        outcome is unknown is settled first (it may have landed). Else this call claims the
        token for its commit."""
        s, tokens = self._s, self._s.tokens
        tokens.check_minted(token, s.clock.now_ms())
        while True:
            with s.cv:
                while True:
                    s.check_usable_locked()
                    ts = tokens.committed.get(token)
                    if ts is None and pending is not None:
                        ts = pending(token)
                    if ts is not None:
                        s.counters["duplicate_parts"] += 1
                        return ts
                    if token not in tokens.claims:
                        break
                    s.cv.wait()  # every group's end and every claim's release notify
                if token not in tokens.unsettled:
                    tokens.claims.add(token)
                    break
            self.settle_for_read()  # raises Unavailable while the store still fails
            with s.cv:
                if s.unknown_lo is None:  # settled: each unsettled token landed or never will
                    tokens.unsettled.clear()
        try:
            return commit()
        finally:
            with s.cv:
                tokens.claims.discard(token)
                s.cv.notify_all()

    def _submit_write(
        self,
        tdef: TableDef,
        args: list,
        payload: bytes,
        n: int,
        op: int = OP_WRITE,
        token: bytes | None = None,
    ) -> int:
        self._check_size(payload)
        return self._submit(Pending(op, args, payload, tdef, n, token))

    def _check_size(self, payload: bytes) -> None:
        limit = self._s.settings.max_batch_bytes
        if len(payload) > limit:
            raise InvalidArgument(f"batch is {len(payload)} bytes, over max_batch_bytes={limit}")

    # -- group commit -------------------------------------------------------------------------

    def submit_prepare(self, p: Pending) -> int:
        """Commit a transaction's prepared intent (:mod:`dn.write.txn`)."""
        return self._submit(p)

    def _submit(self, p: Pending) -> int:
        self._admit()
        hash_slots(self._s, [p])  # before the lock, on a shard with slots fenced
        return self._s.queue.submit(p, self._reserve, self._stamp, self._persist, self._apply_group)

    def submit_all(self, ps: list[Pending]) -> None:
        """Commit many prepared commands from one thread (each ends with its ts or error)."""
        try:
            self._admit()
        except DNError as exc:
            for p in ps:
                p.error, p.done = exc, True
            return
        hash_slots(self._s, ps)
        self._s.queue.submit_all(ps, self._reserve, self._stamp, self._persist, self._apply_group)

    def _admit(self) -> None:
        self._backpressure.admit()

    def queued_bytes(self) -> int:
        """Estimated heap bytes the shard's buffers hold (what backpressure bounds; read
        without the lock: :mod:`dn.write.backpressure`)."""
        return self._backpressure.held_bytes()

    def _reserve(self, n: int) -> None:
        """Leader, lock not held, after a stamp found no room: room for ``n`` more
        timestamps under the ceiling."""
        self._upkeep.ceiling.reserve(n)
        at, self.reserve_to = self.reserve_to, 0
        if at > self._s.ceiling:  # a prepare's timestamp (0: none)
            self._upkeep.ceiling.extend(at)

    def _stamp(self, p: Pending) -> bool:
        """Under the lock: re-check against the live catalog and take a timestamp at or below
        the timestamp ceiling; False (nothing taken) when the ceiling leaves none."""
        s = self._s
        s.check_usable_locked()
        if (s.refused or s.moves) and (p.txn is not None or p.op in WRITE_OPS):
            check_command_locked(s, p)  # slots moved away or moving (dn.upkeep.handoff)
        if p.txn is not None:
            return self.txns.stamp_locked(p)
        if p.op in WRITE_OPS:
            live = s.catalog.live_table(p.table.db, p.table.name)
            if live.id != p.table.id:
                raise StaleTable(
                    f"table {p.table.db}.{p.table.name} was dropped and created again while "
                    "this write was being prepared; retry it",
                    database=p.table.db,
                    table=p.table.name,
                )
        else:
            s.catalog.check([p.op, *p.args], 0)
        ts = s.hlc.next_within(s.ceiling)
        if ts is None:
            return False
        p.ts = ts
        return True

    def _persist(self, group: list[Pending]) -> None:
        """Outside the lock (leader only): settle an unknown outcome, then log the group."""
        s = self._s
        assert s.log is not None
        if s.log.unknown:
            self.settle()
        try:
            s.log.append([encode_command(p.ts, p.op, p.payload) for p in group], group[-1].ts)
        except BaseException as exc:
            with s.cv:
                if group[0].txn is not None:  # not applied: the keys are free again (one that
                    for p in group:  # landed claims them again when it is settled, replayed)
                        s.intents.unclaim(p.token)
                if isinstance(exc, Unavailable) and exc.outcome_unknown:
                    s.unknown_lo = group[0].ts
                    # not committed until settled: a resend of one of them waits (decision 0014)
                    s.tokens.unsettled.update(p.token for p in group if p.token is not None)
            if isinstance(exc, Fenced):
                s.fail(exc)
            raise

    def settle(self) -> None:
        """Leader only, lock not held: resolve the log's unknown outcome and apply what had
        landed. Raises Unavailable while the store still fails."""
        s = self._s
        assert s.log is not None
        try:
            landed = s.log.resolve()
        except Fenced as exc:
            s.fail(exc)
            raise
        with s.cv:
            if landed is not None:
                self.replay(landed)  # the commands are durable: apply them as recovery would
            s.unknown_lo = None
            s.tokens.unsettled.clear()  # replay noted those that landed; the rest never will
            s.cv.notify_all()

    def settle_for_read(self) -> None:
        """Any thread, lock not held: take the leadership and settle an unknown outcome, so a
        read can be served at a timestamp the unknown write may hold."""
        s = self._s
        with s.cv:
            s.queue.acquire_leadership()
        try:
            if s.log is not None and s.log.unknown:
                self.settle()
        finally:
            with s.cv:
                s.queue.release_leadership()

    # -- applying durable commands ------------------------------------------------------------

    def _apply_group(self, group: list[Pending]) -> None:
        s = self._s
        try:
            for p in group:
                if p.txn is not None:
                    self.txns.apply_locked(p.ts, p.args, len(p.payload) + 16, p.txn)
                else:
                    self._apply_command(p.ts, p.op, p.args, len(p.payload) + 16, p.table, p.token)
                s.counters["rows_written"] += p.nrows
            self._upkeep.maybe_freeze_locked()
        except Exception as exc:
            s.fail(Internal(f"shard {s.shard}: applying a durable group failed: {exc!r}"))
            raise

    def replay(self, rec: LogRecord) -> None:
        """Under the lock: apply a durable log record's commands not applied yet (recovery,
        and the settling of an unknown outcome). A command applied before is skipped, so
        nothing is applied twice."""
        s = self._s
        share = rec.nbytes // max(1, len(rec.commands))
        for ts, op, args in rec.commands:
            if ts <= s.last_applied:
                continue  # already in a range object, or replayed: never apply twice
            try:
                self._apply_command(ts, op, args, share)
            except (DNError, KeyError, TypeError, ValueError, IndexError) as exc:
                key = codec.log_key(s.shard, rec.seq)  # checksummed, yet not a command
                raise Corruption(
                    f"object {key} holds a command that does not apply: {exc!r}", key=key
                ) from exc
            s.counters["replayed_commands"] += 1
            self._upkeep.maybe_freeze_locked()

    def _apply_command(
        self,
        ts: int,
        op: int,
        args: list,
        nbytes: int,
        tdef: TableDef | None = None,
        token: bytes | None = None,
    ) -> None:
        """Under the lock: apply one durable command to the mutable buffer (and catalog), and
        note its token (a replayed op 6 carries it as its last argument)."""
        s = self._s
        if op == OP_PREPARE:  # replayed: undecided until its decision is read
            self.txns.apply_locked(ts, args, nbytes, None)
            return
        buf = s.mutable
        if buf.empty:
            buf.born = s.clock.monotonic()
        if op in WRITE_OPS:
            if op == OP_WRITE_COLUMNS_TOKEN and token is None:  # replayed: the token is last
                table_id, rows, dels, token = args
                if not is_token(token):
                    raise ValueError(f"op 6 carries {token!r}, not a token")
            else:
                table_id, rows, dels = args  # rows: row tuples, or chunks of columns
            if tdef is None:  # replayed: msgpack gave lists; keys must be hashable tuples
                tdef = s.catalog.table_by_id(table_id)
                if len(tdef.pk_pos) > 1:
                    dels = [tuple(k) for k in dels]
            if op == OP_WRITE:
                buf.apply_write(ts, table_id, len(tdef.columns), tdef.pk_pos, rows, dels, nbytes)
            else:
                buf.apply_columns(ts, table_id, len(tdef.columns), tdef.pk_pos, rows, dels, nbytes)
            if token is not None:
                buf.note_token(ts, token)
                s.tokens.note(ts, token)
        else:
            cmd = [op, *args]
            s.catalog.apply(cmd, ts)
            buf.apply_ddl(ts, cmd, nbytes)
        s.last_applied = ts
