"""A Ray Data read task's Arrow tails: fetched from Ray's object store, or read again.

``read_dn`` and ``read_dn_changes`` (:mod:`coordinator.client.raydata`) leave each shard's
in-memory tail, as Arrow, in Ray's object store, where the shard's reply put it; the dataset's
views hold the references and each read task fetches its shard's (:func:`with_tails`),
zero-copy on the node the shard put it on. The driver owns the references, so a tail outlives
its shard's restart; it does not outlive its node. When that node is lost between the making
of the dataset and the read (the tail's only copy with it), the task asks its shard for its
view again (:class:`Replan`), at the same snapshot and, for a change feed, from the same
``from_ts``, by value. A snapshot read is repeatable (DESIGN §5, promise 3: the same rows on
every later read at S, whichever mix of checkpoint, ranges and tail serves it), so the rows
are the same; the plan may differ (the shard may have written its buffers out since, or
compacted), and the task reads the plan it is given.

What cannot be read again is :class:`dn.errors.Unavailable`, the reason named: the snapshot
has left the retention window, or the shard's slots moved since the dataset was made (its
views were made by an older slot map: the dataset must be made again).

Runs in Ray tasks (any process of the cluster).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import ray

from coordinator.client import fanout
from dn.errors import DNError, Unavailable
from dn.read.view import ReadView


@dataclass(frozen=True)
class Replan:
    """How a read task asks its shard for its view again: the deployment's namespace, the
    slot map the dataset's views were made by, and the dataset's projection."""

    namespace: str
    map_version: int | None
    columns: Any = None

    def views(self, shard: int, view: ReadView) -> tuple[ReadView, ReadView | None]:
        """Shard ``shard``'s view as ``view`` was made (its table, snapshot, ``from_ts``),
        its tails by value: ``(view, None)``, or a change feed's ``(view, before view)``."""
        import coordinator

        client = coordinator.connect(namespace=self.namespace)
        t, s, mv = view.table, view.snapshot, self.map_version
        if view.from_ts is not None:  # ShardService.feed_views: the pair
            args = (t.db, t.name, s, view.from_ts, self.columns, True, mv)
            return client.shards.call(shard, "feed_views", *args, retry_s=client.retry_s)
        got = fanout.fetch_views(
            client.shards, t.db, t.name, s, None, client.retry_s, [shard], self.columns, True, mv
        )
        return got[shard], None


def with_tails(
    shard: int, view: ReadView, before: ReadView | None, again: Replan
) -> tuple[ReadView, ReadView | None]:
    """``view`` and a change feed's ``before`` view with their Arrow tails, when ``view``'s
    ``arrow_tail`` is a reference (a feed's refers to the pair: the feed view's tail, the
    before view's); a tail lost: both made again by ``again`` (see the module docstring)."""
    ref = view.arrow_tail
    if not isinstance(ref, ray.ObjectRef):
        return view, before
    try:
        tails = ray.get(ref)
    except ray.exceptions.ObjectLostError as lost:
        try:
            return again.views(shard, view)
        except DNError as exc:
            raise Unavailable(
                f"the in-memory rows of {view.table.name} read at {view.snapshot} on shard "
                f"{shard} were lost ({type(lost).__name__}), and the shard could not read "
                f"them again: {exc}; make the dataset again"
            ) from None
    if view.from_ts is None:
        return replace(view, arrow_tail=tails), before
    return replace(view, arrow_tail=tails[0]), before and replace(before, arrow_tail=tails[1])
