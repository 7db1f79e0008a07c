"""The collector pause: Python's cyclic garbage collector off during a bulk read step.

A read that builds many objects that live on (row tuples, columns, dicts, decoded runs) makes
the collector start a collection every 700 allocations, each walking the new objects again:
about half of such a step's time, measured. Nothing such a step makes is cyclic garbage, so
:func:`paused_gc` turns the collector off around it.

Invariant: pauses in any threads overlap into one: the collector is turned back on when the
last running pause ends, and only if it was on when the first began. Not here: any other use of
:mod:`gc`; a pause is for short bulk steps, never around code that waits (I/O, locks).

Process-wide state behind one lock: any thread.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Pauses:
    """How many :func:`paused_gc` blocks are running, in any thread, and whether the first
    of them turned the collector off (it was on)."""

    lock = threading.Lock()
    depth = 0
    ours = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a bulk step makes many objects that live on
    (see the module docstring). Pauses in several threads overlap: the collector is turned
    back on when the last one ends, and only if it was on when the first began."""
    with _Pauses.lock:
        if _Pauses.depth == 0:
            _Pauses.ours = gc.isenabled()
            if _Pauses.ours:
                gc.disable()
        _Pauses.depth += 1
    try:
        yield
    finally:
        with _Pauses.lock:
            _Pauses.depth -= 1
            if _Pauses.depth == 0 and _Pauses.ours:
                gc.enable()
