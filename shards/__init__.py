"""The Ray shell around one DN shard.

- :mod:`shards.shard`: :class:`ShardService`, the body of a shard actor (engine, causality
  token, commit wait, routing check); a plain class, usable in-process.
- :mod:`shards.loop`: the maintenance loop that drives freezes, buffer checkpoints and
  checkpoints.
- :mod:`shards.group`: the only Ray-facing module here: actor creation, calls, retries, and
  Ray errors mapped to :mod:`dn.errors`.

Dependency direction: coordinator -> shards -> dn.
"""
