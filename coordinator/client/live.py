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

Waiting: while rounds find changes (or hold some) they follow each other with no pause. After
a round that found and holds none, the next one long-polls: each shard waits up to ``poll_s``
for a commit to land at or after its cursor, so an idle feed costs one call per shard per
``poll_s`` and a commit on a waiting shard returns its call at once (the round still ends when
the other shards' waits do: a commit after a quiet spell waits at most ``poll_s`` more).

Not here: the shards' calls (the shard group's), materializing and classifying a view
(:mod:`dn.read.view`, :mod:`dn.read.cdc`). Any thread; one generator per feed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

from coordinator.client import fanout
from dn.errors import Moved
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
        c = self.client
        if c.map_version != self.map_version:
            self._restart()
        mv = self.map_version
        calls = {
            i: ("feed_next", (self.db, self.table, cur + 1, self.target, self.columns, wait_s, mv))
            for i, cur in self.cursor.items()
        }
        with paused_gc():  # decoding the shards' tails makes many objects that live on
            answers = c.shards.call_each(calls, c.retry_s)
        if any(isinstance(r, Moved) for r in answers.values()):
            c.refresh_route()  # slots moved: the next round reads by the new map
            return [], 0
        got = fanout.raise_first(answers)
        views = {i: v for i, (v, _, _) in got.items() if v is not None}
        if views:
            fanout.check_same_schema(views)
            self.tdef = views[min(views)].table
        fresh = [self.pending] if self.pending else []
        fetched = 0
        pool = c.reader_pool()
        for i in sorted(got):
            view, before, s = got[i]
            if view is not None:
                pairs = self._classified(pool.reader(i), view, before)
                fetched += len(pairs)
                if pairs:
                    fresh.append(pairs)
            self.cursor[i] = max(self.cursor[i], s)
        w = self.watermark
        self.target = max(self.target, *self.cursor.values())
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
    while stop is None or not stop():
        out, fetched = feed.round(wait_s)
        wait_s = 0.0 if fetched or feed.pending else poll_s
        if not out:
            continue
        if as_dicts:
            yield from (ch for ch, _ in out)
        else:
            yield cdc.arrow_feed(feed.tdef, [p[0] for p in out], [p[1] for p in out], columns)
