"""Timestamps for people: a snapshot or the start of a change feed given as a time.

Wherever a snapshot or ``from_ts`` is taken (the engine, the cluster client, the ``dn``
command), it may be an int64 timestamp (``physical_ms << 16 | logical``, :mod:`dn.clock`), an
aware :class:`datetime.datetime`, or an ISO-8601 string with a UTC offset (``Z`` or
``+hh:mm``). A time names the millisecond it falls in:

- as a **snapshot** it is the *last* timestamp of that millisecond, so the state at time T
  holds every commit made at or before T (to the millisecond);
- as the **start of a change feed** it is the *first* one, so the feed from T holds every
  commit made at or after T.

A time without a UTC offset is refused (a naive time means a different instant on every
machine). :func:`time_of` goes the other way, for display.

Pure functions; any thread.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dn.clock import LOGICAL_BITS
from dn.errors import InvalidArgument

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def to_timestamp(value: Any, what: str = "snapshot", *, first: bool = False) -> Any:
    """``value`` as an int64 timestamp if it is a time (see the module docstring): the last
    timestamp of its millisecond, or the first with ``first=True``. An int, and anything
    that is neither a time nor a string, is returned as it is, for the caller's own checks.
    InvalidArgument, naming ``what``, for a string that is not a time or a time without a
    UTC offset."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidArgument(
                f"{what} {value!r} is neither a timestamp nor an ISO-8601 time "
                "(e.g. 2026-12-06T07:30:00Z)"
            ) from None
    if not isinstance(value, dt.datetime):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(
            f"{what} {value.isoformat()} has no UTC offset: give an aware datetime, or a time "
            "ending in Z or +hh:mm"
        )
    ms = (value - _EPOCH) // _MS
    if ms < 0:
        raise InvalidArgument(f"{what} {value.isoformat()} is before 1970")
    return ms << LOGICAL_BITS if first else ((ms + 1) << LOGICAL_BITS) - 1


def time_of(ts: int) -> dt.datetime:
    """The wall-clock time (UTC, to the millisecond) of a timestamp's physical part."""
    return _EPOCH + (ts >> LOGICAL_BITS) * _MS
