"""The write path of one shard: what a write goes through until it is durable and in memory.

- :mod:`dn.write.path`: validate, stamp, log, apply (the engine's write part), and replay;
- :mod:`dn.write.commit`: group commit (one leader logs the commands of many writers);
- :mod:`dn.write.log`: the log (WAL): one object per group commit, recovery, fencing,
  finalize;
- :mod:`dn.write.buffer`: the mutable buffer and the frozen buffers of the checkpoint queue;
- :mod:`dn.write.aio`: ``write_async``, coroutines' writes handed to group commit in rounds.
"""
