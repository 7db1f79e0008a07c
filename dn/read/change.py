"""The change record: one entry of a change feed.

A :class:`Change` is ``(ts, kind, pk, row, change_type)``: the commit timestamp, ``"upsert"``
or ``"delete"``, the primary key, for an upsert the row as a dict (projected on the read's
columns; None for a delete), and the change type of :mod:`dn.read.cdc` (``"insert"`` when the
key had no row just before, ``"update_postimage"`` when it had one, ``"delete"``). A named
tuple, so a feed of millions is cheap to build; feeds build them with :data:`new_change`, from
C.

Not here: choosing and ordering a feed's versions (:mod:`dn.read.feed`). Immutable values: any
thread, any process (they pickle).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple


class Change(NamedTuple):
    """One entry of a change feed (a named tuple: cheap to build by the million)."""

    ts: int
    kind: str  # "upsert" or "delete"
    pk: Any
    row: dict | None
    #: "insert", "update_postimage" or "delete" (dn.read.cdc), from the state just before it
    change_type: str | None = None


#: Change((ts, kind, pk, row, change_type)) without the Python-level ``__new__`` of a named
#: tuple: the tuple type's own constructor, called from C by ``map``.
new_change = partial(tuple.__new__, Change)
