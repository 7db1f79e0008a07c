"""The reliability trial runner: ``python -m tests.trials [--long] [--seed S] [--only NAME]``.

Runs every trial kind (or those named with ``--only``, comma-separated) for a number of seeds
starting at ``--seed``: the CI mode by default (seconds), hundreds of crash trials and minutes
of load with ``--long``. Progress goes to stderr; every failing (kind, seed) is printed with
the command that reproduces it; the JSON summary (see :class:`tests.trials.tally.Tally`) goes
to ``--json`` (default: stdout). Exit status 1 if any trial failed.

Kinds: ``crashes`` (SIGKILL of a shard process), ``simcrash`` (in-process simulated crashes),
``faults`` (injected store faults), ``zombies`` (fencing races), ``fuzz`` (malformed calls),
``planted`` (malformed objects in the store), ``load`` (64 writers, backpressure), ``txn``
(atomic batches and transactions across shards under restarts, killed clients and store
faults), ``bank`` (transfers in transactions: a constant total, a replayed history),
``clocks`` (repeatable reads on shards whose clocks disagree), ``moves`` (slot moves and
reshards under lost answers, shard restarts and a coordinator killed mid-move), ``ray``
(shard actors killed during ingest from Ray tasks, and fuzzed client calls; only with
``--long`` or when named, as it starts a Ray session).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback

from tests.trials import REGISTRY
from tests.trials.tally import Tally


def _command(kind: str, seed: int, long: bool) -> str:
    return f"python -m tests.trials --only {kind} --seed {seed} --count 1" + (
        " --long" if long else ""
    )


def run_kind(kind: str, first: int, count: int, long: bool, tally: Tally) -> None:
    """Run ``count`` trials of ``kind`` from seed ``first``; failures are recorded."""
    run = REGISTRY[kind].run
    stats = tally.kind(kind)
    for seed in range(first, first + count):
        t0 = time.monotonic()
        try:
            run(seed, long, tally)
        except Exception as exc:
            stats["failed"] += 1
            cmd = _command(kind, seed, long)
            # the innermost frames say where it broke (a threaded trial may not fail again)
            where = traceback.format_exc(limit=-12)
            tally.failures.append(
                {
                    "kind": kind,
                    "seed": seed,
                    "error": f"{exc!r}"[:2000],
                    "reproduce": cmd,
                    "where": where[-4000:],
                }
            )
            print(f"FAIL {kind} seed {seed}: {exc!r}"[:2000], file=sys.stderr)
            print(f"     reproduce: {cmd}", file=sys.stderr)
            print(where, file=sys.stderr)
        finally:
            stats["trials"] += 1
            stats["seconds"] = round(stats["seconds"] + time.monotonic() - t0, 2)
            tally.add("trials")
        if (seed - first + 1) % 10 == 0 or seed == first + count - 1:
            print(
                f"  {kind}: {seed - first + 1}/{count} trials, {stats['failed']} failed, "
                f"{stats['seconds']:.1f}s",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.trials", description=__doc__.split("\n")[0])
    p.add_argument("--long", action="store_true", help="the long mode (minutes, not seconds)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--count", type=int, help="trials per kind (default: the mode's)")
    p.add_argument("--only", help="comma-separated kinds: " + ", ".join(REGISTRY))
    p.add_argument("--json", help="write the JSON summary here (default: stdout)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the trials provoke warnings on purpose
    kinds = (
        args.only.split(",")
        if args.only
        else [k for k, spec in REGISTRY.items() if args.long or not spec.long_only]
    )
    unknown = [k for k in kinds if k not in REGISTRY]
    if unknown:
        p.error(f"unknown trial kinds {unknown}; known: {', '.join(REGISTRY)}")
    tally = Tally()
    mode = "long" if args.long else "ci"
    t0 = time.monotonic()
    for kind in kinds:
        spec = REGISTRY[kind]
        count = args.count or (spec.long_count if args.long else spec.ci_count)
        print(f"{kind}: {count} trials from seed {args.seed} ({mode})", file=sys.stderr)
        run_kind(kind, args.seed, count, args.long, tally)
    cmd = (
        "python -m tests.trials"
        + (" --long" if args.long else "")
        + (f" --seed {args.seed}" if args.seed else "")
        + (f" --only {args.only}" if args.only else "")
        + (f" --count {args.count}" if args.count else "")
    )
    summary = tally.summary(mode, cmd)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(summary, indent=2, default=str)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    for f in tally.failures:
        print(f"FAILED {f['kind']} seed {f['seed']}: {f['reproduce']}", file=sys.stderr)
    print(
        f"{summary['trials']} trials, {len(tally.failures)} failed, {summary['seconds']}s",
        file=sys.stderr,
    )
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
