"""FaultyStore: a seeded fault-injecting wrapper, for tests and reliability trials.

Like leveldb's fault-injection Env and SlateDB's simulation store: it wraps any store and,
following rules added with :meth:`FaultyStore.add_rule`, makes chosen operations fail in the ways
a real object store or disk does. Rule kinds:

============  ===========================================================================
kind          effect when the rule fires
============  ===========================================================================
error         raise ``Unavailable`` before doing anything
denied        raise ``InvalidArgument`` before doing anything: a definite, non-retryable
              refusal, as a store answers a request with expired credentials (a 403)
lost_ack      perform the operation, then raise ``Unavailable(outcome_unknown=True)``
torn          put/put_if_absent only: store a strict prefix of the bytes (a truncated
              object), then raise ``Unavailable(outcome_unknown=True)``
latency       sleep ``latency_s`` (through the injected ``sleep``), then perform it
stale_list    list only: return the listing without the newest matching key
============  ===========================================================================

A rule matches an operation when ``op`` is None or equal to it, and the key starts with the
rule's ``prefix`` (for ``list``, when the listed prefix and the rule's prefix overlap). A
matching rule fires with probability ``error_rate`` and at most ``count`` times. Rules are
tried in the order added; the first that fires decides the operation's fate.

"Newest" for ``stale_list`` is the matching key most recently written through this wrapper;
if none was, the greatest key (DN keys are zero-padded timestamps, so that is the newest).

Crashes: :meth:`crash_after` lets ``n`` more operations run and then raises
:class:`SimulatedCrash` on every later one (a dead process does nothing more); the ``on_op``
hook is called with ``(op, key)`` before each operation and may raise anything.

Invariant: given the seed and the same sequence of calls, the same faults fire.

Not done: faults in ``close``, reordering of concurrent operations.

Callers: any thread (one lock guards the rules and the random generator).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dn.errors import InvalidArgument, Unavailable
from dn.store.base import ObjectStore, read_range, reads_ranges

log = logging.getLogger(__name__)

T = TypeVar("T")

OPS = frozenset({"get", "put", "put_if_absent", "list", "delete"})
KINDS = frozenset({"error", "denied", "lost_ack", "torn", "latency", "stale_list"})
_PUTS = frozenset({"put", "put_if_absent"})


class SimulatedCrash(BaseException):
    """Raised by :meth:`FaultyStore.crash_after`. A BaseException, so that ``except Exception``
    handlers in the code under test do not swallow the "crash"."""


@dataclass(slots=True)
class FaultRule:
    """One fault rule; ``fired`` counts how often it has fired."""

    op: str | None
    prefix: str
    error_rate: float
    kind: str
    count: int | None
    latency_s: float
    fired: int = 0

    def matches(self, op: str, key: str) -> bool:
        if self.op is not None and self.op != op:
            return False
        if self.kind == "torn" and op not in _PUTS:
            return False
        if self.kind == "stale_list" and op != "list":
            return False
        if self.count is not None and self.fired >= self.count:
            return False
        if op == "list":
            return key.startswith(self.prefix) or self.prefix.startswith(key)
        return key.startswith(self.prefix)


class FaultyStore:
    """Wraps ``inner`` and injects the faults its rules describe."""

    def __init__(
        self,
        inner: ObjectStore,
        seed: int = 0,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.fired: Counter[str] = Counter()
        self.ops = 0
        self.on_op: Callable[[str, str], None] | None = None
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._crash_at: int | None = None
        self._crash_lands = False
        self._write_seq = 0
        self._written: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r}, rules={len(self._rules)})"

    # -- configuration ----------------------------------------------------------------------

    def add_rule(
        self,
        op: str | None = None,
        prefix: str = "",
        *,
        error_rate: float = 1.0,
        kind: str = "error",
        count: int | None = None,
        latency_s: float = 0.0,
    ) -> FaultRule:
        """Add a rule (see the module docstring) and return it."""
        if op is not None and op not in OPS:
            raise InvalidArgument(f"unknown store operation {op!r}; expected one of {sorted(OPS)}")
        if kind not in KINDS:
            raise InvalidArgument(f"unknown fault kind {kind!r}; expected one of {sorted(KINDS)}")
        if kind == "torn" and op not in (None, *_PUTS):
            raise InvalidArgument(f"fault kind 'torn' applies to put/put_if_absent, not {op!r}")
        if kind == "stale_list" and op not in (None, "list"):
            raise InvalidArgument(f"fault kind 'stale_list' applies to list, not {op!r}")
        if not 0.0 <= error_rate <= 1.0:
            raise InvalidArgument(f"error_rate must be in [0, 1], got {error_rate}")
        if count is not None and count < 0:
            raise InvalidArgument(f"count must be >= 0, got {count}")
        rule = FaultRule(op, prefix, error_rate, kind, count, latency_s)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def crash_after(self, n_ops: int | None, *, lands: bool = False) -> None:
        """Let ``n_ops`` more operations run, then raise :class:`SimulatedCrash` on every later
        one. With ``lands`` the first crashing operation takes effect before the crash (the
        process died after the store acknowledged it). ``None`` cancels."""
        with self._lock:
            self._crash_at = None if n_ops is None else self.ops + n_ops
            self._crash_lands = lands

    @property
    def crashed(self) -> bool:
        return self._crash_at is not None and self.ops > self._crash_at

    # -- the fault machinery ------------------------------------------------------------------

    def _decide(self, op: str, key: str) -> tuple[FaultRule | None, str | None]:
        """Count the operation; return the rule that fires (if any) and the crash to simulate:
        None, "crash", or "land" (perform the operation, then crash)."""
        with self._lock:
            self.ops += 1
            if self._crash_at is not None and self.ops > self._crash_at:
                first = self.ops == self._crash_at + 1
                return None, "land" if first and self._crash_lands else "crash"
            for rule in self._rules:
                if not rule.matches(op, key):
                    continue
                if rule.error_rate < 1.0 and self._rng.random() >= rule.error_rate:
                    continue
                rule.fired += 1
                self.fired[rule.kind] += 1
                return rule, None
            return None, None

    def _begin(self, op: str, key: str, run: Callable[[], object]) -> FaultRule | None:
        """Crash or call the hook as configured; return the rule that fires, if any."""
        rule, crash = self._decide(op, key)
        if crash is not None:
            if crash == "land":
                run()
            log.info("simulated crash at %s %r", op, key)
            raise SimulatedCrash(f"simulated crash at {op} {key!r}")
        if self.on_op is not None:
            self.on_op(op, key)
        return rule

    def _apply(self, op: str, key: str, rule: FaultRule | None, run: Callable[[], T]) -> T:
        """Run the operation under the generic kinds: error, denied, latency, lost_ack."""
        if rule is None:
            return run()
        log.debug("fault %s fires on %s %r", rule.kind, op, key)
        if rule.kind == "error":
            raise Unavailable(f"injected error on {op} {key!r}")
        if rule.kind == "denied":
            raise InvalidArgument(f"injected refusal (403) of {op} {key!r}")
        if rule.kind == "latency":
            self._sleep(rule.latency_s)
            return run()
        if rule.kind == "lost_ack":
            run()
            raise Unavailable(f"injected lost ack on {op} {key!r}", outcome_unknown=True)
        raise AssertionError(f"fault kind {rule.kind} cannot apply to {op}")

    def _note_written(self, key: str) -> None:
        with self._lock:
            self._write_seq += 1
            self._written[key] = self._write_seq

    # -- the store protocol -------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        def run() -> bytes:
            return self.inner.get(key)

        return self._apply("get", key, self._begin("get", key, run), run)

    @property
    def reads_ranges(self) -> bool:
        return reads_ranges(self.inner)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """A partial read is a ``get`` to the fault rules."""

        def run() -> bytes:
            return read_range(self.inner, key, start, length)

        return self._apply("get", key, self._begin("get", key, run), run)

    def _put(self, op: str, key: str, data: bytes) -> None:
        write = self.inner.put if op == "put" else self.inner.put_if_absent

        def run() -> None:
            write(key, data)
            self._note_written(key)

        rule = self._begin(op, key, run)
        if rule is not None and rule.kind == "torn":
            with self._lock:
                cut = self._rng.randrange(len(data)) if data else 0
            log.debug("fault torn fires on %s %r: %d of %d bytes", op, key, cut, len(data))
            write(key, bytes(data[:cut]))
            self._note_written(key)
            raise Unavailable(
                f"injected torn write on {op} {key!r} ({cut} of {len(data)} bytes)",
                outcome_unknown=True,
            )
        self._apply(op, key, rule, run)

    def put(self, key: str, data: bytes) -> None:
        self._put("put", key, data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._put("put_if_absent", key, data)

    def list(self, prefix: str) -> list[str]:
        def run() -> list[str]:
            return self.inner.list(prefix)

        rule = self._begin("list", prefix, run)
        if rule is None or rule.kind != "stale_list":
            return self._apply("list", prefix, rule, run)
        keys = self.inner.list(prefix)
        candidates = [k for k in keys if k.startswith(rule.prefix)]
        if candidates:
            with self._lock:
                newest = max(candidates, key=lambda k: (self._written.get(k, 0), k))
            keys = [k for k in keys if k != newest]
            log.debug("fault stale_list hides %r from list(%r)", newest, prefix)
        return keys

    def delete(self, key: str) -> None:
        def run() -> None:
            self.inner.delete(key)

        self._apply("delete", key, self._begin("delete", key, run), run)

    def close(self) -> None:
        self.inner.close()
