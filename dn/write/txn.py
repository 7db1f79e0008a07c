"""One shard's side of transactions across shards: intents, their checks, their decisions.

A transaction (an atomic batch, or a snapshot-isolation transaction: the client's
:mod:`coordinator.client.txn`) commits every shard's share at one timestamp ``C`` (decision
0015)::

    client: pick C (after every timestamp it has seen, a little past its wall clock)
      -> prepare(token, C, parts, snapshot) on every shard it writes, in parallel:
           shard: check the parts; under the lock, refuse if its clock has reached C
           (TimestampPassed); with a snapshot, if another undecided intent holds one of the
           keys or a key has a version committed after the snapshot (Conflict); else
           stamp the intent at exactly C, log it (op 7) and apply it to the mutable buffer,
           undecided
      -> decide: the decision object 40/txn/<group> (dn.objects.decision; a transaction
           alone is its own group), put if absent: commit at C; the commit point
      -> resolve(token, C) on every shard: the intent's rows stay, its token is noted
    anyone who finds an intent undecided for longer than ``txn_wait_s`` decides it instead:
    it reads the decision, or puts an abort (of the whole group) if there is none; an abort
    takes the rows out.

Why one timestamp holds (the argument of decision 0015): a shard stamps the intent at C only
while its clock is below C, and stamping raises the clock to C, so every commit stamped there
before the intent is below C and every one after is above it. No read at S >= C is served
while an intent at C is undecided (:meth:`Transactions.wait_decided_locked`), and a buffer
with an undecided intent is never written out, so whatever a read at S >= C sees, it sees
after the decision, on every shard: all of the transaction or none of it. Reads at S < C never
see its rows (they sit at C).

Why snapshot isolation holds: the conflict check and the stamp run under the shard's lock,
and an intent holds its keys until decided, so of two transactions writing one key, the
second to prepare finds the first's intent (Conflict) or its committed version after its own
snapshot (Conflict). Prepares are stamped in groups of their own, so every commit below C is
applied, and checked, when an intent is stamped.

Recovery replays an intent from the log as undecided; the first reader (or the background
round) decides it from its decision object.

Any thread; the lock and the fields are the shard's (:mod:`dn.state`).
"""

from __future__ import annotations

from collections.abc import Callable

from dn.catalog import OP_PREPARE
from dn.errors import (
    Conflict,
    DNError,
    Internal,
    InvalidArgument,
    StaleTable,
    TimestampPassed,
    Unavailable,
)
from dn.objects import codec, decision
from dn.read.view import materialize
from dn.schema import TableDef
from dn.write.commit import Pending
from dn.write.intents import Decoded, Intent, Prepare, check_args
from dn.write.part import WritePart
from dn.write.tokens import is_token

#: How old an undecided intent is before a reader or the background round reads its decision
#: object (its client has had time to decide it), and how often it reads it again (seconds).
LOOK_S = 0.05


class Transactions:
    """The shard's side of transactions (see the module docstring)."""

    def __init__(self, state, writes) -> None:
        self._s = state
        self._writes = writes  # dn.write.path.WritePath: checks, the group commit, the once-rule
        self.reads: Callable | None = None  # (db, table, snapshot, from_ts) -> ReadView

    # -- prepare -------------------------------------------------------------------------------

    def prepare(
        self,
        token: bytes,
        at: int,
        parts: list[WritePart],
        snapshot: int | None = None,
        group: bytes | None = None,
    ) -> int:
        """Prepare the intent of transaction ``token`` at commit timestamp ``at``: ``parts``
        are its writes on this shard (one per table, without tokens of their own). With a
        ``snapshot``, refused with Conflict if a key was committed after it; with a ``group``,
        its decision is the group's (:mod:`dn.objects.decision`). Returns ``at`` once the
        intent is durable (again for a resend of one prepared before, or its commit timestamp
        if it committed already)."""
        self._s.check_usable()
        check_args(token, at, parts, snapshot, group)
        return self._writes.once(
            token,
            lambda: self._writes.submit_prepare(self._pending(token, at, parts, snapshot, group)),
            self._prepared_at,
        )

    def prepare_many(self, items: list) -> list:
        """:meth:`prepare` for many transactions at once (a committer's batch): ``items`` are
        ``(token, at, parts, snapshot)`` or ``(token, at, parts, snapshot, group)``. Their
        intents go to the group commit together, lowest timestamp first, so they share log
        writes and none passes another's timestamp. Returns each item's result: its timestamp,
        or the DNError that refused it."""
        s = self._s
        s.check_usable()
        out: list = [None] * len(items)
        todo: list[tuple[int, Pending]] = []
        claimed: list[bytes] = []
        try:
            for i in sorted(range(len(items)), key=lambda i: items[i][1]):
                token, at, parts, snapshot, *more = items[i]
                group = more[0] if more else None
                try:
                    check_args(token, at, parts, snapshot, group)
                    s.tokens.check_minted(token, s.clock.now_ms())
                    if group is not None:  # its decision is collected by the group's age
                        s.tokens.check_minted(group, s.clock.now_ms())
                    with s.cv:
                        ts = s.tokens.committed.get(token) or self._prepared_at(token)
                        if ts is None and (token in s.tokens.claims or token in s.tokens.unsettled):
                            raise Unavailable(
                                "this transaction's prepare is being committed; retry",
                                outcome_unknown=True,
                            )
                        if ts is None:
                            s.tokens.claims.add(token)
                            claimed.append(token)
                    if ts is not None:
                        s.counters["duplicate_parts"] += 1
                        out[i] = ts
                        continue
                    todo.append((i, self._pending(token, at, parts, snapshot, group)))
                except DNError as exc:
                    out[i] = exc
            if todo:
                self._writes.submit_all([p for _, p in todo])
        finally:
            with s.cv:
                for token in claimed:
                    s.tokens.claims.discard(token)
                s.cv.notify_all()
        for i, p in todo:
            out[i] = p.error if p.error is not None else p.ts
        return out

    def _prepared_at(self, token: bytes) -> int | None:
        intent = self._s.intents.get(token)
        return None if intent is None else intent.ts

    def decode(self, parts: list[WritePart], max_rows: int | None = None) -> Decoded:
        """A prepare's parts checked against the live tables and decoded (ahead of the prepare
        for an atomic dataset's staged parts, :mod:`shards.staging`)."""
        s = self._s
        tables, writes, keys, nrows = [], [], {}, 0
        for part in parts:
            tdef = s.catalog.live_table(part.db, part.table)
            d = part.decode(tdef, s.settings.max_value_bytes, max_rows or s.settings.max_batch_rows)
            tables.append(tdef)
            writes.append((d.chunks, d.deletes))
            ks = [k for cols in d.chunks for k in tdef.column_keys(cols)] + list(d.deletes)
            keys[tdef.id] = ks
            nrows += d.nrows
        return Decoded(list(parts), tables, writes, keys, nrows)

    def _pending(
        self,
        token: bytes,
        at: int,
        parts: list[WritePart] | Decoded,
        snapshot: int | None,
        group: bytes | None = None,
    ) -> Pending:
        """A prepare on its way to the group commit: parts decoded, flushed versions checked.
        Op 7's arguments: ``[token, writes]``, or ``[token, writes, group]`` in a group."""
        d = parts if isinstance(parts, Decoded) else self.decode(parts)
        checked_to = self._check_flushed(d.tables, d.keys, snapshot)
        grouped = group is not None and group != token
        payload = (
            (b"\x93" if grouped else b"\x92")
            + codec.pack(token)
            + codec.array_header(len(d.parts))
            + b"".join(p.log_payload() for p in d.parts)
            + (codec.pack(group) if grouped else b"")
        )
        args = [token, d.writes, group] if grouped else [token, d.writes]
        p = Pending(OP_PREPARE, args, payload, None, d.nrows, token)
        p.txn = Prepare(at, d.tables, d.keys, snapshot, checked_to)
        return p

    def _check_flushed(self, tables: list[TableDef], keys: dict, snapshot: int | None) -> int:
        """With a snapshot older than every buffer in memory, look for versions of the keys
        in the range objects after it (a change read); returns the timestamp checked to."""
        s = self._s
        if snapshot is None:
            return 0
        with s.cv:
            below = (s.frozen[0] if s.frozen else s.mutable).from_ts - 1
        if snapshot >= below:
            return snapshot
        assert self.reads is not None
        for tdef in tables:
            wanted = set(keys[tdef.id])
            view = self.reads(tdef.db, tdef.name, below, snapshot + 1)
            for change in materialize(s.reader, view):
                if change.pk in wanted:
                    raise _conflict(tdef, change.pk, f"committed at {change.ts}")
        return below

    def stamp_locked(self, p: Pending) -> bool:
        """Under the lock, from the group commit: check and stamp a prepare at exactly its
        timestamp (see the module docstring). False when the ceiling is below it."""
        s, info = self._s, p.txn
        for tdef in info.tables:
            if s.catalog.live_table(tdef.db, tdef.name).id != tdef.id:
                raise StaleTable(
                    f"table {tdef.db}.{tdef.name} was dropped and created again; retry",
                    database=tdef.db,
                    table=tdef.name,
                )
        if s.hlc.last >= info.at:
            raise TimestampPassed(
                f"shard {s.shard} has issued timestamps up to {s.hlc.last}, at or past {info.at}",
                clock=s.hlc.last,
            )
        if info.at > s.future_bound():  # the wall clock's bound alone: no floor raises it
            raise InvalidArgument(
                f"commit timestamp {info.at} is more than snapshot_future_s = "
                f"{s.settings.snapshot_future_s} s past shard {s.shard}'s wall clock"
            )
        if info.snapshot is not None:  # snapshot isolation: first writer wins
            by_id = {t.id: t for t in info.tables}
            for table_id, ks in info.keys.items():
                if s.intents.holder(table_id, ks, but=p.token) is not None:
                    raise _conflict(by_id[table_id], None, "held by another transaction deciding")
            self._check_memory_locked(info, by_id)
        if info.at > s.ceiling:
            self._writes.reserve_to = info.at
            return False
        s.hlc.advance(info.at)
        p.ts = info.at
        s.intents.claim(p.token, info.keys)
        return True

    def _check_memory_locked(self, info: Prepare, by_id: dict[int, TableDef]) -> None:
        s, snap = self._s, info.snapshot
        bufs = [*s.frozen, s.mutable]
        if bufs[0].from_ts - 1 > max(info.checked_to, snap):
            raise Conflict(
                f"shard {s.shard} wrote buffers out while the transaction was checked; retry"
            )
        for buf in bufs:
            if buf.to_ts is None or buf.to_ts <= snap:
                continue
            for table_id, ks in info.keys.items():
                block = buf.tables.get(table_id)
                if block is not None and block.newest(ks) > snap:
                    raise _conflict(by_id[table_id], None, f"committed after snapshot {snap}")

    # -- apply, decide, resolve ------------------------------------------------------------------

    def apply_locked(self, ts: int, args: list, nbytes: int, info: Prepare | None) -> None:
        """Under the lock: apply a durable intent to the mutable buffer, undecided. ``args``
        are op 7's (``[token, [[table_id, chunks, deletes], ...], group?]``, replayed) or,
        from the group commit, ``[token, [(chunks, deletes), ...], group?]`` with ``info`` for
        the tables."""
        s = self._s
        token, writes, *more = args
        group = more[0] if more else token
        if len(more) > 1 or not is_token(group):
            raise ValueError(f"op 7 names {group!r}, not a transaction group")
        items, keys = [], {}
        for i, w in enumerate(writes):
            if info is not None:
                tdef = info.tables[i]
                chunks, dels = w
                keys[tdef.id] = info.keys[tdef.id]
            else:
                table_id, chunks, dels = w
                tdef = s.catalog.table_by_id(table_id)
                if len(tdef.pk_pos) > 1:
                    dels = [tuple(k) for k in dels]
                keys[tdef.id] = [k for c in chunks for k in tdef.column_keys(c)] + list(dels)
            items.append((tdef.id, len(tdef.columns), tdef.pk_pos, chunks, dels))
        buf = s.mutable
        if buf.empty:
            buf.born = s.clock.monotonic()
        buf.apply_intent(ts, token, items, nbytes)
        s.intents.add(Intent(token, ts, buf, keys, s.clock.monotonic(), group))
        s.last_applied = ts
        s.counters["txn_prepared"] += 1

    def resolve(self, token: bytes, ts: int) -> None:
        """A decision taken (by the client that prepared it): apply it to the intent of
        ``token`` here (``ts``: its commit timestamp, or 0: aborted). No-op when the intent
        was decided here already; idempotent."""
        self.resolve_many([(token, ts)])

    def resolve_many(self, decisions: list) -> None:
        """:meth:`resolve` for ``(token, ts)`` pairs, under one hold of the lock."""
        s = self._s
        if not all(type(ts) is int and ts >= 0 for _, ts in decisions):
            raise InvalidArgument("a decision is a commit timestamp or 0")
        with s.cv:
            s.check_usable_locked()
            for token, ts in decisions:
                self._resolve_locked(token, ts)

    def _resolve_locked(self, token: bytes, ts: int) -> None:
        s = self._s
        intent = s.intents.get(token)
        if intent is None:
            return
        if ts not in (decision.ABORTED, intent.ts):
            raise Internal(f"transaction {token.hex()[:16]}: decided {ts}, prepared {intent.ts}")
        s.intents.remove(token)
        if ts == decision.ABORTED:
            intent.buffer.abort_intent(intent.ts)
            s.counters["txn_aborted"] += 1
        else:
            intent.buffer.commit_intent(intent.ts)
            s.tokens.note(intent.ts, token)
            s.counters["txn_committed"] += 1
        s.cv.notify_all()

    def decide(self, token: bytes, abort: bool = True) -> bool:
        """Lock not held: apply the decision on ``token``'s intent from its (group's) decision
        object; if there is none yet, decide an abort (``abort``: of the whole group) or leave
        it undecided (returns False)."""
        s = self._s
        with s.cv:
            intent = s.intents.get(token)
        if intent is None:
            return False  # decided meanwhile
        ts = decision.lookup(s.store, token, intent.group)
        if ts is None:
            if not abort:
                return False
            ts = decision.decide(s.store, token, decision.ABORTED, [s.shard], intent.group)
        s.counters["txn_decided_here"] += 1
        with s.cv:
            self._resolve_locked(token, ts)
        return True

    def _due_locked(self, intent: Intent, now: float) -> str | None:
        """What to do now about an undecided intent: "decide" (it waited ``txn_wait_s``),
        "look" (old enough for its client to have decided: read the decision object, at most
        every LOOK_S), or None (wait)."""
        age = now - intent.born
        if age >= self._s.settings.txn_wait_s:
            return "decide"
        if age >= LOOK_S and now - intent.looked >= LOOK_S:
            intent.looked = now
            return "look"
        return None

    def wait_decided_locked(self, ts: int) -> None:
        """Under the lock (released while waiting or deciding): return once no undecided
        intent at or below ``ts`` is left. An intent is waited for (its client resolves it),
        its decision object read every LOOK_S once it is that old (a client that decided and
        died), and decided here once it is ``txn_wait_s`` old."""
        s = self._s
        while True:
            intent = s.intents.oldest_through(ts)
            if intent is None:
                return
            s.check_usable_locked()
            due = self._due_locked(intent, s.clock.monotonic())
            if due is None:
                s.cv.wait(LOOK_S / 5)
                continue
            s.cv.release()
            try:
                self.decide(intent.token, abort=due == "decide")
            finally:
                s.cv.acquire()

    def decide_stale(self) -> int:
        """Background round: read the decisions of intents undecided for LOOK_S, and decide
        those undecided for ``txn_wait_s``; returns how many were resolved."""
        s = self._s
        with s.cv:
            now = s.clock.monotonic()
            due = [(i.token, self._due_locked(i, now)) for i in s.intents.by_token.values()]
        return sum(self.decide(token, abort=d == "decide") for token, d in due if d is not None)


def _conflict(tdef: TableDef, key: object, why: str) -> Conflict:
    what = "a key" if key is None else f"key {key!r}"
    return Conflict(
        f"{what} of {tdef.db}.{tdef.name} this transaction writes was {why}; nothing was "
        "applied, run the transaction again",
        database=tdef.db,
        table=tdef.name,
    )
