"""``dn move-slots`` and ``dn reshard``: slots moved between shards, and the shard count
changed, online (issue 17; decision 0018), with progress while a reshard runs.

Called by :mod:`coordinator.cli.main` with a connected client. Prints to stdout.
"""

from __future__ import annotations

import threading
from typing import Any


def move_slots(client: Any, slots: str, to: int) -> int:
    """``dn move-slots --slots 0-99,200 --to 2``."""
    version = client.move_slots(parse_slots(slots), to)
    print(f"slot map v{version}; slots per shard {_per_shard(client)}")
    return 0


def reshard(client: Any, shards: int) -> int:
    """``dn reshard --shards N``: each new shard count and each move as it happens."""
    before = client.status()["coordinator"]["slots"]["per_shard"]
    print(f"resharding {len(before)} -> {shards} shards (slots move by reference)...")
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_moves,
        args=(client.coordinator_status, stop, print, 0.2, len(before)),
        daemon=True,
    )
    watcher.start()
    try:
        done = client.reshard(shards)
    finally:
        stop.set()
        watcher.join()
    grown = shards - len(before)
    if grown > 0:
        print(f"{grown} new shard(s) started in {done['start_s']:.1f} s")
    print(
        f"{done['moved_slots']} slots moved in {done['move_s']:.1f} s; slot map "
        f"v{done['map_version']}; per shard {_per_shard(client)}"
    )
    return 0


def _per_shard(client: Any) -> str:
    per = client.status()["coordinator"]["slots"]["per_shard"]
    return ", ".join(f"{i}: {per[i]}" for i in sorted(per, key=int))


def watch_moves(
    status: Any, stop: threading.Event, say: Any, every_s: float = 0.2, shards: Any = None
) -> int:
    """Until ``stop``: every ``every_s`` the coordinator's ``status()``, and a line for each move
    seen (its slots, from and to) and for each new shard count (``shards``: the count before);
    returns the lines."""
    seen, n = None, 0
    while not stop.wait(every_s):
        try:
            st = status()
        except Exception:  # noqa: BLE001 - progress only: the reshard's own call reports
            continue
        mv = st.get("move")
        if mv and mv["id"] != seen:
            seen = mv["id"]
            for p in mv.get("parts", [mv]):  # a step of several parts, or one
                n += 1
                count = sum(hi - lo + 1 for lo, hi in p["slots"])
                say(f"  move {p['id']}: {count} slots, shard {p['from']} -> shard {p['to']}")
        if st.get("shards") != shards:
            if shards is not None:
                say(f"  shards: {st.get('shards')}")
                n += 1
            shards = st.get("shards")
    return n


def parse_slots(text: str) -> list[int]:
    """``"0-99,200,300-301"`` as the slots it names."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SystemExit(
            f"dn: --slots {text!r}: expected numbers and ranges, e.g. 0-99,200"
        ) from None
    return out
