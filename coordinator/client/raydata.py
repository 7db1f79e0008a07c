"""Ray Data: a DN table (or its change feed) as a Dataset, and a Dataset written into a table.

- :func:`read_dn` — the rows of ``db.table`` at one snapshot as a ``ray.data.Dataset``: the
  snapshot is resolved on every shard when the dataset is made (so it is consistent across
  shards and repeatable), then one read task per shard reads that shard's objects straight
  from the store and yields Arrow tables, projected on ``columns``, in blocks of about Ray
  Data's ``target_max_block_size``. A table on the Arrow path (a key of one int64, string or
  bytes column) is streamed (:mod:`dn.read.arrowstream`: range objects read part by part), so
  a task holds one block and a part of each object it is in, not its shard's share of the
  table. A shard's in-memory tail, as Arrow, stays in Ray's object store where the shard's
  reply put it: the driver holds only its reference (a ``split`` call of
  :meth:`shards.group.ShardGroup.call_each`) and the read task fetches it, zero-copy on the
  same node. (Before, the driver fetched every tail and pickled it into the read tasks: one
  more copy of the table's fresh rows, and Ray's warning of a 15 MiB read function for 2M
  rows.) A task whose tail was lost with its node asks the shard for its view again, at the
  same snapshot (:mod:`coordinator.client.raytails`). The dataset has as many read tasks as
  shards, and Ray Data is told so (``override_num_blocks``): left to itself it splits each
  task's output into many small blocks, which took half the time of reading 2M rows. Blocks
  are in primary-key order within a shard.
- :func:`read_dn_changes` — the change feed from ``from_ts`` with ``_commit_ts`` and
  ``_change_type`` (:mod:`dn.read.cdc`), one read task per shard (its feed view's and before
  view's tails, as Arrow, fetched by the task as ``read_dn``'s are); each block is in
  (``_commit_ts``, key) order within its shard (sort the dataset by ``_commit_ts`` for one order).
- :class:`DNDatasink` — ``ds.write_datasink(DNDatasink(db, table))``: each write task writes its
  blocks with ``write_columns`` (Arrow tables or DataFrames, types checked); every row is
  durable when ``write_datasink`` returns. Exactly once: the tokens of a task's parts are a
  function of the sink, the task's index and the block's place, minted at the time the task's
  *first* attempt started (recorded once in ``50/sink/<sink id>/<task>``, put if absent), so a
  task Ray retries sends the same tokens and no shard applies a part twice (decision 0014:
  the retry must come within ``token_window_s / 2`` of that first attempt). The markers are
  deleted when the write completes or fails.

  Each part commits on its own: a reader may see some of the dataset before the write ends.
- ``DNDatasink(..., atomic=True)`` — the whole dataset commits at **one** timestamp, as one
  transaction (decision 0015), or not at all: each write task packs its blocks into write parts
  and puts each in the store (``50/sink/<sink id>/parts/<task>/<block>_<slice>_<shard>``,
  named by its place, so a retried task writes the same objects again); when every task is
  done the driver has each shard stage its parts (:mod:`shards.staging`: read, checked and
  decoded there, not through the driver) and commits one transaction over the staged parts
  (:func:`coordinator.client.txn.commit_calls`). :attr:`DNDatasink.commit_ts` is its
  timestamp. Bounds: a key may appear once in the dataset (as in one batch), and each shard
  holds its share in memory until the decision (``max_staged_rows``).

Runs in the driver (planning, the atomic commit) and in Ray tasks (reads, writes). The tasks
allocate from jemalloc's Arrow pool while they run (:func:`dn.arrowpool.for_task`), the driver
from its own default.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask

from coordinator.client import fanout, queries
from coordinator.client.raytails import Replan, with_tails
from coordinator.client.readerpool import ReaderPool
from coordinator.client.routing import split, validate_columns
from coordinator.client.txn import commit_calls
from coordinator.client.writes import Limits, write_batch
from dn import arrowpool
from dn.errors import ObjectExists, StaleTable
from dn.objects import codec
from dn.read import arrowfeed, arrowstream
from dn.read.arrow import arrow_schema
from dn.read.arrowscan import arrow_path, scan_table
from dn.read.view import ReadView
from dn.write.tokens import make_token
from shards.staging import STAGED

SINK_PREFIX = "50/sink/"
#: Rows per write of a sink block (a bigger block is written in slices of this many).
SLICE_ROWS = 50_000


def _client(namespace: str) -> Any:
    import coordinator

    return coordinator.connect(namespace=namespace)


def _arrow(block: Any) -> pa.Table:
    """A block as an Arrow table (Ray Data hands pandas blocks too)."""
    return (
        block if isinstance(block, pa.Table) else pa.Table.from_pandas(block, preserve_index=False)
    )


def _metadata() -> BlockMetadata:
    return BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)


class _ShardRows(Datasource):
    """One read task per shard over views made on the driver (see the module docstring)."""

    def __init__(
        self, store: str, cache_bytes: int, views: dict, columns: Any, feed: Any, again: Replan
    ) -> None:
        self._store = store
        self._cache = cache_bytes
        self._views = views
        self._columns = columns
        self._feed = feed  # None for rows; (before views, before_images) for a change feed
        self._again = again  # how a task whose tail was lost reads its shard's view again

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Any = None, **_: Any):
        t = self._views[min(self._views)].table
        schema = arrow_schema(t, self._columns)
        if self._feed is not None:
            extra = [
                pa.field("_commit_ts", pa.int64(), False),
                pa.field("_change_type", pa.string(), False),
            ]  # noqa: E501
            schema = pa.schema([*schema, *extra])
        tasks = []
        for i, view in sorted(self._views.items()):
            feed = None  # a feed's task takes its own shard's before-state only
            if self._feed is not None:
                feed = (self._feed[0][i], self._feed[1])
            args = (self._store, self._cache, i, view, self._columns, feed, self._again)
            tasks.append(ReadTask(lambda a=args: _read_shard(*a), _metadata(), schema))
        return tasks


def _read_shard(
    store: str, cache: int, shard: int, view: ReadView, columns: Any, feed: Any, again: Replan
) -> Iterator[pa.Table]:
    with arrowpool.for_task():
        yield from _shard_blocks(store, cache, shard, view, columns, feed, again)


def _shard_blocks(
    store: str, cache: int, shard: int, view: ReadView, columns: Any, feed: Any, again: Replan
) -> Iterator[pa.Table]:
    reader = ReaderPool.for_url(store, cache).reader(shard)
    view, before = with_tails(shard, view, feed and feed[0], again)  # fetched, or read again
    if feed is None and arrow_path(view.table):  # streamed: range objects read part by part
        empty = True
        for block in _gathered(arrowstream.batches(reader, view, None, None, columns)):
            empty = False
            yield block
        if empty:  # as a whole read gives: one empty block of the schema
            yield arrow_schema(view.table, columns).empty_table()
        return
    if feed is None:  # the shard's rows as Arrow, range objects read whole
        yield from _blocks(scan_table(reader, view, None, None, columns))
        return
    before_images = feed[1]  # the shard's feed, read and classified as Arrow
    yield from _blocks(arrowfeed.changes_table(reader, view, before, columns, before_images))


def _gathered(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Streamed record batches gathered into blocks of about Ray Data's target block size
    (without a copy): the task holds one block and the parts of the objects it is in."""
    target = ray.data.DataContext.get_current().target_max_block_size or (128 << 20)
    held: list[pa.RecordBatch] = []
    size = 0
    for b in batches:
        held.append(b)
        size += b.nbytes
        if size >= target:
            yield from _blocks(pa.Table.from_batches(held))
            held, size = [], 0
    if held:
        yield from _blocks(pa.Table.from_batches(held))


def _blocks(table: pa.Table) -> Iterator[pa.Table]:
    """``table`` in slices (no copy) of at most Ray Data's target block size."""
    target = ray.data.DataContext.get_current().target_max_block_size or (128 << 20)
    rows = max(1, int(target * table.num_rows / max(1, table.nbytes)))
    for lo in range(0, max(1, table.num_rows), rows):
        yield table.slice(lo, rows)


def read_dn(
    db: str, table: str, snapshot: Any = None, columns: Any = None, *, namespace: str = "dn"
) -> ray.data.Dataset:
    """``db.table`` at ``snapshot`` (None: now; a timestamp or a time) as a Dataset."""
    client = _client(namespace)
    views = queries.views(client, db, table, snapshot, cols=columns, arrow=True, by_ref=True)
    cache = client.settings.client_cache_bytes
    again = Replan(namespace, client.map_version, columns)  # the map the views were made by
    source = _ShardRows(client.info["store"], cache, views, columns, None, again)
    return ray.data.read_datasource(source, override_num_blocks=len(views))


def read_dn_changes(
    db: str,
    table: str,
    from_ts: Any,
    snapshot: Any = None,
    columns: Any = None,
    before_images: bool = False,
    *,
    namespace: str = "dn",
) -> ray.data.Dataset:
    """The change feed of ``db.table`` from ``from_ts`` to ``snapshot`` as a Dataset."""
    client = _client(namespace)
    views, befores = queries.feed_views(
        client, db, table, from_ts, snapshot, columns, arrow=True, by_ref=True
    )
    feed = (befores, before_images)
    cache = client.settings.client_cache_bytes
    again = Replan(namespace, client.map_version, columns)
    source = _ShardRows(client.info["store"], cache, views, columns, feed, again)
    return ray.data.read_datasource(source, override_num_blocks=len(views))


class _Tokens:
    """The tokens of one slice's parts: fixed by (sink, task, block, slice) and the mint time
    of the task's first attempt, in the order parts are minted."""

    def __init__(self, sink: bytes, minted_ms: int, seq: int) -> None:
        self._sink, self._ms, self._seq, self._n = sink, minted_ms, seq, 0

    def mint(self) -> bytes:
        self._n += 1
        return make_token(self._sink, self._ms, (self._seq << 12) | self._n)


class DNDatasink(Datasink):
    """Writes a Dataset into ``db.table`` (see the module docstring). Made on the driver."""

    def __init__(
        self,
        db: str,
        table: str,
        *,
        namespace: str = "dn",
        slice_rows: int = SLICE_ROWS,
        atomic: bool = False,
    ) -> None:
        import os

        self.db, self.table, self.namespace = db, table, namespace
        self.slice_rows = slice_rows
        self.atomic = atomic
        self.sink_id = os.urandom(16)
        self.rows = 0
        self.commit_ts: int | None = None  # an atomic write's commit timestamp

    def get_name(self) -> str:
        return f"DN({self.db}.{self.table})"

    def on_write_start(self, schema: Any = None) -> None:
        _client(self.namespace).txn_context().tables.get(self.db, self.table)  # NotFound early

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        with arrowpool.for_task():
            return self._write(blocks, ctx)

    def _write(self, blocks: Iterable[Any], ctx: Any) -> int:
        client = _client(self.namespace)
        tc = client.txn_context()
        lim = Limits.from_info(client.info)
        task = int(getattr(ctx, "task_idx", 0))
        if self.atomic:
            return self._put_parts(tc, lim, task, blocks)
        started = self._first_attempt(tc.store, task)
        n = 0
        for b, block in enumerate(blocks):
            block = _arrow(block)
            step = max(1, min(self.slice_rows, lim.max_batch_rows))
            for s, lo in enumerate(range(0, block.num_rows, step)):
                piece = block.slice(lo, step)
                tokens = _Tokens(self.sink_id, started, (task << 32) | (b << 12) | s)
                write_batch(
                    client.shards, tc.tables, tc.causality, tokens, tc.retry_s, self.db,
                    self.table,
                    lambda t, p=piece: validate_columns(t, p, (), lim.max_value_bytes, lim.max_batch_rows),  # noqa: E501
                )  # fmt: skip
                n += piece.num_rows
        return n

    def _put_parts(self, tc: Any, lim: Limits, task: int, blocks: Iterable[Any]) -> dict:
        """An atomic write task: its blocks as write parts in the store, by shard."""
        prefix = f"{SINK_PREFIX}{self.sink_id.hex()}/parts/{task:010d}/"
        return put_parts(tc, lim, prefix, blocks, self.db, self.table, self.slice_rows)

    def _commit_staged(self, returns: list) -> None:
        staged: dict[int, list[str]] = {}
        for r in returns:
            for shard, keys in r["staged"].items():
                staged.setdefault(int(shard), []).extend(keys)
        if staged:
            client = _client(self.namespace)
            self.commit_ts = commit_staged(client, self.sink_id, staged, self.db, self.table)

    def _first_attempt(self, store: Any, task: int) -> int:
        """The start of this task's first attempt, in ms (recorded by the first attempt)."""
        key = f"{SINK_PREFIX}{self.sink_id.hex()}/{task:010d}"
        now = time.time_ns() // 1_000_000
        try:
            store.put_if_absent(key, struct.pack(">Q", now))
            return now
        except ObjectExists:
            return struct.unpack(">Q", store.get(key))[0]

    def on_write_complete(self, write_result: Any) -> None:
        returns = list(getattr(write_result, "write_returns", None) or [])
        try:
            if self.atomic:
                self._commit_staged(returns)
                self.rows = sum(r["rows"] for r in returns)
            else:
                self.rows = sum(returns)
        finally:
            self._clean()

    def on_write_failed(self, error: Exception) -> None:
        self._clean()

    def _clean(self) -> None:
        store = _client(self.namespace).reader_pool().store
        for key in store.list(f"{SINK_PREFIX}{self.sink_id.hex()}/"):
            store.delete(key)


def put_parts(
    tc: Any, lim: Limits, prefix: str, blocks: Iterable[Any], db: str, table: str, rows: int
) -> dict:
    """Blocks as write parts of ``rows`` rows at most, each put in the store under
    ``prefix`` named by its place (``<block>_<slice>_<shard>``): {"rows": n, "staged":
    {shard: [object key, ...]}}."""
    step = max(1, min(rows, lim.max_batch_rows))
    staged: dict[int, list[str]] = {}
    n = 0
    for b, block in enumerate(blocks):
        block = _arrow(block)
        for s, lo in enumerate(range(0, block.num_rows, step)):
            piece = block.slice(lo, step)
            routed = tc.tables.get(db, table)
            batch = validate_columns(routed.table, piece, (), lim.max_value_bytes, step)
            for shard, share in split(batch, routed.route).items():
                key = f"{prefix}{b:06d}_{s:06d}_{shard:04d}"
                tc.store.put(key, codec.pack(list(routed.part(shard, share, 0).to_call())))
                staged.setdefault(shard, []).append(key)
            n += piece.num_rows
    return {"rows": n, "staged": staged}


def commit_staged(
    client: Any, key: bytes, staged: dict[int, list[str]], db: str, table: str
) -> int:
    """Have every shard stage its parts (``staged``: their object keys by shard) under
    ``key``, then commit them as one transaction; returns its timestamp. Each attempt stages
    again: a shard that still holds the parts reads nothing, one that restarted between its
    stage and its prepare reads them again."""
    tc = client.txn_context()

    def calls(stale: set) -> dict[int, list]:
        if stale:  # the table was redefined while the dataset was written
            raise StaleTable(
                f"table {db}.{table} was redefined during the write; nothing was committed",
                database=db, table=table,
            )  # fmt: skip
        got = client.shards.call_each(
            {s: ("stage", (key, keys)) for s, keys in staged.items()}, client.retry_s
        )
        fanout.raise_first(got)
        return {s: [(STAGED, key)] for s in staged}

    try:
        return next(iter(commit_calls(tc, calls).values()))
    finally:
        client.shards.call_each({s: ("unstage", (key,)) for s in staged}, client.retry_s)
