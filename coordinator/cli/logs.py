"""``dn logs SHARD|coordinator``: the stdout and stderr of a DN actor's worker process.

::

    dn logs SHARD|coordinator [--namespace NS] [--address ADDR] [--tail N] [--follow]
                              [--stream out|err|both] [--source auto|api|files]

A shard's Python log records (warnings and errors: a shard that stops, a maintenance round
that fails) go to its worker's stderr; ``print`` goes to stdout. Two sources, tried in order
(``--source auto``):

1. **Ray's log API** (:func:`ray.util.state.get_log` with the actor's id, ``suffix`` ``out``
   or ``err``, ``tail`` and ``follow``): it reaches the actor on any node of the cluster, and
   is served by Ray's dashboard, so it needs one (``dn up`` starts it unless
   ``--no-dashboard``).
2. **The worker's log files** when the cluster has no dashboard:
   ``<session>/logs/worker-<worker id>-<job id>-<pid>.out|.err``, found by the actor's process
   id in Ray's actor table (:func:`coordinator.actor.handle.actor_record`). Only for an actor
   on the node this command runs on; an actor elsewhere is an :class:`Unavailable` that says to
   turn the dashboard on.

What it does not do: show earlier incarnations (a restarted actor is a new process with new
files; the old ones stay in the session's log directory), or follow an actor across a
restart (``--follow`` reads the process it found). Ray's marker lines (``:job_id:...``,
``:actor_name:...``) are left out.

Output to stdout is :func:`cmd_logs`'s job; the rest is library code and returns lines. Ray
is imported inside the functions, so importing the ``dn`` command does not import it. One
thread per followed stream (daemon threads, ended when the reader is closed).
"""

from __future__ import annotations

import argparse
import glob
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from dn.errors import InvalidArgument, Unavailable

#: Streams of a worker process, by the suffix of their log file.
STREAMS = ("out", "err")
#: Lines Ray writes into a worker's log files for its log monitor, not the program's output.
_MARKERS = (":job_id:", ":actor_name:", ":task_name:", ":task_attempt_number:")
#: How often a followed log file is read again.
POLL_S = 0.25


def actor_name(target: str) -> str:
    """The Ray actor name of a ``dn logs`` target: a shard number, or ``coordinator``."""
    from coordinator.actor.handle import COORDINATOR_NAME
    from shards.group import shard_name

    t = target.strip().lower()
    if t == "coordinator":
        return COORDINATOR_NAME
    if t.isdigit():
        return shard_name(int(t))
    raise InvalidArgument(f"dn logs takes a shard number or 'coordinator', not {target!r}")


def dashboard_url() -> str | None:
    """The URL of the connected Ray cluster's dashboard (it serves Ray's log API), or None
    when none answers as this cluster's. Ray records the dashboard's address even when it
    was not started, and another cluster on the machine may hold that port: the dashboard
    must answer with this cluster's session name."""
    import ray
    import requests
    from ray._private import ray_constants
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(
        ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD
    )
    if not raw:
        return None
    url = raw.decode() if isinstance(raw, bytes) else str(raw)
    url = url if "://" in url else f"http://{url}"
    try:
        resp = requests.get(
            f"{url}/api/version", headers=get_auth_headers_if_auth_enabled({}), timeout=5
        )
        session = resp.json().get("session_name") if resp.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None
    return url if session == ray.get_runtime_context().get_session_name() else None


def log_files(record: dict) -> dict[str, str]:
    """``{stream: path}`` of the worker log files of the actor ``record`` describes (its entry
    in Ray's actor table), on this node. Raises :class:`Unavailable` for an actor on another
    node or one not running (being created or restarted)."""
    import ray
    from ray._private.worker import global_worker

    pid, node = record.get("Pid"), (record.get("Address") or {}).get("NodeID")
    if record.get("State") != "ALIVE" or not pid:
        raise Unavailable(f"actor {record.get('Name')!r} is {record.get('State')}: no process")
    if node != ray.get_runtime_context().get_node_id():
        raise Unavailable(
            f"actor {record.get('Name')!r} runs on another node; without Ray's dashboard only "
            "this node's logs can be read (start the cluster with the dashboard on)"
        )
    logs_dir = global_worker.node.get_logs_dir_path()
    out = {}
    for stream in STREAMS:
        found = glob.glob(os.path.join(logs_dir, f"worker-*-{pid}.{stream}"))
        if not found:
            raise Unavailable(f"no {stream} log file of pid {pid} in the session's log directory")
        out[stream] = max(found, key=os.path.getmtime)  # a pid can recur; the newest is it
    return out


def _api_chunks(actor_id: str, stream: str, tail: int, follow: bool) -> Iterator[str]:
    import ray
    from ray.util.state import get_log

    address = ray.get_runtime_context().gcs_address
    yield from get_log(
        address=address,
        actor_id=actor_id,
        suffix=stream,
        tail=tail,
        follow=follow,
        errors="replace",
    )


def _tail_offset(f: BinaryIO, n: int) -> int:
    """The offset of the first of the last ``n`` lines of the open binary file ``f`` (-1:
    the whole file)."""
    end = f.seek(0, os.SEEK_END)
    if n < 0:
        return 0
    if n == 0:
        return end
    pos, newlines = end, 0
    while pos > 0:
        step = min(64 * 1024, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        if pos + step == end and block.endswith(b"\n"):
            block = block[:-1]  # the last line's own newline does not start another line
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) >= 0:
            newlines += 1
            if newlines == n:
                return pos + i + 1
    return 0


def _file_chunks(path: str, tail: int, follow: bool, stop: threading.Event) -> Iterator[str]:
    with open(path, "rb") as f:
        # Ray's markers open the file, so the last ``tail`` lines hold the last ``tail`` lines
        # of output, or all of it (an actor's worker has no marker lines further down)
        f.seek(_tail_offset(f, tail))
        while True:
            data = f.read()
            if data:
                yield data.decode("utf-8", errors="replace")
            elif not follow or stop.wait(POLL_S):
                return


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    """Whole lines out of text chunks, without Ray's marker lines."""
    rest = ""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split("\n")
        for line in whole:
            if not line.startswith(_MARKERS):
                yield line
    if rest and not rest.startswith(_MARKERS):
        yield rest


def _merged(sources: dict[str, Iterator[str]], stop: threading.Event) -> Iterator[tuple[str, str]]:
    """``(stream, line)`` from several line iterators as they come, one thread each."""
    q: queue.Queue = queue.Queue()

    def pump(stream: str, lines: Iterator[str]) -> None:
        try:
            for line in lines:
                if stop.is_set():
                    break
                q.put((stream, line))
        except Exception as exc:  # noqa: BLE001 - handed to the reader
            q.put((stream, exc))
        q.put((stream, None))

    for stream, lines in sources.items():
        threading.Thread(target=pump, args=(stream, lines), daemon=True).start()
    open_streams = len(sources)
    try:
        while open_streams:
            stream, item = q.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield stream, item
    finally:
        stop.set()


def read_log(
    target: str,
    namespace: str,
    *,
    tail: int = 100,
    follow: bool = False,
    streams: tuple[str, ...] = STREAMS,
    source: str = "auto",
) -> Iterator[tuple[str, str]]:
    """``(stream, line)`` of the log of ``target`` (a shard number or ``coordinator``) in the
    deployment ``namespace``: the last ``tail`` lines of each stream (-1: all), stdout's then
    stderr's; with ``follow``, the two streams' tails and then every new line of either as it
    is read, interleaved, until the iterator is closed. ``source``: ``api`` (Ray's log API),
    ``files`` (this node's log files) or ``auto`` (the API when the cluster has a dashboard).
    Needs a Ray connection."""
    from coordinator.actor.handle import actor_record

    if tail < -1:
        raise InvalidArgument("--tail takes a number of lines, or -1 for all")
    if source not in ("auto", "api", "files") or not set(streams) <= set(STREAMS) or not streams:
        raise InvalidArgument(f"bad source {source!r} or streams {streams!r}")
    record = actor_record(actor_name(target), namespace)
    use_api = source != "files" and dashboard_url() is not None
    if source == "api" and not use_api:
        raise Unavailable("the Ray cluster runs no dashboard, which serves Ray's log API")
    stop = threading.Event()
    if use_api:
        actor_id = record["ActorID"]
        sources = {s: _lines(_api_chunks(actor_id, s, tail, follow)) for s in streams}
    else:
        paths = log_files(record)
        sources = {s: _lines(_file_chunks(paths[s], tail, follow, stop)) for s in streams}
    try:
        if follow:
            yield from _merged(sources, stop)
        else:
            for s in streams:
                yield from ((s, line) for line in sources[s])
    finally:
        stop.set()


def cmd_logs(args: argparse.Namespace) -> int:
    from coordinator.cli import ray_node

    ray_node.ensure_ray(args.address or os.environ.get("RAY_ADDRESS") or "auto", args.namespace)
    streams = STREAMS if args.stream == "both" else (args.stream,)
    last = None
    try:
        for stream, line in read_log(
            args.target,
            args.namespace,
            tail=args.tail,
            follow=args.follow,
            streams=streams,
            source=args.source,
        ):
            if len(streams) > 1 and args.follow:
                line = f"[{stream}] {line}"
            elif len(streams) > 1 and stream != last:
                print(f"==> {'stdout' if stream == 'out' else 'stderr'} <==")
                last = stream
            print(line, flush=args.follow)
    except KeyboardInterrupt:
        pass
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``dn logs`` on the ``dn`` command's subparsers."""
    p = sub.add_parser("logs", help="a shard's or the coordinator's log (stdout and stderr)")
    p.add_argument("target", metavar="SHARD", help="a shard number, or `coordinator`")
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: auto / RAY_ADDRESS)"
    )
    p.add_argument("--namespace", default="dn", help="DN deployment namespace")
    p.add_argument(
        "--tail", type=int, default=100, metavar="N", help="last N lines of each stream (-1: all)"
    )
    p.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come")
    p.add_argument("--stream", choices=("both", "out", "err"), default="both")
    p.add_argument(
        "--source",
        choices=("auto", "api", "files"),
        default="auto",
        help="Ray's log API (needs the dashboard) or this node's log files (default: auto)",
    )
    p.set_defaults(fn=cmd_logs)
