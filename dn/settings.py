"""Settings: the tunables of DN, as typed, documented, frozen objects.

- :class:`Settings`: one shard engine (``metadata.dn.engine`` in ``cluster.yaml``);
- :class:`ShellSettings`: the shells around the engines on a cluster: the client library
  (calls, retries, the buffered writer, reads) and the shard actors (``metadata.dn.shell``).
  It lives here, beside the engine's, so that both ``shards`` and ``coordinator`` can import
  it (dependencies run coordinator -> shards -> dn); the engine itself never reads it.

Settings are plain values (numbers, strings); components (store, clock) are passed separately to
:meth:`dn.Engine.open`. ``from_dict`` builds one from its section of ``cluster.yaml`` (unknown
keys are an error, so a typo never silently falls back to a default). Facts of the platform are
not settings: the largest chunk of a write part (Ray's inline argument limit) is
:data:`dn.write.part.MAX_CHUNK_BYTES`.

Pure values; any caller, any thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dn.backoff import Backoff
from dn.errors import InvalidArgument

KiB = 1024
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
    #: Most rows one shard takes into an atomic dataset write (its staged parts, one intent
    #: held in memory until decided: ``DNDatasink(atomic=True)``).
    max_staged_rows: int = 10_000_000
    #: Largest write batch accepted, in encoded bytes.
    max_batch_bytes: int = 256 * MiB
    #: Where the log lives: None means the shard's object store (the default, so a shard can
    #: restart on any node); a path or URL puts it elsewhere, e.g. a local disk.
    log_url: str | None = None
    #: Most bytes of commands gathered into one group-commit log write.
    group_commit_max_bytes: int = 16 * MiB
    #: Writers are slowed (they freeze and run buffer checkpoints themselves) once the shard's
    #: buffers — the mutable one and the frozen ones awaiting their buffer checkpoint — hold
    #: this many bytes of estimated memory: the heap their decoded rows take (a list slot and
    #: an object header per value, 1 to 10 times the encoded bytes; ``status()`` shows both as
    #: ``buffer_memory_bytes`` and the buffers' ``bytes``), not their encoded size...
    queue_slow_bytes: int = 256 * MiB
    #: ...and refused with a retryable error (Unavailable) once they hold this many. A shard's
    #: resident set then stays under this bound plus an overhead: the idle process, one buffer
    #: checkpoint being built (about 1.5 times the estimate of the buffer it writes out), per
    #: writer thread its batch in flight and its allocator's slack (a few MiB), and the
    #: allocator's fragmentation (up to a fifth of the bound); see dn/write/backpressure.py
    #: and tests/trials/memory.py.
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
    #: How far past the shard's wall clock a snapshot timestamp may lie (seconds); a snapshot
    #: beyond it is refused with :class:`dn.errors.FutureSnapshot`. It also bounds how far
    #: floors push the shard's clock ahead of wall time (decision 0013).
    snapshot_future_s: float = 60.0
    #: How far past the wall clock one extension of the shard's durable timestamp ceiling
    #: reaches (seconds). A shard in use commits one manifest version per half of this to keep
    #: its ceiling ahead; after a restart its clock may start up to this far ahead of the wall
    #: clock (decision 0013).
    timestamp_lease_s: float = 2.0
    #: Snapshot and range reads are served for timestamps at most this old (seconds); older
    #: versions are dropped by compaction. None keeps every version forever.
    retention_s: float | None = 86_400.0
    #: How long a shard remembers a write part's idempotency token after its commit (seconds;
    #: decision 0014). A part is taken only if its token was minted at most half of this ago
    #: (a resend later than that is refused, never applied twice), so it must exceed twice a
    #: client's longest retry (``retry_s`` plus ``call_timeout_s``). Checkpoints carry the
    #: tokens inside it: 40 bytes per part committed in this span.
    token_window_s: float = 600.0
    #: How long a read (or a buffer checkpoint) waits for an undecided transaction's intent
    #: at or below its snapshot before it decides the intent itself: committed if the
    #: transaction's decision says so, else aborted (seconds; decision 0015). A client's
    #: transaction needs less than this between its prepares and its decision.
    txn_wait_s: float = 2.0
    #: Merge range objects in the background (see dn/upkeep/compaction.py for the policy).
    compaction: bool = True
    #: Objects merged at once (K); the policy keeps at most (K-1) objects per size level.
    compaction_fanout: int = 4
    #: The size of a typical freshly flushed range object: the first size level.
    compaction_base_bytes: int = 4 * MiB
    #: Range objects at least this large are not merged again.
    compaction_max_bytes: int = 1024 * MiB
    #: Settle a slot move's rows into the shard's own objects once the move has been done
    #: this long (seconds; dn/upkeep/absorb.py): the new owner copies the rows it reads by
    #: reference, the old owner drops the rows it gave away. 0: at once; None: never.
    absorb_after_s: float | None = 30.0
    #: How often garbage collection reads the other shards' manifests to learn which of its
    #: objects their slot moves still reference (seconds; only a shard that gave slots away).
    gc_references_s: float = 60.0
    #: Unreferenced objects are deleted after being seen unreferenced this long (seconds);
    #: longer than the longest read's object fetch, and than any pause a stale incarnation
    #: could wake from.
    gc_grace_s: float = 600.0
    #: Arrow copies of the rows in memory that reads keep, in bytes (0: none): the first Arrow
    #: read (``scan_arrow``, Ray Data's ``read_dn``, the Arrow change feed) that reaches a row
    #: in memory converts it (about 0.2 us a row) and keeps it for the reads after it
    #: (:mod:`dn.write.arrowmirror`). A cache beside the buffers' memory, not counted in it
    #: (backpressure bounds the rows, not their copy); past this bound reads keep nothing.
    arrow_mirror_bytes: int = 128 * MiB
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
            "max_staged_rows",
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
        if not isinstance(self.arrow_mirror_bytes, int) or self.arrow_mirror_bytes < 0:
            raise InvalidArgument("setting arrow_mirror_bytes must be an integer >= 0")
        if not isinstance(self.compaction_fanout, int) or self.compaction_fanout < 2:
            raise InvalidArgument("setting compaction_fanout must be an integer >= 2")
        for name in (
            "log_delete_grace_s",
            "snapshot_future_s",
            "background_interval_s",
            "gc_grace_s",
            "gc_references_s",
            "txn_wait_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:  # NaN fails too
                raise InvalidArgument(f"setting {name} must be a number >= 0")
        if not isinstance(self.timestamp_lease_s, int | float) or not self.timestamp_lease_s > 0:
            raise InvalidArgument("setting timestamp_lease_s must be a positive number")
        if not isinstance(self.token_window_s, int | float) or not self.token_window_s >= 1:
            raise InvalidArgument("setting token_window_s must be a number of seconds >= 1")
        if self.absorb_after_s is not None and (
            not isinstance(self.absorb_after_s, int | float) or not self.absorb_after_s >= 0
        ):
            raise InvalidArgument("setting absorb_after_s must be a number >= 0 or None")
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
    def from_dict(cls, values: Mapping[str, Any] | None) -> Settings:
        """Settings from a mapping; unknown keys raise :class:`InvalidArgument`."""
        return cls(**_known(cls, values, "engine"))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class ShellSettings:
    """Tunables of the cluster's client library and shard actors. Every field has a default
    (the values the benchmarks were measured with); see each comment."""

    #: How long a client keeps retrying a call whose shard or coordinator is unavailable
    #: (restarting, or refusing writes because it is behind) before raising Unavailable (s).
    retry_s: float = 60.0
    #: How long one call to an actor may take before it counts as unavailable (seconds).
    call_timeout_s: float = 120.0
    #: Backoff between retries of an unavailable call: the first delay (seconds), doubled at
    #: each retry...
    retry_base_delay_s: float = 0.05
    #: ...up to this (seconds). Each sleep is drawn from [delay, 2 * delay] (:meth:`backoff`).
    retry_max_delay_s: float = 1.0
    #: Bytes of decoded immutable objects each client process caches for reads.
    client_cache_bytes: int = 256 * MiB
    #: A buffered writer sends a shard's buffer as one part once it holds this many bytes
    #: (256 KiB: three inline chunks, about 2,400 rows of 100 bytes)...
    writer_part_bytes: int = 256 * KiB
    #: ...or once its oldest row has waited this long (seconds).
    writer_linger_s: float = 0.1
    #: A writer's ``write`` waits while a shard's buffer holds this many parts' worth of bytes
    #: and a part is in flight to that shard (its ``max_buffer_bytes`` by default).
    writer_buffer_parts: int = 4
    #: A scan is read by Ray tasks, one per shard, when the cluster has several nodes and the
    #: shards' plans name this many objects in all...
    large_read_objects: int = 8
    #: ...or their in-memory tails hold this many rows.
    large_read_tail_rows: int = 200_000
    #: Rows per page a read task streams back to the client.
    read_page_rows: int = 5_000
    #: A shard skips its commit wait when the wait would be longer than this plus the clock
    #: skew (seconds): the clock was pushed far ahead by a future snapshot, and the causality
    #: token alone orders writes then.
    commit_wait_max_s: float = 0.25

    def __post_init__(self) -> None:
        for name in (
            "client_cache_bytes",
            "writer_part_bytes",
            "writer_buffer_parts",
            "large_read_objects",
            "large_read_tail_rows",
            "read_page_rows",
        ):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise InvalidArgument(f"setting {name} must be a positive integer, got {value!r}")
        for name in (
            "retry_s",
            "call_timeout_s",
            "retry_base_delay_s",
            "retry_max_delay_s",
            "writer_linger_s",
            "commit_wait_max_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise InvalidArgument(f"setting {name} must be a number >= 0, got {value!r}")
        if self.writer_linger_s > 60:
            raise InvalidArgument("setting writer_linger_s must be at most 60 seconds")

    def backoff(self, **inject: Any) -> Backoff:
        """The backoff of every retry loop of the shells (shard and coordinator calls, a
        writer's parts): before retry ``n`` a sleep drawn from ``[d, 2d]``, ``d =
        min(retry_max_delay_s, retry_base_delay_s * 2 ** (n - 1))``. ``inject``: ``sleep``,
        ``rng``, ``clock`` (tests)."""
        return Backoff(self.retry_base_delay_s, self.retry_max_delay_s, 1.0, 2.0, **inject)

    def replace(self, **changes: Any) -> ShellSettings:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ShellSettings:
        """Settings from a mapping; unknown keys raise :class:`InvalidArgument`."""
        return cls(**_known(cls, values, "shell"))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _known(cls: type, values: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``values`` as a dict, refused when it is not a mapping or names an unknown field."""
    if values is not None and not isinstance(values, Mapping):
        raise InvalidArgument(f"{what} settings must be a mapping, got {type(values).__name__}")
    out = dict(values or {})
    unknown = sorted(set(out) - {f.name for f in fields(cls)})
    if unknown:
        raise InvalidArgument(f"unknown {what} settings: {', '.join(unknown)}")
    return out
