"""The lower-bounds tier: the package installed at the lowest versions pyproject.toml allows.

Run from the repository root as ``python -m tests.lower_bounds`` (slow: a fresh install of Ray
and the rest; not part of ``.ci/run``). It

1. checks that ``constraints-lower.txt`` pins every runtime and test dependency of
   ``pyproject.toml`` at the ``>=`` bound its range states (before anything slow);
2. creates a virtual environment in a temporary directory and installs the package there with
   ``pip install -e ".[test]" -c constraints-lower.txt`` (pip's own configuration decides where
   packages come from);
3. checks with ``pip freeze`` that pip resolved exactly the pinned versions;
4. runs a subset of the suite in that environment with ``-x -q``: the engine against its model
   (memory and S3 on moto), the object stores, the on-disk formats, key routing and input
   checks (hypothesis), the cluster logic (YAML settings) and the Ray tier;
5. stops any process still running from the environment, removes it, and exits non-zero if
   any step failed.

``python -m tests.lower_bounds tests/test_store.py`` runs other test files instead of the subset.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints-lower.txt"
PYPROJECT = ROOT / "pyproject.toml"
#: The test files run at the lower bounds, and what each exercises beyond the engine itself.
SUBSET = (
    "tests/test_engine_model.py",  # the engine, memory and S3 (boto3/botocore, moto)
    "tests/test_store.py",  # every object store, conditional puts on moto
    "tests/test_formats.py",  # the byte formats (msgpack, numpy)
    "tests/test_routing_fast.py",  # key routing (msgpack, numpy, hypothesis/sortedcontainers)
    "tests/test_engine_input.py",  # input checks (hypothesis)
    "tests/test_cluster_logic.py",  # the coordinator's logic and settings (PyYAML)
    "tests/test_cluster_ray.py",  # shards and the coordinator on a local Ray
    "tests/test_arrow.py",  # reads into Arrow, writes from Arrow and pandas (pyarrow, pandas)
)
_START = time.monotonic()


def say(message: str) -> None:
    elapsed = int(time.monotonic() - _START)
    print(f"[lower-bounds {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def same_version(a: str, b: str) -> bool:
    """``6`` and ``6.0`` are the same release; anything not purely numeric compares as text."""

    def key(v: str) -> tuple[int, ...] | str:
        if not re.fullmatch(r"\d+(\.\d+)*", v):
            return v
        parts = [int(p) for p in v.split(".")]
        while len(parts) > 1 and parts[-1] == 0:
            parts.pop()
        return tuple(parts)

    return key(a) == key(b)


def read_pins(path: Path) -> dict[str, tuple[str, str]]:
    """``canonical name -> (name as written, version)`` of a constraints file of ``==`` pins."""
    pins: dict[str, tuple[str, str]] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)", line)
        if m is None:
            raise ValueError(f"{path.name}:{n}: not a NAME==VERSION pin: {raw!r}")
        pins[canonical(m.group(1))] = (m.group(1), m.group(2))
    return pins


def stated_lower_bounds(path: Path, extras: tuple[str, ...] = ("test",)) -> dict[str, str | None]:
    """``canonical name -> the version after >=`` (None if the range states no lower bound) for
    the runtime dependencies of pyproject.toml and those of ``extras``."""
    project = tomllib.loads(path.read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in extras:
        specs += project.get("optional-dependencies", {}).get(extra, [])
    bounds: dict[str, str | None] = {}
    for spec in specs:
        req = spec.split(";", 1)[0]
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", req)
        if m is None:
            raise ValueError(f"{path.name}: cannot read the requirement {spec!r}")
        low = re.search(r">=\s*([^\s,]+)", m.group(3))
        bounds[canonical(m.group(1))] = low.group(1) if low else None
    return bounds


def check_pins_match_bounds(
    pins: dict[str, tuple[str, str]], bounds: dict[str, str | None]
) -> list[str]:
    """Every dependency pinned at its stated lower bound; the problems, one a line."""
    problems = []
    for name, low in sorted(bounds.items()):
        if low is None:
            problems.append(f"{name}: pyproject.toml states no lower bound (>=)")
        elif name not in pins:
            problems.append(f"{name}: not pinned in {CONSTRAINTS.name} (lower bound {low})")
        elif not same_version(pins[name][1], low):
            problems.append(
                f"{name}: pinned at {pins[name][1]} in {CONSTRAINTS.name}, "
                f"but pyproject.toml's lower bound is {low}"
            )
    return problems


def parse_freeze(text: str) -> dict[str, str]:
    """``canonical name -> version`` of the ``NAME==VERSION`` lines of ``pip freeze``."""
    found = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if m:
            found[canonical(m.group(1))] = m.group(2)
    return found


def check_resolved(pins: dict[str, tuple[str, str]], frozen: dict[str, str]) -> list[str]:
    """Every pin installed at exactly its version; the problems, one a line."""
    problems = []
    for name, (written, version) in sorted(pins.items()):
        got = frozen.get(name)
        if got is None:
            problems.append(f"{written}: pinned at {version} but not installed")
        elif got != version:
            problems.append(f"{written}: pinned at {version} but pip installed {got}")
    return problems


def run(cmd: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    say("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False, **kw)


def venv_env(venv: Path) -> dict[str, str]:
    """This process's environment with the virtual environment first on PATH (so ``ray`` and
    ``ruff`` started by name are its own) and nothing that points Python elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


def leftover_processes(venv: Path) -> list[int]:
    """Processes (other than this one) whose command line names the virtual environment:
    Ray's raylet, GCS server and workers started from it."""
    mark = str(venv).encode()
    pids: list[int] = []
    if not Path("/proc").is_dir():  # no /proc to look in: nothing found
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def stop_leftovers(venv: Path) -> None:
    pids = leftover_processes(venv)
    if not pids:
        return
    say(f"stopping {len(pids)} process(es) left from the environment: {pids}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (pids := leftover_processes(venv)):
            time.sleep(0.2)
        if not pids:
            return


def install_and_test(venv: Path, python_for_venv: str, tests: list[str]) -> int:
    """Steps 2-4 inside ``venv``; 0 when all passed."""
    env = venv_env(venv)
    py = str(venv / "bin" / "python")
    if run([python_for_venv, "-m", "venv", str(venv)], env).returncode != 0:
        say("FAILED: could not create the virtual environment")
        return 1
    install = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[test]"]
    if run(install + ["-c", str(CONSTRAINTS)], env).returncode != 0:
        say("FAILED: the lower bounds did not install")
        return 1
    freeze = run([py, "-m", "pip", "freeze", "--all"], env, capture_output=True, text=True)
    if freeze.returncode != 0:
        print(freeze.stdout + freeze.stderr)
        say("FAILED: pip freeze")
        return 1
    problems = check_resolved(read_pins(CONSTRAINTS), parse_freeze(freeze.stdout))
    if problems:
        print("\n".join("  " + p for p in problems))
        say(f"FAILED: pip did not resolve the lower bounds ({len(problems)} difference(s))")
        return 1
    say(f"pip resolved every pin of {CONSTRAINTS.name} exactly")
    pytest_cmd = [py, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    code = run(pytest_cmd, env).returncode
    if code != 0:
        say(f"FAILED: the tests at the lower bounds (pytest exit {code})")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lower_bounds",
        description="Install the lower bounds of pyproject.toml in a fresh virtual environment "
        "and run a subset of the suite there.",
    )
    parser.add_argument(
        "tests", nargs="*", help=f"test files or node ids (default: {len(SUBSET)} files)"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that creates the environment (default: this one)",
    )
    args = parser.parse_args(argv)
    tests = args.tests or list(SUBSET)

    try:
        problems = check_pins_match_bounds(read_pins(CONSTRAINTS), stated_lower_bounds(PYPROJECT))
    except (OSError, ValueError, KeyError) as e:
        say(f"FAILED: {e}")
        return 1
    if problems:
        print("\n".join("  " + p for p in problems))
        say(f"FAILED: {CONSTRAINTS.name} does not match pyproject.toml's lower bounds")
        return 1
    say(f"{CONSTRAINTS.name} pins every runtime and test dependency at its lower bound")

    with tempfile.TemporaryDirectory(prefix="dn-lower-bounds-") as tmp:
        venv = Path(tmp) / "venv"
        try:
            code = install_and_test(venv, args.python, tests)
        except KeyboardInterrupt:
            say("interrupted")
            code = 130
        finally:
            stop_leftovers(venv)
            say("removing the virtual environment")
    say("PASSED" if code == 0 else "FAILED")
    return code


if __name__ == "__main__":
    sys.exit(main())
