"""Shared pytest fixtures. Each section belongs to one component; keep sections small."""

from __future__ import annotations

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
