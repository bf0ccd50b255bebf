"""Local paths and object-store URLs behind one small interface (fsspec), for data, models and pointers.

An ``s3://`` URL uses the endpoint in ``FRAUDOPS_S3_ENDPOINT`` (or ``AWS_ENDPOINT_URL``) when set, so that the
same code reaches AWS S3, MinIO, SeaweedFS or a test server; credentials come from the usual AWS variables.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url`` (for ``s3://``: the endpoint, and no listings cache; nothing for local paths).

    s3fs caches directory listings for the life of the process by default: a long-running reader (the drift
    exporter, the trigger, a scorer) would never see the summaries, models and log parts that other pods write
    after its first listing."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("FRAUDOPS_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


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


def read_json(url: str) -> Any | None:
    """The JSON document at ``url``, or None when it does not exist."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def write_json(url: str, document: Any) -> None:
    """Replace the document at ``url`` atomically (temp file + rename locally; one PUT on object stores)."""
    fs, path = filesystem(url)
    data = json.dumps(document, indent=2, default=str).encode()
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if is_remote(url):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
