"""The asyncio front door of the engine: many coroutines' writes, one log write.

``await engine.write_async(...)`` validates and packs the write in the calling coroutine, then
parks it here. The first write parked on an event loop starts a drain task for that loop: it
takes every parked write, hands them to the engine's commit queue in one call on a worker
thread (:meth:`dn.write.commit.CommitQueue.submit_all`), and resolves their futures; writes parked
meanwhile form the next round. So N coroutines cost one thread hand-off and one durable log
write per round, not N thread wake-ups: the cheap way to serve many small concurrent writers
from CPython.

Invariants: a drain task per event loop at most; futures are resolved on their own loop;
commit order is the order writes were parked. Threads and coroutines may write at once: both
go through the same commit queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dn.write.commit import Pending


class AsyncFrontDoor:
    """Parks coroutines' prepared writes and drains them in rounds, per event loop."""

    def __init__(self, submit_all: Callable[[list[Pending]], None]) -> None:
        self._submit_all = submit_all
        self._parked: dict[asyncio.AbstractEventLoop, list[tuple[Pending, asyncio.Future]]] = {}

    async def submit(self, p: Pending) -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        parked = self._parked.get(loop)
        if parked is None:
            parked = self._parked[loop] = []
            loop.create_task(self._drain(loop))
        parked.append((p, fut))
        return await fut

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self._parked.get(loop):
                batch = self._parked[loop]
                self._parked[loop] = []
                try:
                    await loop.run_in_executor(None, self._submit_all, [p for p, _ in batch])
                except BaseException as exc:  # the engine failed hard: fail the round
                    for p, _ in batch:
                        if not p.done:
                            p.error, p.done = _as_error(exc), True
                for p, fut in batch:
                    if fut.done():
                        continue
                    if p.error is not None:
                        fut.set_exception(p.error)
                    else:
                        fut.set_result(p.ts)
        finally:
            self._parked.pop(loop, None)


def _as_error(exc: BaseException) -> Any:
    from dn.errors import DNError, Internal

    return exc if isinstance(exc, DNError) else Internal(f"write round failed: {exc!r}")
