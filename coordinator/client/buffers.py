"""The buffered writer's per-shard state: the shares waiting to be sent, and the part in flight.

- :class:`ShardBuffer`: one shard's shares of the batches not sent yet, in write order, and
  how much they hold; :meth:`ShardBuffer.take` hands them over as the next part (no more than
  ``max_batch_rows`` rows of them at once).
- :func:`merge_shares`: several shares of one shard as one: their columns joined when no key
  repeats, else each key keeping its last write (the coalescing promise of
  :mod:`coordinator.client.writer`).
- :class:`InFlight`: the part sent to one shard and not acknowledged yet, with its retries.

Not done here: locking (the writer holds its lock around every use of a buffer), sending.
Called by :class:`coordinator.client.writer.BatchWriter` only.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from coordinator.client.routing import ShardPart
from dn.backoff import Retries
from dn.schema import TableDef
from dn.write.part import WritePart

_DEL = object()  # a deleted key, while a part's repeated keys are merged


class ShardBuffer:
    """One shard's shares of the batches not yet sent, in write order."""

    __slots__ = ("shares", "rows", "since", "seq_hi")

    def __init__(self) -> None:
        self.shares: list[ShardPart] = []
        self.rows = 0  # upserts and deletes, before repeated keys are merged
        self.since = 0.0  # when the oldest share came
        self.seq_hi = 0  # the newest batch with rows here

    def add(self, share: ShardPart, seq: int, now: float) -> None:
        if not self.shares:
            self.since = now
        self.shares.append(share)
        self.rows += share.nrows + len(share.deletes)
        self.seq_hi = seq

    def take(self, max_rows: int, acked: int) -> tuple[list[ShardPart], int]:
        """Hand over the buffered shares (they become the next part), and the newest batch the
        part's acknowledgement makes durable on this shard. A buffer of more than ``max_rows``
        rows is split between batches: the part takes the oldest shares and makes no new batch
        durable (``acked``, the newest durable one already); the rest stays."""
        if self.rows <= max_rows:
            shares, seq_hi = self.shares, self.seq_hi
            self.shares, self.rows = [], 0
            return shares, seq_hi
        head: list[ShardPart] = []
        rows = 0
        for p in self.shares:
            n = p.nrows + len(p.deletes)
            if head and rows + n > max_rows:
                break
            head.append(p)
            rows += n
        del self.shares[: len(head)]
        self.rows -= rows
        return head, acked


def merge_shares(table: TableDef, shares: list[ShardPart]) -> tuple[ShardPart, int]:
    """Buffered shares of one shard as one share, and how many writes were coalesced away: a
    key in several keeps its last write (the part commits at one timestamp, so no snapshot
    could see the earlier ones)."""
    if len(shares) == 1:
        return shares[0], 0
    keys_of = table.column_keys
    keys = list(chain.from_iterable(chain(keys_of(p.cols), p.deletes) for p in shares))
    if len(set(keys)) == len(keys):  # nothing repeats: join the columns
        width = max(len(p.cols) for p in shares)
        cols = [
            list(chain.from_iterable(p.cols[i] for p in shares if p.cols)) for i in range(width)
        ]
        return ShardPart(cols, list(chain.from_iterable(p.deletes for p in shares))), 0
    last: dict[Any, Any] = {}
    for p in shares:
        for k, row in zip(keys_of(p.cols), zip(*p.cols)):
            last[k] = row
        for k in p.deletes:
            last[k] = _DEL
    rows = [v for v in last.values() if v is not _DEL]
    merged = ShardPart(
        [list(c) for c in zip(*rows)] if rows else [], [k for k, v in last.items() if v is _DEL]
    )
    return merged, len(keys) - len(last)


class InFlight:
    """The part sent to one shard and not acknowledged yet: the newest batch it makes durable
    there (``seq_hi``), the part itself once packed, its retries, and when to send it again
    (``retry_at``; None while a call is under way)."""

    __slots__ = ("shard", "seq_hi", "part", "retries", "retry_at")

    def __init__(self, shard: int, seq_hi: int, retries: Retries) -> None:
        self.shard = shard
        self.seq_hi = seq_hi
        self.part: WritePart | None = None
        self.retries = retries
        self.retry_at: float | None = None
