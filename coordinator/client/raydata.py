"""Ray Data: a DN table (or its change feed) as a Dataset, and a Dataset written into a table.

- :func:`read_dn` — the rows of ``db.table`` at one snapshot as a ``ray.data.Dataset``: the
  snapshot is resolved on every shard when the dataset is made (so it is consistent across
  shards and repeatable), then one read task per shard reads that shard's objects straight
  from the store (the shard is not involved) and yields Arrow tables, projected on
  ``columns``. Blocks are in primary-key order within a shard.
- :func:`read_dn_changes` — the change feed from ``from_ts`` with ``_commit_ts`` and
  ``_change_type`` (:mod:`dn.read.cdc`), one read task per shard; each block is in
  (``_commit_ts``, key) order within its shard (sort the dataset by ``_commit_ts`` for one order).
- :class:`DNDatasink` — ``ds.write_datasink(DNDatasink(db, table))``: each write task writes its
  blocks with ``write_columns`` (Arrow tables or DataFrames, types checked); every row is
  durable when ``write_datasink`` returns. Exactly once: the tokens of a task's parts are a
  function of the sink, the task's index and the block's place, minted at the time the task's
  *first* attempt started (recorded once in ``50/sink/<sink id>/<task>``, put if absent), so a
  task Ray retries sends the same tokens and no shard applies a part twice (decision 0014:
  the retry must come within ``token_window_s / 2`` of that first attempt). The markers are
  deleted when the write completes or fails.

Not atomic across tasks: each part commits on its own (an atomic dataset write, all of it at
one timestamp, is not offered yet). Runs in the driver (planning) and in Ray tasks (reads,
writes).
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
from coordinator.client.routing import validate_columns
from coordinator.client.writes import Limits, write_batch
from dn.errors import ObjectExists
from dn.read import cdc
from dn.read.arrow import arrow_schema, to_arrow
from dn.read.view import ReadView, materialize, scan_columns
from dn.write.tokens import make_token

SINK_PREFIX = "50/sink/"
#: Rows per write of a sink block (a bigger block is written in slices of this many).
SLICE_ROWS = 50_000


def _client(namespace: str) -> Any:
    import coordinator

    return coordinator.connect(namespace=namespace)


def _metadata() -> BlockMetadata:
    return BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)


class _ShardRows(Datasource):
    """One read task per shard over views made on the driver (see the module docstring)."""

    def __init__(self, store: str, cache_bytes: int, views: dict, columns: Any, feed: Any) -> None:
        self._store = store
        self._cache = cache_bytes
        self._views = views
        self._columns = columns
        self._feed = feed  # None for rows; (before views, before_images) for a change feed

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
            args = (self._store, self._cache, i, view, self._columns, self._feed)
            tasks.append(ReadTask(lambda a=args: _read_shard(*a), _metadata(), schema))
        return tasks


def _read_shard(
    store: str, cache: int, shard: int, view: ReadView, columns: Any, feed: Any
) -> Iterator[pa.Table]:
    reader = fanout.ReaderPool.for_url(store, cache).reader(shard)
    if feed is None:
        yield to_arrow(view.table, scan_columns(reader, view)[0], columns)
        return
    befores, before_images = feed
    changes = materialize(reader, view, columns=columns)
    classified, pre = cdc.classify(changes, cdc.rows_before(reader, befores[shard]))
    yield cdc.arrow_feed(view.table, classified, pre, columns, before_images)


def read_dn(
    db: str, table: str, snapshot: Any = None, columns: Any = None, *, namespace: str = "dn"
) -> ray.data.Dataset:
    """``db.table`` at ``snapshot`` (None: now; a timestamp or a time) as a Dataset."""
    client = _client(namespace)
    views = queries.views(client, db, table, snapshot, cols=columns)
    cache = client.settings.client_cache_bytes
    return ray.data.read_datasource(_ShardRows(client.info["store"], cache, views, columns, None))


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
    views, befores = queries.feed_views(client, db, table, from_ts, snapshot, columns)
    feed = (befores, before_images)
    cache = client.settings.client_cache_bytes
    return ray.data.read_datasource(_ShardRows(client.info["store"], cache, views, columns, feed))


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
        self, db: str, table: str, *, namespace: str = "dn", slice_rows: int = SLICE_ROWS
    ) -> None:
        import os

        self.db, self.table, self.namespace = db, table, namespace
        self.slice_rows = slice_rows
        self.sink_id = os.urandom(16)
        self.rows = 0

    def get_name(self) -> str:
        return f"DN({self.db}.{self.table})"

    def on_write_start(self, schema: Any = None) -> None:
        _client(self.namespace).txn_context().tables.get(self.db, self.table)  # NotFound early

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        client = _client(self.namespace)
        tc = client.txn_context()
        lim = Limits.from_info(client.info)
        task = int(getattr(ctx, "task_idx", 0))
        started = self._first_attempt(tc.store, task)
        n = 0
        for b, block in enumerate(blocks):
            if not isinstance(block, pa.Table):
                block = pa.Table.from_pandas(block, preserve_index=False)
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
        self.rows = sum(getattr(write_result, "write_returns", None) or [])
        self._clean()

    def on_write_failed(self, error: Exception) -> None:
        self._clean()

    def _clean(self) -> None:
        store = _client(self.namespace).reader_pool().store
        for key in store.list(f"{SINK_PREFIX}{self.sink_id.hex()}/"):
            store.delete(key)
