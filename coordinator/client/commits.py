"""A client's group commit to the coordinator: concurrent transactions of one process share a
call.

Every transaction commits through the coordinator's committer (:mod:`coordinator.actor.
committer`), one Ray call each. A process that commits from several threads at once (a Ray task
with a thread pool, a web server, the Ray Data sink) would pay one call per transaction, and on
a small node those calls are what bound the commit rate: each costs about a millisecond of CPU
on each side. :class:`CommitGroup` gathers the commits that arrive while one call is in flight
and sends them as one ``commit_many``, as the shards' group commit does for log writes: the
first thread to find no call in flight leads; the others wait and are answered from the
leader's call, or lead the next one. A thread alone sends a plain ``commit``.

Each transaction keeps its own token, and its answer is its own commit timestamp or its own
error. The group shares one decision object (:mod:`dn.objects.decision`), keyed by a token
minted for the call when it is sent: younger than every token of the group, so the
coordinator's collection, which ages a decision by its key, never deletes it while an intent
naming it may still be prepared (decision 0015, "Groups"). One conditional put decides all of
them, where each alone would cost one. If the call itself fails or its answer cannot be read
(``Unavailable``, outcome unknown: the coordinator died or did not answer), every transaction
of the group gets that error, which names the group (``details["group"]``), and settles its
own attempt at the group's decision (:func:`coordinator.client.txn.commit_calls`): the first to
settle aborts the group unless the committer decided it. Thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from dn.errors import DNError, Internal, Unavailable

#: At most this many transactions in one call (a bound on the call's size).
MAX_GROUP = 256


@dataclass(eq=False)
class _Pending:
    args: tuple  # (token, after, snapshot, calls)
    out: Any = None
    done: bool = False


class CommitGroup:
    """Commits of one process to one coordinator, grouped (see the module docstring)."""

    def __init__(self, coordinator: Any, minter: Any) -> None:
        self._coord = coordinator  # CoordinatorHandle, or a test's stand-in with .call
        self._minter = minter  # TokenMinter: the groups' keys
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False
        self.calls = 0  # calls sent, and transactions in them: for benchmarks and tests
        self.commits = 0

    def commit(self, token: bytes, after: int, snapshot: int | None, calls: dict) -> int:
        """Commit one transaction: its commit timestamp, or the error that refused it."""
        me = _Pending((token, after, snapshot, calls))
        with self._cv:
            self._queue.append(me)
            while not me.done and self._leading:
                self._cv.wait()
            lead = not me.done
            if lead:
                self._leading = True
        if lead:
            try:
                while not me.done:
                    with self._cv:
                        batch = self._queue[:MAX_GROUP]
                        del self._queue[:MAX_GROUP]
                    self._send(batch)
            finally:
                with self._cv:
                    self._leading = False
                    self._cv.notify_all()
        if isinstance(me.out, BaseException):
            raise me.out
        return me.out

    def _send(self, batch: list[_Pending]) -> None:
        outs: list[Any] = [Internal("the commit call was interrupted")] * len(batch)
        try:
            outs = self._call(batch)
        finally:  # every waiter is answered, whatever happened to the call
            self.calls += 1
            self.commits += len(batch)
            with self._cv:
                for p, out in zip(batch, outs, strict=True):
                    p.out, p.done = out, True
                self._cv.notify_all()

    def _call(self, batch: list[_Pending]) -> list[Any]:
        try:
            if len(batch) == 1:
                return [self._coord.call("commit", *batch[0].args)]
        except DNError as exc:
            return [exc]
        except Exception as exc:  # not ours to swallow, but the waiter must be answered
            return [_unknown(f"the commit call failed: {exc!r}")]
        group = self._minter.mint()  # the key of the group's decision: minted last
        try:
            outs: list[Any] = self._coord.call("commit_many", [p.args for p in batch], group)
            if not isinstance(outs, list) or len(outs) != len(batch):
                outs = [_unknown(f"an answer of {len(outs)} to {len(batch)} commits")] * len(batch)
        except DNError as exc:
            outs = [exc] * len(batch)
        except Exception as exc:  # not ours to swallow, but every waiter must be answered
            outs = [_unknown(f"the commit call failed: {exc!r}")] * len(batch)
        # each waiter raises its own error; an attempt that may have landed settles at its
        # group's decision
        outs = [_own(out, group) if isinstance(out, DNError) else out for out in outs]
        return outs


def _unknown(why: str) -> Unavailable:
    return Unavailable(f"{why}; the outcome is unknown", outcome_unknown=True)


def _own(err: DNError, group: bytes) -> DNError:
    """A copy of ``err`` for one waiter; an ``Unavailable`` names the group."""
    details = dict(err.details)
    if isinstance(err, Unavailable):
        details["group"] = group
    return type(err)(err.message, **details)
