"""Where the job's files live: local paths and fsspec URLs (`s3://`, `gs://`, ...).

Object stores fail in their own ways (a missing bucket, wrong or absent credentials, an unreachable
endpoint), often with exceptions that are not `OSError` (botocore's `NoCredentialsError`). This module
turns them into one-line messages that name the location and what to change, and never include a
credential value: credentials come from the environment (or the store's own config files) and are never
read, logged or written by docqa.

Timeouts and retries. An endpoint that accepts connections and then never answers must fail the job,
not hang it. For `s3://` (s3fs over botocore) docqa bounds every request, whoever opens the file (the
jobs, their worker processes, the Beam launcher, the Python API), through fsspec's per-protocol defaults
(`fsspec.config.conf["s3"]["config_kwargs"]`, handed to botocore's `Config`):

| environment variable            | default | botocore setting                                            |
|---------------------------------|---------|-------------------------------------------------------------|
| `DOCQA_STORAGE_CONNECT_TIMEOUT` | 10      | `connect_timeout`: seconds to open a connection             |
| `DOCQA_STORAGE_READ_TIMEOUT`    | 15      | `read_timeout`: seconds to wait for each read of a reply    |
| `DOCQA_STORAGE_RETRIES`         | 2       | `retries`: `total_max_attempts` = this + 1, `standard` mode |

A request that gets no answer thus fails after about `(retries + 1) * read_timeout` seconds (plus
botocore's backoff, a few seconds), and the job exits 2 with one line naming the URL. s3fs's own retry
loop, which would repeat botocore's retries up to 5 times (25 times for a ranged read), runs once
(`S3FileSystem.retries = 1`, only while it holds s3fs's stock 5): botocore's `standard` mode retries
connection errors, timeouts, throttling (`SlowDown`) and 5xx answers; a reply body that breaks off
mid-stream is not retried.

What the user set always wins: a key already in the fsspec config (`~/.config/fsspec/*.json`,
`FSSPEC_S3='{"config_kwargs": {...}}'`, `FSSPEC_S3_CONFIG_KWARGS`) is kept, and botocore's own
`AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE` (or the profile's `max_attempts` / `retry_mode`) keep their effect.
The settings are applied when the `s3` protocol is first used in a process (`configure_storage`, run at
import, defers it so that jobs without `s3://` never import s3fs); a value that is not a positive number
(a count >= 0 for the retries) fails the job then, naming the variable.

`gs://` (gcsfs) and `az://` / `abfs://` (adlfs) keep their libraries' defaults; bound them with the same
fsspec config, e.g. `FSSPEC_GS='{"requests_timeout": 60}'` (gcsfs: seconds per request) or
`FSSPEC_AZ='{"connection_timeout": 10, "read_timeout": 15}'` (adlfs >= 2023.10). Their timeouts are
still reported in one line. Beam's own S3 file system (boto3: the row groups that `docqa run`'s pipeline
reads, and the tables it writes) is not fsspec and keeps botocore's and Beam's defaults; the launcher's
listing, footer, output checks and `COMPLETED` go through fsspec and are bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import fsspec

from qa_core.errors import ConfigError, JobError

# Protocols whose first path component is a bucket (or container) that must exist before anything else.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})

_CREDENTIAL_HINTS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a "
    "non-AWS server",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
}

CONNECT_TIMEOUT_ENV = "DOCQA_STORAGE_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "DOCQA_STORAGE_READ_TIMEOUT"
RETRIES_ENV = "DOCQA_STORAGE_RETRIES"

# s3fs's own retry loop, as s3fs ships it; any other value was set by someone and is kept.
_S3FS_STOCK_RETRIES = 5

# Exception classes (by name, anywhere in the class's MRO) that mean "the storage did not answer in
# time": botocore's ReadTimeoutError / ConnectTimeoutError, aiohttp's ServerTimeoutError, fsspec's
# FSTimeoutError, requests' ReadTimeout / ConnectTimeout, and TimeoutError (socket.timeout and
# asyncio.TimeoutError are that builtin). Names, so that no storage client is imported to check.
_TIMEOUT_NAMES = frozenset(
    {
        "TimeoutError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ServerTimeoutError",
        "FSTimeoutError",
        "ReadTimeout",
        "ConnectTimeout",
    }
)
_CONNECT_TIMEOUT_NAMES = frozenset({"ConnectTimeoutError", "ConnectTimeout"})


@dataclass(frozen=True)
class StorageLimits:
    """docqa's bounds for one object-store request (see the module docstring)."""

    connect_timeout: float = 10.0
    read_timeout: float = 15.0
    retries: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageLimits:
        """The limits from `DOCQA_STORAGE_*` variables, defaults for those unset.

        Raises:
            ConfigError: A timeout that is not a number > 0, or retries that are not a whole number >= 0.
        """
        environ = os.environ if environ is None else environ
        default = cls()
        return cls(
            connect_timeout=_seconds_from(environ, CONNECT_TIMEOUT_ENV, default.connect_timeout),
            read_timeout=_seconds_from(environ, READ_TIMEOUT_ENV, default.read_timeout),
            retries=_count_from(environ, RETRIES_ENV, default.retries),
        )


def _seconds_from(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={text!r} is not a number of seconds > 0 (unset it for {default:g})")
    return value


def _count_from(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise ConfigError(f"{name}={text!r} is not a whole number >= 0 (unset it for {default})")
    return int(text)


def merge_s3_options(
    section: MutableMapping[str, Any], limits: StorageLimits, aws_retry: Mapping[str, str] | None = None
) -> None:
    """Adds `limits` to one fsspec config section for s3fs, keeping every value already in it.

    Args:
        section: `fsspec.config.conf["s3"]` (or `["s3a"]`), changed in place: its `config_kwargs` (for
            botocore's `Config`) get `connect_timeout`, `read_timeout` and `retries` where absent.
        limits: docqa's bounds.
        aws_retry: botocore's own settings that the user gave (`max_attempts`, `retry_mode`): the
            matching keys of `retries` are then left to botocore.
    """
    aws_retry = aws_retry or {}
    kwargs = section.setdefault("config_kwargs", {})
    if not isinstance(kwargs, MutableMapping):  # something of the user's own (an INI string): theirs
        return
    kwargs.setdefault("connect_timeout", limits.connect_timeout)
    kwargs.setdefault("read_timeout", limits.read_timeout)
    retries = kwargs.setdefault("retries", {})
    if not isinstance(retries, MutableMapping):
        return
    if "mode" not in retries and "retry_mode" not in aws_retry:
        retries["mode"] = "standard"
    if not {"total_max_attempts", "max_attempts"} & retries.keys() and "max_attempts" not in aws_retry:
        retries["total_max_attempts"] = limits.retries + 1


def _aws_retry_settings() -> dict[str, str]:
    """The retry settings the user gave botocore: `AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE`, or the profile's."""
    try:
        import botocore.session

        scoped: Mapping[str, Any] = botocore.session.Session().get_scoped_config()
    except Exception:  # no botocore, or a profile that does not exist: botocore reports it when used
        scoped = {}
    found = {}
    for key, env in (("max_attempts", "AWS_MAX_ATTEMPTS"), ("retry_mode", "AWS_RETRY_MODE")):
        value = os.environ.get(env) or scoped.get(key)
        if value:
            found[key] = str(value)
    return found


@dataclass
class _S3State:
    limits: StorageLimits | None = None  # set once the limits were applied in this process
    aws_retry: dict[str, str] | None = None
    s3fs_retries: int = 1


_S3 = _S3State()


def _apply_s3_limits() -> type:
    """Imports s3fs and applies the limits (once a process); returns `s3fs.S3FileSystem`.

    Raises:
        ConfigError: A `DOCQA_STORAGE_*` value that is not a number (see `StorageLimits.from_env`).
    """
    from s3fs import S3FileSystem

    cls: type = S3FileSystem
    if _S3.limits is None:
        limits = StorageLimits.from_env()
        aws_retry = _aws_retry_settings()
        conf = fsspec.config.conf
        for protocol in ("s3", "s3a"):
            # fsspec hands a class every section of its protocols, "s3" then "s3a", each key replacing
            # the last: an "s3a" section of the user's gets the limits too.
            if protocol == "s3" or "config_kwargs" in conf.get(protocol, {}):
                merge_s3_options(conf.setdefault(protocol, {}), limits, aws_retry)
        if S3FileSystem.retries == _S3FS_STOCK_RETRIES:
            S3FileSystem.retries = 1
        _S3.limits, _S3.aws_retry, _S3.s3fs_retries = limits, aws_retry, S3FileSystem.retries
    return cls


class _DeferredS3:
    """fsspec's registry entry for `s3://` (`qa_core.io.storage:DEFERRED_S3.S3FileSystem`).

    fsspec imports a protocol's class on its first use; this entry makes that import also apply the
    limits, so that they hold in every process (spawned workers, Beam workers) without docqa importing
    s3fs where no `s3://` URL is used. The class is s3fs's own, not a subclass.
    """

    @property
    def S3FileSystem(self) -> type:  # noqa: N802 - the name fsspec's registry entry ends with
        return _apply_s3_limits()


DEFERRED_S3 = _DeferredS3()
_DEFERRED_S3_PATH = f"{__name__}:DEFERRED_S3.S3FileSystem"


def configure_storage() -> None:
    """Arranges for docqa's storage limits to apply to `s3://` (called once, at import of this module).

    Where s3fs's class is already in fsspec's registry (a program used `s3://` before importing docqa),
    the limits apply now; otherwise when fsspec first imports it. A protocol that a program registered
    with another class keeps it, without docqa's limits.
    """
    from fsspec.registry import known_implementations, register_implementation, registry

    for protocol in ("s3", "s3a"):
        if protocol in registry:
            if registry[protocol].__module__.startswith("s3fs"):
                _apply_s3_limits()
            continue
        entry = known_implementations.get(protocol)
        if entry is not None and entry.get("class") == "s3fs.S3FileSystem":
            register_implementation(protocol, _DEFERRED_S3_PATH, clobber=True, errtxt=entry.get("err"))


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


def _timeout_in(err: BaseException) -> BaseException | None:
    """The storage timeout that `err` is or was raised from (`raise ... from`), or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _TIMEOUT_NAMES for cls in type(current).__mro__):
            return current
        current = current.__cause__
    return None


def is_storage_timeout(err: BaseException) -> bool:
    """Whether `err` is a storage endpoint that did not answer in time (see `describe_storage_error`)."""
    return _timeout_in(err) is not None


def _s3_attempts(kwargs: Mapping[str, Any]) -> int | None:
    """Attempts per request under the effective s3 settings, or None where they are not known."""
    if _S3.s3fs_retries != 1:
        return None
    retries = kwargs.get("retries")
    try:
        if isinstance(retries, Mapping) and "total_max_attempts" in retries:
            return int(retries["total_max_attempts"])
        if isinstance(retries, Mapping) and "max_attempts" in retries:
            return int(retries["max_attempts"]) + 1
        if _S3.aws_retry and "max_attempts" in _S3.aws_retry:
            return int(_S3.aws_retry["max_attempts"])
    except (TypeError, ValueError):
        pass
    return None


def _describe_timeout(err: BaseException, url: str, family: str) -> str:
    connect = any(cls.__name__ in _CONNECT_TIMEOUT_NAMES for cls in type(err).__mro__)
    what = "did not accept a connection" if connect else "did not answer"
    if family != "s3":
        return (
            f"the storage endpoint for {url} {what} in time ({type(err).__name__}); check the network, "
            "or raise the store's timeouts in the fsspec config (see qa_core.io.storage)"
        )
    section = fsspec.config.conf.get("s3", {})
    kwargs = section.get("config_kwargs", {}) if isinstance(section, Mapping) else {}
    kwargs = kwargs if isinstance(kwargs, Mapping) else {}
    limit = kwargs.get("connect_timeout" if connect else "read_timeout")
    within = f" within {limit:g} s" if isinstance(limit, int | float) else " in time"
    attempts = _s3_attempts(kwargs)
    tries = f" ({attempts} attempt{'s' if attempts > 1 else ''})" if attempts else ""
    return (
        f"the storage endpoint for {url} {what}{within}{tries}; check AWS_ENDPOINT_URL / the network, "
        f"or raise the limits with {CONNECT_TIMEOUT_ENV if connect else READ_TIMEOUT_ENV} / {RETRIES_ENV}"
    )


def describe_storage_error(err: BaseException, url: str) -> str:
    """A one-line description of a storage failure at `url`, with a hint of what to change."""
    _, _, protocol = url_to_fs(url)
    url = redact_url(url)
    family = _family(protocol)
    hint = _CREDENTIAL_HINTS.get(family)
    name = type(err).__name__
    timeout = _timeout_in(err)
    if timeout is not None:
        return _describe_timeout(timeout, url, family)
    if isinstance(err, PermissionError) or name in ("NoCredentialsError", "PartialCredentialsError"):
        if hint:
            return f"access denied to {url} ({_first_line(err)}); check the credentials: {hint}"
        return f"access denied to {url} ({_first_line(err)})"
    if name in ("EndpointConnectionError", "ClientConnectorError"):
        return f"cannot reach the storage endpoint for {url} ({_first_line(err)})"
    return f"{url}: {name}: {_first_line(err)}"


@contextlib.contextmanager
def storage_errors(
    error: type[JobError], doing: str, url: str, catch: type[BaseException] = Exception
) -> Iterator[None]:
    """Turns a storage failure at `url` into one `error` line: `{doing}: {describe_storage_error(...)}`.

    Storage clients raise their own types (botocore, aiohttp, google-auth), not only `OSError`, so every
    `Exception` is caught unless `catch` narrows it; failures the caller handles itself (a missing file,
    a bad footer) are caught inside the block.
    """
    try:
        yield
    except catch as err:
        raise storage_failure(error, doing, url, err) from err


def storage_failure(error: type[JobError], doing: str, url: str, err: BaseException) -> JobError:
    """The one-line `error` that `storage_errors` raises, built for a caller's own `try`.

    A per-row path (`OutputWriter.write`) uses a plain `try`: the context manager costs a generator a row.
    """
    return error(f"{doing}: {describe_storage_error(err, url)}")


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
        # A timeout names the URL the job was given; other failures are the bucket's.
        return describe_storage_error(err, url if is_storage_timeout(err) else f"{protocol}://{bucket}")
    return None


configure_storage()
