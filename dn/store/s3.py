"""S3Store: the object store on Amazon S3 or an S3-compatible server (MinIO, moto).

The only module of the project that imports boto3 or botocore. Key ``k`` is the S3 object
``<prefix>/k`` in ``bucket``.

Invariants:

- ``put_if_absent`` is ``PutObject`` with ``If-None-Match: *``: S3's conditional write, atomic
  against every other writer. ``412 PreconditionFailed`` becomes ``ObjectExists``.
- botocore does not retry (``total_max_attempts=1``): :class:`dn.store.retry.RetryingStore`
  owns retries, so that there is one backoff policy and one place that counts them.
- Error mapping (op = the failing operation):

  ===========================================================  ==================================
  failure                                                      raised
  ===========================================================  ==================================
  get: NoSuchKey / 404                                         ObjectNotFound
  put_if_absent: 412 PreconditionFailed                        ObjectExists
  409 ConditionalRequestConflict, OperationAborted             Unavailable (write did not land)
  throttling (SlowDown, Throttling*, 429 ...) and any 5xx,      Unavailable; outcome_unknown for
  RequestTimeout, read timeout, connection closed mid-request  put/put_if_absent
  cannot connect (EndpointConnectionError, connect timeout)    Unavailable, outcome known
  NoSuchBucket, AccessDenied / 403, bad credentials, other 4xx InvalidArgument naming the bucket
  ===========================================================  ==================================

  A 409 ConditionalRequestConflict means a concurrent conditional write or delete on the same
  key was in flight; AWS documents it as retryable, and the object may not exist, so it is not
  ``ObjectExists``: the retry gets either success or a definite 412.

PUTs (``put``, ``put_if_absent``: the log's one request per durable write, and every object a
shard writes) go on the wire path of :mod:`dn.store.s3wire` — signed here with SigV4, on a
kept-alive connection per thread, with botocore's credentials, endpoint and region — which
costs a fraction of botocore's client CPU per request; errors map through the same table.
``wire_puts=False`` sends them through boto3 too. GET, LIST and DELETE always use boto3.

Configuration: endpoint, region and credentials default to boto3's standard sources
(``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, config files, instance
roles); the region falls back to ``us-east-1``.

Not done: multipart upload (objects are sent in one request; S3 allows up to 5 GB), ranged
reads, server-side encryption settings, retries (see above).

Callers: any thread (the boto3 client is thread-safe and created once, lazily). Instances are
picklable for Ray actors: only the constructor arguments travel; the client is rebuilt on the
other side.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bx
from botocore.config import Config

from dn.errors import DNError, InvalidArgument, ObjectExists, ObjectNotFound, Unavailable
from dn.store.local import check_key
from dn.store.s3wire import WirePuts

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
_WRITES = frozenset({"put", "put_if_absent"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "ConditionalRequestConflict",
        "BadDigest",
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
    }
)
# Transient failures after which the write certainly did not take effect.
_NOT_SENT_CODES = frozenset(
    {
        "ConditionalRequestConflict",
        "OperationAborted",
        "BadDigest",
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
    }
)
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AccountProblem",
    }
)


class S3Store:
    """Objects in ``s3://bucket/prefix``. See the module docstring for the guarantees."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        wire_puts: bool = True,
        client: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise InvalidArgument(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self._key_prefix = prefix + "/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}"
        self._args: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region": region,
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
            "session_token": session_token,
            "connect_timeout_s": connect_timeout_s,
            "read_timeout_s": read_timeout_s,
            "wire_puts": wire_puts,
        }
        self._client = client
        self._wire: WirePuts | None = None
        self._wire_made = client is not None  # a given client: everything goes through it
        self._owns_client = client is None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "prefix": self.prefix, "args": self._args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["bucket"], state["prefix"], **state["args"])  # type: ignore[misc]

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
                self._owns_client = True
            return self._client

    @property
    def wire(self) -> WirePuts | None:
        """The PUTs' wire path (:mod:`dn.store.s3wire`), made with the client; None when it
        is off, the client was given, or botocore found no credentials."""
        if not self._wire_made:
            _ = self.client
        return self._wire

    def _make_client(self) -> Any:
        a = self._args
        session = boto3.session.Session(
            aws_access_key_id=a["access_key_id"],
            aws_secret_access_key=a["secret_access_key"],
            aws_session_token=a["session_token"],
            region_name=a["region"],
        )
        region = a["region"] or session.region_name or DEFAULT_REGION
        config = Config(
            region_name=region,
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=a["connect_timeout_s"],
            read_timeout=a["read_timeout_s"],
            max_pool_connections=32,
        )
        log.debug("creating S3 client for %s (endpoint %s)", self.url, a["endpoint_url"])
        client = session.client("s3", endpoint_url=a["endpoint_url"], config=config)
        credentials = session.get_credentials()
        if a["wire_puts"] and credentials is not None:
            endpoint = client.meta.endpoint_url
            host = urlsplit(endpoint).hostname or ""
            custom = not host.endswith(".amazonaws.com") or (
                "." in self.bucket and endpoint.startswith("https:")
            )  # botocore's choice: path style off AWS, and for dotted buckets over TLS
            self._wire = WirePuts(
                self.bucket, endpoint, client.meta.region_name, credentials,
                custom_endpoint=custom, connect_timeout_s=a["connect_timeout_s"],
                read_timeout_s=a["read_timeout_s"],
            )  # fmt: skip
        self._wire_made = True
        return client

    def _endpoint(self) -> str:
        return (
            self._args["endpoint_url"]
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "the default AWS endpoint"
        )

    def _error(self, e: Exception, op: str, key: str) -> DNError:
        """Map a boto3/botocore exception raised by ``op`` on ``key`` to a DN error."""
        where = f"{op} {key!r} in {self.url}"
        write = op in _WRITES
        if isinstance(e, bx.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return self._refused(code, status, str(err.get("Message", "")), op, key)
        if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            return Unavailable(f"cannot connect to S3 at {self._endpoint()}: {where}: {e}")
        if isinstance(e, (bx.ReadTimeoutError, bx.ConnectionClosedError, bx.HTTPClientError)):
            return Unavailable(f"S3 connection failed: {where}: {e}", outcome_unknown=write)
        if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
            return InvalidArgument(f"no usable AWS credentials for {self.url}: {e}")
        if isinstance(e, bx.ParamValidationError):
            return InvalidArgument(f"invalid S3 request: {where}: {e}")
        return Unavailable(f"S3 client error: {where}: {e}", outcome_unknown=write)

    def _refused(self, code: str, status: int, message: str, op: str, key: str) -> DNError:
        """Map S3's error response (its code and HTTP status) to ``op`` on ``key`` to a DN
        error (the table in the module docstring); botocore's and the wire path's alike."""
        where = f"{op} {key!r} in {self.url}"
        detail = f"{code or 'HTTP ' + str(status)}: {message}".rstrip(": ")
        if code == "NoSuchBucket":
            return InvalidArgument(
                f"S3 bucket {self.bucket!r} does not exist at {self._endpoint()} ({where})"
            )
        if op == "get" and (code in ("NoSuchKey", "NotFound") or status == 404):
            return ObjectNotFound(f"object {key!r} not found in {self.url}", key=key)
        if op == "put_if_absent" and (code == "PreconditionFailed" or status == 412):
            return ObjectExists(f"object {key!r} already exists in {self.url}", key=key)
        if code in _ACCESS_CODES or status in (401, 403):
            return InvalidArgument(
                f"access to S3 bucket {self.bucket!r} at {self._endpoint()} denied "
                f"(check credentials and permissions): {where}: {detail}"
            )
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            unknown = op in _WRITES and code not in _NOT_SENT_CODES
            return Unavailable(
                f"S3 unavailable: {where}: {detail}", outcome_unknown=unknown, code=code
            )
        return InvalidArgument(f"S3 rejected {where}: {detail} (HTTP {status})", code=code)

    def _full(self, key: str) -> str:
        return self._key_prefix + check_key(key)

    def get(self, key: str) -> bytes:
        full = self._full(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read()
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(e, "get", key) from e

    reads_ranges = True

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """A ranged GET (``Range: bytes=start-end``); none past the object's end. A server
        that ignores ``Range`` (its answer has no ``Content-Range``) sends the whole object,
        which is then cut here."""
        if length <= 0:
            raise InvalidArgument(f"a ranged read of {length} bytes")
        full = self._full(key)
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
            )
            data = response["Body"].read()
            if not response.get("ContentRange"):
                return data[start : start + length]
            return data
        except bx.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # starts at or past the end
            raise self._error(e, "get", key) from e
        except bx.BotoCoreError as e:
            raise self._error(e, "get", key) from e

    def _wire_put(self, op: str, key: str, full: str, data: bytes) -> bool:
        """``op`` through the wire path if this store has one; False if it has none."""
        wire = self.wire
        if wire is None:
            return False
        status, code, message = wire.put(full, bytes(data), op == "put_if_absent")
        if status != 200:
            raise self._refused(
                code.decode(errors="replace"), status, message.decode(errors="replace"), op, key
            )
        return True

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        if self._wire_put("put", key, full, data):
            return
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data))
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(e, "put", key) from e

    def put_if_absent(self, key: str, data: bytes) -> None:
        full = self._full(key)
        if self._wire_put("put_if_absent", key, full, data):
            return
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data), IfNoneMatch="*")
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(e, "put_if_absent", key) from e

    def list(self, prefix: str) -> list[str]:
        check_key(prefix, is_prefix=True)
        strip = len(self._key_prefix)
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix + prefix):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", ()))
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(e, "list", prefix) from e
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        full = self._full(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(e, "delete", key) from e

    def close(self) -> None:
        """Close the client's connections if this store made it. A later call reconnects."""
        with self._lock:
            client, self._client = self._client, None
            wire, self._wire = self._wire, None
            self._wire_made = not self._owns_client
        if wire is not None:
            wire.close()
        if client is not None and self._owns_client:
            client.close()
