"""Output of the benchmark: bench/results.json, the PNG chart and the printed table.

The JSON holds, per figure, our median/min/max and every run's value, the peer's likewise, the
ratio ("times better than the peer", see :mod:`bench.harness`), and target/target_met where the
issue sets a target; at the top, the machine (CPU count, Python, platform), the mode (quick or
full) and the runs per figure.

The chart (matplotlib, Agg backend) shows the ratio to the peer per figure on a log scale,
with the target as a tick, and our absolute figures for the Ray cluster part.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import Figure, cpu_count


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    a = abs(v)
    if a >= 100_000:
        return f"{v / 1000:,.0f}k"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(figs: list[Figure]) -> str:
    """A Markdown table: id, figure, ours (median [min-max]), peer, ratio, target, met."""
    lines = [
        "| id | figure | unit | ours median [min-max] | peer median | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        if f.skipped:
            lines.append(f"| {f.id} | {f.title} | {f.unit} | skipped | - | - | {_target(f)} | - |")
            continue
        o = (
            f"{_fmt(statistics.median(f.ours))} [{_fmt(min(f.ours))}-{_fmt(max(f.ours))}]"
            if f.ours
            else "-"
        )
        p = f"{_fmt(statistics.median(f.peer))} ({f.peer_name})" if f.peer else "-"
        r = f.ratio()
        rs = "-" if r is None else ("inf" if r == float("inf") else f"{r:.2f}x")
        met = f.target_met()
        ms = "-" if met is None else ("yes" if met else "NO")
        lines.append(f"| {f.id} | {f.title} | {f.unit} | {o} | {p} | {rs} | {_target(f)} | {ms} |")
    return "\n".join(lines)


def _target(f: Figure) -> str:
    if f.target is None:
        return "-"
    if f.absolute:
        op = ">=" if f.higher_is_better else "<="
        return f"{op} {_fmt(f.target)}" if f.target else "0"
    return f">= {f.target:g}x"


def write_json(path: Path, figs: list[Figure], meta: dict[str, Any]) -> None:
    out = {
        "machine": {
            "cpu_count": cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
        "figures": [f.to_json() for f in figs],
    }
    path.write_text(json.dumps(out, indent=2) + "\n")


def chart(path: Path, figs: list[Figure], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peer = [
        f
        for f in figs
        if f.peer and f.ours and not f.skipped and f.ratio() not in (None, float("inf"))
    ]
    absolute = [f for f in figs if not f.peer_name and f.ours and not f.skipped]
    fig, axes = plt.subplots(
        1, 2, figsize=(15, max(4, 0.38 * max(len(peer), 6))), gridspec_kw={"width_ratios": [3, 2]}
    )
    ax = axes[0]
    names = [f"{f.id} {f.title[:46]}" for f in peer]
    ratios = [f.ratio() for f in peer]
    colors = [
        "tab:green"
        if f.target_met() or (f.target is None and r >= 1)
        else ("tab:red" if f.target is not None else "tab:orange")
        for f, r in zip(peer, ratios)
    ]
    y = range(len(peer))
    ax.barh(list(y), ratios, color=colors)
    for i, f in enumerate(peer):
        if f.target is not None and not f.absolute:
            ax.plot([f.target, f.target], [i - 0.4, i + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="grey", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("times better than the peer (log scale); black tick = target")
    ax.set_title("DN vs SlateDB / Delta Lake, same run")
    ax2 = axes[1]
    if absolute:
        vals = [statistics.median(f.ours) for f in absolute]
        ax2.barh(
            range(len(absolute)),
            vals,
            color=[
                "tab:green"
                if f.target_met()
                else ("tab:red" if f.target_met() is False else "tab:blue")
                for f in absolute
            ],
        )
        for i, f in enumerate(absolute):
            if f.target:
                ax2.plot([f.target, f.target], [i - 0.4, i + 0.4], color="black", lw=2)
        ax2.set_yticks(range(len(absolute)))
        ax2.set_yticklabels([f"{f.id} {f.title[:40]}" for f in absolute], fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xlabel("rows/s (median); black tick = target")
    ax2.set_title("Shard and cluster figures")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
