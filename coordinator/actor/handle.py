"""The Ray shell of the coordinator side: the coordinator actor, Ray sessions and tasks.

Every Ray API call of the ``coordinator`` package lives here (``ray.init``, ``ray.remote``,
``.remote()``, ``ray.get``, ``ray.wait``, ``ray.get_actor``, ``ray.kill``); errors are mapped
by :func:`shards.group.map_error`, so callers only see :mod:`dn.errors`.

The coordinator actor is ``dn-coordinator`` in the deployment's namespace: detached, restarted
by Ray without limit, threaded. It is :class:`coordinator.actor.service.CoordinatorService` with a
:class:`shards.group.ShardGroup` plugged in. Ray retries none of its calls; the client
retries the idempotent ones (``info``, ``table``, ``status``) itself, with the shells' one
backoff (:meth:`dn.settings.ShellSettings.backoff`). A DDL call whose
coordinator died mid-call fails with ``Unavailable(outcome_unknown=True)``; the restarted
coordinator finishes a DDL it had begun.

The actor runs one more thread of its own, the metrics publisher: every
:data:`coordinator.actor.metrics.PUBLISH_INTERVAL_S` it sets the cluster record's gauges again
and each shard actor's restart count from Ray's actor table (:func:`actor_record`, also used
by ``dn logs``). It only reads; a failed round is logged at debug level and tried again.

Any thread. :class:`CoordinatorHandle` pickles as its namespace only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
import ray._private.state as ray_state

from coordinator.actor.decisions import DECISION_GC_INTERVAL_S
from coordinator.actor.metrics import PUBLISH_INTERVAL_S
from coordinator.actor.service import CoordinatorService
from coordinator.client.tasks import alive_nodes
from coordinator.config import ClusterConfig
from dn.backoff import Backoff
from dn.errors import NotFound, Unavailable
from dn.settings import ShellSettings
from shards.group import (
    ShardGroup,
    get_actor,
    kill_actor,
    map_error,
    shard_name,
    start_shards,
)

log = logging.getLogger(__name__)


COORDINATOR_NAME = "dn-coordinator"
#: How long a shard a reshard left without slots keeps answering before its actor stops.
RETIRE_GRACE_S = 60.0
#: The longest a retired shard runs on waiting for the shards that read its objects to settle.
RETIRE_MAX_S = 6 * 3600.0
#: Shard ids past the count a shutdown looks for (shards a reshard retired, not yet stopped).
RETIRED_SCAN = 64


#: Calls the coordinator actor serves at once: every client committing a transaction waits in
#: one (its batch), and DDL, info and status calls must still find a thread.
COORDINATOR_CONCURRENCY = 256


class CoordinatorActor(CoordinatorService):
    """The coordinator as it runs inside its actor: shards reached through Ray."""

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = ClusterConfig.from_dict(config)
        super().__init__(config, ShardGroup(cfg.namespace, cfg.shards, cfg.shell))
        self._stop_publishing = threading.Event()
        threading.Thread(
            target=self._publish_loop, name="dn-coordinator-metrics", daemon=True
        ).start()
        threading.Thread(
            target=self._collect_loop, name="dn-coordinator-decisions", daemon=True
        ).start()

    def pid(self) -> int:
        return os.getpid()

    def grow_shards(self, shards: int) -> None:
        """Start the shard actors a reshard adds (or a restarted coordinator finds in the
        record), in waves of ``reshard_start_concurrency`` (:func:`start_waves`), each waited
        for until its shards opened, then call them."""
        cfg = self.config
        at_once = cfg.reshard_start_concurrency or alive_nodes()
        first = len(self._shards)
        for upto in start_waves(first, shards, at_once):  # each wave: its new actors only
            handles = start_shards(
                cfg.namespace, upto, cfg.store, cfg.engine.to_dict(), cfg.clock_skew_ms,
                cfg.shard_num_cpus, cfg.shard_max_concurrency, cfg.env, cfg.shell.to_dict(),
                first=first,
            )  # fmt: skip
            ray.get([h.pid.remote() for h in handles], timeout=cfg.shell.call_timeout_s)
            first = upto
        super().grow_shards(shards)

    def retire_shards(self, ids: list[int]) -> None:
        """Stop calling the shards a reshard left without slots; stop their actors once each
        has settled its moves and its garbage collector deleted what it handed over (the new
        owners settled: nothing reads those objects), checked every ``RETIRE_GRACE_S`` (the
        first check a grace for clients that have not heard of the reshard: they are still
        answered, and told to refresh their map), at most ``RETIRE_MAX_S``. A shard grown
        back meanwhile is not stopped. Their other objects stay: readers fetch them."""
        super().retire_shards(ids)
        self._retire_later(list(ids), time.monotonic())

    def _retire_later(self, ids: list[int], since: float) -> None:
        def check() -> None:
            left = []
            for i in ids:
                if i < len(self._shards):
                    continue  # grown back by a later reshard: a shard again
                try:
                    if time.monotonic() - since < RETIRE_MAX_S and not self._drained(i):
                        left.append(i)
                        continue
                    ray.get(get_actor(shard_name(i), ns).close.remote(), timeout=30)
                except Exception as exc:  # noqa: BLE001 - it is killed anyway
                    log.warning("retired shard %d did not close cleanly: %s", i, exc)
                kill_actor(shard_name(i), ns)
                log.info("retired shard %d stopped", i)
            if left:
                self._retire_later(left, since)

        ns = self.config.namespace
        t = threading.Timer(RETIRE_GRACE_S, check)
        t.daemon = True
        t.start()

    def _drained(self, i: int) -> bool:
        """Whether retired shard ``i`` settled its moves and collected what it handed over."""
        st = ray.get(get_actor(shard_name(i), self.config.namespace).status.remote(), timeout=30)
        moves, objects = st.get("moves") or {}, st.get("objects") or {}
        return not (
            moves.get("moves_to_absorb")
            or objects.get("held_by_moves")
            or objects.get("awaiting_gc")
        )

    def _collect_loop(self) -> None:
        while not self._stop_publishing.wait(DECISION_GC_INTERVAL_S):
            try:
                self.collect_decisions()
            except Exception as exc:  # noqa: BLE001 - collection is retried next round
                log.warning("transaction decisions not collected this round: %s", exc)
            try:
                self.settle_moves()  # a slot move left in progress (shards were unavailable)
            except Exception as exc:  # noqa: BLE001 - settled next round
                log.warning("slot move not settled this round: %s", exc)

    def _publish_loop(self) -> None:
        while not self._stop_publishing.wait(PUBLISH_INTERVAL_S):
            self.publish_metrics()
            for i in range(self.config.shards):
                try:
                    rec = actor_record(shard_name(i), self.config.namespace)
                    self.metrics.shard_restarts(i, int(rec.get("NumRestarts", 0)))
                except Exception as exc:  # noqa: BLE001 - metrics never stop the coordinator
                    log.debug("shard %d's restart count not read this round: %s", i, exc)


def actor_record(name: str, namespace: str) -> dict[str, Any]:
    """Ray's record of the named actor (its entry in the GCS actor table): ``ActorID``,
    ``State``, ``NumRestarts``, ``Pid`` and ``Address`` (``NodeID``, ``IPAddress``) of its
    current incarnation. Raises :class:`NotFound` when no such actor is alive or restarting."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise NotFound(f"no actor {name!r} in Ray namespace {namespace!r}") from None
    rec = ray_state.actors(actor_id=handle._actor_id.hex())
    if not rec:
        raise NotFound(f"Ray has no record of actor {name!r} in namespace {namespace!r}")
    return rec


_remote_coordinator: Any = None


def start_waves(have: int, want: int, at_once: int) -> list[int]:
    """The shard counts a grow from ``have`` to ``want`` shards reaches, one wave of at most
    ``at_once`` (>= 1) new shard actors after another (none when nothing grows). A shard
    process takes about two CPU-seconds to start (Ray's worker, the imports, the opening):
    started all at once on a busy node they took a third of its writers' rate for as long;
    one at a time, a sixth for twice as long (decision 0018, item 20)."""
    return list(range(have + at_once, want, at_once)) + ([want] if want > have else [])


def start_deployment(cfg: ClusterConfig, progress: Callable[[str], None] | None = None) -> None:
    """Create (or find) the shard actors and the coordinator of ``cfg``, and wait until every
    shard has recovered and the coordinator has opened the cluster record. ``progress`` hears
    what is being waited for, about once a second while anything is."""
    global _remote_coordinator
    say = progress or (lambda _msg: None)
    say(f"starting {cfg.shards} shard actors in namespace {cfg.namespace!r}")
    handles = start_shards(
        cfg.namespace,
        cfg.shards,
        cfg.store,
        cfg.engine.to_dict(),
        cfg.clock_skew_ms,
        cfg.shard_num_cpus,
        cfg.shard_max_concurrency,
        cfg.env,
        cfg.shell.to_dict(),
    )
    if _remote_coordinator is None:
        _remote_coordinator = ray.remote(CoordinatorActor)
    opts: dict[str, Any] = dict(
        name=COORDINATOR_NAME,
        namespace=cfg.namespace,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=COORDINATOR_CONCURRENCY,
        num_cpus=0,
        get_if_exists=True,
    )
    if cfg.env:
        opts["runtime_env"] = {"env_vars": dict(cfg.env)}
    actor = _remote_coordinator.options(**opts).remote(cfg.to_dict())
    waiting = {actor.info.remote(): "the coordinator"}
    waiting.update({h.pid.remote(): f"shard {i}" for i, h in enumerate(handles)})
    deadline = time.monotonic() + cfg.shell.call_timeout_s
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable(
                f"gave up after {cfg.shell.call_timeout_s:.0f} s waiting for "
                f"{', '.join(sorted(waiting.values()))} (still recovering, or no resources)"
            )
        done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=min(1.0, left))
        for ref in done:
            what = waiting.pop(ref)
            try:
                ray.get(ref)
            except Exception as exc:
                raise map_error(exc, f"starting {what}") from exc
        if waiting:
            up = cfg.shards + 1 - len(waiting)
            say(f"{up}/{cfg.shards + 1} up; waiting for {', '.join(sorted(waiting.values()))}")


def stop_deployment(namespace: str, shards: int) -> list[str]:
    """Kill the coordinator and the ``shards`` shard actors of a namespace (no restart), and
    any shard a reshard retired that is still up; returns the names killed. Shards are asked
    to close first, so their maintenance stops cleanly."""
    killed = []
    # a shutdown does not wait a whole call timeout for a shard that is gone already
    group = ShardGroup(namespace, shards, ShellSettings(call_timeout_s=30.0))
    group.call_each({i: ("close", ()) for i in range(shards)})
    # and shards a reshard retired that are still up (they stop once drained: retire_shards)
    retired = [shard_name(i) for i in range(shards, shards + RETIRED_SCAN)]
    for name in [COORDINATOR_NAME] + [shard_name(i) for i in range(shards)] + retired:
        if kill_actor(name, namespace):
            killed.append(name)
    return killed


class CoordinatorHandle:
    """Calls to the coordinator actor of one namespace."""

    def __init__(
        self,
        namespace: str,
        settings: ShellSettings | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.namespace = namespace
        self.settings = settings if settings is not None else ShellSettings()
        self._backoff = backoff if backoff is not None else self.settings.backoff()
        self._actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["namespace"], state["settings"])

    def _get_actor(self) -> Any:
        if self._actor is None:
            try:
                self._actor = ray.get_actor(COORDINATOR_NAME, namespace=self.namespace)
            except ValueError:
                raise NotFound(
                    f"no DN deployment in Ray namespace {self.namespace!r} "
                    "(deploy one with coordinator.deploy or `dn up`)",
                    namespace=self.namespace,
                ) from None
        return self._actor

    def call(self, method: str, *args: Any, retry_s: float = 0.0) -> Any:
        """``method(*args)`` on the coordinator; an ``Unavailable`` failure is retried for
        ``retry_s`` seconds."""
        retries = self._backoff.within(retry_s)
        while True:
            try:
                ref = getattr(self._get_actor(), method).remote(*args)
                return ray.get(ref, timeout=self.settings.call_timeout_s)
            except Exception as exc:
                err = map_error(exc, f"coordinator.{method}")
                if isinstance(err, Unavailable):
                    self._actor = None
                    if retries.wait():
                        continue
                raise err from None

    def kill(self, restart: bool) -> bool:
        return kill_actor(COORDINATOR_NAME, self.namespace, restart=restart)
