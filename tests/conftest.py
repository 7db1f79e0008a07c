"""Shared pytest fixtures. Each section belongs to one component; keep sections small."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# ------------------------------------------------------------------------------------------------
# S3 (moto server) fixtures — owned by the object-store layer (dn/store).
# Only loopback addresses; nothing global is changed except through monkeypatch.
# ------------------------------------------------------------------------------------------------

S3_TEST_CREDENTIALS = {
    "access_key_id": "testing",
    "secret_access_key": "testing",
    "region": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_url(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A fresh bucket on the moto server; yields ("s3://bucket/prefix", s3_options)."""
    import boto3

    bucket = f"dn-test-{uuid.uuid4().hex[:16]}"
    c = S3_TEST_CREDENTIALS
    boto3.client(
        "s3",
        endpoint_url=moto_server,
        aws_access_key_id=c["access_key_id"],
        aws_secret_access_key=c["secret_access_key"],
        region_name=c["region"],
    ).create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", c["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", c["secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", c["region"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield f"s3://{bucket}/test", {"endpoint_url": moto_server, **c}


# ------------------------------------------------------------------------------------------------
# End of the S3 section.
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# Ray cluster fixtures — owned by shards/ and coordinator/ (the Ray tier).
# One Ray session per pytest session, on loopback only; deployments are shared where possible
# and removed at the end. Ray is imported lazily so the fast tiers never pay for it.
# ------------------------------------------------------------------------------------------------

import os as _os  # noqa: E402

# Ray advertises the machine's first non-loopback address unless told it runs a single-node
# cluster; this must be set before `import ray` anywhere in the session.
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

RAY_TEST_NAMESPACE = "dn-tests"
#: Engine settings of test deployments: small thresholds, so reads cross buffers, ranges and
#: checkpoints within seconds.
RAY_TEST_ENGINE = {
    "freeze_bytes": 256 * 1024,
    "freeze_interval_s": 1.0,
    "checkpoint_delta": 100,
    "checkpoint_interval_s": 5.0,
    "background_interval_s": 0.05,
}


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """A local Ray instance (2 CPUs, 127.0.0.1) for the whole session; yields its address."""
    import ray

    from coordinator.cli.ray_node import start_local_ray

    # The node's own environment holds the (fake) credentials of the test S3 server, as a real
    # node's environment or instance profile would: nothing secret travels in a runtime env.
    node_env = {
        "AWS_ACCESS_KEY_ID": S3_TEST_CREDENTIALS["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": S3_TEST_CREDENTIALS["secret_access_key"],
    }
    saved = {k: os.environ.get(k) for k in node_env}
    os.environ.update(node_env)
    try:
        start_local_ray(num_cpus=2, namespace=RAY_TEST_NAMESPACE)  # the node as the project has
    finally:  # the raylet has them; this process's tests set their own
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def deploy_cluster(ray_session: str, tmp_path_factory: pytest.TempPathFactory):
    """A factory: ``deploy_cluster(name, **overrides) -> Client`` over a fresh local store;
    every deployment it made is shut down at the end of the session."""
    import coordinator

    made: list[str] = []

    def make(name: str, **overrides: Any):
        namespace = f"dn-test-{name}"
        overrides.setdefault("store", str(tmp_path_factory.mktemp(f"store-{name}")))
        overrides.setdefault("retry_s", 30.0)
        overrides.setdefault("call_timeout_s", 60.0)
        client = coordinator.deploy(
            None,
            namespace=namespace,
            engine=dict(RAY_TEST_ENGINE, **overrides.pop("engine", {})),
            **overrides,
        )
        made.append(namespace)
        return client

    yield make
    for namespace in made:
        try:
            coordinator.shutdown(namespace)
        except Exception:  # a test may have removed it already
            pass


@pytest.fixture(scope="session")
def cluster(deploy_cluster):
    """The shared 4-shard deployment (local directory store) most Ray tests use."""
    return deploy_cluster("main", shards=4)


# ------------------------------------------------------------------------------------------------
# End of the Ray section.
# ------------------------------------------------------------------------------------------------
