"""The coordinator actor: the cluster catalog and the shard map, one per deployment.

- :mod:`coordinator.actor.service`: :class:`CoordinatorService`, the actor's body (a plain
  class, usable in-process): DDL applied to every shard, the cluster record, status;
- :mod:`coordinator.actor.cluster_catalog`: the cluster record in the object store
  (``90/cluster/...``), versioned with conditional puts;
- :mod:`coordinator.actor.handle`: the Ray side: starting and stopping a deployment's actors,
  and :class:`CoordinatorHandle`, the client's calls to the actor.
"""
