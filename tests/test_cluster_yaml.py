"""``cluster.yaml`` read the way ``ray up`` reads it, and what DN needs of it, with no cloud.

``ray up`` (``ray/autoscaler/_private/commands.py``, ``_bootstrap_config``) takes four steps:

1. ``prepare_config``: merges the file with Ray's AWS defaults, folds ``setup_commands`` into
   the head's and the workers' lists, fills each node type's worker counts. Local: run here.
2. the provider's ``fillout_available_node_types_resources``: asks EC2 for the instance types'
   CPUs and memory. Network (``ray up`` only warns when it fails): not run here.
3. ``validate_config``: Ray's JSON schema and its rules across fields. Local: run here.
4. ``bootstrap_aws``: IAM role, key pair, subnet, security group, AMI. Network: not run,
   except its IAM step, which returns before any call when the head names its own instance
   profile; run here to show that Ray keeps ours rather than making its default role.

Ray then copies the config, as JSON, to the head as ``~/ray_bootstrap_config.yaml``, which the
bucket check and ``dn up`` read: done here with a file. The checks of DN's own: an instance
profile on every node type, a policy scoped to the store's bucket, Python >= 3.11 and the
package installed from constraints.txt on every node, Ray's token on every node, the
repository copied without its history and caches, and the bucket check (against moto in this
process). Every test runs with sockets refused, so a step that reached for the network fails
here instead of passing by luck. ``tests/test_cluster_logic.py`` also validates the file and
checks that every ``metadata.dn`` key is commented.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from coordinator.cli import bucket
from coordinator.config import is_secret_name, load_config
from dn.errors import InvalidArgument

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
BOOTSTRAP = "~/ray_bootstrap_config.yaml"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("tests/test_cluster_yaml.py: no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def prepared(doc) -> dict:
    """The config as ``ray up`` has it after steps 1 and 3 (see the module docstring)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(doc))
    validate_config(config)
    return config


def test_ray_up_prepares_and_validates_the_file(doc, prepared):
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == set(doc["available_node_types"])
    head = prepared["head_node_type"]
    assert prepared["available_node_types"][head]["max_workers"] == 0
    workers = [t for n, t in prepared["available_node_types"].items() if n != head]
    assert sum(t["min_workers"] for t in workers) <= prepared["max_workers"]
    # the file's own lists replace Ray's defaults (whose head setup pip-installs into the
    # system Python, which Ubuntu refuses)
    assert prepared["head_setup_commands"] == doc["setup_commands"]
    assert prepared["worker_setup_commands"] == doc["setup_commands"]
    assert prepared["initialization_commands"] == []


def test_every_node_type_has_an_instance_profile_and_ray_keeps_the_heads(prepared):
    from ray.autoscaler._private.aws.config import _configure_iam_role

    profiles = {}
    for name, node_type in prepared["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile") or {}
        assert profile.get("Name") or profile.get("Arn"), f"{name} has no instance profile"
        profiles[name] = profile.get("Name") or profile["Arn"].rsplit("/", 1)[-1]
    deploy_md = (ROOT / "docs" / "deploy.md").read_text()
    for name in profiles.values():
        assert name in deploy_md, f"docs/deploy.md does not say how to make {name}"
    config = copy.deepcopy(prepared)
    config["head_node"] = {}  # as bootstrap_aws sets it before this step
    assert _configure_iam_role(config)["head_node"] == {}  # no default role made or given


def test_the_documented_policy_is_scoped_to_the_bucket_of_the_store():
    policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
    name = bucket.bucket_of(load_config(CLUSTER_YAML, environ={}).store)
    actions, resources = set(), set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions.update(statement["Action"])
        res = statement["Resource"]
        resources.update([res] if isinstance(res, str) else res)
    assert resources == {f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"}
    # what S3Store calls, and the head's bucket check; nothing wider
    assert actions == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:CreateBucket",
    }
    assert "docs/iam-policy.json" in (ROOT / "docs" / "deploy.md").read_text()


def _version_check(commands: list[str]) -> str:
    """The Python code of the setup command that refuses an old Python."""
    found = [c for c in commands if "sys.version_info >= (3, 11)" in c]
    assert len(found) == 1, "no setup command checks for Python >= 3.11"
    argv = shlex.split(found[0])
    assert argv[0] == "~/venv/bin/python" and argv[1] == "-c"
    return argv[2]


def test_every_node_installs_dn_on_python_3_11_or_newer(prepared):
    for name, node_type in prepared["available_node_types"].items():
        # Ubuntu 24.04's Python is 3.12
        assert "/ubuntu/server/24.04/" in node_type["node_config"]["ImageId"], name
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = prepared[key]
        check = _version_check(commands)
        pips = [i for i, c in enumerate(commands) if re.search(r"\bpip\b", c)]
        assert pips, f"{key} installs nothing"
        for i in pips:  # the virtual environment's pip, never the system's (PEP 668)
            assert commands[i].startswith("~/venv/bin/python -m pip install"), commands[i]
            assert i > commands.index(next(c for c in commands if check in c))
        install = commands[pips[-1]].split()
        assert "-e" in install and install[install.index("-e") + 1] == "~/dn"
        assert install[install.index("-c") + 1] == "~/dn/constraints.txt"
        assert any("venv/bin:$PATH" in c and "~/.bashrc" in c for c in commands)
    assert re.search(r"^ray==\d+\.\d+\.\d+$", (ROOT / "constraints.txt").read_text(), re.M)
    check = _version_check(prepared["worker_setup_commands"])
    ok = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    old = f"import sys; sys.version_info = (3, 10, 12); sys.version = '3.10.12'; exec({check!r})"
    refused = subprocess.run([sys.executable, "-c", old], capture_output=True, text=True)
    assert refused.returncode != 0 and "DN needs Python >= 3.11" in refused.stderr


def test_every_node_runs_ray_with_token_authentication(prepared):
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("export RAY_AUTH_MODE=token" in c for c in prepared[key]), key
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("ray start" in c for c in prepared[key]), key


def test_the_head_checks_the_bucket_before_ray_starts_and_deploys_dn_after(prepared):
    commands = prepared["head_start_ray_commands"]

    def index(text: str) -> int:
        return next(i for i, c in enumerate(commands) if text in c)

    check = index(f"python -m coordinator.cli.bucket --config {BOOTSTRAP}")
    start = index("ray start --head")
    up = index(f"dn up --address auto --config {BOOTSTRAP}")
    assert check < start < up
    assert f"--autoscaling-config={BOOTSTRAP}" in commands[start]


def test_metadata_dn_loads_from_the_file_and_from_the_copy_ray_puts_on_the_head(prepared, tmp_path):
    cfg = load_config(CLUSTER_YAML, environ={})
    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text(json.dumps(prepared))  # what Ray writes to the head
    assert load_config(boot, environ={}) == cfg
    assert cfg.store.startswith("s3://") and bucket.bucket_of(cfg.store)
    assert not [k for k in cfg.env if is_secret_name(k)]
    assert cfg.env.get("AWS_DEFAULT_REGION") == prepared["provider"]["region"]


# -- the copy of the repository ---------------------------------------------------------------


def _rsync_excluded(path: str, patterns: list[str]) -> bool:
    """rsync's --exclude for the two pattern forms the file uses: ``name`` (no slash) matches
    the last part of a path at any depth, ``/path`` matches from the top of the copy; an
    excluded directory takes everything under it."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        for pattern in patterns:
            if pattern.startswith("/"):
                if fnmatch.fnmatchcase("/".join(parts[:i]), pattern[1:]):
                    return True
            elif fnmatch.fnmatchcase(parts[i - 1], pattern):
                return True
    return False


def test_the_repository_is_copied_without_its_history_and_caches(doc):
    patterns = doc["rsync_exclude"]
    assert doc["file_mounts"]["~/dn"] == "."
    for pattern in patterns:
        assert "/" not in pattern.lstrip("/") or pattern.startswith("/"), pattern
    for junk in (".git", "__pycache__", ".venv", "*.egg-info", ".pytest_cache", ".ruff_cache"):
        assert junk in patterns
    for path in (".git/HEAD", "dn/__pycache__/x.pyc", ".venv/bin/python", "x.egg-info/PKG-INFO"):
        assert _rsync_excluded(path, patterns), path
    for path in ("dn/engine.py", "constraints.txt", "tests/golden/log_create_database.bin"):
        assert not _rsync_excluded(path, patterns), path
    try:
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    kept = [p for p in tracked if _rsync_excluded(p, patterns)]
    assert not kept, f"tracked files left out of the copy: {kept[:5]}"


# -- the bucket check -------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    """S3 mocked inside this process by moto (no server, no socket)."""
    from moto import mock_aws

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


def test_the_bucket_check_makes_the_bucket_in_the_region_of_metadata_dn(aws, prepared, tmp_path):
    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text(json.dumps(prepared))
    cfg = load_config(boot, environ={})
    name = bucket.bucket_of(cfg.store)
    assert bucket.main(["--config", str(boot), "--check"]) == 1  # not made yet
    assert bucket.main(["--config", str(boot)]) == 0
    assert bucket.ensure_bucket(cfg) == f"S3 bucket {name!r} exists at AWS region us-west-2"
    assert bucket.main(["--config", str(boot), "--check"]) == 0
    from dn.store.s3 import S3Store

    client = S3Store(name, region="us-east-1").client
    assert client.get_bucket_location(Bucket=name)["LocationConstraint"] == "us-west-2"
    assert bucket.main(["--store", "s3://dn-elsewhere/x", "--check"]) == 1
    with pytest.raises(InvalidArgument, match="does not exist"):
        bucket.ensure_bucket(cfg.replace(store="s3://dn-elsewhere/x"), create=False)
    assert "no bucket" in bucket.ensure_bucket(cfg.replace(store=str(tmp_path)))


class FakeS3:
    """A boto3 S3 client's surface as the bucket check uses it, answering HeadBucket with
    ``status`` and recording CreateBucket calls."""

    def __init__(self, status: int) -> None:
        from botocore.exceptions import ClientError

        class BucketAlreadyOwnedByYou(ClientError):
            pass

        self.exceptions = SimpleNamespace(
            ClientError=ClientError, BucketAlreadyOwnedByYou=BucketAlreadyOwnedByYou
        )
        self.meta = SimpleNamespace(region_name="us-east-1")
        self.status = status
        self.created: list[dict] = []

    def head_bucket(self, Bucket: str) -> None:
        if self.status != 200:
            error = {"Code": str(self.status), "Message": ""}
            response = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": self.status}}
            raise self.exceptions.ClientError(response, "HeadBucket")

    def create_bucket(self, **kwargs) -> None:
        self.created.append(kwargs)


def test_the_bucket_check_on_a_compatible_store_and_when_denied():
    cfg = load_config(CLUSTER_YAML, environ={})
    minio = cfg.replace(env={"AWS_ENDPOINT_URL": "http://minio.internal:9000"})
    client = FakeS3(404)
    assert bucket.ensure_bucket(minio, environ={}, client=client).startswith("created")
    assert client.created == [{"Bucket": "my-dn-bucket"}]  # the server's own placement
    client = FakeS3(404)
    bucket.ensure_bucket(cfg, environ={}, client=client)
    assert client.created[0]["CreateBucketConfiguration"] == {"LocationConstraint": "us-west-2"}
    with pytest.raises(InvalidArgument, match="docs/iam-policy.json"):
        bucket.ensure_bucket(cfg, environ={}, client=FakeS3(403))
    assert FakeS3(200).created == [] and "exists" in bucket.ensure_bucket(
        cfg, environ={}, client=FakeS3(200)
    )
