"""``python -m bench [--quick] [--only GROUP ...]``: run the benchmark, write the results.

Groups (run in this order): ``local`` (part 2, vs SlateDB on a local directory), ``delta``
(part 3, vs Delta Lake), ``s3`` (part 5, 2a-2c on a moto S3 server), ``cluster`` (part 4, shard
recovery and buffer checkpoints, then the Ray cluster), ``txn`` (part 6, atomic batches and
transactions on the Ray cluster, each against plain writes in the same run), ``arrow`` (part
7, reads into Arrow, change feeds, bytes stored and point gets on fresh data, vs Delta Lake),
``raydata`` (part 8, Ray Data's source and sink and the live feed on the Ray cluster).
``--quick`` uses fewer rows and 3 runs per figure; the full run uses 5 runs.

Writes bench/results.json and bench/results.png (``--out`` changes the directory) and prints
the table on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import arrow, cluster, raydata, report, reshard, txn, vs_delta, vs_slatedb
from bench.harness import Figure, cpu_count, figure_from_json, progress

GROUPS = {
    "local": lambda quick: vs_slatedb.run_local(quick),
    "delta": lambda quick: vs_delta.run(quick),
    "s3": lambda quick: vs_slatedb.run_s3(quick),
    "cluster": lambda quick: cluster.run(quick, not NO_RAY),
    "txn": lambda quick: txn.run(quick, not NO_RAY),
    "arrow": lambda quick: arrow.run(quick),
    "raydata": lambda quick: raydata.run(quick, not NO_RAY),
    "reshard": lambda quick: reshard.run(quick, not NO_RAY),
}
NO_RAY = False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows, 3 runs per figure")
    ap.add_argument(
        "--only", action="append", choices=sorted(GROUPS), help="run only this group (repeatable)"
    )
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent),
        help="directory for results.json and results.png",
    )
    ap.add_argument(
        "--no-ray",
        action="store_true",
        help="skip the Ray cluster figures (report them as skipped)",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS_JSON",
        help="do not measure: combine earlier results.json files (a later file's "
        "figures replace the same ids of an earlier one, e.g. a re-run group)",
    )
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    global NO_RAY
    NO_RAY = args.no_ray
    groups = args.only or list(GROUPS)
    mode = "quick" if args.quick else "full"
    runs = "3 runs per figure, fewer rows" if args.quick else "5 runs per figure"
    progress(f"mode {mode}: {runs}; groups {', '.join(groups)}; {cpu_count()} CPUs")
    t0 = time.perf_counter()
    figs: list[Figure] = []
    errors: dict[str, str] = {}
    for g in groups:
        progress(f"group {g}")
        try:
            figs.extend(GROUPS[g](args.quick))
        except Exception as exc:  # report what ran; a failed group is named in the output
            errors[g] = f"{type(exc).__name__}: {exc}"
            progress(f"group {g} FAILED: {errors[g]}")
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "mode": mode,
        "runs_per_figure": 3 if args.quick else 5,
        "groups": groups,
        "elapsed_s": round(elapsed, 1),
        "errors": errors,
        "note": (
            "quick mode: fewer rows and 3 runs per figure"
            if args.quick
            else "full mode: 5 runs per figure"
        ),
    }
    report.write_json(out / "results.json", figs, meta)
    title = (
        f"python -m bench{' --quick' if args.quick else ''}: {cpu_count()} CPUs, "
        f"{meta['note']}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    try:
        report.chart(out / "results.png", figs, title)
    except Exception as exc:
        progress(f"chart failed: {exc!r}")
    print(f"\nDN benchmark ({mode}; {meta['note']}; {cpu_count()} CPUs; {elapsed:.0f} s)\n")
    print(report.table(figs))
    if errors:
        print("\nfailed groups: " + "; ".join(f"{g}: {e}" for g, e in errors.items()))
    missed = [f.id for f in figs if f.target_met() is False]
    print(f"\ntargets missed: {', '.join(missed) if missed else 'none'}")
    print(f"wrote {out / 'results.json'} and {out / 'results.png'}")
    return 1 if errors else 0


def merge(paths: list[str], out: Path) -> int:
    """Combine result files: figures by id, later files win; the table and chart anew."""
    figs: dict[str, Figure] = {}
    metas = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        metas.append(data)
        for f in data["figures"]:
            figs[f["id"]] = figure_from_json(f)
    ordered = list(figs.values())
    meta = {
        "mode": " + ".join(m.get("mode", "?") for m in metas),
        "runs_per_figure": max(m.get("runs_per_figure", 0) for m in metas),
        "groups": sorted({g for m in metas for g in m.get("groups", [])}),
        "elapsed_s": round(sum(m.get("elapsed_s", 0) for m in metas), 1),
        "errors": {},
        "merged_from": [m.get("when") for m in metas],
        "note": "merged: " + "; ".join(f"{m.get('when')} {m.get('groups')}" for m in metas),
    }
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", ordered, meta)
    try:
        report.chart(
            out / "results.png", ordered, f"python -m bench (merged runs): {cpu_count()} CPUs"
        )
    except Exception as exc:
        progress(f"chart failed: {exc!r}")
    print(report.table(ordered))
    missed = [f.id for f in ordered if f.target_met() is False]
    print(f"\ntargets missed: {', '.join(missed) if missed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
