"""The layering rules of STYLE.md, enforced: dependencies run coordinator -> shards -> dn.

- dn/ never imports ray, shards or coordinator; shards/ never imports coordinator.
- Only dn/store/s3.py imports boto3 or botocore.
- ``.remote(`` appears only in shards/ and coordinator/.
- ruff (lint and the banned-import rule in pyproject.toml) passes on the whole tree.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _py(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_dn_depends_on_nothing_above_it():
    for path in _py("dn"):
        bad = _imports(path) & {"ray", "shards", "coordinator"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_shards_do_not_import_the_coordinator():
    for path in _py("shards"):
        assert "coordinator" not in _imports(path), f"{path.relative_to(ROOT)}"


def test_only_the_s3_store_imports_boto3():
    for folder in ("dn", "shards", "coordinator"):
        for path in _py(folder):
            if path == ROOT / "dn/store/s3.py":
                continue
            bad = _imports(path) & {"boto3", "botocore"}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_remote_calls_only_in_the_ray_shells():
    for path in _py("dn"):
        assert ".remote(" not in path.read_text(), f"{path.relative_to(ROOT)} calls .remote("


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_passes():
    proc = subprocess.run(["ruff", "check", "dn", "shards", "coordinator", "tests", "bench"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_importing_the_dn_command_does_not_import_ray():
    """Regression: `dn up` failed on a fresh machine because importing the coordinator package
    imported Ray before the command could set Ray's loopback and token-auth environment."""
    import sys

    code = "import sys, coordinator, coordinator.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
