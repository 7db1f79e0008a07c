"""The product surface: the ``dn`` command, deployments, the demo and the status view.

- :mod:`coordinator.cli.main`: the ``dn`` command (``up``, ``down``, ``status``, ``scan``,
  ``changes``, ``demo``);
- :mod:`coordinator.cli.deployment`: ``deploy``, ``connect``, ``shutdown`` (re-exported by
  ``coordinator``);
- :mod:`coordinator.cli.ray_node`: the Ray node this project starts or joins;
- :mod:`coordinator.cli.demo`: ``dn demo``, the main job on the embedded defaults;
- :mod:`coordinator.cli.statusview`: every shard at a glance, as text.

Importing this package does not import Ray: the command sets Ray's environment first.
"""
