"""``python -m coordinator.cli.bucket``: check that the S3 bucket of a cluster's store exists,
and make it when it does not.

::

    python -m coordinator.cli.bucket [--config cluster.yaml] [--store URL] [--check]

``cluster.yaml`` runs it on the head node before Ray starts, with the config Ray copied there
(``~/ray_bootstrap_config.yaml``), so ``ray up`` needs no bucket made by hand. The store is
resolved as ``dn up`` resolves it (:func:`coordinator.config.load_config`: the file's
``metadata.dn``, then ``DN_STORE``, then ``--store``). A store that is not ``s3://`` has no
bucket: it says so and succeeds.

Where: the endpoint and region of ``metadata.dn.env`` (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``; ``AWS_REGION`` or ``AWS_DEFAULT_REGION``), the variables the shard actors
get, over this process's environment, so the bucket is made where the shards will look for
it. Credentials: boto3's own chain (the node's instance profile, environment or ``~/.aws``),
never ``metadata.dn``.

Steps: ``HeadBucket``; found: done. Not found (404): ``CreateBucket`` unless ``--check``, in
the region (a ``LocationConstraint`` outside us-east-1 on AWS; none with a custom endpoint,
where the server's default placement applies); ``BucketAlreadyOwnedByYou`` counts as made.
Denied (403): the bucket is someone else's, or these credentials lack the policy of
``docs/iam-policy.json``. Exit status: 0 the bucket is there, 1 not (``error: <Kind>: msg``).

Does not: set the bucket's policy, versioning, lifecycle or encryption (``docs/deploy.md``),
nor try object permissions (the first write does). Imports no boto3 itself: the client is
:class:`dn.store.s3.S3Store`'s, the one module that does.

Output to stdout/stderr is this module's job (a command line). One call at a time per bucket.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from coordinator.config import ClusterConfig, load_config
from dn.errors import DNError, InvalidArgument, Unavailable

#: The region whose buckets take no LocationConstraint (CreateBucket refuses one naming it).
DEFAULT_REGION = "us-east-1"
#: What to read when access is denied.
POLICY_DOC = "docs/iam-policy.json"


def bucket_of(store: str) -> str | None:
    """The bucket of an ``s3://bucket/prefix`` store URL; None for any other store."""
    parts = urlsplit(store)
    if parts.scheme.lower() != "s3":
        return None
    if not parts.netloc:
        raise InvalidArgument(f"s3 url {store!r} has no bucket; expected s3://bucket/prefix")
    return parts.netloc


def s3_location(
    env: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """``(endpoint_url, region)`` from ``env`` (``metadata.dn.env``) over ``environ``."""
    merged = {**environ, **env}
    endpoint = merged.get("AWS_ENDPOINT_URL_S3") or merged.get("AWS_ENDPOINT_URL") or None
    region = merged.get("AWS_REGION") or merged.get("AWS_DEFAULT_REGION") or None
    return endpoint, region


def _status(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def ensure_bucket(
    cfg: ClusterConfig,
    *,
    create: bool = True,
    environ: Mapping[str, str] | None = None,
    client: Any = None,
) -> str:
    """Make sure the bucket of ``cfg.store`` exists (see the module docstring); returns a line
    saying what was found or done. ``client`` is a boto3 S3 client (tests); by default one is
    made for the endpoint and region of ``cfg.env``. Raises InvalidArgument when the bucket
    is missing (``create=False``), denied, or cannot be made; Unavailable when S3 cannot be
    reached."""
    bucket = bucket_of(cfg.store)
    if bucket is None:
        return f"store {cfg.store} is not on S3: no bucket to check"
    endpoint, region = s3_location(cfg.env, os.environ if environ is None else environ)
    if client is None:
        from dn.store.s3 import S3Store

        client = S3Store(bucket, endpoint_url=endpoint, region=region).client
    region = region or client.meta.region_name or DEFAULT_REGION
    where = f"{endpoint} (region {region})" if endpoint else f"AWS region {region}"
    failed = client.exceptions.ClientError
    try:
        client.head_bucket(Bucket=bucket)
        return f"S3 bucket {bucket!r} exists at {where}"
    except failed as exc:
        code, status = _status(exc)
        if status in (401, 403) or code in ("403", "AccessDenied"):
            raise InvalidArgument(
                f"S3 bucket {bucket!r} at {where}: access denied. Either the bucket belongs to "
                f"another account (choose another name) or this node's credentials lack the "
                f"policy of {POLICY_DOC}"
            ) from exc
        if status != 404 and code not in ("404", "NoSuchBucket", "NotFound"):
            raise InvalidArgument(f"cannot check S3 bucket {bucket!r} at {where}: {exc}") from exc
    except Exception as exc:  # botocore's own (no credentials, no connection): no import here
        raise Unavailable(f"cannot reach S3 bucket {bucket!r} at {where}: {exc}") from exc
    if not create:
        raise InvalidArgument(f"S3 bucket {bucket!r} does not exist at {where}")
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if endpoint is None and region != DEFAULT_REGION:
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except client.exceptions.BucketAlreadyOwnedByYou:
        return f"S3 bucket {bucket!r} exists at {where}"
    except failed as exc:
        raise InvalidArgument(f"cannot create S3 bucket {bucket!r} at {where}: {exc}") from exc
    except Exception as exc:  # botocore's own, as above
        raise Unavailable(f"cannot reach S3 to create bucket {bucket!r} at {where}: {exc}") from exc
    return f"created S3 bucket {bucket!r} at {where}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments (for ``dn bucket`` as well as ``python -m``)."""
    parser.add_argument("--config", default=None, help="cluster.yaml (metadata.dn section)")
    parser.add_argument("--store", default=None, help="object store URL (overrides the config)")
    parser.add_argument(
        "--check", action="store_true", help="only check: fail if the bucket is missing"
    )


def cmd_bucket(args: argparse.Namespace) -> int:
    """Run the command; DNError propagates (the caller prints it)."""
    cfg = load_config(args.config, {"store": args.store} if args.store else None)
    print(ensure_bucket(cfg, create=not args.check))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator.cli.bucket",
        description="Check that the S3 bucket of a DN store exists; make it if not.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_bucket(args)
    except DNError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
