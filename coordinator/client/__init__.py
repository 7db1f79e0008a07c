"""The client library: what runs in users' drivers, Ray tasks and actors.

- :mod:`coordinator.client.client`: :class:`Client` — DDL through the coordinator, writes
  straight to the shards, snapshot reads and change feeds across shards;
- :mod:`coordinator.client.writes`: one durable write across shards (``client.write``), the
  client's causality token and limits;
- :mod:`coordinator.client.writer`: the buffered writer for bulk ingest (``client.writer``),
  with its per-shard buffers in :mod:`coordinator.client.buffers`;
- :mod:`coordinator.client.tables`: the client's cache of table definitions and each shard's
  table id;
- :mod:`coordinator.client.routing`: the stable hash of primary keys and the split of a batch
  into per-shard parts;
- :mod:`coordinator.client.fanout`: cross-shard reads: snapshot choice, per-shard read views,
  merging shards;
- :mod:`coordinator.client.tasks`: the Ray tasks the client runs (large reads, demo writers).

The coordinator actor is not on the write or read path: the client reaches the shards itself
with a cached shard map.
"""
