"""The cluster catalog and shard map, persisted in the object store.

Each version is one object ``90/cluster/<version>`` (20-digit zero-padded), framed by
:mod:`dn.objects.codec` with kind ``K`` and created with ``put_if_absent``:
creating version v+1 is the commit, so two writers cannot both commit v+1. The current catalog
is the newest listed version that decodes: ``load`` skips, with a warning, every newer version
that does not (torn, corrupt or malformed alike), and does not check the body's ``version``
against the key.

Body grammar (msgpack; map keys in the order written)::

    body     := {"version": int, "shards": int, "hash": str,   shard map: count + hash name
                 "created_ms": int,                              when the cluster was created
                 "databases": {db: {"tables": {table: tabledef}}},   in the order created
                 "pending": null | ddl,                          DDL being applied to shards
                 "ddl_seq": int,                                 DDL operations so far
                 "slots": slots,                                 the slot map (absent in a
                                                                 record made before slots)
                 "move": move,                                   a slot move in progress
                                                                 (absent when there is none)
                 "last_move": int}                               the newest move id given
                                                                 out (absent: none yet)
    move     := part | {"id": int, "parts": [part, ...]}      a step of several parts
    part     := {"id": int, "from": int, "to": int, "slots": [[first, last], ...]}
    tabledef := {"columns": [[name, type], ...], "primary_key": [name, ...], "ddl_seq": int}
    ddl      := {"op": "create_database" | "drop_database" | "create_table" | "drop_table",
                 "args": [...], "seq": int}

``args`` are ``[db]``, ``[db]``, ``[db, table, [[name, type], ...], [pk_col, ...]]`` and
``[db, table]`` for the four ops; ``seq`` is the ``ddl_seq`` of the version that began the DDL,
and a table's ``ddl_seq`` is the ``seq`` of the DDL that created it. ``created_ms`` is the
clock of the coordinator that created the cluster, in milliseconds since the Unix epoch.

The shard count and the routing ``hash`` are fixed when the cluster is created (a deployment
that asks for another shard count is refused). ``slots`` is the slot map of
:mod:`coordinator.client.slots` (its grammar there): which shard owns each slot, and its version.
A new cluster records the direct map (slot s -> shard s % shards, version 0), which routes as
the hash does; a record made before slots has none, and :attr:`CatalogState.slot_map` gives the
direct map for it, so its data is read and written where it always was.

``move`` is the intent of a step of slot moves (decision 0018; :mod:`coordinator.actor.moves`):
one part, or several with consecutive ids, the step's ``id`` the last. It is committed before
the shards are asked to give and take the slots, kept through the commit point (the version
whose slot map has version ``id``) until every shard of every part has settled, then cleared.
A coordinator that restarts with a step recorded settles it on every shard: done if the map
reached version ``id``, else undone.

Format versions: 1, and 2 for a version whose ``move`` has ``parts`` (written only then, so
a coordinator that reads only format 1 never takes a step for one of its parts).

``pending`` is the DDL intent: it is committed before the coordinator sends the DDL to the
shards and cleared (with the catalog updated) once every shard applied it, so a coordinator
that restarts in between finishes it. Applying a DDL to a shard is idempotent for this reason.

Not thread-safe: the coordinator serializes DDL under its own lock.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from coordinator.client.slots import SlotMap
from dn.errors import (
    AlreadyExists,
    Corruption,
    InvalidArgument,
    NotFound,
    ObjectExists,
    ObjectNotFound,
    Unavailable,
)
from dn.objects import codec
from dn.schema import TableDef
from dn.store.base import ObjectStore

log = logging.getLogger(__name__)

PREFIX = "90/cluster/"
DDL_OPS = ("create_database", "drop_database", "create_table", "drop_table")


#: The record's format versions this coordinator reads; it writes 2 only for a step of parts.
VERSIONS = (1, 2)


def catalog_key(version: int) -> str:
    return f"{PREFIX}{codec.num(version)}"


@dataclass(slots=True)
class CatalogState:
    """One version of the cluster record, as plain data."""

    version: int
    shards: int
    hash: str
    created_ms: int
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, Any] | None = None
    ddl_seq: int = 0
    slots: dict[str, Any] | None = None  # the slot map's record; None: made before slots
    move: dict[str, Any] | None = None  # a slot move in progress
    last_move: int = 0  # the newest move id given out (ids are never reused)

    def to_body(self) -> dict[str, Any]:
        body = {
            "version": self.version,
            "shards": self.shards,
            "hash": self.hash,
            "created_ms": self.created_ms,
            "databases": self.databases,
            "pending": self.pending,
            "ddl_seq": self.ddl_seq,
        }
        if self.slots is not None:
            body["slots"] = self.slots
        if self.move is not None:
            body["move"] = self.move
        if self.last_move:
            body["last_move"] = self.last_move
        return body

    @property
    def format_version(self) -> int:
        """The format version this version is written in (module docstring)."""
        return 2 if self.move is not None and "parts" in self.move else 1

    @property
    def slot_map(self) -> SlotMap:
        """The slot map (:mod:`coordinator.client.slots`): the one recorded, or for a record
        made before slots the direct map of its shard count, version 0."""
        return SlotMap.from_record(self.slots, self.shards)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CatalogState:
        return cls(
            body["version"],
            body["shards"],
            body["hash"],
            body["created_ms"],
            dict(body["databases"]),
            body.get("pending"),
            body["ddl_seq"],
            body.get("slots"),
            body.get("move"),
            body.get("last_move", 0),
        )


class ClusterCatalog:
    """Loads, validates against and commits versions of the cluster record."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.state: CatalogState | None = None
        self._next_version = 1

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> CatalogState | None:
        """The newest version that decodes (None: no cluster in this store yet)."""
        keys = self._store.list(PREFIX)
        self._next_version = codec.last_number(keys[-1]) + 1 if keys else 1
        for key in reversed(keys):
            try:
                body = codec.decode(codec.KIND_CLUSTER, self._store.get(key), key, VERSIONS)
                self.state = CatalogState.from_body(body)
            except ObjectNotFound:
                continue
            except (Corruption, KeyError, TypeError, ValueError) as exc:
                log.warning("skipping cluster record %s that does not decode: %s", key, exc)
                continue
            return self.state
        self.state = None
        return None

    def open(self, shards: int, hash_name: str, now_ms: int) -> CatalogState:
        """Load the cluster record, creating version 1 for a new cluster. A store that holds
        a cluster with another shard count or hash is refused."""
        state = self.load()
        if state is None:
            try:
                slots = SlotMap.initial(shards).to_record()
                return self._commit(CatalogState(0, shards, hash_name, now_ms, slots=slots))
            except Unavailable:
                state = self.load()
                if state is None:
                    raise
        if state.shards != shards and state.hash == hash_name and state.slot_map.version > 0:
            log.info(
                "the cluster was resharded to %d shards (the deployment says %d): it has %d",
                state.shards, shards, state.shards,
            )  # fmt: skip
            return state
        if state.shards != shards or state.hash != hash_name:
            raise InvalidArgument(
                f"the store holds a cluster of {state.shards} shards (hash {state.hash}); "
                f"cannot deploy {shards} shards (hash {hash_name}) over it"
            )
        return state

    # -- lookups ----------------------------------------------------------------------------

    def _current(self) -> CatalogState:
        if self.state is None:
            raise InvalidArgument("the cluster catalog is not open")
        return self.state

    def databases(self) -> list[str]:
        return sorted(self._current().databases)

    def tables(self, db: str) -> list[str]:
        entry = self._current().databases.get(db)
        if entry is None:
            raise NotFound(f"database {db!r} does not exist", database=db)
        return sorted(entry["tables"])

    def table(self, db: str, table: str) -> TableDef:
        """The live table's definition (timestamps are not meaningful cluster-wide: 0)."""
        entry = self._current().databases.get(db)
        if entry is None:
            raise NotFound(f"database {db!r} does not exist", database=db)
        t = entry["tables"].get(table)
        if t is None:
            raise NotFound(f"table {db}.{table} does not exist", database=db, table=table)
        return TableDef(
            db, table, tuple((c, ty) for c, ty in t["columns"]), tuple(t["primary_key"]), 0
        )

    # -- DDL --------------------------------------------------------------------------------

    def check(self, op: str, args: list) -> None:
        """Raise what the engine would for this DDL against the live catalog."""
        dbs = self._current().databases
        if op == "create_database":
            if args[0] in dbs:
                raise AlreadyExists(f"database {args[0]!r} already exists", database=args[0])
        elif op == "drop_database":
            if args[0] not in dbs:
                raise NotFound(f"database {args[0]!r} does not exist", database=args[0])
        elif op == "create_table":
            db, table = args[0], args[1]
            if db not in dbs:
                raise NotFound(f"database {db!r} does not exist", database=db)
            if table in dbs[db]["tables"]:
                raise AlreadyExists(f"table {db}.{table} already exists", database=db, table=table)
        elif op == "drop_table":
            self.table(args[0], args[1])
        else:
            raise InvalidArgument(f"unknown DDL op {op!r}")

    def begin(self, op: str, args: list) -> dict[str, Any]:
        """Commit the intent to apply a DDL; returns it."""
        cur = self._current()
        if cur.pending is not None:
            raise InvalidArgument("a DDL is pending; finish it first")
        self.check(op, args)
        nxt = copy.deepcopy(cur)
        nxt.ddl_seq += 1
        nxt.pending = {"op": op, "args": list(args), "seq": nxt.ddl_seq}
        self._commit(nxt)
        return nxt.pending

    def finish(self) -> CatalogState:
        """Apply the pending DDL to the catalog and clear it (one commit)."""
        cur = self._current()
        if cur.pending is None:
            return cur
        nxt = copy.deepcopy(cur)
        op, args, seq = nxt.pending["op"], nxt.pending["args"], nxt.pending["seq"]
        dbs = nxt.databases
        if op == "create_database":
            dbs[args[0]] = {"tables": {}}
        elif op == "drop_database":
            dbs.pop(args[0], None)
        elif op == "create_table":
            db, table, columns, pk = args
            dbs[db]["tables"][table] = {
                "columns": [list(c) for c in columns],
                "primary_key": list(pk),
                "ddl_seq": seq,
            }
        elif op == "drop_table":
            dbs.get(args[0], {"tables": {}})["tables"].pop(args[1], None)
        nxt.pending = None
        return self._commit(nxt)

    # -- slot moves (coordinator.actor.moves) -------------------------------------------------

    def next_move_id(self) -> int:
        """The id the next move takes: above every id given out and the map's version (a
        move undone keeps its id: a late call of it is refused by the shards)."""
        cur = self._current()
        return max(cur.last_move, cur.slot_map.version) + 1

    def begin_move(self, move: dict[str, Any]) -> CatalogState:
        """Commit the intent of a step of slot moves (none may be in progress); its ids are
        taken."""
        cur = self._current()
        if cur.move is not None:
            raise InvalidArgument("a slot move is in progress; settle it first")
        nxt = copy.deepcopy(cur)
        nxt.move = dict(move)
        nxt.last_move = max(cur.last_move, move["id"])
        return self._commit(nxt)

    def commit_move(self, slots: SlotMap) -> CatalogState:
        """The commit point of the move in progress: the slot map it makes."""
        cur = self._current()
        assert cur.move is not None and slots.version == cur.move["id"]
        nxt = copy.deepcopy(cur)
        nxt.slots = slots.to_record()
        return self._commit(nxt)

    def set_shards(self, shards: int) -> CatalogState:
        """Record a new shard count (a reshard: grown before slots move to the new shards,
        shrunk after every slot left the shards beyond it)."""
        cur = self._current()
        nxt = copy.deepcopy(cur)
        nxt.shards = shards
        nxt.slots = cur.slot_map.with_shards(shards).to_record()
        return self._commit(nxt)

    def end_move(self) -> CatalogState:
        """Clear the move in progress (settled on its shards)."""
        cur = self._current()
        if cur.move is None:
            return cur
        nxt = copy.deepcopy(cur)
        nxt.move = None
        return self._commit(nxt)

    def _commit(self, nxt: CatalogState) -> CatalogState:
        nxt.version = self._next_version
        data = codec.encode(codec.KIND_CLUSTER, nxt.to_body(), nxt.format_version)
        key = catalog_key(nxt.version)
        try:
            self._store.put_if_absent(key, data)
        except ObjectExists:
            try:
                landed = self._store.get(key) == data
            except ObjectNotFound:
                landed = False
            if not landed:
                self.load()
                raise Unavailable(
                    f"the cluster record changed under this coordinator (version {key}); retry",
                    outcome_unknown=False,
                ) from None
        self.state = nxt
        self._next_version = nxt.version + 1
        self._check()
        return nxt

    def _check(self) -> None:
        """Invariants: every table's database exists; primary keys name columns."""
        st = self._current()
        assert st.shards >= 1
        for db, entry in st.databases.items():
            for name, t in entry["tables"].items():
                cols = [c for c, _ in t["columns"]]
                assert all(c in cols for c in t["primary_key"]), f"{db}.{name}: bad pk"
        if st.pending is not None:
            assert st.pending["op"] in DDL_OPS and st.pending["seq"] == st.ddl_seq
