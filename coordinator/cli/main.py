"""The ``dn`` command line.

::

    dn up      [--config cluster.yaml] [--address ADDR] [--shards N] [--store URL]
               [--namespace NS] [--num-cpus N] [--port P] [--no-dashboard]
    dn down    [--namespace NS] [--address ADDR] [--stop-ray]
    dn status  [--namespace NS] [--address ADDR] [--json] [--watch S [--count N]]
    dn snapshot [--namespace NS] [--address ADDR]
    dn scan    DB TABLE [--snapshot TS|TIME] [--columns a,b] [--limit N]
    dn changes DB TABLE --from TS|TIME [--snapshot TS|TIME] [--columns a,b] [--follow]
    dn demo    [--address ADDR] [--shards N] [--tasks N] [--rows N] [--store DIR] [--keep]
    dn logs    SHARD|coordinator [--tail N] [--follow] [--stream out|err|both]
    dn bucket  [--config cluster.yaml] [--store URL] [--check]

``dn up`` without ``--address`` starts a local Ray head on 127.0.0.1 (``ray start --head``,
so the cluster outlives the command) and deploys there; with ``--address`` (e.g. ``auto`` on
a cluster's head node, as ``cluster.yaml`` does) it deploys into that cluster. Without
``--config`` it uses the embedded defaults (4 shards, store ``./data``). ``dn down`` removes
the deployment (its data stays in the store); ``--stop-ray`` also stops the Ray head ``dn up``
started (only its processes: other Ray clusters on the machine are left alone). The head
``dn up`` starts runs Ray's dashboard on 127.0.0.1:8265 (shard logs, the DN metrics of
``docs/metrics.md``) unless ``--no-dashboard``.

Other commands connect to the cluster at ``--address`` (default ``auto``: the one ``ray
start`` left on this machine, or RAY_ADDRESS). ``dn scan`` and ``dn changes`` print JSON
lines; bytes values are printed as base64 strings (standard alphabet, padded); composite
primary keys as arrays. A snapshot or ``--from`` may be a timestamp or an ISO-8601 time with a
UTC offset (:mod:`dn.timestamps`); ``dn snapshot`` prints the current one and its time. Exit
status: 0 ok, 1 a DN error (printed as ``error: <Kind>: msg``).

Output to stdout/stderr is this module's job (a command line, not library code).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

from coordinator.cli import bucket as bucket_cmd
from coordinator.cli import logs as logs_cmd
from coordinator.cli.ray_env import connect_lines, keep_ray_on_loopback
from dn.errors import DNError

#: How the commands take a snapshot or the start of a feed (see dn.timestamps).
TIME_HELP = "a timestamp, or an ISO-8601 time with a UTC offset (2026-12-06T07:30:00Z)"


def _time_arg(text: str) -> int | str:
    """A command line's snapshot or ``--from``: digits are a timestamp, anything else a time
    for the client to read (dn.timestamps)."""
    return int(text) if text.strip().isdigit() else text


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _columns(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _connect_ray(address: str | None, namespace: str) -> None:
    from coordinator.cli import ray_node

    ray_node.ensure_ray(address or os.environ.get("RAY_ADDRESS") or "auto", namespace)


def cmd_up(args: argparse.Namespace) -> int:
    from coordinator.cli import ray_node
    from coordinator.cli.deployment import deploy
    from coordinator.config import load_config

    overrides = {
        k: v
        for k, v in (("shards", args.shards), ("store", args.store), ("namespace", args.namespace))
        if v is not None
    }
    cfg = load_config(args.config, overrides)
    address = args.address
    if address is None:
        address = ray_node.start_ray_head(args.num_cpus, args.port, not args.no_dashboard)
        print(f"started a local Ray head at {address} (stop it with `dn down --stop-ray`)")
        if not args.no_dashboard:
            print("Ray dashboard: http://127.0.0.1:8265")
    _connect_ray(address, cfg.namespace)
    client = deploy(cfg, progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    info = client.info
    print(
        f"DN is up: {info['shards']} shards in namespace {cfg.namespace!r}, store {info['store']}"
    )
    for line in connect_lines(address, cfg.namespace):
        print(line)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from coordinator.cli import ray_node
    from coordinator.cli.deployment import shutdown

    try:
        _connect_ray(args.address, args.namespace)
        killed = shutdown(args.namespace)
        print(
            f"removed {len(killed)} actors from namespace {args.namespace!r}: "
            f"{', '.join(killed) or '-'}"
        )
    except ConnectionError as exc:
        print(f"no Ray cluster to connect to ({exc})")
    if args.stop_ray:
        ray_node.stop_local_ray()
        n = ray_node.stop_ray_head()
        if n:
            print(f"stopped the Ray head `dn up` started ({n} processes)")
        else:
            print("no Ray head started by `dn up` here (stop another one with `ray stop`)")
    return 0


def _client(args: argparse.Namespace):
    from coordinator.cli.deployment import connect

    _connect_ray(args.address, args.namespace)
    return connect(args.namespace)


def cmd_status(args: argparse.Namespace) -> int:
    from coordinator.cli.statusview import rates, render

    client = _client(args)
    st = client.status()
    if args.json:
        print(json.dumps(_jsonable(st), indent=2, default=str))
        return 0
    print(render(st))
    prev, t_prev, shown = st, time.monotonic(), 1
    while args.watch and (args.count is None or shown < args.count):
        try:
            time.sleep(args.watch)
            st, now = client.status(), time.monotonic()
        except KeyboardInterrupt:
            return 0
        print("\033[2J\033[H" if sys.stdout.isatty() else "", end="")
        print(render(st))
        print("\n" + "\n".join(rates(prev, st, now - t_prev)))
        prev, t_prev, shown = st, now, shown + 1
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from dn.timestamps import time_of

    ts = _client(args).snapshot()
    print(f"{ts}  {time_of(ts).isoformat(timespec='milliseconds').replace('+00:00', 'Z')}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    client = _client(args)
    n = 0
    for row in client.scan(
        args.db, args.table, snapshot=args.snapshot, columns=_columns(args.columns)
    ):
        if args.limit is not None and n >= args.limit:
            break
        sys.stdout.write(json.dumps(_jsonable(row)) + "\n")
        n += 1
    return 0


def cmd_changes(args: argparse.Namespace) -> int:
    client = _client(args)
    cols = _columns(args.columns)
    if args.follow:  # the live feed, until interrupted
        feed = client.subscribe(args.db, args.table, args.from_ts, cols, as_dicts=True)
    else:
        feed = client.changes(
            args.db, args.table, args.from_ts, snapshot=args.snapshot, columns=cols
        )
    for ch in feed:
        rec = {"ts": ch.ts, "kind": ch.kind, "type": ch.change_type, "pk": ch.pk, "row": ch.row}
        sys.stdout.write(json.dumps(_jsonable(rec)) + "\n")
        if args.follow:
            sys.stdout.flush()
    return 0


def cmd_move_slots(args: argparse.Namespace) -> int:
    from coordinator.cli.reshard import move_slots

    return move_slots(_client(args), args.slots, args.to)


def cmd_reshard(args: argparse.Namespace) -> int:
    from coordinator.cli.reshard import reshard

    return reshard(_client(args), args.shards)


def cmd_demo(args: argparse.Namespace) -> int:
    from coordinator.cli.demo import run_demo

    if args.address:
        _connect_ray(args.address, "dn-demo")
    run_demo(
        address=args.address,
        shards=args.shards,
        tasks=args.tasks,
        rows=args.rows,
        store=args.store,
        keep=args.keep,
        namespace=args.namespace,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dn", description="DN: a sharded table store on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, namespace: bool = True) -> None:
        sp.add_argument(
            "--address", default=None, help="Ray cluster address (default: auto / RAY_ADDRESS)"
        )
        if namespace:
            sp.add_argument("--namespace", default="dn", help="DN deployment namespace")

    up = sub.add_parser("up", help="start (or join) Ray and deploy DN")
    up.add_argument("--config", default=None, help="cluster.yaml (metadata.dn section)")
    up.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto)")
    up.add_argument("--namespace", default=None)
    up.add_argument("--shards", type=int, default=None)
    up.add_argument("--store", default=None, help="object store URL or directory")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray head")
    up.add_argument("--port", type=int, default=6379, help="GCS port of a local Ray head")
    up.add_argument(
        "--no-dashboard", action="store_true", help="start a local Ray head without its dashboard"
    )
    up.set_defaults(fn=cmd_up)

    down = sub.add_parser("down", help="remove the DN deployment (data stays)")
    common(down)
    down.add_argument(
        "--stop-ray", action="store_true", help="also stop the Ray head `dn up` started"
    )
    down.set_defaults(fn=cmd_down)

    snap = sub.add_parser("snapshot", help="the current snapshot timestamp and its time")
    common(snap)
    snap.set_defaults(fn=cmd_snapshot)

    status = sub.add_parser("status", help="a table per shard")
    common(status)
    status.add_argument("--json", action="store_true", help="raw status as JSON")
    status.add_argument(
        "--watch", type=float, default=None, metavar="S", help="refresh every S seconds, with rates"
    )
    status.add_argument(
        "--count", type=int, default=None, help="with --watch: refreshes, then exit"
    )
    status.set_defaults(fn=cmd_status)

    mv = sub.add_parser("move-slots", help="move slots to a shard online (by reference)")
    common(mv)
    mv.add_argument("--slots", required=True, help="slots and ranges, e.g. 0-99,200")
    mv.add_argument("--to", type=int, required=True, help="the shard that takes them")
    mv.set_defaults(fn=cmd_move_slots)

    rs = sub.add_parser("reshard", help="change the number of shards online (split or merge)")
    common(rs)
    rs.add_argument("--shards", type=int, required=True, help="the shard count to reach")
    rs.set_defaults(fn=cmd_reshard)

    scan = sub.add_parser("scan", help="rows as JSON lines")
    common(scan)
    scan.add_argument("db")
    scan.add_argument("table")
    scan.add_argument("--snapshot", type=_time_arg, default=None, help=TIME_HELP)
    scan.add_argument("--columns", default=None, help="comma-separated column names")
    scan.add_argument("--limit", type=int, default=None)
    scan.set_defaults(fn=cmd_scan)

    ch = sub.add_parser("changes", help="the change feed as JSON lines")
    common(ch)
    ch.add_argument("db")
    ch.add_argument("table")
    ch.add_argument("--from", dest="from_ts", type=_time_arg, required=True, help=TIME_HELP)
    ch.add_argument("--snapshot", type=_time_arg, default=None, help=TIME_HELP)
    ch.add_argument("--columns", default=None)
    ch.add_argument("--follow", action="store_true", help="go on with new changes as they land")
    ch.set_defaults(fn=cmd_changes)

    demo = sub.add_parser("demo", help="deploy, write from Ray tasks, read, summarize")
    demo.add_argument(
        "--address",
        default=None,
        help="use this Ray cluster (default: a local Ray instance started and stopped by the demo)",
    )
    demo.add_argument("--namespace", default=None)
    demo.add_argument("--shards", type=int, default=4)
    demo.add_argument("--tasks", type=int, default=16)
    demo.add_argument("--rows", type=int, default=100_000)
    demo.add_argument("--store", default=None, help="directory (default: a new temp dir)")
    demo.add_argument("--keep", action="store_true", help="leave the deployment running")
    demo.set_defaults(fn=cmd_demo)

    logs_cmd.add_parser(sub)
    bkt = sub.add_parser("bucket", help="check that the store's S3 bucket exists; make it if not")
    bucket_cmd.add_arguments(bkt)
    bkt.set_defaults(fn=bucket_cmd.cmd_bucket)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("up", "demo") and args.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local cluster
        if args.command == "up":  # it starts a `ray start` head, which requires a token
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    else:
        keep_ray_on_loopback(args.address)
    try:
        return args.fn(args)
    except DNError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"error: cannot reach a Ray cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
