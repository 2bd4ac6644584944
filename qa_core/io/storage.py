"""Where the job's files live: local paths and fsspec URLs (`s3://`, `gs://`, ...).

Object stores fail in their own ways (a missing bucket, wrong or absent credentials, an unreachable
endpoint), often with exceptions that are not `OSError` (botocore's `NoCredentialsError`). This module
turns them into one-line messages that name the location and what to change, and never include a
credential value: credentials come from the environment (or the store's own config files) and are never
read, logged or written by docqa.
"""

from __future__ import annotations

import re
from typing import Any

import fsspec

# Protocols whose first path component is a bucket (or container) that must exist before anything else.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})

_CREDENTIAL_HINTS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a "
    "non-AWS server",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
}


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")


def redact_url(url: str) -> str:
    """`url` with any `user:password@` part replaced by `***@`, for logs, messages and `_run.json`."""
    return _USERINFO.sub(r"\1***@", url)


def url_to_fs(url: str) -> tuple[Any, str, str]:
    """The fsspec file system of `url`, the path inside it and its protocol (`file` for local paths)."""
    fs, path = fsspec.core.url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return fs, path, protocol


def to_url(protocol: str, path: str) -> str:
    """The URL of `path` on a file system of `protocol` (local paths stay plain paths)."""
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def _family(protocol: str) -> str:
    return {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}.get(protocol, protocol)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def describe_storage_error(err: BaseException, url: str) -> str:
    """A one-line description of a storage failure at `url`, with a hint of what to change."""
    _, _, protocol = url_to_fs(url)
    url = redact_url(url)
    hint = _CREDENTIAL_HINTS.get(_family(protocol))
    name = type(err).__name__
    if isinstance(err, PermissionError) or name in ("NoCredentialsError", "PartialCredentialsError"):
        if hint:
            return f"access denied to {url} ({_first_line(err)}); check the credentials: {hint}"
        return f"access denied to {url} ({_first_line(err)})"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        return f"cannot reach the storage endpoint for {url} ({_first_line(err)})"
    return f"{url}: {name}: {_first_line(err)}"


def bucket_problem(url: str) -> str | None:
    """Why the bucket of an object-store `url` cannot be used, or None (also for local paths).

    A missing bucket and denied access are told apart (`fs.exists` would report both as "missing").
    """
    fs, path, protocol = url_to_fs(url)
    if protocol not in OBJECT_STORES:
        return None
    bucket = path.strip("/").split("/", 1)[0]
    url = redact_url(url)
    if not bucket:
        return f"{url} names no bucket"
    try:
        fs.info(bucket)
    except FileNotFoundError:
        return f"bucket '{bucket}' does not exist ({url}); create it or fix the URL"
    except Exception as err:  # any failure of the store's client: credentials, endpoint, permissions
        return describe_storage_error(err, f"{protocol}://{bucket}")
    return None
