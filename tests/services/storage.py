"""Storage configs for tests: a fresh, empty place in any backend for one test.

Shared by the storage contract suite and the daemon's end-to-end tests, so both run on exactly
the same real services (a tmp directory, moto's S3 server, a Postgres 15 cluster).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiobotocore.session import get_session

from scorebeater.config import (
    LocalStorageConfig,
    PostgresStorageConfig,
    S3StorageConfig,
    Secret,
    StorageConfig,
)

BACKENDS = ("local", "s3", "postgres")
BUCKET = "scorebeater-tests"
DUMMY_KEY_ID = "testing-key-id"
DUMMY_SECRET = "testing-secret"


async def create_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` on the S3 endpoint (tests only: production code never creates buckets)."""
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=DUMMY_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET,
    ) as client:
        await client.create_bucket(Bucket=bucket)


def config_for(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    batch_rows: int = 50_000,
    name: str = "test",
) -> StorageConfig:
    """A config giving this test a fresh, empty place in ``backend``.

    Uses the session fixtures ``s3_endpoint``/``s3_bucket`` and ``pg_dsn`` (tests/conftest.py),
    which fail the test in CI when their service cannot start.
    """
    unique = uuid.uuid4().hex[:12]
    if backend == "local":
        return StorageConfig(
            backend="local", batch_rows=batch_rows, local=LocalStorageConfig(root=tmp_path / "store")
        )
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        s3 = S3StorageConfig(
            bucket=bucket, prefix=f"{name}/{unique}", endpoint_url=endpoint, addressing_style="path"
        )
        return StorageConfig(backend="s3", batch_rows=batch_rows, s3=s3)
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}")
    dsn = request.getfixturevalue("pg_dsn")
    postgres = PostgresStorageConfig(dsn=Secret(dsn), schema=f"{name}_{unique}")
    return StorageConfig(backend="postgres", batch_rows=batch_rows, postgres=postgres)
