"""The shard process the crash trials kill: ``python -m tests.trials.crash_child CONFIG_JSON``.

It opens shard 0 of a local directory store (with the log on
:class:`dn.store.locallog.LocalLogStore`, as ``Engine.open`` of a directory does) through
:class:`tests.trials.tripwire.Tripwire` wrappers whose action is ``kill -9`` of this process,
so the process dies at exactly the chosen operation: during a log write, a buffer checkpoint,
a manifest commit, a checkpoint, a delete, or (``mode = "recover"``) any operation of the
recovery in ``Engine.open``. If the tripwire never fires, the process kills itself at the end
of its batches anyway: every run ends in a crash, never in a clean close.

Protocol on stdout, one line each, flushed at once (the parent reads them after the kill)::

    open                  recovery finished
    try <i>               batch i is about to be written
    ack <i> <ts>          batch i is durable and acknowledged at commit timestamp ts
    trip                  the tripwire fires now (the kill follows)
    error <repr>          a write failed (no faults are injected, so the trial fails)

CONFIG_JSON keys: ``url`` (store directory), ``seed`` (workload, see
:mod:`tests.trials.checker`), ``first``/``last`` (batch numbers), ``point`` (``[phase, nth,
when]`` or null), ``mode`` (``write`` or ``recover``), ``threads`` (writer threads),
``background`` (engine background thread on, else this process drives freezes, buffer
checkpoints, checkpoints, compaction and garbage collection itself, seeded).

Not here: checking (the parent does, in :mod:`tests.trials.crashes`).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading

from dn import AlreadyExists, Engine, ManualClock, Settings
from dn.store import LocalStore
from dn.store.locallog import LocalLogStore
from tests.trials.checker import DB, SCHEMA, TABLE, Workload
from tests.trials.tripwire import Point, Tripwire, sigkill_self

_out = threading.Lock()


def crash_settings(background: bool = False) -> Settings:
    """Small thresholds, so that a few dozen batches go through every phase."""
    return Settings(
        freeze_bytes=3_000,
        freeze_interval_s=None,
        checkpoint_delta=25,
        checkpoint_interval_s=None,
        log_delete_grace_s=0,
        gc_grace_s=0,
        retention_s=None,
        compaction_fanout=2,
        compaction_base_bytes=4_000,
        background=background,
        background_interval_s=0.002,
    )


def say(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _trip() -> None:
    say("trip")
    sigkill_self()


def maintain_step(eng: Engine, rng: random.Random) -> None:
    """One seeded round of the work a background thread would do."""
    x = rng.random()
    if x < 0.25:
        eng.freeze()
    elif x < 0.40:
        eng.flush()
    elif x < 0.48:
        eng.checkpoint()
    elif x < 0.56:
        eng.compact()
    elif x < 0.64:
        eng.maintain()
    elif x < 0.68:
        eng.collect_garbage(force=True)


def _writer(eng: Engine, work: Workload, batches: list[int]) -> None:
    for i in batches:
        say(f"try {i}")
        try:
            ts = work.write(eng, i)
        except Exception as exc:  # no faults are injected: any error is a finding
            say(f"error {exc!r}")
            raise
        say(f"ack {i} {ts}")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.CRITICAL)
    inner = LocalStore(cfg["url"])
    logs = LocalLogStore(cfg["url"])  # what Engine.open(url) uses for a local log
    if cfg.get("point"):
        inner = Tripwire(inner, Point(*cfg["point"]), _trip)
        logs = Tripwire(logs, Point(*cfg["point"]), _trip)
    eng = Engine.open(
        store=inner,
        log_store=logs,
        settings=crash_settings(cfg.get("background", False)),
        clock=ManualClock(),
    )
    say("open")
    if cfg["mode"] == "recover":
        sigkill_self()
    for ddl in (lambda: eng.create_database(DB), lambda: eng.create_table(DB, TABLE, SCHEMA, "k")):
        try:
            ddl()
        except AlreadyExists:
            pass
    work = Workload(cfg["seed"])
    rng = random.Random(cfg["seed"] * 7919 + cfg["first"])
    batches = list(range(cfg["first"], cfg["last"]))
    threads = int(cfg.get("threads", 1))
    if threads == 1 and not cfg.get("background"):
        for i in batches:
            _writer(eng, work, [i])
            maintain_step(eng, rng)
    else:
        ts = [
            threading.Thread(target=_writer, args=(eng, work, batches[t::threads]), daemon=True)
            for t in range(threads)
        ]
        for t in ts:
            t.start()
        while any(t.is_alive() for t in ts):
            if not cfg.get("background"):
                maintain_step(eng, rng)
            ts[0].join(0.001)
    sigkill_self()


if __name__ == "__main__":
    main()
