"""Text rendering of ``Client.status()`` for ``dn status``: one table per shard.

Per shard: epoch and state, the buffers with their timestamp ranges (mutable first, then the
checkpoint queue), ranges, checkpoints, the last checkpoint, the log, the rows in memory, the
objects and bytes live, objects awaiting garbage collection, and compaction debt.
Timestamps print as the raw int64 and, where useful, the wall-clock time of their physical
part (UTC).

Pure formatting: no Ray, no I/O. Any caller.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from dn.clock import LOGICAL_BITS


def ts_text(ts: int | None) -> str:
    """``ts`` with its wall-clock time, e.g. ``117665516613599233 (11:28:26.959Z)``."""
    if ts is None:
        return "-"
    ms = ts >> LOGICAL_BITS
    if ms < 10**11:  # a manual clock's small numbers: no wall time
        return str(ts)
    when = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"{ts} ({when}Z)"


def size_text(n: Any) -> str:
    """Bytes for people: ``999 B``, ``1.5 KiB``, ``12.0 MiB``, ``3.2 GiB`` (``?`` if unknown)."""
    if not isinstance(n, int | float):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _table(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"  {k.ljust(width)}  {v}" for k, v in rows]


def render_shard(i: int, s: dict[str, Any]) -> list[str]:
    if "error" in s:
        return [f"shard {i}: UNAVAILABLE: {s['error']}"]
    lines = [
        f"shard {i}  (pid {s.get('actor', {}).get('pid', '?')}, "
        f"host {s.get('actor', {}).get('host', '?')})"
    ]
    bufs = s.get("buffers", [])
    buf_lines = []
    for b in bufs:
        kind = "immutable" if b.get("frozen") else "mutable  "
        buf_lines.append(
            f"{kind} [{b['from']} - {b['to'] if b['to'] is not None else '...'}] "
            f"{b['commits']} commits, {b['rows']} rows, {size_text(b['bytes'])}"
        )
    ranges = s.get("ranges", [])
    cps = s.get("checkpoints", [])
    logst = s.get("log") or {}
    rows = [
        ("epoch", f"{s['epoch']}  (state {s['state']}, manifest v{s.get('manifest_version')})"),
        ("clock", ts_text(s.get("clock"))),
        ("buffers", buf_lines[0] if buf_lines else "-"),
        *[("", b) for b in buf_lines[1:]],
        ("checkpoint queue", f"{s['queue_length']} buffers, {size_text(s['queue_bytes'])}"),
        (
            "ranges",
            f"{len(ranges)}"
            + (
                f"  first [{ranges[0][0]}-{ranges[0][1]}], last [{ranges[-1][0]}-{ranges[-1][1]}]"
                if ranges
                else ""
            ),
        ),
        ("checkpoints", f"{len(cps)}" + (f"  newest {list(reversed(cps[-3:]))}" if cps else "")),
        ("last checkpoint", ts_text(s.get("last_checkpoint"))),
        (
            "log size",
            f"{logst.get('live_objects', '?')} live objects (seq "
            f"{logst.get('low_seq', '?')}..{logst.get('next_seq', '?')}), "
            f"{size_text(logst.get('bytes_written'))} written since start",
        ),
        (
            "rows",
            f"{s.get('rows_in_memory', 0)} in memory; "
            f"{s.get('counters', {}).get('rows_written', 0)} written since start",
        ),
        ("commits", f"{s.get('commits', 0)} in {s.get('group_commits', 0)} group commits"),
    ]
    obj = s.get("objects")
    if obj:
        rows += [
            (
                "objects live",
                f"{obj['live_ranges']} range objects, {size_text(obj['live_range_bytes'])}; "
                f"{obj['live_checkpoints']} checkpoints",
            ),
            (
                "awaiting gc",
                f"{obj['awaiting_gc']} objects ({obj['deleted_by_gc']} deleted since start)",
            ),
            (
                "compaction",
                f"debt {obj['compaction_debt']} merges (bound "
                f"{obj['compaction_bound']} objects); "
                f"{s.get('counters', {}).get('compactions', 0)} since start",
            ),
            ("oldest readable", ts_text(s.get("oldest_readable"))),
        ]
    mv = s.get("moves")
    if mv and mv.get("moves"):
        given = sum(m["slots"] for m in mv["moves"] if m["kind"] == "out")
        taken = sum(m["slots"] for m in mv["moves"] if m["kind"] == "in")
        refs = sum(m["sources"] for m in mv["moves"] if m["kind"] == "in")
        pending = mv.get("pending_moves") or []
        left = mv.get("moves_to_absorb", 0)
        rows.append(
            (
                "slot moves",
                f"{len(mv['moves'])} ({given} slots given, {taken} taken, read through "
                f"{refs} referenced objects); {mv['refused_slots']} slots refused"
                + (f"; IN PROGRESS: moves {pending}" if pending else "")
                + (
                    f"; settling: {left} moves not yet in this shard's own objects"
                    if left
                    else "; all settled into this shard's own objects"
                ),
            )
        )
    m = s.get("maintenance")
    if m:
        rows.append(
            (
                "maintenance",
                f"{m['rounds']} rounds, {m['failures']} failures"
                + (f", last error: {m['last_error']}" if m.get("last_error") else ""),
            )
        )
    return lines + _table(rows)


def _per_s(a: dict, b: dict, seconds: float, get: Any) -> float:
    return max(0.0, (get(b) - get(a)) / seconds)


def rates(prev: dict[str, Any], cur: dict[str, Any], seconds: float) -> list[str]:
    """One line per shard: rows written, commits and log bytes per second between two
    statuses ``seconds`` apart (``dn status --watch``)."""
    out = [f"rates over the last {seconds:.1f} s:"]
    for i in sorted(cur.get("shards", {}), key=int):
        a, b = prev.get("shards", {}).get(i, {}), cur["shards"][i]
        if "error" in a or "error" in b or seconds <= 0:
            out.append(f"  shard {i}: -")
            continue

        rows = _per_s(a, b, seconds, lambda s: s.get("counters", {}).get("rows_written", 0))
        commits = _per_s(a, b, seconds, lambda s: s.get("commits", 0))
        logged = _per_s(a, b, seconds, lambda s: (s.get("log") or {}).get("bytes_written") or 0)
        out.append(
            f"  shard {i}: {rows:,.0f} rows/s, {commits:,.0f} commits/s, "
            f"{size_text(logged)}/s logged"
        )
    return out


def render(status: dict[str, Any]) -> str:
    c = status.get("coordinator", {})
    out = [f"DN deployment {status.get('namespace')!r}"]
    if "error" in c:
        out.append(f"coordinator: UNAVAILABLE: {c['error']}")
    else:
        dbs = c.get("databases", {})
        out.append(
            f"coordinator: {c.get('shards')} shards, hash {c.get('hash')}, store "
            f"{c.get('store')}, catalog v{c.get('catalog_version')}"
            + (f", PENDING DDL {c['pending_ddl']}" if c.get("pending_ddl") else "")
        )
        out.append(
            "tables: " + (", ".join(f"{d}.{t}" for d in sorted(dbs) for t in dbs[d]) or "(none)")
        )
        sl = c.get("slots")
        if sl:
            per = sl.get("per_shard", {})
            owned = ", ".join(f"{i}: {per[i]}" for i in sorted(per, key=int))
            out.append(f"slots: {sl['count']} (map v{sl['version']}); per shard {owned}")
        mv = c.get("move")
        for p in mv.get("parts", [mv]) if mv else ():  # a step of several parts, or one
            n = sum(hi - lo + 1 for lo, hi in p["slots"])
            out.append(
                f"MOVE IN PROGRESS: map v{mv['id']}, {n} slots from shard {p['from']} to "
                f"shard {p['to']}"
            )
    for i in sorted(status.get("shards", {}), key=int):
        out.append("")
        out.extend(render_shard(int(i), status["shards"][i]))
    return "\n".join(out)
