"""Local paths and object-store URLs behind one small interface (fsspec), for data, models and pointers.

An ``s3://`` URL uses the endpoint in ``FRAUDOPS_S3_ENDPOINT`` (or ``AWS_ENDPOINT_URL``) when set, so that the
same code reaches AWS S3, MinIO, SeaweedFS or a test server; credentials come from the usual AWS variables.

A store that is down or hangs fails a call in bounded time. Requests are retried by botocore alone, 3 attempts
in all (its standard mode: refused connections, timeouts, 5xx, throttling), each waiting at most 5 s to connect
and 10 s for each read: a hung store fails a call after about 31 s, a refused connection within 3 s (measured
against a stopped and a killed moto server). Before, s3fs's own loop repeated botocore's 5 times (a hung store
held a read for 7 minutes) and an upload, which waited for a ``100 Continue`` with no timeout, forever. Now s3fs
makes a single pass, so a download that breaks off mid-body is not resumed: the caller's next attempt (a scorer's
next poll, a Job's retry) starts it again. The timeouts and retries are the botocore ``Config`` options in
`S3_CONFIG`; fsspec's configuration changes them, e.g. ``FSSPEC_S3='{"config_kwargs": {"read_timeout": 30}}'``
in the environment (read when fsspec is imported) or the same JSON in a file in fsspec's config directory.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import fsspec.config

from fraudops.settings import StoreSettings

S3_CONFIG: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 10,
                             "retries": {"total_max_attempts": 3, "mode": "standard"}}


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url`` (for ``s3://``: the endpoint, timeouts and retries, and no listings cache;
    nothing for local paths).

    s3fs caches directory listings for the life of the process by default: a long-running reader (the drift
    exporter, the trigger, a scorer) would never see the summaries, models and log parts that other pods write
    after its first listing."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    _bound_s3_calls()
    configured = fsspec.config.conf.get("s3", {})
    options: dict[str, Any] = {**configured, "use_listings_cache": False,
                               "config_kwargs": {**S3_CONFIG, **configured.get("config_kwargs", {})}}
    endpoint = StoreSettings.from_env().s3_endpoint
    if endpoint:
        options["client_kwargs"] = {**configured.get("client_kwargs", {}), "endpoint_url": endpoint}
    return options


@functools.cache
def _bound_s3_calls() -> None:
    """The process-wide part of bounding S3 calls (s3fs and botocore have no per-filesystem option for it).

    s3fs's retry loop makes a single pass: botocore retries, and s3fs's loop around it multiplied its attempts by 5.
    No S3 upload sends ``Expect: 100-continue``: aiohttp waits for the store's interim answer to it with no timeout
    at all (the read timeout starts once the body is sent), so a store that accepted the connection and then hung
    held every PUT forever."""
    import s3fs
    from botocore import handlers

    s3fs.S3FileSystem.retries = 1
    handlers.BUILTIN_HANDLERS[:] = [h for h in handlers.BUILTIN_HANDLERS if h[1] is not handlers.add_expect_header]


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def is_remote(url: str) -> bool:
    """True for URLs that are not on the local disk."""
    return "://" in url and not url.startswith("file://")


@functools.cache
def failures() -> tuple[type[Exception], ...]:
    """The exceptions with which a store refuses or fails a call (down, hung, denied, no such bucket), as opposed
    to a bug: OSError (s3fs translates S3's error codes to it), and botocore's and aiohttp's own errors (a refused
    connection or a timeout reaches the caller as these). Imported late: both come with s3fs."""
    from aiohttp import ClientError
    from botocore.exceptions import BotoCoreError

    return OSError, BotoCoreError, ClientError


def describe(exc: BaseException) -> str:
    """One line saying why a store call failed (the first line of the message, else the exception's name)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_json(url: str) -> Any | None:
    """The JSON document at ``url``, or None when it does not exist (`ValueError` if it is not JSON)."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


PARTIAL_SUFFIX = ".tmp"  # a local file `write_json` or `put_file` is still writing (renamed once whole)


def write_json(url: str, document: Any) -> None:
    """Replace the document at ``url``: readers see the old document or the new one, never a part of it."""
    data = json.dumps(document, indent=2, default=str).encode()
    _replace(url, lambda fh: fh.write(data), lambda fs, path: fs.pipe_file(path, data))


def put_file(local: str | Path, url: str) -> None:
    """Copy the file ``local`` to ``url``: readers see no file, the old one or the whole new one, never a part."""
    _replace(url, lambda fh: _copy(local, fh), lambda fs, path: fs.put_file(str(local), path))


def _copy(local: str | Path, target: BinaryIO) -> None:
    with open(local, "rb") as source:
        shutil.copyfileobj(source, target)


def _replace(url: str, write: Callable[[BinaryIO], Any], upload: Callable[[Any, str], Any]) -> None:
    """Object stores: one ``upload`` (a PUT, or a multipart upload the store shows only once it is complete; no
    ``makedirs``, which would probe for the bucket, and create it if missing, with a request each). Local paths:
    ``write`` a temporary file, flush it to disk, and rename it over the target."""
    fs, path = filesystem(url)
    if is_remote(url):
        upload(fs, path)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
