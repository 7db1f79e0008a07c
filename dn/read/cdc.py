"""Change types: whether each change of a feed inserted, updated or deleted a row.

A feed (:mod:`dn.read.feed`) says what each version is (an upsert or a delete); a consumer
that copies the table elsewhere also needs what it did (Delta's change data feed):

- ``insert``: an upsert of a key that had no row just before it;
- ``update_postimage``: an upsert of a key that had a row (the new row);
- ``update_preimage``: that key's row just before the update (Arrow feeds, with
  ``before_images``);
- ``delete``: a delete (Arrow feeds carry the deleted row's values, when it had one).

"Just before" is decided from the state at ``from_ts - 1`` for each key's first change in the
window, then from the window's own earlier changes. :func:`classify` does it for one shard's
feed in (ts, pk) order (keys are disjoint across shards, so shards classify alone); ``before``
looks up a key's row at ``from_ts - 1``. :func:`arrow_feed` lays the classified changes out as
an Arrow table with ``_commit_ts`` and ``_change_type``. Pure functions; any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from dn.read import pick
from dn.read.arrow import arrow_schema
from dn.read.change import Change, new_change
from dn.read.reader import Reader
from dn.read.rows import projection, row_dict
from dn.read.run import Runs
from dn.read.view import ReadView, before_view, materialize, view_runs
from dn.schema import TableDef

INSERT = "insert"
UPDATE = "update_postimage"
PREIMAGE = "update_preimage"
DELETE = "delete"


def feed(reader: Reader, view: ReadView, read_view: Callable, columns: Any = None) -> tuple:
    """A feed view's changes, classified: ``(view, changes, pre-images)``. ``read_view(db,
    table, snapshot)`` makes the snapshot view of the state before the window
    (:func:`dn.read.view.before_view`)."""
    before = before_view(read_view, view)
    changes = materialize(reader, view, columns=columns)
    return (view, *classify(changes, rows_before(reader, before)))


#: Keys looked up one by one up to this share of the rows the before-state's runs hold; past
#: it, the whole state at ``from_ts - 1`` is picked at once (whole-list work) and searched.
BULK_SHARE = 0.05


def rows_before(reader: Reader, view: ReadView | None, runs: Runs | None = None) -> Callable:
    """A function from keys to their whole rows (dicts; None: no row) at the snapshot view
    ``view`` (the state at ``from_ts - 1``); with no view (``from_ts`` <= 1), every key has
    none. Few keys are looked up one by one; many, in the state picked whole (numpy-searched
    for int keys)."""
    if view is None:
        return lambda keys: dict.fromkeys(keys)
    if runs is None:
        runs = view_runs(reader, view)
    proj, snap = projection(view.table, None), view.snapshot

    def before(keys: list) -> dict:
        held = sum(len(run) for run, _ in runs)
        if len(keys) <= BULK_SHARE * held:
            out = {}
            for pk in keys:
                row = pick.lookup(runs, pk, snap)
                out[pk] = None if row is None else row_dict(proj, row)
            return out
        cols, ints = pick.sorted_columns(snap, runs)
        out = dict.fromkeys(keys)
        if not cols:
            return out
        if ints is not None and all(type(k) is int for k in keys):
            want = np.asarray(keys, dtype=np.int64)
            at = np.searchsorted(ints, want).clip(0, len(ints) - 1)
            hit = np.flatnonzero(ints[at] == want)
            places = {keys[i]: int(at[i]) for i in hit.tolist()}
        else:
            pos = view.table.pk_pos
            pks = cols[pos[0]] if len(pos) == 1 else list(zip(*(cols[p] for p in pos)))
            index = {k: i for i, k in enumerate(pks)}
            places = {k: index[k] for k in keys if k in index}
        for k, i in places.items():
            out[k] = row_dict(proj, tuple(c[i] for c in cols))
        return out

    return before


def classify(
    changes: Iterable[Change], before: Callable[[list], dict]
) -> tuple[list[Change], list[dict | None]]:
    """Each change with its ``change_type``, and each one's pre-image: the key's row just
    before it (None when it had none). ``before`` gives the rows at ``from_ts - 1`` of the
    keys asked for, all at once."""
    changes = list(changes)
    state: dict[Any, dict | None] = before(list(dict.fromkeys(c.pk for c in changes)))
    out: list[Change] = []
    pre: list[dict | None] = []
    for c in changes:
        pk = c.pk
        prev = state[pk]
        if c.kind == "delete":
            kind = DELETE
            state[pk] = None
        else:
            kind = INSERT if prev is None else UPDATE
            state[pk] = c.row
        out.append(new_change((c.ts, c.kind, pk, c.row, kind)))
        pre.append(prev)
    return out, pre


def arrow_feed(
    table: TableDef,
    changes: Sequence[Change],
    pre: Sequence[dict | None],
    columns: Sequence[str] | None = None,
    before_images: bool = False,
) -> pa.Table:
    """Classified changes (in feed order) as an Arrow table: the row's columns (projected on
    ``columns``; a delete's from its pre-image, the key alone if it had none), ``_commit_ts``
    and ``_change_type``; with ``before_images`` an ``update_preimage`` row before each
    ``update_postimage``."""
    schema = arrow_schema(table, columns)
    names = schema.names
    pk_names = list(table.primary_key)
    rows: list[dict] = []
    stamps: list[int] = []
    kinds: list[str] = []
    for c, p in zip(changes, pre, strict=True):
        if c.change_type == DELETE:
            row = p if p is not None else _key_row(pk_names, c.pk)
        else:
            if before_images and c.change_type == UPDATE:
                rows.append(p)
                stamps.append(c.ts)
                kinds.append(PREIMAGE)
            row = c.row
        rows.append(row)
        stamps.append(c.ts)
        kinds.append(c.change_type)
    arrays = [pa.array([r.get(n) for r in rows], type=f.type) for n, f in zip(names, schema)]
    arrays += [pa.array(stamps, type=pa.int64()), pa.array(kinds, type=pa.string())]
    fields = [
        *schema,
        pa.field("_commit_ts", pa.int64(), False),
        pa.field("_change_type", pa.string(), False),
    ]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _key_row(names: list[str], pk: Any) -> dict:
    return dict(zip(names, pk if len(names) > 1 else (pk,), strict=True))
