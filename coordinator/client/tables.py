"""What a client knows of the tables it writes: each table as every shard has it, cached.

A write part must carry the id of the table it was made for *on the shard it goes to*: a table's
id is its creation timestamp on each shard, so the ids differ between shards, and the cluster
catalog's definition (what the coordinator serves) has none. :class:`TableCache` therefore asks
the coordinator for the definition and every shard for its own version of it
(``ShardService.live_table``), and keeps them together as a :class:`RoutedTable` once they agree
on the columns and the primary key. They disagree only while a DDL is reaching the shards; the
lookup is then tried again, with backoff, for ``retry_s``. So a client's first write to a table
(or first writer of it) needs every shard to answer; a shard that is restarting is waited for,
as any shard call is, for ``retry_s``.

A cached entry goes stale when the table is dropped and created again; the shards then refuse
the parts made from it (:class:`dn.errors.StaleTable`) and the client looks the table up again
(``refresh=True``). DDL made through the client clears the cache.

Not done here: validation and routing (:mod:`coordinator.client.routing`), sending
(:mod:`coordinator.client.writes`). Any thread: a lookup that two threads make at once is made
twice, and either answer is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from coordinator.client.slots import SlotMap
from dn.backoff import Backoff
from dn.errors import Unavailable
from dn.schema import TableDef, check_name
from dn.write.part import WritePart

if TYPE_CHECKING:
    from coordinator.client.fanout import ShardCalls
    from coordinator.client.routing import ShardPart


@dataclass(frozen=True, slots=True)
class RoutedTable:
    """A table as a client writes it: ``table``, its definition (columns and primary key;
    its id means nothing cluster-wide), ``shard_tables``, shard ``i``'s own definition of
    it (the same columns and key, and that shard's table id), and ``route``, how its keys
    find their shards (the cluster's slot map, :mod:`coordinator.client.slots`)."""

    table: TableDef
    shard_tables: tuple[TableDef, ...]
    route: SlotMap

    def part(
        self, shard: int, share: ShardPart, after: int, token: bytes | None = None
    ) -> WritePart:
        """The write part of a batch's share for ``shard``, packed, committed after
        ``after``, carrying the idempotency ``token`` (a new one per part)."""
        return WritePart.from_columns(
            self.shard_tables[shard], share.cols, share.deletes, after, token=token
        )


class TableCache:
    """The :class:`RoutedTable` of each table a client used, fetched on first use."""

    def __init__(
        self,
        coordinator: Any,
        shards: ShardCalls,
        retry_s: float,
        backoff: Backoff,
        route: SlotMap | None = None,
    ) -> None:
        self._coord = coordinator
        self._shards = shards
        self.route = route if route is not None else SlotMap.initial(len(shards))
        self._retry_s = retry_s
        self._backoff = backoff
        self._tables: dict[tuple[str, str], RoutedTable] = {}

    def get(self, db: str, table: str, refresh: bool = False) -> RoutedTable:
        """The table ``db.table`` (from the cache unless ``refresh``). NotFound when it does
        not exist; Unavailable when the shards still disagree about it after ``retry_s``."""
        check_name("database", db)  # a typed error for a name that is not even a str
        check_name("table", table)
        key = (db, table)
        hit = None if refresh else self._tables.get(key)
        if hit is not None:
            return hit
        retries = self._backoff.within(self._retry_s)
        while True:
            # the table as every shard of this map has it: a refresh in another thread may
            # change the map (and the shard count) meanwhile; this entry keeps the one it used
            route = self.route
            n = route.shards
            t = TableDef.from_wire(self._coord.call("table", db, table, retry_s=self._retry_s))
            answers = self._shards.call_each(
                {i: ("live_table", (db, table)) for i in range(n)}, self._retry_s
            )
            for i in sorted(answers):
                if isinstance(answers[i], BaseException):
                    raise answers[i]
            mine = tuple(TableDef.from_wire(answers[i]) for i in range(n))
            if all(m.columns == t.columns and m.primary_key == t.primary_key for m in mine):
                routed = RoutedTable(t, mine, route)
                if route is self.route:  # else a newer map came meanwhile: not cached
                    self._tables[key] = routed
                return routed
            if not retries.wait():
                raise Unavailable(
                    f"table {db}.{table} is being redefined on the shards; retry",
                    database=db,
                    table=table,
                )

    def refresh_route(self) -> SlotMap:
        """Fetch the slot map again (slots moved); every cached table routes by the new one."""
        rec = self._coord.call("slot_map", retry_s=self._retry_s)
        route = SlotMap.from_record(rec, rec.get("shards", len(self._shards)))
        if route.version < self.route.version:
            return self.route
        if route.shards != self.route.shards:  # resharded: call as many shards as there are
            resize = getattr(self._shards, "resize", None)
            if resize is not None:
                resize(route.shards)
            self._tables.clear()  # each table as every shard has it: looked up again
        self.route = route
        self._tables = {
            k: replace(t, route=route)
            for k, t in self._tables.items()
            if len(t.shard_tables) == route.shards  # (one a lookup meanwhile made by another)
        }
        return self.route

    def forget(self, db: str, table: str) -> None:
        self._tables.pop((db, table), None)

    def clear(self) -> None:
        self._tables.clear()
