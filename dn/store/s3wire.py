"""The S3 store's PUTs on the wire: SigV4-signed requests on a kept-alive connection per thread.

A durable write on S3 is one conditional PUT (the log's ``put_if_absent``), and on a small
machine the client's CPU for that request is most of the write's time: botocore spends ~2 ms
of CPU per call building, signing and parsing (docs/benchmarks.md, 5a), against ~0.3 ms for
the request itself. :class:`WirePuts` makes S3's ``PutObject`` (with ``If-None-Match: *`` for
``put_if_absent``) directly:

- **Signing**: AWS Signature Version 4 for service ``s3`` (the canonical request of the
  method, the URI-encoded path, the sorted signed headers and the payload's SHA-256; the
  string to sign with the date and scope; the key derived from the secret by HMAC-SHA256 over
  date, region, service and ``aws4_request``). The payload is always signed (its SHA-256 in
  ``x-amz-content-sha256``), on http and https alike.
- **Credentials** come from botocore's own credential chain (the session that makes the boto3
  client), read per request as a frozen set, so temporary credentials (instance roles, SSO,
  ``AWS_SESSION_TOKEN``) refresh as botocore refreshes them; a session token is sent as
  ``x-amz-security-token`` and signed.
- **Addressing**: the endpoint and region the boto3 client resolved (``client.meta``); path
  style (``/bucket/key``) on a custom endpoint (moto, MinIO), virtual-hosted
  (``bucket.s3.<region>.amazonaws.com``) on AWS, as botocore does.
- **Connections**: one ``http.client`` connection per thread, kept alive; TLS through
  ``ssl.create_default_context`` (``AWS_CA_BUNDLE`` if set), certificates verified. A
  connection idle for ``IDLE_S`` is replaced before use (servers close idle connections, and
  a PUT sent into a closed one has an unknown outcome).
- **Errors**: the response's status and S3 error code go through the same mapping as
  botocore's errors (:func:`dn.store.s3.map_s3_error`); a connection that fails mid-request
  is ``Unavailable(outcome_unknown=True)``, one that cannot be made is ``Unavailable``.

Everything else (GET, LIST, DELETE, bucket calls) stays on boto3. ``S3Store(...,
wire_puts=False)`` turns this path off. Any thread.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

from dn.errors import Unavailable

#: A kept-alive connection idle longer than this is closed and made again before a request.
IDLE_S = 4.0
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


class WirePuts:
    """``put`` and ``put_if_absent`` of one bucket, signed here (see the module docstring)."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str,
        region: str,
        credentials: Any,
        *,
        custom_endpoint: bool,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        parts = urlsplit(endpoint_url)
        self._https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port
        if custom_endpoint:  # path style: /bucket/key on the endpoint's host
            self._host, self._path_prefix = host, f"/{bucket}/"
        else:  # virtual-hosted: the bucket in the host name
            self._host, self._path_prefix = f"{bucket}.{host}", "/"
        self._port = port
        self._host_header = self._host if port is None else f"{self._host}:{port}"
        self._region = region
        self._credentials = credentials  # botocore Credentials (refreshable or not)
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._local = threading.local()
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
        self._keys: dict[tuple[str, str], bytes] = {}  # (secret, date) -> signing key

    # -- requests ----------------------------------------------------------------------------

    def put(self, full_key: str, data: bytes, if_absent: bool) -> tuple[int, bytes, bytes]:
        """PUT the object; returns (status, error code, error message) — status 200 with
        empty code on success. Raises Unavailable for a connection that fails."""
        path = self._path_prefix + quote(full_key, safe="/~")
        headers = self._signed_headers("PUT", path, data, if_absent)
        conn = self._connection()
        try:
            conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(data)
            conn.sock.settimeout(self._read_timeout_s)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise Unavailable(
                f"S3 connection failed during a PUT to {self._host_header}: {exc!r}",
                outcome_unknown=True,
            ) from None
        self._local.used = time.monotonic()
        if resp.will_close:
            self._drop()
        if resp.status == 200:
            return 200, b"", b""
        code = _CODE.search(body)
        msg = _MESSAGE.search(body)
        return resp.status, code.group(1) if code else b"", msg.group(1) if msg else b""

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and time.monotonic() - self._local.used > IDLE_S:
            self._drop()
            conn = None
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._connect_timeout_s, context=self._ssl
                )
            else:
                conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._connect_timeout_s
                )
            try:
                conn.connect()
            except OSError as exc:
                raise Unavailable(f"cannot connect to S3 at {self._host_header}: {exc}") from None
            self._local.conn = conn
            self._local.used = time.monotonic()
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop()

    # -- SigV4 -------------------------------------------------------------------------------

    def _signed_headers(
        self, method: str, path: str, data: bytes, if_absent: bool
    ) -> list[tuple[str, str]]:
        creds = self._credentials.get_frozen_credentials()
        now = time.gmtime()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
        date = amz_date[:8]
        payload_hash = hashlib.sha256(data).hexdigest()
        headers = {
            "content-length": str(len(data)),
            "host": self._host_header,
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
        }
        if if_absent:
            headers["if-none-match"] = "*"
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            [
                method,
                path,
                "",  # no query string
                "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                signed,
                payload_hash,
            ]
        )
        scope = f"{date}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, date), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return list(headers.items())

    def _signing_key(self, secret: str, date: str) -> bytes:
        key = self._keys.get((secret, date))
        if key is None:
            k = _hmac(("AWS4" + secret).encode(), date)
            for part in (self._region, "s3", "aws4_request"):
                k = _hmac(k, part)
            self._keys = {(secret, date): k}  # one date's key at a time
            key = k
        return key


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


__all__ = ["IDLE_S", "WirePuts"]
