"""The client's reads across shards: one snapshot for every shard, the shards' views, and what
the reads return — rows (in this process or from Ray read tasks), Arrow tables and streamed
record batches, change feeds with change types.

``Client.get``/``scan``/``scan_arrow``/``scan_batches``/``changes``/``changes_arrow`` call these
with the client (:class:`coordinator.client.client.Client`: its shard calls, settings, causality
and reader pool). A read without a snapshot reads at ``S`` = max(every shard's clock, the
client's causality token) (:func:`coordinator.client.fanout.choose_snapshot`); every shard then
resolves ``S`` (raises its floor, waits for commits and undecided transactions at or below it)
and hands out its view; the client fetches the objects from the store itself and merges the
shards (:mod:`coordinator.client.fanout`). A change feed also fetches each shard's view at
``from_ts - 1``, the state the change types are decided from (:mod:`dn.read.cdc`).

Not here: Ray's calls (the shard group's), materializing a view (:mod:`dn.read.view`). Any
thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa

from coordinator.client import fanout
from coordinator.client.tasks import alive_nodes, store_env, stream_tasks
from dn.errors import Moved
from dn.read import arrowfeed, arrowstream, cdc
from dn.read.arrow import arrow_schema, to_batches
from dn.read.arrowscan import arrow_path, merge_shards, scan_picked
from dn.read.change import Change
from dn.read.collector import paused_gc
from dn.read.feed import merge_changes
from dn.read.merge import merge_chunks
from dn.read.plan import check_from_ts
from dn.read.stream import check_batch_rows, windows
from dn.read.view import ReadView, materialize
from dn.timestamps import to_timestamp


def views(
    client: Any,
    db: str,
    table: str,
    snap: Any,
    from_ts: int | None = None,
    cols: Any = None,
    arrow: bool = False,
    by_ref: bool = False,
) -> dict[int, ReadView]:
    """Every shard's view of ``db.table`` at ``snap`` (None: now), checked to agree;
    ``arrow``: their tails as Arrow, for the Arrow read paths; ``by_ref``: those tails left
    in Ray's object store (:func:`coordinator.client.fanout.fetch_views`)."""
    s = to_timestamp(snap)  # the shards check the columns before they promise anything
    if s is None:
        s = fanout.choose_snapshot(client.shards, client.token, client.retry_s)
    for attempt in range(fanout.MOVED_READ_ATTEMPTS):
        try:
            with paused_gc():  # decoding the shards' tails makes many objects that live on
                got = fanout.fetch_views(
                    client.shards, db, table, s, from_ts, client.retry_s, None, cols, arrow,
                    client.map_version, by_ref,
                )  # fmt: skip
            break
        except Moved:  # slots moved since this client fetched the map
            if attempt + 1 == fanout.MOVED_READ_ATTEMPTS:
                raise
            client.refresh_route()
    fanout.check_same_schema(got)
    client.observe(got[0].snapshot)
    return got


def scan(
    client: Any,
    db: str,
    table: str,
    snapshot: Any,
    columns: list[str] | None,
    start: Any,
    end: Any,
    tasks: bool | None,
) -> Iterator[dict]:
    """``Client.scan`` (see its docstring for ``tasks``)."""
    got = views(client, db, table, snapshot, cols=columns)
    t = got[0].table
    start = None if start is None else t.check_key(start)
    end = None if end is None else t.check_key(end)
    fanout.check_projection(t, columns)
    cfg = client.settings
    if tasks is None:  # tasks pay off when they run next to data on other nodes
        tasks = (
            client.on_ray()
            and fanout.is_large(got, cfg.large_read_objects, cfg.large_read_tail_rows)
            and alive_nodes() > 1
        )
    if not tasks:
        return fanout.scan(client.reader_pool(), got, columns, start, end)
    store = client.info["store"]
    args = {
        i: (store, cfg.client_cache_bytes, i, v, start, end, cfg.read_page_rows)
        for i, v in got.items()
    }
    # the tasks find the store as this process does; credentials are the node's own
    pages = stream_tasks(fanout.shard_pages, args, store_env())
    return fanout.merge_pages(got, pages, columns)


def _scan_views(
    client: Any, db: str, table: str, snapshot: Any, columns: Any, bounds: tuple, arrow=False
):
    """Every shard's view for a scan, the table, and the key bounds, all checked."""
    got = views(client, db, table, snapshot, cols=columns, arrow=arrow)
    t = got[0].table
    lo, hi = (None if b is None else t.check_key(b) for b in bounds)
    fanout.check_projection(t, columns)
    return got, t, lo, hi


def scan_arrow(
    client: Any, db: str, table: str, snapshot: Any, columns: Any, start: Any, end: Any
) -> pa.Table:
    """``Client.scan_arrow``: every shard's rows as one Arrow table in primary-key order:
    each shard's rows picked in this process (:func:`dn.read.arrowscan.scan_picked`), then
    taken at once in key order (:func:`dn.read.arrowscan.merge_shards`): each row is copied
    once, where taking each shard's and then the merge's copied it twice."""
    got, t, lo, hi = _scan_views(client, db, table, snapshot, columns, (start, end), True)
    readers = client.reader_pool().readers(got)
    keys = [t.names[p] for p in t.pk_pos]
    cols = None if columns is None else list(dict.fromkeys([*columns, *keys]))
    parts = [scan_picked(reader, got[i], lo, hi, cols) for i, reader in readers.items()]
    whole = merge_shards(parts, keys)  # one take of every shard's rows
    if whole is None:
        return arrow_schema(t, columns).empty_table()
    return whole if columns is None else whole.select(list(columns))


def scan_batches(
    client: Any,
    db: str,
    table: str,
    snapshot: Any = None,
    columns: Any = None,
    start: Any = None,
    end: Any = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """``Client.scan_batches``: :func:`scan_arrow`'s rows as record batches of at most
    ``batch_rows`` rows (:func:`dn.read.arrowstream.rebatch`), streamed: the arguments are
    checked and every shard's view taken now, at one snapshot; then each shard's objects are
    fetched window by window as the batches are read (in this process, through the reader
    pool's cache without filling it) and the shards merged window by window: as Arrow for a
    table on the Arrow path (:func:`dn.read.arrowstream.windows` and
    :func:`~dn.read.arrowstream.merge`), else through Python values
    (:func:`dn.read.stream.windows`, :func:`dn.read.merge.merge_chunks`). Memory: per shard,
    the bound of those modules; plus one window per shard and one batch."""
    check_batch_rows(batch_rows)
    got, t, lo, hi = _scan_views(client, db, table, snapshot, columns, (start, end), True)
    pool = client.reader_pool()
    if arrow_path(t):  # Arrow windows, merged as Arrow (dn.read.arrowstream)
        tables = [arrowstream.windows(pool.reader(i), got[i], lo, hi, batch_rows) for i in got]
        return arrowstream.rebatch(t, arrowstream.merge(t, tables), columns, batch_rows)
    shards = [windows(pool.reader(i), got[i], lo, hi, batch_rows) for i in sorted(got)]
    return to_batches(t, merge_chunks(t, shards), columns, batch_rows)


def feed_views(
    client: Any, db: str, table: str, from_ts: Any, snap: Any, cols: Any, arrow=False, by_ref=False
) -> tuple[dict[int, ReadView], dict[int, ReadView | None]]:
    """Every shard's feed view from ``from_ts`` at ``snap`` (one snapshot; None: now),
    projected on ``cols``, and, in the same call, its view of the state at ``from_ts - 1``
    (``ShardService.feed_views``; None where there is none); ``arrow``: their tails as
    Arrow, for the Arrow read paths; ``by_ref`` (Ray shards, with
    ``arrow``): the tails left in Ray's object store, each feed view's ``arrow_tail`` holding
    the reference to the pair (feed view's tail, before view's tail) for a Ray Data read task
    (``coordinator.client.raydata``)."""
    f = check_from_ts(from_ts)
    s = to_timestamp(snap)
    if s is None:
        s = fanout.choose_snapshot(client.shards, client.token, client.retry_s)
    for attempt in range(fanout.MOVED_READ_ATTEMPTS):
        args = (db, table, s, f, cols, arrow, client.map_version)
        ids = range(len(client.shards))
        try:
            with paused_gc():  # decoding the shards' tails makes many objects that live on
                if by_ref:  # ((view, before), the tails' ref)
                    split = fanout.split_views(
                        client.shards, "feed_views", args, ids, client.retry_s
                    )
                    pairs = {i: (replace(v, arrow_tail=r), b) for i, ((v, b), r) in split.items()}
                else:
                    calls = {i: ("feed_views", args) for i in ids}
                    pairs = fanout.raise_first(client.shards.call_each(calls, client.retry_s))
            break
        except Moved:  # slots moved since this client fetched the map
            if attempt + 1 == fanout.MOVED_READ_ATTEMPTS:
                raise
            client.refresh_route()
    got = {i: v for i, (v, _) in pairs.items()}
    fanout.check_same_schema(got)
    client.observe(got[0].snapshot)
    return got, {i: b for i, (_, b) in pairs.items()}


def feeds(
    client: Any, db: str, table: str, from_ts: Any, snapshot: Any, columns: Any
) -> tuple[Any, list[tuple[Change, dict | None]]]:
    """Every shard's changes with from_ts <= ts <= snapshot, classified (:mod:`dn.read.cdc`),
    with their pre-images, merged in (ts, pk) order: ``(table, [(change, pre-image), ...])``."""
    got, before = feed_views(client, db, table, from_ts, snapshot, columns)
    pool = client.reader_pool()
    per_shard = []
    for i in sorted(got):
        reader = pool.reader(i)
        changes = materialize(reader, got[i], columns=columns)
        per_shard.append(zip(*cdc.classify(changes, cdc.rows_before(reader, before[i]))))
    return got[0].table, list(merge_changes(per_shard, key=_pair_order))


def _pair_order(pair: tuple) -> tuple:
    return pair[0].ts, pair[0].pk


def changes(
    client: Any, db: str, table: str, from_ts: Any, snapshot: Any, columns: Any
) -> Iterator[Change]:
    """``Client.changes``."""
    _, pairs = feeds(client, db, table, from_ts, snapshot, columns)
    return (c for c, _ in pairs)


def changes_arrow(
    client: Any,
    db: str,
    table: str,
    from_ts: Any,
    snapshot: Any,
    columns: Any,
    before_images: bool,
) -> pa.Table:
    """``Client.changes_arrow``: each shard's feed read and classified with Arrow kernels
    (:mod:`dn.read.arrowfeed`), merged in (ts, pk) order."""
    got, before = feed_views(client, db, table, from_ts, snapshot, columns, arrow=True)
    t, pool = got[0].table, client.reader_pool()
    parts = [
        arrowfeed.changes_table(pool.reader(i), got[i], before[i], None, before_images)
        for i in sorted(got)
    ]
    keys = [t.names[p] for p in t.pk_pos]
    whole = arrowfeed.merge_shards(parts, arrowfeed.feed_schema(t), keys)
    return whole if columns is None else whole.select([*columns, "_commit_ts", "_change_type"])
