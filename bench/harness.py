"""The measuring harness: repeated runs, summaries, figures, progress on stderr.

A *figure* is one line of the results table: our engine's value (median, min, max over the
runs), the peer's value measured in the same run of the benchmark, the ratio, and the target
where the issue sets one. ``ratio`` always reads "times better than the peer": ours/peer for
throughputs (higher is better), peer/ours for costs (lower is better: objects, bytes,
latencies).

Runs of ours and of the peer are interleaved (ours, peer, ours, peer, ...) so that the noise
of a shared 2-core machine falls on both alike; every run starts from a fresh temp directory
under /tmp unless the figure says otherwise.

Not here: what is measured (see the ``vs_*`` and ``cluster`` modules), output formats
(:mod:`bench.report`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_T0 = time.perf_counter()


def progress(msg: str) -> None:
    """One line of progress on stderr, with the seconds since the benchmark started."""
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def tempdir(tag: str) -> str:
    """A fresh directory under /tmp; remove it with :func:`rmtree`."""
    return tempfile.mkdtemp(prefix=f"dnbench-{tag}-", dir="/tmp")


def rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the values themselves."""
    if not values:
        return {"median": None, "min": None, "max": None, "runs": 0, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
        "values": [round(v, 6) for v in values],
    }


@dataclass
class Figure:
    """One measured figure; see the module docstring for ``ratio``."""

    id: str
    group: str
    title: str
    unit: str
    higher_is_better: bool = True
    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    peer_name: str | None = None
    #: minimum ratio to the peer, or (with ``absolute``) the bound on our own median
    target: float | None = None
    absolute: bool = False
    note: str = ""
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio(self) -> float | None:
        if not self.ours or not self.peer:
            return None
        o, p = statistics.median(self.ours), statistics.median(self.peer)
        if self.higher_is_better:
            return o / p if p else None
        if o == 0:
            return float("inf") if p > 0 else 1.0
        return p / o

    def target_met(self) -> bool | None:
        if self.target is None or self.skipped or not self.ours:
            return None
        if self.absolute:
            o = statistics.median(self.ours)
            return o >= self.target if self.higher_is_better else o <= self.target
        r = self.ratio()
        return None if r is None else r >= self.target

    def to_json(self) -> dict[str, Any]:
        r = self.ratio()
        out: dict[str, Any] = {
            "id": self.id,
            "group": self.group,
            "title": self.title,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "ours": summary(self.ours),
            "peer_name": self.peer_name,
            "peer": summary(self.peer) if self.peer_name else None,
            "ratio": None if r is None else (r if r != float("inf") else "inf"),
        }
        if self.target is not None:
            out["target"] = (
                {"min_ratio": self.target}
                if not self.absolute
                else {("min" if self.higher_is_better else "max"): self.target}
            )
            out["target_met"] = self.target_met()
        if self.note:
            out["note"] = self.note
        if self.skipped:
            out["skipped"] = self.skipped
        if self.extra:
            out["extra"] = self.extra
        return out


def figure_from_json(d: dict[str, Any]) -> Figure:
    """A :class:`Figure` back from :meth:`Figure.to_json` (its runs are kept there)."""
    target = d.get("target") or {}
    absolute = bool(target) and "min_ratio" not in target
    return Figure(
        id=d["id"],
        group=d["group"],
        title=d["title"],
        unit=d["unit"],
        higher_is_better=d["higher_is_better"],
        ours=list((d.get("ours") or {}).get("values", [])),
        peer=list((d.get("peer") or {}).get("values", [])),
        peer_name=d.get("peer_name"),
        target=next(iter(target.values()), None) if target else None,
        absolute=absolute,
        note=d.get("note", ""),
        skipped=d.get("skipped"),
        extra=d.get("extra", {}),
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds taken by ``fn()`` and its result."""
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def cpu_count() -> int:
    return os.cpu_count() or 1
