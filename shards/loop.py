"""The maintenance loop of a shard actor: one daemon thread calling ``engine.maintain()``.

Each round freezes the mutable buffer on age, runs queued buffer checkpoints, checkpoints on
the delta/interval trigger and deletes log objects past their grace (see
:meth:`dn.Engine.maintain`). The shard actor opens its engine with ``background=False`` and
runs this loop instead of the engine's own thread, so that the actor's status reports the
loop (rounds, failures, the last error) and stopping the actor stops the loop first.

Metrics: after each round the loop hands the engine to :meth:`shards.metrics.ShardMetrics.publish`
(which turns its status into the ``dn_`` gauges and counters, at most once a second).

Failures: a :class:`dn.errors.DNError` (the store is down, say) is logged and counted and the
next round retries, after twice the previous wait (at most ``MAX_BACKOFF_S``); Fenced or Closed
ends the loop (this incarnation is finished).

Thread: the loop's own; ``stop`` may be called from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dn import Engine
from dn.errors import Closed, DNError, Fenced
from shards.metrics import ShardMetrics

log = logging.getLogger(__name__)

#: The longest wait between two rounds after failures (each failure doubles the wait).
MAX_BACKOFF_S = 1.0


class MaintenanceLoop:
    """Calls ``engine.maintain()`` every ``interval_s`` seconds until stopped."""

    def __init__(
        self, engine: Engine, interval_s: float, metrics: ShardMetrics | None = None
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._interval = max(0.001, interval_s)
        self._stop = threading.Event()
        self.rounds = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_round_s = 0.0
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"dn-maintain-{engine.shard}"
        )

    def start(self) -> MaintenanceLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        wait = self._interval
        while not self._stop.wait(wait):
            t0 = time.monotonic()
            wait = min(MAX_BACKOFF_S, wait * 2)  # after a failure: a failing store, slower
            try:
                self._engine.maintain()
                wait = self._interval
            except (Fenced, Closed) as exc:
                self.last_error = str(exc)
                log.warning("shard %d: maintenance stops: %s", self._engine.shard, exc)
                return
            except DNError as exc:
                self.failures += 1
                self.last_error = str(exc)
                log.warning("shard %d: maintenance failed, will retry: %s", self._engine.shard, exc)
            except Exception as exc:  # a bug: keep the shard serving, say so loudly
                self.failures += 1
                self.last_error = repr(exc)
                log.exception("shard %d: maintenance failed", self._engine.shard)
            self.rounds += 1
            self.last_round_s = time.monotonic() - t0
            self._publish()

    def _publish(self) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.publish(self._engine, self.failures)
        except (Fenced, Closed):
            return  # the next round ends the loop
        except Exception:  # metrics never stop maintenance
            log.debug("shard %d: publishing metrics failed", self._engine.shard, exc_info=True)

    def status(self) -> dict[str, Any]:
        return {
            "alive": self._thread.is_alive(),
            "rounds": self.rounds,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_round_s": round(self.last_round_s, 4),
        }
