"""The read path of one shard: plans, read views, and turning them into rows and changes.

- :mod:`dn.read.snapshots`: the engine's read part: snapshots, floors, plans, read views;
- :mod:`dn.read.plan`: seed 001's snapshot-read and range-read plans;
- :mod:`dn.read.view`: :class:`ReadView`, what a shard hands a reader, and its
  materialization, shared by the engine, the cluster client and its read tasks;
- :mod:`dn.read.reader` and the modules beside it: fetching objects through a cache, runs of
  versions, choosing the visible ones, ordering a change feed, making row dicts;
- :mod:`dn.read.stream` and :mod:`dn.read.merge`: scans streamed window by window in bounded
  memory, and shards' sorted rows merged by key.
"""
