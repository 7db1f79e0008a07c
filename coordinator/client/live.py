"""The live change feed (``Client.subscribe``, ``dn changes --follow``): every change of a
table from ``from_ts`` on, yielded as commits land, in (ts, key) order across shards, with no
gap and no repeat.

Each shard is called on its own (``ShardService.feed_next``), one call in flight per shard,
the next sent as soon as its answer is in: a fast shard is not held back by a slow one. Each
shard keeps its own cursor ``c[i]``: a call reads the window ``c[i]`` < ts <= ``S[i]`` at a
snapshot ``S[i]`` the shard picks and resolves in the same call (the newest of its clock and
the feed's ``target``), with the rows before the window of the window's keys; the client
decodes and classifies those changes (:mod:`dn.read.cdc`), holds them (``held[i]``, in (ts,
key) order) and sets ``c[i] = S[i]``. Nothing is read twice.

Invariant (why there is no gap and no repeat): every shard has resolved its cursor (no commit
at or below ``c[i]`` can appear there later) and every change at or below it has been fetched;
so every change at or below the watermark ``W = min(c)`` is known, on every shard. After each
answer the feed emits the held changes at or below ``W``, merged in (ts, key) order, and holds
the rest. ``target`` is the newest cursor so far (and the client's causality token): passing
it makes a shard resolve at least that far, so ``W`` reaches what the busiest shard has shown
within one call of each other shard, even on a shard without commits or with a clock that
does not move (tests' manual clocks). A batch or transaction over shards has one timestamp:
its parts come out together, once ``W`` reaches it on every shard.

Why per shard and not in rounds: a change waits until every shard has answered a call made
after it landed. In rounds of one call per shard, that is the round in flight and then the
next one, each as long as its slowest call; called on its own, each shard's next call starts
as soon as it answers, so a change waits for one call of each shard, not two of the slowest
(measured under issue 15's 4g load: p50 106 ms against 132 in rounds, same deployment).

Slot moves (issue 17): every call names the slot map the feed reads by. When the map changes
(a shard refused the feed's map, or the client refreshed it), a moved slot's changes come from
its new owner, whose cursor may be past or behind the old owner's: every cursor goes back to
``W``, what was held is dropped, to be fetched again, and the calls in flight are forgotten
(their answers ignored) (:meth:`LiveFeed.restart`). Nothing at or below ``W`` is read again,
and everything above it is.

Waiting: a shard whose last window held changes is called again at once. One whose window was
empty long-polls: it waits up to ``poll_s`` for a commit to land at or after its cursor (unless
``target`` is ahead of it: it has catching up to do), so an idle feed costs one call per shard
per ``poll_s`` and a commit on a waiting shard returns its call at once (a commit after a
quiet spell waits at most ``poll_s`` for the other shards' waits to end).

Failures: a call answered ``Unavailable``, or not answered within the shards'
``call_timeout_s`` (a hung actor, a lost reply: its late answer is ignored), is made again
within ``retry_s`` as the shards' other calls are (:class:`FeedCalls`).

Not here: the shards' calls (the shard group's), materializing and classifying a view
(:mod:`dn.read.view`, :mod:`dn.read.cdc`). Any thread; one generator per feed.
"""

from __future__ import annotations

import itertools
import queue
import time
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

from dn.errors import Moved, Unavailable
from dn.read import cdc
from dn.read.collector import paused_gc
from dn.read.feed import merge_changes
from dn.read.plan import check_from_ts
from dn.read.view import ReadView, materialize

#: The shard method of a feed call.
FEED_NEXT = "feed_next"


def _pair_order(pair: tuple) -> tuple:
    return pair[0].ts, pair[0].pk


def _pair_ts(pair: tuple) -> int:
    return pair[0].ts


class LiveFeed:
    """One live feed's cursors and held changes (see the module docstring)."""

    def __init__(self, client: Any, db: str, table: str, from_ts: Any, columns: Any) -> None:
        self.client, self.db, self.table, self.columns = client, db, table, columns
        f = check_from_ts(from_ts)
        n = len(client.shards)
        self.cursor = dict.fromkeys(range(n), f - 1)
        self.held: dict[int, list[tuple]] = {i: [] for i in range(n)}  # (change, pre-image)
        self.target = max(f - 1, client.token)
        self.tdef: Any = None  # the table, from the newest view
        self.map_version = client.map_version  # the slot map the cursors were read by

    @property
    def watermark(self) -> int:
        """Every change at or below it is known, on every shard."""
        return min(self.cursor.values())

    @property
    def holding(self) -> bool:
        return any(self.held.values())

    def call(self, i: int, wait_s: float) -> tuple[str, tuple]:
        """Shard ``i``'s next call: its window above its cursor, by the feed's slot map."""
        return FEED_NEXT, (
            self.db,
            self.table,
            self.cursor[i] + 1,
            self.target,
            self.columns,
            wait_s,
            self.map_version,
        )

    def take(self, i: int, answer: tuple) -> int:
        """Shard ``i``'s answer ``(view, before, S)``: its window classified and held, its
        cursor moved to ``S``; returns how many changes the window held."""
        view, before, s = answer
        fetched = 0
        if view is not None:
            self.tdef = view.table
            reader = self.client.reader_pool().reader(i)
            with paused_gc():  # the window's changes make many objects that live on
                pairs = self._classified(reader, view, before)
            fetched = len(pairs)
            self.held[i] += pairs  # above the shard's old cursor: after what it held
        self.cursor[i] = max(self.cursor[i], s)
        self.target = max(self.target, s)
        return fetched

    def emit(self) -> list[tuple]:
        """The held pairs at or below the watermark, in (ts, key) order (the rest held)."""
        w = self.watermark
        self.client.observe(w)
        out = []
        for i, pairs in self.held.items():
            cut = bisect_right(pairs, w, key=_pair_ts)
            if cut:
                out.append(pairs[:cut])
                self.held[i] = pairs[cut:]
        self._check()
        return list(merge_changes(out, key=_pair_order)) if out else []

    def restart(self) -> None:
        """The slot map changed: a slot's changes now come from another shard, whose cursor
        may be past or behind the old owner's. Every shard reads again from the watermark
        (everything at or below it was emitted; what was held above it is fetched again)."""
        w = self.watermark
        n = len(self.client.shards)  # a reshard: as many as there are now
        self.cursor = dict.fromkeys(range(n), w)
        self.held = {i: [] for i in range(n)}
        self.map_version = self.client.map_version

    def _classified(self, reader: Any, view: ReadView, before: ReadView | None) -> list[tuple]:
        """A shard's window as (change, pre-image) pairs, classified, in (ts, key) order."""
        changes = materialize(reader, view, columns=self.columns)
        return list(zip(*cdc.classify(changes, cdc.rows_before(reader, before)), strict=True))

    def _check(self) -> None:
        """Invariant: every held change is above the watermark (it would have been emitted)."""
        w = self.watermark
        assert all(p[0][0].ts > w for p in self.held.values() if p), "a held change at or below W"


class FeedCalls:
    """The feed's calls in flight, at most one per shard, started without waiting
    (``ShardCalls.start``); their answers come back in the order they land. A call answered
    ``Unavailable``, or not answered within the shards' ``call_timeout_s``, is made again
    (``ShardCalls.call_each``, within ``retry_s``); the answer of a call made again or
    forgotten is ignored when it comes."""

    def __init__(self, shards: Any, retry_s: float) -> None:
        self._shards, self._retry_s = shards, retry_s
        self._inbox: queue.SimpleQueue[tuple[int, int, Any]] = queue.SimpleQueue()
        self._live: dict[int, tuple[int, float, tuple[str, tuple]]] = {}  # (seq, sent, call)
        self._seq = itertools.count()

    def send(self, i: int, call: tuple[str, tuple]) -> None:
        seq = next(self._seq)
        self._live[i] = (seq, time.monotonic(), call)
        self._shards.start(i, *call, lambda out: self._inbox.put((i, seq, out)))

    def forget(self) -> None:
        """Ignore the answers of every call in flight."""
        self._live.clear()

    def next(self, timeout: float) -> tuple[int, Any] | None:
        """The next answer, ``(shard, answer or DNError)``; None if none came within
        ``timeout`` seconds."""
        limit = getattr(self._shards, "call_timeout_s", None)
        end = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            late = [i for i, (_, t, _) in self._live.items() if limit and now - t >= limit]
            if late:  # checked first: answers of the other shards may never stop coming
                i, seq = late[0], self._live[late[0]][0]
                out: Any = Unavailable(f"shard {i}.{FEED_NEXT}: no answer within {limit} s")
            else:
                wait = end - now
                if limit is not None and self._live:
                    wait = min(wait, min(t for _, t, _ in self._live.values()) + limit - now)
                try:
                    i, seq, out = self._inbox.get(timeout=max(wait, 0.0))
                except queue.Empty:
                    if time.monotonic() >= end:
                        return None
                    continue
            mine = self._live.get(i)
            if mine is None or mine[0] != seq:
                continue  # a call forgotten or made again since
            del self._live[i]
            if isinstance(out, Unavailable):
                with paused_gc():
                    out = self._shards.call_each({i: mine[2]}, self._retry_s)[i]
            return i, out


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
    module docstring). Yields an Arrow table per emitted batch of changes (``as_dicts``: the
    Change records one by one), until ``stop()`` is true (None: forever)."""
    feed = LiveFeed(client, db, table, from_ts, columns)
    calls = FeedCalls(client.shards, client.retry_s)

    def send_all() -> None:
        calls.forget()
        for i in feed.cursor:
            calls.send(i, feed.call(i, 0.0))

    send_all()
    while stop is None or not stop():
        got = calls.next(0.25)
        if got is None:
            continue
        i, answer = got
        if isinstance(answer, Moved):  # the feed's map is not the shard's: look it up again
            client.refresh_route()
            feed.restart()
            send_all()
            continue
        if isinstance(answer, BaseException):
            raise answer
        fetched = feed.take(i, answer)
        out = feed.emit()
        if client.map_version != feed.map_version:  # the client learnt of a move meanwhile
            feed.restart()
            send_all()
        else:
            calls.send(i, feed.call(i, 0.0 if fetched else poll_s))
        if not out:
            continue
        if as_dicts:
            yield from (ch for ch, _ in out)
        else:
            yield cdc.arrow_feed(feed.tdef, [p[0] for p in out], [p[1] for p in out], columns)
