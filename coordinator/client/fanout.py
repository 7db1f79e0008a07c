"""Cross-shard reads: choosing the snapshot, materializing shard views, merging across shards.

A read at snapshot S (DESIGN.md §4):

1. S = the caller's snapshot, or the max of every shard's ``clock()`` (and of the client's
   causality token, the newest timestamp it has seen);
2. every shard is asked for its :class:`dn.ReadView` at S, in parallel. ``read_view`` first
   advances the shard's floor to S and waits for commits in flight at or below S, so every
   write acknowledged before the read began is in the view, no later commit can land at or
   below S, and a batch (one commit on one shard) is entirely in or entirely out;
3. the client fetches the planned objects straight from the object store through its own
   immutable-object cache (one thread per shard), materializes each shard's view with
   :mod:`dn.read.view` exactly as :meth:`dn.Engine.scan` does, then merges across shards:
   rows by primary key (shards own disjoint keys), changes by (ts, pk)
   (:func:`dn.read.feed.merge_changes`). A *large* scan runs each shard's fetch and merge in
   a Ray task instead (:func:`shard_pages`), next to the data and on other cores; the tasks
   stream msgpack pages of rows and the client only merges them (:func:`merge_pages`).

Results are iterators; nothing builds one list of the whole table across shards (a shard's
own merge holds its keys in memory, as the engine's does).

Pure with respect to Ray: shards are reached through a :class:`ShardCalls` object (the Ray
one is :class:`shards.group.ShardGroup`; tests pass in-process shards). Any thread.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from itertools import chain
from operator import itemgetter
from typing import Any, Protocol

from coordinator.client.readerpool import ReaderPool
from coordinator.client.routing import shard_of
from dn.errors import DNError, Moved, NotFound
from dn.objects.codec import pack, unpack_tuples
from dn.read.change import Change
from dn.read.feed import merge_changes
from dn.read.merge import merge_by_int_key
from dn.read.rows import column_maker, projection, row_maker
from dn.read.run import Runs
from dn.read.view import (
    ReadView,
    materialize,
    materialize_many,
    scan_columns,
    scan_rows,
    view_runs,
)
from dn.write.part import pk_signature


class ShardCalls(Protocol):
    """How the client reaches the shards (implemented by :class:`shards.group.ShardGroup`)."""

    def __len__(self) -> int: ...

    def call_each(
        self, calls: Mapping[int, tuple[str, tuple]], retry_s: float = 0.0
    ) -> dict[int, Any]:
        """Run ``method(*args)`` on each listed shard in parallel; a failed call's entry is
        its :class:`dn.errors.DNError` (Ray failures already mapped to ``Unavailable``)."""
        ...

    def start(self, i: int, method: str, args: tuple, done: Callable[[Any], None]) -> None:
        """Start ``method(*args)`` on shard ``i`` and return at once; ``done`` is called with
        the result or the DNError when it ends (from any thread; it must not block)."""
        ...


def raise_first(results: Mapping[int, Any]) -> dict[int, Any]:
    """``results`` unchanged when no entry is an error; else raise the lowest shard's error."""
    for i in sorted(results):
        if isinstance(results[i], BaseException):
            raise results[i]
    return dict(results)


def choose_snapshot(shards: ShardCalls, floor: int, retry_s: float) -> int:
    """S = max(every shard's clock, ``floor``)."""
    clocks = raise_first(shards.call_each({i: ("clock", ()) for i in range(len(shards))}, retry_s))
    return max([floor, *clocks.values()])


#: Reads of one request at most when shards answer that slots moved (each after a refresh of
#: the slot map; a move takes one).
MOVED_READ_ATTEMPTS = 4


def fetch_views(
    shards: ShardCalls,
    db: str,
    table: str,
    snapshot: int,
    from_ts: int | None,
    retry_s: float,
    only: Sequence[int] | None = None,
    columns: Sequence[str] | None = None,
    arrow: bool = False,
    map_version: int | None = None,
    by_ref: bool = False,
) -> dict[int, ReadView]:
    """Each shard's view at ``snapshot``; the shards check ``columns`` first, so a read they
    refuse promises (and writes) nothing. ``arrow``: tails as Arrow (``ReadView.arrow_tail``),
    for the Arrow read paths; ``map_version``: the slot map the reader routes by.
    ``by_ref`` (Ray shards only): each view's ``arrow_tail`` is left in Ray's object store,
    the view holding its ``ObjectRef`` (for a Ray Data read task:
    :func:`coordinator.client.raydata.read_dn`)."""
    ids = range(len(shards)) if only is None else only
    args = (db, table, snapshot, from_ts, columns, (), arrow, map_version)
    if not by_ref:
        return raise_first(shards.call_each({i: ("read_view", args) for i in ids}, retry_s))
    got = split_views(shards, "read_view", args, ids, retry_s)
    return {i: replace(view, arrow_tail=ref) for i, (view, ref) in got.items()}


def split_views(
    shards: ShardCalls, method: str, args: tuple, ids: Sequence[int], retry_s: float
) -> dict[int, tuple[Any, Any]]:
    """``method`` (``read_view`` or ``feed_views``, with ``arrow``) on each shard of ``ids``,
    its Arrow tails left in Ray's object store (Ray shards only: ``ShardActor.split_views``):
    ``{shard: (its answer without the tails, the tails' ObjectRef)}``."""
    calls = {i: ("split_views", (method, *args)) for i in ids}
    return raise_first(shards.call_each(calls, retry_s, split=True))  # type: ignore[call-arg]


def _runs_per_shard(pool: ReaderPool, views: Mapping[int, ReadView]) -> dict[int, Runs]:
    """Fetch every shard's planned objects, one thread per shard (I/O bound)."""

    def one(i: int) -> Runs:
        return view_runs(pool.reader(i), views[i])

    ids = sorted(views)
    if len(ids) == 1:
        return {ids[0]: one(ids[0])}
    with ThreadPoolExecutor(max_workers=min(16, len(ids))) as ex:
        return dict(zip(ids, ex.map(one, ids)))


def scan(
    pool: ReaderPool, views: Mapping[int, ReadView], columns: list[str] | None, start: Any, end: Any
) -> Iterator[dict]:
    """Rows with start <= pk < end at the views' snapshot, in primary-key order. Each shard's
    rows come as sorted columns (:func:`dn.read.view.scan_columns`); with int keys the
    shards are merged by one numpy sort of all their keys and the dicts are made straight
    from the columns (no tuple per row); otherwise each shard's rows become tuples, merged
    across shards page by page (:func:`merge_sorted`), and dicts at the end."""
    first = views[min(views)]
    make = column_maker(first.table, columns)  # raises InvalidArgument early
    to_dict = row_maker(first.table, columns)

    def merged() -> Iterator[dict]:
        runs = _runs_per_shard(pool, views)
        parts = [
            scan_columns(pool.reader(i), views[i], start, end, runs=runs[i]) for i in sorted(views)
        ]
        del runs
        parts = [p for p in parts if p[0]]
        if all(keys is not None for _, keys in parts):
            yield from make(merge_by_int_key(parts))
            return
        lists = [list(zip(*cols)) for cols, _ in parts]
        del parts
        # rows become dicts in C-level iteration (no generator step per row)
        yield from chain.from_iterable(
            map(partial(map, to_dict), merge_sorted(lists, _pk_key(first.table)))
        )

    return merged()


#: Rows a merge step takes from each list (see :func:`merge_sorted`).
MERGE_STEP = 4096


def merge_sorted(lists: list[list], key: Callable[[Any], Any]) -> Iterator[list]:
    """Pages of the rows of ``lists`` (each sorted by ``key``, keys unique across lists: the
    shards partition the keys) in ``key`` order. Each step takes up to ``MERGE_STEP`` rows
    from every list, cuts all of them at the smallest of their last keys, and sorts what is
    at or below the cut: a C-level sort of a few sorted runs, instead of a Python-level heap
    step per row."""
    lists = [x for x in lists if x]
    if len(lists) <= 1:
        for x in lists:
            for i in range(0, len(x), MERGE_STEP * 4):
                yield x[i : i + MERGE_STEP * 4]
        return
    pos = [0] * len(lists)
    while True:
        live = [j for j, x in enumerate(lists) if pos[j] < len(x)]
        if not live:
            return
        if len(live) == 1:
            j = live[0]
            x = lists[j]
            for i in range(pos[j], len(x), MERGE_STEP * 4):
                yield x[i : i + MERGE_STEP * 4]
            return
        cut = min(key(lists[j][min(pos[j] + MERGE_STEP, len(lists[j])) - 1]) for j in live)
        page: list = []
        for j in live:
            x, p = lists[j], pos[j]
            # rows p..p+MERGE_STEP-1 are sorted; take those with key <= cut
            lo = bisect_right(x, cut, p, min(p + MERGE_STEP, len(x)), key=key)
            page.extend(x[p:lo])
            pos[j] = lo
        page.sort(key=key)
        yield page


def _pk_key(table: Any) -> Callable[[tuple], Any]:
    pk_pos = table.pk_pos
    return itemgetter(pk_pos[0]) if len(pk_pos) == 1 else itemgetter(*pk_pos)


def check_projection(table: Any, columns: list[str] | None) -> None:
    """Raise InvalidArgument now (not when the iterator is first used) for bad columns."""
    projection(table, columns)


def is_large(views: Mapping[int, ReadView], objects: int, tail_rows: int) -> bool:
    """Whether a scan of these views is worth Ray tasks: many objects, or a big tail."""
    if len(views) < 2:
        return False
    n_objects = sum(len(v.plan.ranges) + (v.plan.checkpoint is not None) for v in views.values())
    n_tail = sum(len(run) for v in views.values() for run in v.tail)
    return n_objects >= objects or n_tail >= tail_rows


def shard_pages(
    store_url: str,
    cache_bytes: int,
    shard: int,
    view: ReadView,
    start: Any,
    end: Any,
    page_rows: int,
) -> Iterator[bytes]:
    """One shard's rows at the view's snapshot, in primary-key order, as msgpack pages of
    row arrays: the body of a large read's Ray task, which fetches and merges the shard's
    objects next to the data so the client only merges pages across shards."""
    reader = ReaderPool.for_url(store_url, cache_bytes).reader(shard)
    rows = scan_rows(reader, view, start, end)
    for i in range(0, len(rows), page_rows):
        yield pack(rows[i : i + page_rows])


def merge_pages(
    views: Mapping[int, ReadView],
    pages: Mapping[int, Iterator[bytes]],
    columns: list[str] | None,
) -> Iterator[dict]:
    """Rows from every shard's pages (each in key order), merged by primary key."""
    first = views[min(views)]
    to_dict = row_maker(first.table, columns)
    key = _pk_key(first.table)

    def rows(it: Iterator[bytes]) -> Iterator[tuple]:
        for page in it:
            yield from unpack_tuples(page)

    streams = [rows(pages[i]) for i in sorted(pages)]
    merged = heapq.merge(*streams, key=key) if len(streams) > 1 else streams[0]
    yield from map(to_dict, merged)


def changes(
    pool: ReaderPool, views: Mapping[int, ReadView], from_ts: int, columns: list[str] | None
) -> Iterator[Change]:
    """Every change with from_ts <= ts <= snapshot, in (ts, pk) order across shards (the
    views' range plans start at ``from_ts``)."""
    assert all(v.from_ts == from_ts for v in views.values()), "views of another feed"
    projection(views[min(views)].table, columns)  # raises InvalidArgument before any fetch
    runs = _runs_per_shard(pool, views)
    return merge_changes(
        [
            materialize(pool.reader(i), views[i], columns=columns, runs=runs[i])
            for i in sorted(views)
        ]
    )


def get_routed(
    shards: ShardCalls,
    tables: Any,
    pool: ReaderPool,
    retry_s: float,
    db: str,
    table: str,
    keys: Sequence[Any],
    snapshot: int | None,
    columns: list[str] | None,
) -> list[dict | None]:
    """``Client.get_many``: the rows of ``keys`` at ``snapshot`` (None for a key without one),
    each read from the shard that owns it. Every shard gets one point read of its keys, in
    parallel: its view holds only their versions from memory (the shard's key index), and the
    objects come from the store. Routed with the table each shard serves at the snapshot
    (looked up again once if the table was redefined since ``tables`` fetched it)."""
    for attempt in range(MOVED_READ_ATTEMPTS):
        routed = tables.get(db, table, refresh=attempt > 0)
        t = routed.table
        checked = [t.check_key(k) for k in keys]
        by_shard: dict[int, list] = {}
        for k in checked:
            by_shard.setdefault(shard_of(k, routed.route), []).append(k)
        mv = routed.route.version
        calls = {
            i: ("read_view", (db, table, snapshot, None, columns, ks, False, mv))
            for i, ks in by_shard.items()
        }
        got = shards.call_each(calls, retry_s)
        if any(isinstance(r, Moved) for r in got.values()) and attempt + 1 < MOVED_READ_ATTEMPTS:
            tables.refresh_route()  # slots moved since this client fetched the map
            continue
        views = raise_first(got)
        if all(pk_signature(v.table) == pk_signature(t) for v in views.values()):
            break  # routed with the table the shards serve at this snapshot
    found: dict = {}
    for i, ks in by_shard.items():
        found.update(zip(ks, materialize_many(pool.reader(i), views[i], ks, columns)))
    return [found[k] for k in checked]


def check_same_schema(views: Mapping[int, ReadView]) -> None:
    """Every shard must serve the same columns (a DDL half-applied is not readable)."""
    cols = {(v.table.columns, v.table.primary_key) for v in views.values()}
    if len(cols) > 1:
        v = next(iter(views.values()))
        raise NotFound(
            f"table {v.table.db}.{v.table.name} is being redefined at snapshot {v.snapshot}: "
            "its DDL had not reached every shard by then",
            database=v.table.db,
            table=v.table.name,
        )


def pages(rows: Iterator[dict], n: int) -> Iterator[list[dict]]:
    """``rows`` in lists of at most ``n`` (``Client.scan_pages``)."""
    page: list[dict] = []
    for row in rows:
        page.append(row)
        if len(page) == n:
            yield page
            page = []
    if page:
        yield page


__all__ = [
    "ReaderPool",
    "ShardCalls",
    "changes",
    "check_same_schema",
    "choose_snapshot",
    "fetch_views",
    "get_routed",
    "merge_by_int_key",
    "pages",
    "raise_first",
    "scan",
]


def cluster_status(namespace: str, coord: Any, shards: ShardCalls) -> dict[str, Any]:
    """The coordinator's view and every shard's status (an error string for a shard that
    does not answer): ``Client.status``."""
    try:
        view: Any = coord.call("status", retry_s=2.0)
    except DNError as exc:
        view = {"error": f"{type(exc).__name__}: {exc}"}
    results = shards.call_each({i: ("status", ()) for i in range(len(shards))})
    out = {
        i: (r if not isinstance(r, BaseException) else {"error": f"{type(r).__name__}: {r}"})
        for i, r in results.items()
    }
    return {"namespace": namespace, "coordinator": view, "shards": out}
