"""A real S3-compatible server on localhost for the object-storage tests: moto's server.

:func:`s3_server` starts ``moto.server.ThreadedMotoServer`` on a free port, creates a bucket and
points the AWS variables (dummy credentials, ``AWS_ENDPOINT_URL``) at it, so s3fs, zarr and the
CLI in this process talk to it like to any S3 endpoint; the server stops at the end.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

BUCKET = "mindzoo-test"


@dataclass
class S3Server:
    """A running server: its endpoint, the test bucket and the options s3fs would need."""

    endpoint_url: str
    bucket: str

    def url(self, path: str) -> str:
        """``s3://BUCKET/path``."""
        return f"s3://{self.bucket}/{path.strip('/')}"

    @property
    def storage_options(self) -> dict[str, object]:
        return {
            "key": "test",
            "secret": "test",
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """Start moto's S3 server, set the AWS variables for this process, create a bucket
    (``mindzoo-test-<random>``: moto keeps its state per process, not per server)."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_SESSION_TOKEN": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # no instance made for another endpoint
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    try:
        s3fs.S3FileSystem().mkdir(bucket)
        yield S3Server(endpoint, bucket)
    finally:
        _close_async_sessions(s3fs.S3FileSystem)
        s3fs.S3FileSystem.clear_instance_cache()
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()  # moto's state: gone
        server.stop()


def _close_async_sessions(fs_class: type) -> None:
    """Close the aiohttp sessions of the asynchronous instances zarr made (on zarr's loop):
    s3fs closes only its synchronous ones, the rest warn 'Unclosed client session' when
    collected."""
    from zarr.core.sync import _get_loop

    for fs in list(fs_class._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if fs.asynchronous and creator is not None:
            fs_class.close_session(_get_loop(), creator)
