"""The coordinator: the cluster catalog, the shard map, and DDL sent to every shard.

:class:`CoordinatorService` is a plain class; :mod:`coordinator.actor.handle` makes it the
named, detached Ray actor ``dn-coordinator``, and tests use it in-process. Its state lives in
the object store (:mod:`coordinator.actor.cluster_catalog`), so a restarted coordinator loses
nothing: on start it loads the newest cluster record and finishes a DDL that was pending when
it died.

DDL protocol (one at a time, under ``_ddl_lock``):

1. validate the request exactly as the engine would (names, types, existence), so the caller
   gets the engine's typed error and no shard is touched;
2. commit the intent (``pending``) to the cluster record;
3. send the DDL to every shard in parallel; a shard that already applied it (AlreadyExists on
   create, NotFound on drop: an earlier attempt got that far) counts as done; an unavailable
   shard is retried for ``retry_s``;
4. commit the catalog change and clear the intent; return the newest shard commit timestamp.

If step 3 cannot finish, the caller gets ``Unavailable(outcome_unknown=True)`` and the intent
stays: the next DDL, ``repair()``, or a restart finishes it first. Between steps 3 and 4 some
shards have the change and others not yet: a read at a snapshot in that window gets NotFound
for a table being created, and writes to it may fail on the shards that lack it.

Not on the write path of plain writes: clients cache ``info()`` and table definitions and write
to the shards directly. Atomic batches and transactions commit through it (``commit``), in
batches that share their shard calls (:mod:`coordinator.actor.committer`). Any thread (the
actor is threaded); DDL is serialized.

Metrics (:mod:`coordinator.actor.metrics`): every public call is counted and timed by method,
each shard's failed part of a DDL is counted by kind, and the cluster record's version and
pending flag are set after each DDL (:meth:`CoordinatorService.publish_metrics`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from coordinator.actor import decisions
from coordinator.actor.cluster_catalog import ClusterCatalog
from coordinator.actor.committer import Committer
from coordinator.actor.metrics import CoordinatorMetrics
from coordinator.actor.moves import SlotMover
from coordinator.client.fanout import ShardCalls
from coordinator.client.routing import HASH_NAME
from coordinator.config import ClusterConfig
from dn import catalog as dncat
from dn.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from dn.schema import check_name
from dn.store import open_store
from dn.store.base import ObjectStore
from shards.group import shard_name

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _request(fn: _F) -> _F:
    """A public call of the service: counted and timed under its name."""

    @functools.wraps(fn)
    def call(self: CoordinatorService, *args: Any, **kwargs: Any) -> Any:
        with self.metrics.request(fn.__name__):
            return fn(self, *args, **kwargs)

    return call  # type: ignore[return-value]


class CoordinatorService:
    """Owns the cluster record of one deployment."""

    def __init__(
        self,
        config: dict[str, Any],
        shards: ShardCalls,
        *,
        store: ObjectStore | None = None,
        now_ms: int | None = None,
    ) -> None:
        self.config = ClusterConfig.from_dict(config)
        self.metrics = CoordinatorMetrics(self.config.namespace)
        self._shards = shards
        self._store = store or open_store(self.config.store)
        self._catalog = ClusterCatalog(self._store)
        self._catalog.open(
            self.config.shards, HASH_NAME, now_ms if now_ms is not None else int(time.time() * 1000)
        )
        self._ddl_lock = threading.Lock()
        recorded = self._catalog.state.shards if self._catalog.state else self.config.shards
        if recorded > self.config.shards:  # resharded since deployed: the record's count holds
            self.grow_shards(recorded)
        elif recorded < self.config.shards:
            self.retire_shards(list(range(recorded, self.config.shards)))
        cfg = self.config
        self._committer = Committer(shards, self._store, cfg.shell.retry_s, cfg.clock_skew_ms)
        self._mover = SlotMover(self._catalog, shards, cfg.shell.retry_s)
        if self._catalog.state and self._catalog.state.pending:
            log.info(
                "finishing DDL left pending by a previous coordinator: %s",
                self._catalog.state.pending,
            )
            try:
                self.repair()
            except Unavailable as exc:
                log.warning("pending DDL not finished yet (shards unavailable): %s", exc)
        if self._mover.in_progress():
            log.info(
                "settling the slot move a previous coordinator left: %s", self._mover.in_progress()
            )
            self._mover.settle_quietly()
        self.publish_metrics()

    # -- what clients cache -----------------------------------------------------------------

    @_request
    def info(self) -> dict[str, Any]:
        """The shard map and what a client needs to route and read (cheap; cached)."""
        st = self._catalog.state
        assert st is not None
        cfg = self.config
        return {
            "namespace": cfg.namespace,
            "shards": st.shards,
            "hash": st.hash,
            "shard_names": [shard_name(i) for i in range(st.shards)],
            "store": cfg.store,
            "shell": cfg.shell.to_dict(),
            "max_value_bytes": cfg.engine.max_value_bytes,
            "max_batch_rows": cfg.engine.max_batch_rows,
            "max_batch_bytes": cfg.engine.max_batch_bytes,
            "catalog_version": st.version,
            "slots": st.slot_map.to_record(),
            "config": cfg.to_dict(),
        }

    @_request
    def commit(self, token: bytes, after: int, snapshot: int | None, calls: dict) -> int:
        """Commit a transaction across shards in the next batch (:mod:`coordinator.actor.
        committer`): its commit timestamp, or the error that refused it."""
        return self._committer.commit(token, after, snapshot, calls)

    @_request
    def commit_many(self, items: list, group: bytes | None = None) -> list:
        """Several transactions ``(token, after, snapshot, calls)`` in the next batch: for
        each, its commit timestamp or the error that refused it (a value, not raised). With
        ``group`` they share one decision object, keyed by it."""
        return self._committer.commit_many(items, group)

    @_request
    def collect_decisions(self) -> int:
        """Delete the transaction decisions nothing needs any more (:mod:`coordinator.actor.
        decisions`); returns how many. The actor runs it every minute."""
        window = self.config.engine.token_window_s
        return decisions.collect(self._store, self._shards, window, int(time.time() * 1000))

    @_request
    def table(self, db: str, table: str) -> list:
        """The live table's definition in wire form (:meth:`dn.schema.TableDef.to_wire`)."""
        return self._catalog.table(db, table).to_wire()

    @_request
    def databases(self) -> list[str]:
        return self._catalog.databases()

    @_request
    def tables(self, db: str) -> list[str]:
        return self._catalog.tables(db)

    @_request
    def slot_map(self) -> dict[str, Any]:
        """The slot map's record (:mod:`coordinator.client.slots`) and the shard count, for a
        client to refresh."""
        st = self._catalog.state
        assert st is not None
        return {**st.slot_map.to_record(), "shards": st.shards}

    @_request
    def move_slots(self, slots: list[int], to_shard: int) -> int:
        """Move ``slots`` to shard ``to_shard`` online (:mod:`coordinator.actor.moves`);
        returns the slot map's version after it."""
        with self._ddl_lock:
            self._finish_pending()
            try:
                return self._mover.move(slots, to_shard)
            finally:
                self.publish_metrics()

    @_request
    def reshard(self, shards: int) -> dict[str, Any]:
        """Change the shard count online (:meth:`coordinator.actor.moves.SlotMover.reshard`):
        new shards start and take slots by reference; shards left without slots stop."""
        with self._ddl_lock:
            self._finish_pending()
            try:
                return self._mover.reshard(shards, self.grow_shards, self.retire_shards)
            finally:
                self.publish_metrics()

    def grow_shards(self, shards: int) -> None:
        """Reach shards up to ``shards`` (the actor starts their actors first)."""
        resize = getattr(self._shards, "resize", None)
        if resize is not None:
            resize(shards)
        if len(self._shards) < shards:
            raise InvalidArgument(f"this coordinator reaches only {len(self._shards)} shards")

    def retire_shards(self, ids: list[int]) -> None:
        """Stop calling shards that own no slot any more (the actor also stops them)."""
        resize = getattr(self._shards, "resize", None)
        if resize is not None:
            resize(min(ids))

    @_request
    def settle_moves(self) -> None:
        """Settle a slot move left in progress, if any, and catch up a shard a reshard that
        stopped half-way left without the catalog (the actor calls it every minute)."""
        with self._ddl_lock:
            self._mover.resolve()
            self._mover.catch_up()

    @_request
    def status(self) -> dict[str, Any]:
        st = self._catalog.state
        assert st is not None
        return {
            "catalog_version": st.version,
            "shards": st.shards,
            "hash": st.hash,
            "slots": {
                "count": st.slot_map.slots,
                "version": st.slot_map.version,
                "per_shard": st.slot_map.per_shard(),
            },  # fmt: skip
            "pending_ddl": st.pending,
            "move": st.move,
            "ddl_seq": st.ddl_seq,
            "databases": {db: sorted(e["tables"]) for db, e in st.databases.items()},
            "store": self.config.store,
            "namespace": self.config.namespace,
        }

    # -- DDL --------------------------------------------------------------------------------

    @_request
    def create_database(self, db: str) -> int:
        return self._ddl("create_database", dncat.ddl_create_database(db)[1:])

    @_request
    def drop_database(self, db: str) -> int:
        return self._ddl("drop_database", dncat.ddl_drop_database(db)[1:])

    @_request
    def create_table(
        self, db: str, table: str, schema: dict[str, str], primary_key: str | list[str]
    ) -> int:
        cmd = dncat.ddl_create_table(db, table, schema, primary_key)
        return self._ddl("create_table", cmd[1:])

    @_request
    def drop_table(self, db: str, table: str) -> int:
        check_name("database", db)
        check_name("table", table)
        return self._ddl("drop_table", [db, table])

    def _ddl(self, op: str, args: list) -> int:
        with self._ddl_lock:
            try:
                self._finish_pending()
                self._catalog.begin(op, args)
                return self._finish_pending()
            finally:
                self.publish_metrics()

    @_request
    def repair(self) -> int | None:
        """Finish a pending DDL, if any; returns its timestamp."""
        with self._ddl_lock:
            try:
                return self._finish_pending()
            finally:
                self.publish_metrics()

    def publish_metrics(self) -> None:
        """Set the cluster record's gauges (its version, whether a DDL is pending)."""
        st = self._catalog.state
        if st is not None:
            self.metrics.catalog(st.version, st.pending is not None)

    def _finish_pending(self) -> int | None:
        st = self._catalog.state
        if st is None or st.pending is None:
            return None
        op, args = st.pending["op"], st.pending["args"]
        shard_args = (
            [args[0], args[1], {c: t for c, t in args[2]}, list(args[3])]
            if op == "create_table"
            else list(args)
        )
        calls = {i: ("ddl", (op, shard_args)) for i in range(len(self._shards))}
        results = self._shards.call_each(calls, self.config.shell.retry_s)
        done_kind = AlreadyExists if op.startswith("create") else NotFound
        for i in sorted(results):
            r = results[i]
            if isinstance(r, BaseException) and not isinstance(r, done_kind):
                self.metrics.shard_error(i, r)
        ts = 0
        for i in sorted(results):
            r = results[i]
            if isinstance(r, done_kind):
                continue  # applied by an earlier attempt
            if isinstance(r, Unavailable):
                raise Unavailable(
                    f"{op} {args[:2]} reached only some shards (shard {i}: {r}); it stays "
                    "pending and is finished by the next DDL or a coordinator restart",
                    outcome_unknown=True,
                )
            if isinstance(r, BaseException):
                raise r
            ts = max(ts, r)
        self._catalog.finish()
        return ts
