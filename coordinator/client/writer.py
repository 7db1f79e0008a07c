"""Buffered ingest: many small batches from one process, sent to the shards as large parts.

:meth:`coordinator.client.client.Client.write` makes each batch durable before it returns, so each
batch costs one Ray call per shard it touches. Each call has a fixed cost on both sides, so
small batches are bound by the call rate, not by the shards (a 1,000-row batch over 4 shards is
4 calls of 250 rows). A :class:`BatchWriter` (made by ``client.writer(db, table)``) is for
ingest:

- ``write(upserts, deletes)`` (row dicts) or ``write_columns(columns, deletes)`` (a dict of
  column name -> values, the cheaper form) validates and routes the batch at once (bad input
  raises here and nothing of that batch is kept), adds each shard's share of it, by column,
  to that shard's buffer and returns the batch's sequence number (1, 2, ...). It does not
  wait for the shards.
- A shard's buffer is sent as one part (a :class:`dn.write.part.WritePart`, by column in
  chunks that Ray passes inline) when it holds ``part_bytes``, when its oldest row has waited
  ``linger_s``, or on ``flush()``. The defaults are the deployment's
  (:class:`dn.settings.ShellSettings`: ``writer_part_bytes``, ``writer_linger_s``,
  ``writer_buffer_parts``).
- ``flush()`` sends everything and waits until it is all durable; leaving a ``with`` block
  flushes and closes.

Promises, plainly:

- **Durability.** A batch is durable once ``durable_seq`` has reached its sequence number
  (``on_durable(seq)`` is called for each batch, in order, on the sender thread, soon
  after), or once a later ``flush()`` returns (by then every callback has run). Rows not
  yet durable are lost if this process dies: ``write`` returning is not an acknowledgement.
- **Order.** A shard's parts commit in the order of the ``write`` calls: at most one part per
  shard is in flight, and the next is sent only once it is acknowledged.
- **Coalescing.** Within one part, a key written by several batches keeps only its last
  upsert or delete. The part commits atomically at one timestamp, so no snapshot could show
  the earlier versions; the change feed shows the key once, at the part's timestamp.
- **Atomicity** is per part, and a part holds rows of several batches; the rows of one batch
  on different shards commit in different parts (as with ``Client.write``).
- **Failures.** A part refused as unavailable (a shard restarting or behind, or a call that timed
  out) is sent again, whole, with the shells' backoff until ``retry_s`` runs out. The part carries
  the idempotency token minted when it was first sent, so it is applied once however many times it
  is sent (decision 0014). Any other failure, or running out of ``retry_s``, fails the writer: no
  more parts are sent, and ``write``, ``flush`` and ``close`` raise that error, with
  ``details["durable_seq"]`` (every batch up to it is durable; later ones may be in part). Make a
  new writer to go on. That includes :class:`dn.errors.StaleTable`: the table was dropped and
  created again, and the buffered batches were accepted for the old one.

The writer is given what it needs by the client (the shard calls, the table as every shard
has it, the client's causality token, the limits and settings); it never reaches into the
client. Any thread may call a writer. It runs one sender thread while it has rows to send or
parts in flight (the thread ends when the writer is idle); acknowledgements arrive on Ray's
callback thread and are only recorded there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coordinator.client.buffers import InFlight, ShardBuffer, merge_shares
from coordinator.client.routing import Batch, ShardPart, split, validate_batch, validate_columns
from coordinator.client.tables import RoutedTable
from coordinator.client.writes import WRITE_PART, Causality, Limits
from dn.backoff import Backoff
from dn.errors import DNError, InvalidArgument, Unavailable
from dn.objects.codec import pack
from dn.settings import ShellSettings
from dn.write.tokens import TokenMinter

if TYPE_CHECKING:
    from coordinator.client.fanout import ShardCalls

log = logging.getLogger(__name__)


class BatchWriter:
    """Buffered writes to one table; see the module docstring for what it promises."""

    def __init__(
        self,
        shards: ShardCalls,
        routed: RoutedTable,
        causality: Causality,
        limits: Limits,
        settings: ShellSettings,
        *,
        part_bytes: int | None = None,
        linger_s: float | None = None,
        max_buffer_bytes: int | None = None,
        on_durable: Callable[[int], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        part_bytes = settings.writer_part_bytes if part_bytes is None else part_bytes
        linger_s = settings.writer_linger_s if linger_s is None else linger_s
        most = limits.max_batch_bytes // 2
        if type(part_bytes) is not int or not 1 <= part_bytes <= most:
            raise InvalidArgument(f"part_bytes must be an int from 1 to {most}")
        if not isinstance(linger_s, int | float) or not 0 <= linger_s <= 60:
            raise InvalidArgument("linger_s must be a number of seconds from 0 to 60")
        limit = (
            settings.writer_buffer_parts * part_bytes
            if max_buffer_bytes is None
            else max_buffer_bytes
        )
        if type(limit) is not int or limit < part_bytes:
            raise InvalidArgument("max_buffer_bytes must be an int >= part_bytes")
        if on_durable is not None and not callable(on_durable):
            raise InvalidArgument("on_durable must be callable")
        self._shards = shards
        self._routed = routed
        self._causality = causality
        self._retry_s = settings.retry_s
        self._backoff = backoff if backoff is not None else settings.backoff()
        self._tokens = TokenMinter()  # this writer's, in this process
        self.db, self.table = routed.table.db, routed.table.name
        self._t = routed.table
        self._n = len(routed.shard_tables)
        self._max_value = limits.max_value_bytes
        self._max_rows = limits.max_batch_rows
        self.part_bytes = part_bytes
        self.linger_s = float(linger_s)
        self.max_buffer_bytes = limit
        self._on_durable = on_durable
        self._cv = threading.Condition()
        self._buf = [ShardBuffer() for _ in range(self._n)]
        self._inflight: list[InFlight | None] = [None] * self._n
        self._acked = [0] * self._n  # the newest batch durable on each shard
        self._done: deque[tuple[InFlight, Any]] = deque()  # outcomes not yet processed
        self._open: deque[tuple[int, tuple[int, ...]]] = deque()  # (seq, shards) not durable
        self._seq = 0
        self._durable_seq = 0
        self._row_bytes = 0.0  # bytes per packed row, learned from the parts sent
        self._flushing = 0
        self._notifying = 0  # sender passes calling on_durable right now
        self._error: DNError | None = None
        self._closed = False
        self._sender: threading.Thread | None = None
        self.stats = {
            "batches": 0,
            "rows": 0,
            "parts": 0,
            "part_rows": 0,
            "retries": 0,
            "coalesced": 0,
        }

    def __repr__(self) -> str:
        return (
            f"<dn BatchWriter {self.db}.{self.table} seq={self._seq} "
            f"durable_seq={self._durable_seq}>"
        )

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.close()
        except DNError:
            if exc is None:
                raise  # else the body's exception goes on; the writer's is in .error

    # -- the caller's side ------------------------------------------------------------------

    @property
    def durable_seq(self) -> int:
        """Every batch with a sequence number up to this one is durable."""
        return self._durable_seq

    @property
    def error(self) -> DNError | None:
        """The failure that stopped this writer, if any."""
        return self._error

    def write(self, upserts: Any = (), deletes: Any = ()) -> int:
        """Validate and buffer one batch of row dicts and primary keys to delete; returns
        its sequence number (not yet durable)."""
        return self._add(validate_batch(self._t, upserts, deletes, self._max_value, self._max_rows))

    def write_columns(self, columns: Any, deletes: Any = ()) -> int:
        """:meth:`write` for rows given by column: ``columns`` maps column names to sequences
        of equal length (lists, tuples, numpy arrays), one value per row; a column left out
        is null in every row. No dict or tuple is made per row."""
        return self._add(
            validate_columns(self._t, columns, deletes, self._max_value, self._max_rows)
        )

    def _add(self, batch: Batch) -> int:
        parts = split(batch, self._routed.route)
        with self._cv:
            self._check_usable()
            for s in parts:  # backpressure: wait while a full buffer is in flight
                while (
                    self._inflight[s] is not None
                    and self._error is None
                    and self._buffered_bytes(s) >= self.max_buffer_bytes
                ):
                    self._cv.wait(1.0)
            self._check_usable()
            if not self._row_bytes:
                self._row_bytes = (
                    len(pack([c[:16] for c in batch.cols])) / min(16, batch.nrows)
                    if batch.nrows
                    else 16.0
                )
            self._seq += 1
            seq = self._seq
            now = time.monotonic()
            wake = False
            for s, part in parts.items():
                self._buf[s].add(part, seq, now)
                wake = wake or (self._inflight[s] is None and self._ready(s, now))
            self._open.append((seq, tuple(parts)))
            self.stats["batches"] += 1
            self.stats["rows"] += len(batch.keys)
            if wake or self._sender is None:
                self._wake()
        return seq

    def flush(self) -> int:
        """Send every buffered row and wait until all of it is durable; returns the client's
        token, which is at least every part's commit timestamp."""
        with self._cv:
            self._check_usable()
            self._flushing += 1
            try:
                self._wake()
                while self._error is None and (
                    any(b.shares for b in self._buf)
                    or any(self._inflight)
                    or self._done
                    or self._notifying
                ):
                    self._cv.wait(1.0)
                self._check_usable(closing=True)
                return self._causality.token
            finally:
                self._flushing -= 1

    def close(self) -> None:
        """Flush, then refuse further writes. Idempotent."""
        if self._closed:
            if self._error is not None:
                raise self._error
            return
        try:
            self.flush()
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify_all()

    def _check_usable(self, closing: bool = False) -> None:
        if self._error is not None:
            raise self._error
        if self._closed and not closing:
            raise InvalidArgument("this writer is closed")

    # -- under the lock ---------------------------------------------------------------------

    def _buffered_bytes(self, s: int) -> float:
        return self._buf[s].rows * self._row_bytes

    def _ready(self, s: int, now: float) -> bool:
        """Whether shard ``s``'s buffer is to be sent now (if nothing is in flight there)."""
        b = self._buf[s]
        return bool(b.shares) and (
            self._flushing > 0
            or self._buffered_bytes(s) >= self.part_bytes
            or b.rows >= self._max_rows
            or now - b.since >= self.linger_s
        )

    def _wake(self) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._run, name="dn-writer", daemon=True)
            self._sender.start()
        self._cv.notify_all()

    def _process(self, part: InFlight, out: Any) -> list[int]:
        """Record one part's outcome; returns the batches that became durable."""
        s = part.shard
        if isinstance(out, int):
            self._inflight[s] = None
            self._acked[s] = part.seq_hi
            self._causality.observe(out)
            newly = []
            while self._open and all(self._acked[x] >= self._open[0][0] for x in self._open[0][1]):
                self._durable_seq = self._open.popleft()[0]
                newly.append(self._durable_seq)
            return newly
        err = out if isinstance(out, DNError) else Unavailable(f"shard {s}: {out!r}")
        delay = part.retries.next_delay() if isinstance(err, Unavailable) else None
        if delay is not None:
            part.retry_at = time.monotonic() + delay
            self.stats["retries"] += 1
            return []
        self._inflight[s] = None
        self._fail(err, s)
        return []

    def _fail(self, err: DNError, shard: int) -> None:
        if self._error is None:
            self._error = type(err)(
                f"{err.message} (a writer's part for shard {shard} failed; every batch up to "
                f"{self._durable_seq} is durable, later ones may be in part)",
                **{**err.details, "shard": shard, "durable_seq": self._durable_seq},
            )
        self._cv.notify_all()

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            sends: list[tuple[int, list[ShardPart]]] = []
            resends: list[InFlight] = []
            with self._cv:
                while True:
                    newly: list[int] = []
                    while self._done:
                        part, out = self._done.popleft()
                        newly += self._process(part, out)
                    if newly:
                        self._notifying += 1  # flush waits for the callbacks too
                        self._cv.notify_all()
                        break
                    now = time.monotonic()
                    wait: float | None = None
                    if self._error is not None:  # parts waiting for a retry are dropped
                        for s, p in enumerate(self._inflight):
                            if p is not None and p.retry_at is not None:
                                self._inflight[s] = None
                    else:
                        for s in range(self._n):
                            p = self._inflight[s]
                            if p is not None:
                                if p.retry_at is not None:
                                    if p.retry_at <= now:
                                        p.retry_at = None
                                        resends.append(p)
                                    else:
                                        wait = min(wait or 1.0, p.retry_at - now)
                            elif self._ready(s, now):
                                b, hi = self._buf[s].take(self._max_rows, self._acked[s])
                                retries = self._backoff.within(self._retry_s)
                                self._inflight[s] = InFlight(s, hi, retries)
                                sends.append((s, b))
                            elif self._buf[s].shares:
                                due = self._buf[s].since + self.linger_s - now
                                wait = min(wait or 1.0, max(due, 0.001))
                    if sends or resends:
                        break
                    idle = not any(self._inflight) and not any(b.shares for b in self._buf)
                    if idle or (self._error is not None and not any(self._inflight)):
                        self._sender = None  # a later write starts a new thread
                        self._cv.notify_all()
                        return
                    self._cv.wait(wait)
            if newly:
                try:
                    for seq in newly if self._on_durable is not None else ():
                        try:
                            self._on_durable(seq)
                        except Exception:  # noqa: BLE001 - a callback must not kill the sender
                            log.exception("on_durable(%d) raised", seq)
                finally:
                    with self._cv:
                        self._notifying -= 1
                        self._cv.notify_all()
            for s, b in sends:
                self._send(s, b)
            for p in resends:
                self._start(p)

    def _send(self, s: int, shares: list[ShardPart]) -> None:
        """Merge and pack shard ``s``'s taken shares as one part and start the call (lock
        not held)."""
        inflight = self._inflight[s]
        assert inflight is not None
        whole, coalesced = merge_shares(self._t, shares)
        # minted once: a resend of this part (_start again) carries the same token
        part = self._routed.part(s, whole, self._causality.token, self._tokens.mint())
        if part.chunks:
            packed = sum(map(len, part.chunks))
            self._row_bytes = 0.5 * self._row_bytes + 0.5 * packed / whole.nrows
        inflight.part = part
        self.stats["coalesced"] += coalesced
        self.stats["parts"] += 1
        self.stats["part_rows"] += whole.nrows + len(whole.deletes)
        self._start(inflight)

    def _start(self, inflight: InFlight) -> None:
        def done(out: Any) -> None:  # on Ray's callback thread: record only
            with self._cv:
                self._done.append((inflight, out))
                self._cv.notify_all()

        assert inflight.part is not None
        self._shards.start(inflight.shard, WRITE_PART, inflight.part.to_call(), done)
