"""The S3 store's wire path for PUTs (dn/store/s3wire.py): its SigV4 signature is botocore's
for the same request, S3's error responses map as botocore's do, a connection that fails
mid-request is an unknown outcome, and on moto the path is the one in use.
"""

from __future__ import annotations

import datetime
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from dn.errors import InvalidArgument, ObjectExists, Unavailable
from dn.store import s3wire
from dn.store.s3 import S3Store
from dn.store.s3wire import WirePuts

FIXED = datetime.datetime(2026, 12, 6, 10, 30, 5)


def _wire(endpoint: str, creds: Credentials, custom: bool, region: str = "eu-west-1") -> WirePuts:
    return WirePuts(
        "bkt", endpoint, region, creds, custom_endpoint=custom,
        connect_timeout_s=2.0, read_timeout_s=2.0,
    )  # fmt: skip


@pytest.mark.parametrize("token", [None, "session-token/+="])
@pytest.mark.parametrize("if_absent", [True, False])
@pytest.mark.parametrize(
    "endpoint, custom, url",
    [
        ("http://s3.eu-west-1.amazonaws.com", False, "http://bkt.s3.eu-west-1.amazonaws.com"),
        ("http://127.0.0.1:9000", True, "http://127.0.0.1:9000/bkt"),
    ],
)
def test_the_signature_is_botocores_for_the_same_request(
    monkeypatch, token, if_absent, endpoint, custom, url
) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    monkeypatch.setattr(s3wire.time, "gmtime", lambda: FIXED.timetuple())
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FIXED)
    wire = _wire(endpoint, creds, custom)
    key, body = "pre/30/0/00000000000000000042 a~b", b"payload bytes"
    path = wire._path_prefix + s3wire.quote(key, safe="/~")
    ours = dict(wire._signed_headers("PUT", path, body, if_absent))
    headers = {"Content-Length": str(len(body))}
    if if_absent:
        headers["If-None-Match"] = "*"
    request = AWSRequest("PUT", url + "/" + s3wire.quote(key, safe="/~"), headers, body)
    botocore.auth.S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]


class _Replies(http.server.BaseHTTPRequestHandler):
    """Answers each PUT with the next (status, body) of the server's script; ``None`` drops
    the connection without an answer."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        seen = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        reply = self.server.script.pop(0)  # type: ignore[attr-defined]
        if reply is None:
            self.close_connection = True
            self.connection.close()
            return
        status, body = reply
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_s3() -> Iterator[Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replies)
    server.script, server.seen = [], []  # type: ignore[attr-defined]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def _error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>m {code}</Message></Error>".encode()


@pytest.mark.parametrize(
    "op, reply, expected, unknown",
    [
        ("put_if_absent", (412, _error("PreconditionFailed")), ObjectExists, None),
        ("put_if_absent", (409, _error("ConditionalRequestConflict")), Unavailable, False),
        ("put", (503, _error("SlowDown")), Unavailable, True),
        ("put", (500, b""), Unavailable, True),
        ("put", (403, _error("AccessDenied")), InvalidArgument, None),
        ("put", (404, _error("NoSuchBucket")), InvalidArgument, None),
        ("put", (400, _error("EntityTooLarge")), InvalidArgument, None),
        ("put_if_absent", None, Unavailable, True),  # the connection dropped: unknown outcome
    ],
)
def test_s3_errors_on_the_wire_map_as_botocores(fake_s3, op, reply, expected, unknown) -> None:
    endpoint = f"http://127.0.0.1:{fake_s3.server_address[1]}"
    store = S3Store("bkt", "pre", endpoint_url=endpoint, access_key_id="a", secret_access_key="s")
    assert store.wire is not None
    fake_s3.script.append(reply)
    with pytest.raises(expected) as info:
        getattr(store, op)("k", b"v")
    if unknown is not None:
        assert info.value.outcome_unknown is unknown
    assert fake_s3.seen[0].get("if-none-match") == ("*" if op == "put_if_absent" else None)
    store.close()


def test_a_connection_idle_too_long_is_made_again_before_a_put(fake_s3, monkeypatch) -> None:
    endpoint = f"http://127.0.0.1:{fake_s3.server_address[1]}"
    store = S3Store("bkt", "", endpoint_url=endpoint, access_key_id="a", secret_access_key="s")
    fake_s3.script.extend([(200, b""), (200, b""), (200, b"")])
    store.put("a", b"1")
    first = store.wire._local.conn
    store.put("b", b"2")
    assert store.wire._local.conn is first  # kept alive
    store.wire._local.used -= s3wire.IDLE_S + 1
    store.put("c", b"3")
    assert store.wire._local.conn is not first
    assert [h["host"] for h in fake_s3.seen] == [f"127.0.0.1:{fake_s3.server_address[1]}"] * 3
    store.close()


@pytest.mark.s3
def test_on_moto_puts_take_the_wire_path_and_reads_see_them(s3_url, monkeypatch) -> None:
    url, options = s3_url
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    store = S3Store(bucket, prefix, **options)
    sent = []
    put = WirePuts.put
    monkeypatch.setattr(WirePuts, "put", lambda self, *a: sent.append(a[0]) or put(self, *a))
    store.put_if_absent("x/1", b"one")
    with pytest.raises(ObjectExists):
        store.put_if_absent("x/1", b"two")
    store.put("x/2", b"\x00" * 70_000)
    assert sent == [f"{prefix}/x/1", f"{prefix}/x/1", f"{prefix}/x/2"]
    assert (store.get("x/1"), len(store.get("x/2"))) == (b"one", 70_000)
    off = S3Store(bucket, prefix, wire_puts=False, **options)
    assert off.wire is None
    off.put_if_absent("x/3", b"three")
    assert store.list("x/") == ["x/1", "x/2", "x/3"]


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files (made with moto's cryptography)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_over_tls_certificates_are_verified_against_the_ca_bundle(fake_s3, tmp_path, monkeypatch):
    import ssl

    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    fake_s3.socket = ctx.wrap_socket(fake_s3.socket, server_side=True)
    endpoint = f"https://127.0.0.1:{fake_s3.server_address[1]}"
    fake_s3.script.extend([(200, b"")])
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    untrusted = S3Store("bkt", "", endpoint_url=endpoint, access_key_id="a", secret_access_key="s")
    with pytest.raises(Unavailable, match="cannot connect"):
        untrusted.put("k", b"v")  # the self-signed certificate is not trusted
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)
    trusted = S3Store("bkt", "", endpoint_url=endpoint, access_key_id="a", secret_access_key="s")
    trusted.put("k", b"v")
    assert fake_s3.seen[0]["x-amz-content-sha256"] and fake_s3.seen[0]["host"].startswith("127.")
    trusted.close()
