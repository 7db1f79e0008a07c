"""The committer: transactions across shards, committed in batches (decision 0015).

A client hands its transaction's commit to the coordinator (``CoordinatorService.commit``):
the transaction's token, the newest timestamp the client has seen, its snapshot (or None for
an atomic batch) and its write parts by shard. Commits that arrive while a batch is in flight
form the next batch (the first to find none in flight leads it, as in the shards' group
commit). For one batch the committer:

1. gives each transaction its commit timestamp: ascending in arrival order, past every
   timestamp its transactions have seen and a few milliseconds past the wall clock
   (:class:`CommitClock`, which learns how far the shards' clocks run ahead);
2. sends each shard one ``prepare_many`` with its share of every transaction, all shards in
   parallel (resent while a shard is unavailable: each prepare carries its token);
3. decides each transaction, all in parallel: commit at its timestamp if every shard it writes
   prepared it, else abort; one decision object per client group (the transactions a client
   sent in one ``commit_many``) or per transaction sent alone (:mod:`dn.objects.decision`);
4. sends each shard one ``resolve_many`` with the decisions of its transactions, without
   waiting for the answers (a read that reaches a shard before its resolve waits for it, or
   reads the decision object itself), and waits out the commit wait here: until its clock
   passes the newest commit timestamp plus ``clock_skew_ms``;
5. answers each commit: its timestamp, or the error that refused it (Conflict, StaleTable,
   TimestampPassed: the client retries with a new token), or Unavailable.

Batches run one at a time, with ascending timestamps (:meth:`CommitClock.pick` hands out each
timestamp once), so each shard receives every batch's prepares after the previous batch's, in
timestamp order, and no prepare finds its timestamp passed by another's.

Ray calls per commit, with B transactions per batch on n shards: 1 + 2n/B (a transaction sent
alone over 4 shards: 9; 16 at once: 1.5). Store requests per commit: one decision per client
group (measured: a decision put costs about half a millisecond of this process's CPU on a local
store, as much as everything else a commit costs here), plus the shards' log writes, shared by
their group commits.

Failure: if the coordinator dies mid-batch, its clients get ``Unavailable`` and settle their own
transaction (:func:`coordinator.client.txn.commit_atomic`: an abort decision unless a commit is
there already); the intents it left are decided by their shards' readers. Any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dn.clock import LOGICAL_BITS
from dn.errors import Closed, DNError, Fenced, Internal, TimestampPassed, Unavailable
from dn.objects import decision
from dn.store.base import ObjectStore
from dn.write.tokens import is_token

log = logging.getLogger(__name__)

PREPARE_MANY = "prepare_many"
RESOLVE_MANY = "resolve_many"
#: A commit wait longer than this is skipped (a timestamp far ahead: after a restart's ceiling
#: or a future snapshot), as the shards skip theirs (``commit_wait_max_s``).
COMMIT_WAIT_MAX_S = 0.25


def _ignore(_: Any) -> None:
    """A resolve's answer: nothing to do (a shard that missed it reads the decision)."""


class CommitClock:
    """Picks commit timestamps a little past every participant's clock: ``margin_ms`` past
    this process's wall clock, and past ``floor``, the newest clock a shard reported when it
    refused a timestamp as passed. The margin doubles (up to ``MAX_MARGIN_MS``) after a
    refusal and halves after each batch that committed. ``floor`` is a timestamp, not an
    offset from the wall clock: a shard ahead because of earlier commits, floors or a restart's
    ceiling is passed once, and the wall clock catches up with it; nothing ratchets ahead.
    Thread-safe."""

    MIN_MARGIN_MS = 2
    MAX_MARGIN_MS = 50

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.floor = 0
        self.margin_ms = self.MIN_MARGIN_MS
        self._last = 0  # the newest timestamp handed out: batches get ascending ones

    def pick(self, after: int, n: int = 1) -> int:
        """The first of ``n`` consecutive commit timestamps, above every one picked before."""
        with self._lock:
            wall = time.time_ns() // 1_000_000 + self.margin_ms
            at = max(after + 1, self.floor + 1, self._last + 1, wall << LOGICAL_BITS)
            self._last = at + n - 1
            return at

    def passed(self, clock: int) -> None:
        """A shard's clock was at ``clock``, at or past a timestamp asked for."""
        with self._lock:
            self.floor = max(self.floor, clock)
            self.margin_ms = min(self.MAX_MARGIN_MS, self.margin_ms * 2)

    def committed(self) -> None:
        with self._lock:
            self.margin_ms = max(self.MIN_MARGIN_MS, self.margin_ms // 2)


@dataclass(eq=False)
class _Commit:
    token: bytes
    after: int
    snapshot: int | None
    calls: dict[int, list]  # shard -> the parts' call arguments (WritePart.to_call())
    group: bytes | None = None  # the client group decided with it (None: alone)
    at: int = 0
    result: Any = None
    done: bool = False
    error: DNError | None = field(default=None)


class Committer:
    """Batches of transactions over the shards (see the module docstring)."""

    def __init__(self, shards: Any, store: ObjectStore, retry_s: float, skew_ms: int = 0) -> None:
        self._shards = shards  # coordinator.client.fanout.ShardCalls
        self._store = store
        self._retry_s = retry_s
        self._skew_ms = skew_ms  # the clock difference assumed between nodes
        self.clock = CommitClock()
        self._cv = threading.Condition()
        self._queue: list[_Commit] = []
        self._leading = False
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="dn-decide")
        self.batches = 0
        self.commits = 0

    def commit(self, token: bytes, after: int, snapshot: int | None, calls: dict) -> int:
        """Commit one transaction in the next batch; its timestamp, or the error."""
        (out,) = self.commit_many([(token, after, snapshot, calls)])
        if isinstance(out, DNError):
            raise out
        return out

    def commit_many(self, items: list, group: bytes | None = None) -> list[int | DNError]:
        """Commit several transactions ``(token, after, snapshot, calls)`` in the next batch
        (a client's group: :class:`coordinator.client.commits.CommitGroup`); for each, its
        timestamp or the error that refused it, in order. With ``group`` (a token: the key of
        their decision object) they are decided together, in one decision object."""
        if not isinstance(items, list) or not items:
            raise Internal("commit_many needs a list of commits")
        if group is not None and (not is_token(group) or any(i[0] == group for i in items)):
            raise Internal("a group of commits is named by a token of its own")
        mine = []
        for item in items:
            token, after, snapshot, calls = item
            if not isinstance(calls, dict) or not calls:
                raise Internal("a commit needs its parts by shard")
            mine.append(_Commit(token, after, snapshot, calls, group))
        with self._cv:
            self._queue.extend(mine)
            while not all(c.done for c in mine) and self._leading:
                self._cv.wait()
            lead = not all(c.done for c in mine)
            if lead:
                self._leading = True
        if lead:
            try:
                while not all(c.done for c in mine):
                    with self._cv:
                        batch, self._queue = self._queue, []
                    self._run(batch)
            finally:
                with self._cv:
                    self._leading = False
                    self._cv.notify_all()
        return [c.error if c.error is not None else c.result for c in mine]

    def _run(self, batch: list[_Commit]) -> None:
        """One batch, start to end. Batches run one after the other: while one is in flight
        the next one gathers every commit that arrives, so batches grow with the load and
        each costs two shard calls per shard (measured: overlapping a batch's resolves with
        the next one's prepares made batches smaller and commits slower on Ray)."""
        try:
            self._decide(batch, *self._prepare(batch))
        except Exception as exc:  # every client of the batch settles its own transaction
            log.exception("a batch of %d commits failed", len(batch))
            for c in batch:
                if c.result is None and c.error is None:
                    c.error = Unavailable(f"the commit failed: {exc!r}", outcome_unknown=True)
        finally:
            with self._cv:
                for c in batch:
                    c.done = True
                self._cv.notify_all()

    def _prepare(self, batch: list[_Commit]) -> tuple[dict[int, list], dict]:
        at = self.clock.pick(max(max(c.after, c.snapshot or 0) for c in batch), len(batch))
        for i, c in enumerate(batch):
            c.at = at + i
        shares: dict[int, list] = {}
        for c in batch:
            for s, calls in c.calls.items():
                item = (c.token, c.at, c.snapshot, calls)
                shares.setdefault(s, []).append(item if c.group is None else (*item, c.group))
        got = self._shards.call_each(
            {s: (PREPARE_MANY, (items,)) for s, items in shares.items()}, self._retry_s
        )
        refused: dict[bytes, BaseException] = {}
        for s, out in got.items():
            answers = out if isinstance(out, list) else [out] * len(shares[s])
            for (token, ts, *_), answer in zip(shares[s], answers, strict=True):
                if isinstance(answer, BaseException):
                    refused.setdefault(token, answer)
                elif answer != ts:
                    refused.setdefault(token, Internal(f"shard {s} prepared at {answer}, not {ts}"))
        return shares, refused

    def _decide(self, batch: list[_Commit], shares: dict[int, list], refused: dict) -> None:
        groups: dict[bytes, list[_Commit]] = {}
        for c in batch:
            groups.setdefault(c.group or c.token, []).append(c)
        decided = {
            g: self._pool.submit(self._decide_group, g, cs, refused) for g, cs in groups.items()
        }
        outcome: dict[bytes, Any] = {}
        for g, cs in groups.items():
            try:
                got = decided[g].result()
                outcome.update((c.token, got.of(c.token)) for c in cs)
            except DNError as exc:  # the store failed: these commits' outcome is unknown
                outcome.update((c.token, exc) for c in cs)
        known = {t: o for t, o in outcome.items() if type(o) is int}
        for s, items in shares.items():  # sent, not waited for: a shard that has not applied
            # it when a read reaches it waits for it, or reads the decision object itself
            resolve = [(t, known[t]) for t, *_ in items if t in known]
            self._shards.start(s, RESOLVE_MANY, (resolve,), _ignore)
        newest = max((ts for ts in known.values() if ts), default=0)
        if newest:  # the commit wait: a write that starts after the answer gets a later ts
            wait_s = ((newest >> LOGICAL_BITS) + self._skew_ms + 1) / 1000 - time.time()
            if 0 < wait_s <= COMMIT_WAIT_MAX_S:
                time.sleep(wait_s)
        self.batches += 1
        for c in batch:
            o = outcome[c.token]
            if isinstance(o, BaseException):
                c.error = o if isinstance(o, DNError) else Internal(repr(o))
            elif o == decision.ABORTED:
                err = refused.get(c.token)
                if isinstance(err, TimestampPassed):
                    self.clock.passed(err.details.get("clock", c.at))
                if isinstance(err, Unavailable | Closed | Fenced):  # a shard went away: retry
                    err = Unavailable(f"{err.message}; the transaction was aborted, retry it")
                c.error = (
                    err
                    if isinstance(err, DNError)
                    else Unavailable(  # not a conflict: the client sends it again
                        "a reader rolled the transaction (or another of its client group) back "
                        "after waiting txn_wait_s for its decision; nothing was applied, retry it"
                    )
                )
            else:
                c.result = o
                self.commits += 1
        if not refused:
            self.clock.committed()

    def _decide_group(self, group: bytes, cs: list[_Commit], refused: dict) -> decision.Outcomes:
        """The decision of one transaction alone, or of one client group: what holds."""
        wanted = {c.token: decision.ABORTED if c.token in refused else c.at for c in cs}
        shards = sorted({s for c in cs for s in c.calls})
        return decision.decide_group(self._store, group, wanted, shards)
