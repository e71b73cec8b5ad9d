"""S3 backend parts that need no server: prefix safety, and an endpoint that refuses us.

The cases against moto's S3 server are in tests/integration/test_storage_s3.py.
"""

from __future__ import annotations

import socket

import pytest

from scorebeater.config import S3StorageConfig, StorageConfig
from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.storage.s3 import check_prefix, open_s3
from tests.services.storage import DUMMY_KEY_ID, DUMMY_SECRET


@pytest.fixture(name="aws_env")
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)


@pytest.mark.parametrize("prefix", ["../x", "a/../b", "a//b", "a b", "./a"])
def test_unsafe_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(StorageError, match="unsafe S3 prefix"):
        check_prefix(prefix)


async def test_unreachable_endpoint_is_unavailable(aws_env: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        s3 = S3StorageConfig(
            bucket="bucket", prefix="p", endpoint_url=f"http://127.0.0.1:{port}", addressing_style="path"
        )
        with pytest.raises(StorageUnavailable):
            async with open_s3(StorageConfig(backend="s3", s3=s3)):
                pass
