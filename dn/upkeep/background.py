"""The engine's background thread: :meth:`dn.Engine.maintain` every ``background_interval_s``.

Used when ``Settings.background`` is on (an embedded engine); the Ray shard actor turns it off
and drives maintenance from its own loop (:mod:`shards.loop`). A round that fails with a
``DNError`` is counted (``maintain_errors``) and logged, and the next round tries again; a
fenced or closed engine stops the thread. :meth:`Background.stop` joins it (not from itself).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dn.errors import Closed, DNError, Fenced

log = logging.getLogger(__name__)


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
        while not self._stop.wait(self._interval_s):
            try:
                self._maintain()
            except (Fenced, Closed):
                return
            except DNError as exc:
                self._counters["maintain_errors"] += 1
                log.warning("shard %d: background work failed, will retry: %s", self._shard, exc)
            except Exception:
                self._counters["maintain_errors"] += 1
                log.exception("shard %d: background work failed", self._shard)
