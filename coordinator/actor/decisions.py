"""Collecting transaction decisions nothing needs any more (decision 0015).

A decision object ``40/txn/<group>`` (a transaction alone: ``<token>``) must outlive every log
record holding one of its transactions' intents, and every moment at which its committer could
still decide: a shard that replays an intent reads its decision; and were an abort deleted
while a stalled committer could still create the commit, shards that had aborted and shards
still undecided would part. So a decision is deleted only when both hold:

- its key's token was minted more than ``token_window_s`` ago (read from the key: the token
  holds its mint time). Shards refuse a prepare whose token, or whose group's token, was
  minted more than half of that ago, so no new intent naming the key can appear (a group's
  key is minted after every token of the group), and its committer decided long since (the
  same bound on a stalled client that exactly-once writes rest on, decision 0014);
- an abort; or a commit whose every participant has written out the buffers up to its
  timestamp (``ShardService.flushed_through``): no log holds its intents any more, and the
  shards remember its token as committed for ``token_window_s`` anyway. A participant a
  reshard retired (at or past the shard count) counts as written out: it gave all its slots
  away, and each give waited for every intent on it to be decided and wrote its buffers out
  (decision 0018); it takes no intent after.

:func:`collect` lists ``40/txn/``, reads only the decisions old enough, and deletes. The
coordinator actor runs it every ``DECISION_GC_INTERVAL_S``; ``CoordinatorService.
collect_decisions`` runs it now. Any thread; idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from dn.errors import DNError, ObjectNotFound
from dn.objects import decision
from dn.store.base import ObjectStore
from dn.write.tokens import minted_ms

log = logging.getLogger(__name__)

#: How often the coordinator actor collects decisions (seconds).
DECISION_GC_INTERVAL_S = 60.0


def collect(store: ObjectStore, shards: Any, window_s: float, now_ms: int) -> int:
    """Delete the decisions nothing needs (see the module docstring); returns how many."""
    old: list[str] = []
    for key in store.list(decision.PREFIX):
        try:
            token = bytes.fromhex(key[len(decision.PREFIX) :])
            if now_ms - minted_ms(token) > window_s * 1000:
                old.append(key)
        except (ValueError, DNError):
            log.warning("not a decision's key, left alone: %s", key)
    if not old:
        return 0
    flushed: dict[int, int] | None = None
    deleted = 0
    for key in old:
        try:
            ts, participants = decision.decode_body(store.get(key), key)
        except ObjectNotFound:
            continue
        if ts != decision.ABORTED:
            if flushed is None:
                got = shards.call_each({i: ("flushed_through", ()) for i in range(len(shards))})
                flushed = {i: r for i, r in got.items() if isinstance(r, int)}
            n = len(shards)  # a shard at or past the count was retired by a reshard
            if not all(i >= n or flushed.get(i, -1) >= ts for i in participants):
                continue  # a participant's log may still hold the intent
        store.delete(key)
        deleted += 1
    return deleted
