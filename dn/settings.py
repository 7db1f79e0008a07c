"""Settings: the tunables of one shard engine, as one typed, documented, frozen object.

Settings are plain values (numbers, strings); components (store, clock) are passed separately to
:meth:`dn.Engine.open`. ``Settings.from_dict`` builds one from the ``metadata.dn`` section of
``cluster.yaml`` (unknown keys are an error, so a typo never silently falls back to a default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dn.errors import InvalidArgument

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """Tunables of one shard. Every field has a default; see each comment."""

    #: Freeze the mutable buffer once it holds this many bytes of encoded commands.
    freeze_bytes: int = 64 * MiB
    #: Freeze the mutable buffer once its oldest command is this old (seconds); None: never.
    freeze_interval_s: float | None = 60.0
    #: Write a checkpoint once this many commits happened since the last one (seed 003).
    checkpoint_delta: int = 10_000
    #: Write a checkpoint at least this often when anything changed (seconds); None: never.
    checkpoint_interval_s: float | None = 300.0
    #: Largest string or bytes value accepted in a row, in bytes.
    max_value_bytes: int = 4 * MiB
    #: Largest write batch accepted, in rows (upserts plus deletes).
    max_batch_rows: int = 1_000_000
    #: Largest write batch accepted, in encoded bytes.
    max_batch_bytes: int = 256 * MiB
    #: Where the log lives: None means the shard's object store (the default, so a shard can
    #: restart on any node); a path or URL puts it elsewhere, e.g. a local disk.
    log_url: str | None = None
    #: Most bytes of commands gathered into one group-commit log write.
    group_commit_max_bytes: int = 16 * MiB
    #: Writers are slowed (they run buffer checkpoints themselves) once frozen buffers awaiting
    #: their buffer checkpoint hold this many bytes...
    queue_slow_bytes: int = 256 * MiB
    #: ...and refused with a retryable error once they hold this many.
    queue_stop_bytes: int = 1024 * MiB
    #: Bytes of decoded immutable objects the reader keeps cached.
    cache_bytes: int = 256 * MiB
    #: Attempts for a transient object-store failure before giving up (with backoff and jitter).
    store_retry_attempts: int = 8
    #: First retry delay in seconds; doubles each attempt up to ``store_retry_max_delay_s``.
    store_retry_base_delay_s: float = 0.02
    #: Longest delay between two retries, in seconds.
    store_retry_max_delay_s: float = 2.0
    #: Truncated log objects are deleted this long after a range object made them redundant
    #: (seconds), so a stale incarnation paused for less than this cannot write into the hole.
    log_delete_grace_s: float = 300.0
    #: How far past the shard's clock a snapshot timestamp may lie (seconds).
    snapshot_future_s: float = 60.0
    #: Snapshot and range reads are served for timestamps at most this old (seconds); older
    #: versions are dropped by compaction. None keeps every version forever.
    retention_s: float | None = 86_400.0
    #: Merge range objects in the background (see dn/compaction.py for the policy).
    compaction: bool = True
    #: Objects merged at once (K); the policy keeps at most (K-1) objects per size level.
    compaction_fanout: int = 4
    #: The size of a typical freshly flushed range object: the first size level.
    compaction_base_bytes: int = 4 * MiB
    #: Range objects at least this large are not merged again.
    compaction_max_bytes: int = 1024 * MiB
    #: Unreferenced objects are deleted after being seen unreferenced this long (seconds);
    #: longer than the longest read's object fetch, and than any pause a stale incarnation
    #: could wake from.
    gc_grace_s: float = 600.0
    #: Run freezes, buffer checkpoints and checkpoints on a thread inside the engine. The Ray
    #: shard actor turns this off and drives :meth:`dn.Engine.maintain` from its own loop.
    background: bool = True
    #: How often the background thread looks for work, in seconds.
    background_interval_s: float = 0.05

    def __post_init__(self) -> None:
        positive = (
            "freeze_bytes",
            "checkpoint_delta",
            "max_value_bytes",
            "max_batch_rows",
            "max_batch_bytes",
            "group_commit_max_bytes",
            "queue_slow_bytes",
            "queue_stop_bytes",
            "cache_bytes",
            "store_retry_attempts",
            "compaction_base_bytes",
            "compaction_max_bytes",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgument(f"setting {name} must be a positive integer, got {value!r}")
        if not isinstance(self.compaction_fanout, int) or self.compaction_fanout < 2:
            raise InvalidArgument("setting compaction_fanout must be an integer >= 2")
        for name in ("log_delete_grace_s", "snapshot_future_s", "background_interval_s",
                     "gc_grace_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:  # NaN fails too
                raise InvalidArgument(f"setting {name} must be a number >= 0")
        for name in ("freeze_interval_s", "checkpoint_interval_s", "retention_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or not value > 0):
                raise InvalidArgument(f"setting {name} must be a positive number or None")
        if self.queue_stop_bytes < self.queue_slow_bytes:
            raise InvalidArgument("setting queue_stop_bytes must be >= queue_slow_bytes")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Settings:
        """Settings from a mapping; unknown keys raise :class:`InvalidArgument`."""
        if values is not None and not isinstance(values, Mapping):
            raise InvalidArgument(f"engine settings must be a mapping, got {type(values).__name__}")
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgument(f"unknown engine settings: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
