"""Read plans: which checkpoint, range objects and in-memory tail serve a read (seed 001).

Snapshot read at S (seed 001, steps 1-4):

1. working checkpoint = the newest checkpoint <= S (None if there is none);
2. working ranges = the committed ranges after it, up to and including the first range that
   covers S, and never one that starts after S (at S equal to the checkpoint's timestamp there
   is none: the checkpoint serves S); ``max_range`` = the ``to`` of the last working range (or
   of the checkpoint);
3. if S <= max_range the plan is complete;
4. otherwise the commands (max_range, S] come from memory: ``tail = (max_range + 1, S)``.

Range read (S, from_ts) covers from_ts <= ts <= S: every committed range that overlaps it
(never one that starts after S or ends before from_ts), and the tail ``(max(max_range + 1,
from_ts), S)`` when S > max_range. Its ``max_range`` is that of the snapshot plan at S; it has
no checkpoint (``checkpoint`` is None): a checkpoint describes the state at its timestamp,
while a range read wants the versions in its window, which the overlapping ranges and the tail
hold (the seed's range read answers ranges and commands only).

:func:`check_from_ts` is the one validation of a change feed's ``from_ts``, for the engine, the
client and the plans. Pure functions of the manifest's range and checkpoint lists; no I/O;
any thread.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dn.errors import InvalidArgument
from dn.timestamps import to_timestamp


@dataclass(frozen=True, slots=True)
class Plan:
    checkpoint: int | None
    ranges: tuple[tuple[int, int], ...]
    max_range: int | None
    tail: tuple[int, int] | None
    #: Once slots moved (:mod:`dn.moves`): the filter the shard's own objects are read
    #: through (:class:`dn.read.slotfilter.SlotFilter`), and the filtered objects read after
    #: them, ``(from, to, SlotFilter)``, in order (Reader.range_keys). None and (): none.
    own: Any = None
    refs: tuple = ()


def _check_ts(name: str, ts: object) -> int:
    if type(ts) is not int or ts < 0 or ts >= 1 << 63:
        raise InvalidArgument(f"{name} must be a non-negative int64 timestamp, got {ts!r}")
    return ts


def check_from_ts(from_ts: object, snapshot: int | None = None) -> int:
    """``from_ts`` as the timestamp a change feed starts at: a non-negative int64 timestamp,
    or a time (:mod:`dn.timestamps`: its millisecond's first timestamp), not after
    ``snapshot`` when that is known; else raises InvalidArgument."""
    ts = _check_ts("from_ts", to_timestamp(from_ts, "from_ts", first=True))
    if snapshot is not None and ts > snapshot:
        raise InvalidArgument(f"from_ts {ts} is after the snapshot {snapshot}")
    return ts


def snapshot_plan(ranges: Sequence[tuple[int, int]], checkpoints: Sequence[int], ts: int) -> Plan:
    _check_ts("snapshot", ts)
    i = bisect_right(checkpoints, ts)
    cp = checkpoints[i - 1] if i else None
    working = []
    for r in ranges:
        if cp is not None and r[1] <= cp:
            continue
        if r[0] > ts:
            break  # starts after S: nothing in it is visible at S
        working.append(r)
        if r[1] >= ts:
            break
    if working:
        max_range = working[-1][1]
    else:
        max_range = cp
    tail = None
    if max_range is None:
        tail = (0, ts)
    elif ts > max_range:
        tail = (max_range + 1, ts)
    return Plan(cp, tuple(working), max_range, tail)


def range_plan(
    ranges: Sequence[tuple[int, int]], checkpoints: Sequence[int], snapshot: int, from_ts: int
) -> Plan:
    _check_ts("snapshot", snapshot)
    check_from_ts(from_ts, snapshot)
    base = snapshot_plan(ranges, checkpoints, snapshot)
    working = tuple(r for r in ranges if r[1] >= from_ts and r[0] <= snapshot)
    tail = None
    if base.tail is not None:
        tail = (max(base.tail[0], from_ts), snapshot)
    return Plan(None, working, base.max_range, tail)
