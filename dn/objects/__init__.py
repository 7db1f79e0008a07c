"""The stored objects of one shard, and the framing every object shares.

- :mod:`dn.objects.codec`: framing (magic, kind, version, checksums), msgpack, object keys;
- :mod:`dn.objects.rangeobj`: range objects ``20/<shard>/<from>_<to>`` (a buffer checkpoint);
- :mod:`dn.objects.checkpoint`: checkpoints ``10/<shard>/<ts>`` (catalog and live objects);
- :mod:`dn.objects.manifest`: manifest versions ``00/<shard>/<version>``: epoch, checkpoint
  and range lists, the log's low-water mark; the commit point and the fence.

Every grammar is in its module's docstring and in ``docs/formats.md``; golden bytes pin each
in ``tests/golden/``.
"""
