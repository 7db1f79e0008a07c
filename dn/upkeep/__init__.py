"""Upkeep of one shard: everything that turns memory into objects and keeps objects few.

- :mod:`dn.upkeep.scheduler`: the engine's upkeep part: freezes, buffer checkpoints,
  checkpoints, the background round (``maintain``), retention;
- :mod:`dn.upkeep.compaction`: merging consecutive range objects, and the policy that picks
  them;
- :mod:`dn.upkeep.gc`: deleting objects no manifest version references any more.
"""
