"""The one error tree of the DN engine.

Every error the engine raises on purpose is a :class:`DNError`. There are few kinds, and each
tells the caller what to do next:

==================  =========================================================  ==========
kind                meaning                                                    retry?
==================  =========================================================  ==========
InvalidArgument     the request is malformed; nothing was written              no
FutureSnapshot      (an InvalidArgument) a snapshot too far past the wall      no
                    clock (``snapshot_future_s``); nothing was promised
NotFound            a database, table, key or object does not exist            no
AlreadyExists       the thing to create exists already                         no
Unavailable         a transient failure (store, backpressure, restart)         yes
StaleTable          a write was made for a table since dropped and created     after a
                    again; nothing was written                                 refresh
Moved               keys of a write (or a read's slots) belong to another      after a
                    shard now, or are moving; nothing was written              refresh
Corruption          stored bytes fail their checksum or format check           no
Fenced              a newer incarnation of this shard owns it; stop using it   no
Closed              the engine was closed                                      no
Internal            a bug: an invariant did not hold                           no
==================  =========================================================  ==========

``StaleTable`` is not retryable as it stands: the same write would be refused again. It asks
the caller to read the table's definition again, re-validate the batch against it and send it
again. The cluster's client does this itself for its writes.

``Unavailable.outcome_unknown`` is True when the operation may or may not have taken effect
(for example, a log write whose response was lost): retrying a write is then safe only if the
write is idempotent (upserts are).

Errors pickle (they cross Ray process boundaries), so every subclass keeps its constructor
arguments in ``args`` and ``__reduce__`` rebuilds it.

Store-level conditions that callers handle themselves (an object that already exists on a
conditional put, an object that is missing) are :class:`ObjectExists` and :class:`ObjectNotFound`.
"""

from __future__ import annotations


class DNError(Exception):
    """Root of every error the engine raises on purpose."""

    retryable: bool = False
    code: str = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self):  # keeps the class and the details across pickling
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[DNError], message: str, details: dict) -> DNError:
    return cls(message, **details)


class InvalidArgument(DNError):
    """The request is malformed (bad name, type, size or timestamp). Nothing was written."""

    code = "invalid_argument"


class FutureSnapshot(InvalidArgument):
    """A snapshot lies further past the shard's wall clock than ``snapshot_future_s`` allows
    (decision 0013). Nothing was promised: no floor was raised. ``details``: ``snapshot``,
    ``limit`` (the newest snapshot the shard serves now) and ``bound_s`` (the setting). The
    limit moves with the wall clock, so the same snapshot may be served later."""

    code = "future_snapshot"


class NotFound(DNError):
    """A database, table or object does not exist (at the timestamp asked for)."""

    code = "not_found"


class AlreadyExists(DNError):
    """The database or table to create already exists."""

    code = "already_exists"


class Unavailable(DNError):
    """A transient failure; the same call may succeed later.

    ``outcome_unknown`` says whether the failed operation may nevertheless have taken effect.
    """

    code = "unavailable"
    retryable = True

    @property
    def outcome_unknown(self) -> bool:
        return bool(self.details.get("outcome_unknown", False))


class StaleTable(DNError):
    """A write was prepared for a table that is no longer the live one of its name (it was
    dropped and created again, perhaps with other columns or another primary key). Nothing
    was written. Refresh the table's definition, validate the batch again, and retry."""

    code = "stale_table"


class Moved(DNError):
    """Some of the request's slots are not this shard's to serve: a write touched keys of
    slots this shard gave away (or is giving away, or is taking over and may not write yet),
    or a read came with a slot map older than a move this shard took part in. Nothing was
    written. ``details``: ``shard``, ``slots`` (some of them), ``map_version`` (the move's; a
    read), ``taking`` (a write: the id of the move these slots wait on this shard to settle,
    or None).
    Refresh the slot map (the cluster's client does this itself), split again, and retry;
    while a move is in progress the retry waits for it to end."""

    code = "moved"
    retryable = True


class Conflict(DNError):
    """A transaction (or atomic batch) could not commit: a key it writes was committed by
    another after its snapshot, is held by another transaction still deciding, or a reader
    gave up waiting for it and rolled it back. Nothing of it was applied; run it again (from
    a new snapshot)."""

    code = "conflict"
    retryable = True


class TimestampPassed(DNError):
    """A shard has already issued or promised the commit timestamp a transaction asked to
    prepare at (``details["clock"]`` is that shard's clock). Nothing was written; the
    transaction picks a later timestamp and prepares again (clients do this themselves)."""

    code = "timestamp_passed"
    retryable = True


class Corruption(DNError):
    """Stored bytes failed a checksum, length or format check. ``key`` names the object."""

    code = "corruption"

    @property
    def key(self) -> str | None:
        return self.details.get("key")  # type: ignore[return-value]

    @property
    def truncated(self) -> bool:
        """True when the object is shorter than its header says: a torn write."""
        return bool(self.details.get("truncated", False))


class Fenced(DNError):
    """A newer incarnation of this shard has taken over; this instance can no longer commit."""

    code = "fenced"


class Closed(DNError):
    """The engine (or client) was closed."""

    code = "closed"


class Internal(DNError):
    """An invariant did not hold: a bug in the engine."""

    code = "internal"


class ObjectNotFound(NotFound):
    """An object-store key does not exist."""

    code = "object_not_found"


class ObjectExists(DNError):
    """A conditional put (create only if absent) found the key already present."""

    code = "object_exists"


__all__ = [
    "AlreadyExists",
    "Closed",
    "Conflict",
    "Corruption",
    "DNError",
    "Fenced",
    "FutureSnapshot",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ObjectExists",
    "ObjectNotFound",
    "StaleTable",
    "TimestampPassed",
    "Unavailable",
]
