"""The Ray shell of the shards: actor creation, calls, and Ray errors mapped to dn.errors.

Every Ray API call of the shard side lives here (``ray.remote``, ``.remote()``, ``ray.get``,
``ray.get_actor``, ``ray.kill``); the logic above it (routing, merging, the catalog) runs
without Ray against the :class:`coordinator.client.fanout.ShardCalls` protocol.

Shard actors are named ``dn-shard-<i>`` in the deployment's namespace, detached (they outlive
the driver that deployed them), restarted by Ray without limit (``max_restarts=-1``) and
threaded (``max_concurrency`` calls at once, so concurrent writes share a log write), and
placed with Ray's ``SPREAD`` scheduling strategy: one shard per node in turn, over the nodes
that have room for it, rather than Ray's default of filling one node first. The strategy is
the actor's, so a shard Ray restarts after its node died is placed the same way, on any node
left (a placement group would pin it to a bundle, which must be rescheduled first and, if
strict, finds no room); on a single node every shard lands there, as before. Ray
itself retries no actor task (``max_task_retries=0``): :meth:`ShardGroup.call_each` retries
calls that failed with ``Unavailable`` until ``retry_s`` runs out, sleeping between rounds as
the shells' one backoff says (:meth:`dn.settings.ShellSettings.backoff`; a ShardGroup takes its
settings, and a :class:`dn.backoff.Backoff` may be injected). That includes writes: a write
part carries its idempotency token, and a resend carries the same arguments, token and all, so
a part whose shard died mid-call, or whose call timed out while the original may still be
queued in the actor, is applied once (decision 0014): a shard that committed the token answers
with the first commit's timestamp. With ``retry_s=0`` the caller gets the ``Unavailable``.

Error mapping (:func:`map_error`):

=====================================================  ========================================
Ray raises                                             caller gets
=====================================================  ========================================
RayTaskError wrapping a DNError                        that DNError, unwrapped (same type,
                                                       e.g. StaleTable, which is not retried)
RayTaskError wrapping anything else                   Internal
ActorDiedError / RayActorError / ActorUnavailableError Unavailable(outcome_unknown=True)
GetTimeoutError, worker/owner/object lost              Unavailable(outcome_unknown=True)
actor name not found                                   Unavailable (a shard is being created)
argument not serializable                              InvalidArgument
=====================================================  ========================================

Handles are fetched lazily and dropped after an actor failure (a recreated actor has a new id).
A ShardGroup pickles as its names and settings only. Any thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import pickle
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import ray
import ray.exceptions as rx

from dn import arrowpool
from dn.backoff import Backoff
from dn.errors import DNError, Internal, InvalidArgument, Unavailable
from dn.settings import ShellSettings
from shards.shard import ShardService

log = logging.getLogger(__name__)

_actor_cls: Any = None
_cls_lock = threading.Lock()


def shard_name(i: int) -> str:
    return f"dn-shard-{i}"


#: The cyclic garbage collector's thresholds in a shard process (Python's are 700, 10, 10).
GC_THRESHOLDS = (100_000, 50, 100)


#: glibc malloc settings in a shard process: (mallopt parameter, value). A shard takes each
#: write as large transient buffers (Ray's copy of the arguments, the decoded columns, the log
#: payload) while its buffers grow. With glibc's defaults, freed memory above the heap's top
#: went back to the kernel and buffers over the mmap threshold were mapped and unmapped each
#: time, so the next write faulted the same pages in again, zeroed, and much of a shard's CPU
#: time went to the kernel (figures: decision 0011). Larger thresholds keep that memory for
#: reuse (at most ``M_TRIM_THRESHOLD`` idle).
MALLOC_TUNING = (  # (mallopt parameter, its environment variable, value)
    (-3, "MALLOC_MMAP_THRESHOLD_", 32 << 20),  # allocations below 32 MiB come from the heap
    (-1, "MALLOC_TRIM_THRESHOLD_", 128 << 20),  # keep up to 128 MiB free at the heap's top
    (-2, "MALLOC_TOP_PAD_", 16 << 20),  # grow the heap 16 MiB at a time
)


#: The same settings as the shard process's environment, which glibc reads before the first
#: allocation, plus the number of arenas (one per thread by default, each trimmed and grown on
#: its own; ``mallopt`` cannot change arenas that exist). Ray starts each shard's worker process
#: with them (its runtime environment); a deployment's own ``env`` wins.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", **{name: str(v) for _, name, v in MALLOC_TUNING}}


def tune_allocator() -> bool:
    """Apply :data:`MALLOC_TUNING` to this process (Linux with glibc; elsewhere nothing).
    True when every setting was taken."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, _, value in MALLOC_TUNING)


class ShardActor(ShardService):
    """The shard as a Ray actor: :class:`ShardService`, in a process of its own whose
    garbage collector is tuned for it. A shard allocates millions of short-lived objects
    (every write unpacks its values) and keeps millions alive in its buffers; with Python's
    default thresholds the collector ran every 700 allocations and its full passes walked
    the buffers and all of Ray's objects again and again: over a third of a shard's CPU
    during ingest (measured with perf). So, once the engine is open: ``gc.freeze()`` moves
    everything alive then (Ray, the modules, the recovered catalog) out of the collector's
    sight, and higher thresholds make passes rarer. The engine's write and read paths make
    few reference cycles, so little waits between passes; they still run. Its allocator is
    tuned too (:func:`tune_allocator`), before recovery allocates, and Arrow's memory pool is
    jemalloc's (:mod:`dn.arrowpool`: the mirrors' conversions took 3x as long with mimalloc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.allocator_tuned = tune_allocator()
        self.arrow_pool = arrowpool.use_in_process()  # before anything converts to Arrow
        super().__init__(*args, **kwargs)
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    def split_views(self, method: str, *args: Any) -> tuple[Any, Any]:
        """``read_view`` or ``feed_views`` (``method``, with ``arrow``) as two values: the view
        (a feed's pair) without Arrow tails, and the tails (None for none). The caller takes
        them as two objects (:meth:`ShardGroup.call_each` ``split``) and hands the tails'
        reference on to a Ray Data read task, which fetches them (the driver does not)."""
        if method not in ("read_view", "feed_views"):
            raise InvalidArgument(f"split_views takes read_view or feed_views, not {method!r}")
        out = getattr(self, method)(*args)
        views = out if method == "feed_views" else (out,)
        bare = tuple(v and replace(v, arrow_tail=None) for v in views)
        tails = tuple(v and v.arrow_tail for v in views)
        return (bare, tails) if method == "feed_views" else (bare[0], tails[0])

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["actor"]["allocator_tuned"] = self.allocator_tuned
        out["actor"]["arrow_pool"] = self.arrow_pool
        out["actor"]["allocator_env"] = all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
        return out


def _shard_actor_class() -> Any:
    global _actor_cls
    with _cls_lock:
        if _actor_cls is None:
            _actor_cls = ray.remote(ShardActor)
        return _actor_cls


def map_error(exc: BaseException, what: str) -> DNError:
    """A Ray (or serialization) failure as the dn.errors kind a caller acts on."""
    if isinstance(exc, rx.RayTaskError):  # before DNError: Ray's class may subclass both
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DNError):
            return cause
        return Internal(f"{what} failed: {cause!r}")
    if isinstance(exc, DNError):
        return exc
    if isinstance(exc, rx.RayActorError | rx.ActorUnavailableError):
        return Unavailable(
            f"{what}: the actor is unavailable (restarting or dead): {exc}", outcome_unknown=True
        )
    if isinstance(exc, rx.GetTimeoutError):
        return Unavailable(f"{what} timed out", outcome_unknown=True)
    if isinstance(exc, rx.RayError):
        return Unavailable(f"{what}: {type(exc).__name__}: {exc}", outcome_unknown=True)
    if isinstance(exc, TypeError | pickle.PicklingError | AttributeError):
        return InvalidArgument(f"{what}: an argument cannot be serialized: {exc}")
    return Internal(f"{what} failed unexpectedly: {exc!r}")


def get_actor(name: str, namespace: str) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise Unavailable(f"no actor {name!r} in namespace {namespace!r}") from None


def start_shards(
    namespace: str,
    shards: int,
    store: str,
    settings: dict[str, Any],
    clock_skew_ms: int,
    num_cpus: float,
    max_concurrency: int,
    env: Mapping[str, str],
    shell: dict[str, Any] | None = None,
    first: int = 0,
) -> list[Any]:
    """Create (or find) the shard actors ``first`` .. ``shards - 1`` of a deployment (every
    one by default); returns their handles."""
    cls = _shard_actor_class()
    runtime_env = {"env_vars": {**MALLOC_ENV, **env}}
    handles = []
    for i in range(first, shards):
        opts: dict[str, Any] = dict(
            name=shard_name(i),
            namespace=namespace,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=max_concurrency,
            num_cpus=num_cpus,
            get_if_exists=True,
            scheduling_strategy="SPREAD",
        )
        opts["runtime_env"] = runtime_env
        handles.append(cls.options(**opts).remote(store, i, settings, clock_skew_ms, shell))
    return handles


def kill_actor(name: str, namespace: str, restart: bool = False) -> bool:
    """Kill an actor by name; ``restart=True`` lets Ray restart it. False if it is absent."""
    try:
        actor = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.kill(actor, no_restart=not restart)
    return True


class ShardGroup:
    """Calls to the shard actors of one deployment (implements ``ShardCalls``)."""

    def __init__(
        self,
        namespace: str,
        shards: int,
        settings: ShellSettings | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.namespace = namespace
        self.shards = shards
        self.settings = settings if settings is not None else ShellSettings()
        self.call_timeout_s = self.settings.call_timeout_s
        self._backoff = backoff if backoff is not None else self.settings.backoff()
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.shards

    def resize(self, shards: int) -> None:
        """Call ``shards`` shards from now (a reshard changed the count)."""
        self.shards = shards

    def __getstate__(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "shards": self.shards, "settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["namespace"], state["shards"], state["settings"])

    def _handle(self, i: int) -> Any:
        h = self._handles.get(i)
        if h is None:
            h = self._handles[i] = get_actor(shard_name(i), self.namespace)
        return h

    def _submit(self, i: int, method: str, args: tuple, split: bool = False) -> Any:
        what = f"shard {i}.{method}"
        h = self._handle(i)
        try:
            if split:  # a method that returns two values, taken as two objects
                return getattr(h, method).options(num_returns=2).remote(*args)
            return getattr(h, method).remote(*args)
        except Exception as exc:
            raise map_error(exc, what) from exc

    def _get(self, i: int, method: str, ref: Any) -> Any:
        try:
            return ray.get(ref, timeout=self.call_timeout_s)
        except Exception as exc:
            err = map_error(exc, f"shard {i}.{method}")
            if isinstance(exc, rx.RayActorError | rx.ActorUnavailableError):
                self._handles.pop(i, None)
            raise err from None

    def start(self, i: int, method: str, args: tuple, done: Callable[[Any], None]) -> None:
        """Call ``method(*args)`` on shard ``i`` without waiting: ``done`` gets the result or
        the mapped :class:`DNError` once the call ends, on a thread of Ray's (it must only
        record the outcome, never call Ray). No retry here: the caller decides."""
        try:
            fut = self._submit(i, method, args).future()
        except DNError as exc:
            done(exc)
            return

        def finished(f: Any) -> None:
            try:
                out = f.result()
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an outcome
                out = map_error(exc, f"shard {i}.{method}")
                if isinstance(exc, rx.RayActorError | rx.ActorUnavailableError):
                    self._handles.pop(i, None)
            done(out)

        fut.add_done_callback(finished)

    def call(self, i: int, method: str, *args: Any, retry_s: float = 0.0) -> Any:
        out = self.call_each({i: (method, args)}, retry_s)[i]
        if isinstance(out, BaseException):
            raise out
        return out

    def call_each(
        self, calls: Mapping[int, tuple[str, tuple]], retry_s: float = 0.0, split: bool = False
    ) -> dict[int, Any]:
        """See :class:`coordinator.client.fanout.ShardCalls`. ``split``: the methods return a
        pair; its first value is fetched, the second is left in Ray's object store and given as
        its ``ObjectRef`` (owned by this process, so it outlives the shard's restart): a
        successful entry is ``(first, ref)``."""
        retries = self._backoff.within(retry_s)
        pending = dict(calls)
        out: dict[int, Any] = {}
        while pending:
            refs: dict[int, Any] = {}
            for i, (method, args) in pending.items():
                try:
                    if split:  # plain calls keep _submit's three arguments (test doubles)
                        refs[i] = self._submit(i, method, args, True)
                    else:
                        refs[i] = self._submit(i, method, args)
                except DNError as exc:
                    out[i] = exc
            for i, ref in refs.items():
                try:
                    if split:
                        out[i] = (self._get(i, pending[i][0], ref[0]), ref[1])
                    else:
                        out[i] = self._get(i, pending[i][0], ref)
                except DNError as exc:
                    out[i] = exc
            failed = {i: c for i, c in pending.items() if isinstance(out.get(i), Unavailable)}
            delay = retries.next_delay() if failed else None
            if delay is None:
                break
            log.info(
                "retrying %s on shards %s: %s",
                [m for m, _ in failed.values()],
                sorted(failed),
                out[min(failed)],
            )
            self._backoff.sleep(delay)
            pending = failed
        return out

    def pids(self) -> dict[int, int]:
        """The process id of each shard actor (tests kill them)."""
        return {i: self.call(i, "pid") for i in range(self.shards)}
