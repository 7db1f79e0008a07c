"""The live change feed (``Client.subscribe``, ``dn changes --follow``): every change of a
table from ``from_ts`` on, yielded as commits land, in (ts, key) order across shards, with no
gap and no repeat.

A round is one call per shard (``ShardService.feed_next``), all at once. Each shard keeps its
own cursor ``c[i]``: the call reads the window ``c[i]`` < ts <= ``S[i]`` at a snapshot ``S[i]``
the shard picks and resolves in the same call (the newest of its clock and the round's
``target``), with the rows before the window of the window's keys; the client decodes and
classifies those changes (:mod:`dn.read.cdc`) and sets ``c[i] = S[i]``. Nothing is read twice.

Invariant (why there is no gap and no repeat): every shard has resolved its cursor (no commit
at or below ``c[i]`` can appear there later) and every change at or below it has been fetched;
so every change at or below the watermark ``W = min(c)`` is known, on every shard. A round
emits the fetched changes at or below ``W``, merged in (ts, key) order, and holds the rest
(``pending``) for a later round. ``target`` is the newest cursor so far (and the client's
causality token): passing it makes every shard resolve at least that far, so ``W`` reaches
what the busiest shard has shown within one round, even on a shard without commits or with a
clock that does not move (tests' manual clocks). A batch or transaction over shards has one
timestamp: its parts come out in the same round, once ``W`` reaches it on every shard.

Slot moves (issue 17): each round names the slot map it reads by. When the map changes (a
shard refused the round's map, or the client refreshed it), a moved slot's changes come from
its new owner, whose cursor may be past or behind the old owner's: every cursor goes back to
``W`` and what was held is dropped, to be fetched again (:meth:`LiveFeed._restart`). Nothing at
or below ``W`` is read again, and everything above it is.

Pipelining: the next round's calls go out as soon as a round's answers are in (its cursors
are known then), and the client classifies the windows while the shards answer the next one;
a round's latency is then the slowest shard's call, not that plus the client's work. A round
sent ahead reads by the map its predecessor read by; when the map changed, the next round
waits until the previous one's changes are emitted or held, then restarts.

Waiting: while rounds find changes (or hold some) they follow each other with no pause. After
a round that found and holds none, the next one long-polls: each shard waits up to ``poll_s``
for a commit to land at or after its cursor, so an idle feed costs one call per shard per
``poll_s`` and a commit on a waiting shard returns its call at once (the round still ends when
the other shards' waits do: a commit after a quiet spell waits at most ``poll_s`` more).

Not here: the shards' calls (the shard group's), materializing and classifying a view
(:mod:`dn.read.view`, :mod:`dn.read.cdc`). Any thread; one generator per feed.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator
from functools import partial
from typing import Any

from coordinator.client import fanout
from dn.errors import Moved, Unavailable
from dn.read import cdc
from dn.read.collector import paused_gc
from dn.read.feed import merge_changes
from dn.read.plan import check_from_ts
from dn.read.view import ReadView, materialize


def _pair_order(pair: tuple) -> tuple:
    return pair[0].ts, pair[0].pk


class LiveFeed:
    """One live feed's cursors and held changes (see the module docstring)."""

    def __init__(self, client: Any, db: str, table: str, from_ts: Any, columns: Any) -> None:
        self.client, self.db, self.table, self.columns = client, db, table, columns
        f = check_from_ts(from_ts)
        self.cursor = dict.fromkeys(range(len(client.shards)), f - 1)
        self.target = max(f - 1, client.token)
        self.pending: list[tuple] = []  # fetched (change, pre-image) pairs above the watermark
        self.tdef: Any = None  # the table, from the newest view
        self.map_version = client.map_version  # the slot map the cursors were read by

    @property
    def watermark(self) -> int:
        """Every change at or below it is known, on every shard."""
        return min(self.cursor.values())

    def round(self, wait_s: float) -> tuple[list[tuple], int]:
        """One call per shard; returns the pairs now emitted (in (ts, key) order) and how many
        changes the round fetched."""
        sent = self.send(wait_s)
        assert sent is not None  # not ahead: always sent
        got = self.receive(sent)
        return ([], 0) if got is None else self.emit(got)

    def send(self, wait_s: float, ahead: bool = False) -> Round | None:
        """Start a round's calls, one per shard, and return at once. When the slot map
        changed since the last round, every cursor goes back to the watermark first; but
        ``ahead`` (the previous round's windows not emitted yet: a restart would drop what
        they hold only to have them held again, twice) the round is not sent (None)."""
        c = self.client
        if c.map_version != self.map_version:
            if ahead:
                return None
            self._restart()
        mv = self.map_version
        calls = {
            i: ("feed_next", (self.db, self.table, cur + 1, self.target, self.columns, wait_s, mv))
            for i, cur in self.cursor.items()
        }
        return Round(c.shards, calls)

    def receive(self, sent: Round) -> dict[int, tuple] | None:
        """The round's answers, once every shard's is in: each shard's (view, before, S), its
        cursor moved to ``S``. None when a shard refused the round's slot map (the route is
        looked up again; the next round reads by the new map)."""
        c = self.client
        answers = sent.wait(c.retry_s)
        if any(isinstance(r, Moved) for r in answers.values()):
            c.refresh_route()
            return None
        got = fanout.raise_first(answers)
        views = {i: v for i, (v, _, _) in got.items() if v is not None}
        if views:
            fanout.check_same_schema(views)
            self.tdef = views[min(views)].table
        for i, (_, _, s) in got.items():
            self.cursor[i] = max(self.cursor[i], s)
        self.target = max(self.target, *self.cursor.values())
        return got

    def emit(self, got: dict[int, tuple]) -> tuple[list[tuple], int]:
        """The received windows classified; returns the pairs at or below the watermark, in
        (ts, key) order (the rest held), and how many changes the windows held."""
        c = self.client
        fresh = [self.pending] if self.pending else []
        fetched = 0
        pool = c.reader_pool()
        with paused_gc():  # the windows' changes make many objects that live on
            for i in sorted(got):
                view, before, _ = got[i]
                if view is not None:
                    pairs = self._classified(pool.reader(i), view, before)
                    fetched += len(pairs)
                    if pairs:
                        fresh.append(pairs)
        w = self.watermark
        c.observe(w)
        merged = list(merge_changes(fresh, key=_pair_order)) if fresh else []
        cut = bisect_right([p[0].ts for p in merged], w)
        self.pending = merged[cut:]
        self._check()
        return merged[:cut], fetched

    def _restart(self) -> None:
        """The slot map changed: a slot's changes now come from another shard, whose cursor
        may be past or behind the old owner's. Every shard reads again from the watermark
        (everything at or below it was emitted; what was held above it is fetched again)."""
        w = self.watermark
        self.cursor = dict.fromkeys(range(len(self.client.shards)), w)  # a reshard: as many
        self.pending = []
        self.map_version = self.client.map_version

    def _classified(self, reader: Any, view: ReadView, before: ReadView | None) -> list[tuple]:
        """A shard's window as (change, pre-image) pairs, classified, in (ts, key) order."""
        changes = materialize(reader, view, columns=self.columns)
        return list(zip(*cdc.classify(changes, cdc.rows_before(reader, before)), strict=True))

    def _check(self) -> None:
        """Invariant: every held change is above the watermark (it would have been emitted)."""
        w = self.watermark
        assert all(p[0].ts > w for p in self.pending), "a held change at or below the watermark"


class Round:
    """One round's calls, started together without waiting (``ShardCalls.start``): while
    they run, the client classifies the previous round's windows."""

    def __init__(self, shards: Any, calls: dict[int, tuple[str, tuple]]) -> None:
        self._shards, self._calls = shards, calls
        self._out: dict[int, Any] = {}
        self._done = threading.Condition()
        for i, (method, args) in calls.items():
            shards.start(i, method, args, partial(self._answered, i))

    def _answered(self, i: int, out: Any) -> None:
        with self._done:
            self._out[i] = out
            self._done.notify_all()

    def wait(self, retry_s: float) -> dict[int, Any]:
        """Every shard's answer (or error); an unavailable shard's call, or one not answered
        within the shards' ``call_timeout_s``, is made again, within ``retry_s``, as
        :meth:`ShardCalls.call_each` retries."""
        limit = getattr(self._shards, "call_timeout_s", None)
        with self._done:
            self._done.wait_for(lambda: len(self._out) == len(self._calls), timeout=limit)
            out = dict(self._out)
        for i, (method, _) in self._calls.items():
            if i not in out:  # a late answer is dropped: the call is made again
                out[i] = Unavailable(f"shard {i}.{method}: no answer within {limit} s")
        again = {i: self._calls[i] for i, r in out.items() if isinstance(r, Unavailable)}
        if again:
            with paused_gc():
                out.update(self._shards.call_each(again, retry_s))
        return out


def subscribe(
    client: Any,
    db: str,
    table: str,
    from_ts: Any,
    columns: Any = None,
    as_dicts: bool = False,
    poll_s: float = 0.02,
    stop: Any = None,
) -> Iterator[Any]:
    """``Client.subscribe``: the change feed from ``from_ts`` on, as commits land (see the
    module docstring). Yields an Arrow table per round with changes (``as_dicts``: the Change
    records one by one), until ``stop()`` is true (None: forever)."""
    feed = LiveFeed(client, db, table, from_ts, columns)
    wait_s = 0.0
    sent = feed.send(wait_s)
    while stop is None or not stop():
        got = feed.receive(sent)
        if got is None:  # slots moved: the next round reads by the new map
            sent = feed.send(0.0)
            continue
        ahead = feed.send(wait_s, ahead=True)  # out while this round's windows are classified
        out, fetched = feed.emit(got)
        wait_s = 0.0 if fetched or feed.pending else poll_s
        sent = ahead if ahead is not None else feed.send(wait_s)
        if not out:
            continue
        if as_dicts:
            yield from (ch for ch, _ in out)
        else:
            yield cdc.arrow_feed(feed.tdef, [p[0] for p in out], [p[1] for p in out], columns)
