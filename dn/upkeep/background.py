"""The engine's background thread: :meth:`dn.Engine.maintain` every ``background_interval_s``.

Used when ``Settings.background`` is on (an embedded engine); the Ray shard actor turns it off
and drives maintenance from its own loop (:mod:`shards.loop`). A round that fails with a
``DNError`` is counted (``maintain_errors``) and logged, and the next round tries again, after
twice the previous wait (up to ``MAX_BACKOFF_S``: a failing store is not hammered, and the
buffers it cannot write out are not rebuilt every round); a fenced or closed engine stops the
thread. :meth:`Background.stop` joins it (not from itself).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dn.errors import Closed, DNError, Fenced

log = logging.getLogger(__name__)

#: The longest wait between two rounds after failures (each failure doubles the wait).
MAX_BACKOFF_S = 1.0


class Background:
    """One daemon thread calling ``maintain`` every ``interval_s`` seconds."""

    def __init__(
        self, maintain: Callable[[], None], interval_s: float, counters: dict, shard: int
    ) -> None:
        self._maintain = maintain
        self._interval_s = interval_s
        self._counters = counters
        self._shard = shard
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dn-shard-{shard}", daemon=True)

    def start(self) -> Background:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        wait = self._interval_s
        while not self._stop.wait(wait):
            try:
                self._maintain()
                wait = self._interval_s
                continue
            except (Fenced, Closed):
                return
            except DNError as exc:
                log.warning("shard %d: background work failed, will retry: %s", self._shard, exc)
            except Exception:
                log.exception("shard %d: background work failed", self._shard)
            self._counters["maintain_errors"] += 1
            wait = min(MAX_BACKOFF_S, max(wait, self._interval_s) * 2)  # a failing store: slower
