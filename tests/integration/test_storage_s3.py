"""S3 backend specifics, against moto's server: bucket checks, errors, multipart (streamed while
encoding, aborted on failure or cancellation), prefix safety."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest
from aiobotocore.session import get_session
from structlog.testing import capture_logs

from scorebeater.config import S3StorageConfig, StorageConfig
from scorebeater.errors import StorageError, StorageNotFound, StorageUnavailable
from scorebeater.storage.objects.store import ObjectExists
from scorebeater.storage.s3 import MIN_PART_BYTES, S3ObjectStore, open_s3
from tests.services.storage import DUMMY_KEY_ID, DUMMY_SECRET

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from types_aiobotocore_s3 import S3Client


@pytest.fixture(name="aws_env")
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)


@pytest.fixture(name="client")
async def _client(s3_endpoint: str, aws_env: None) -> AsyncIterator[S3Client]:
    session = get_session()
    async with session.create_client("s3", endpoint_url=s3_endpoint, region_name="us-east-1") as client:
        yield client


def s3_config(endpoint: str, bucket: str, prefix: str) -> StorageConfig:
    s3 = S3StorageConfig(bucket=bucket, prefix=prefix, endpoint_url=endpoint, addressing_style="path")
    return StorageConfig(backend="s3", s3=s3)


async def test_missing_bucket_is_unavailable_and_named(s3_endpoint: str, aws_env: None) -> None:
    with pytest.raises(StorageUnavailable, match="no-such-bucket-here"):
        async with open_s3(s3_config(s3_endpoint, "no-such-bucket-here", "p")):
            pass


async def test_objects_stay_under_the_prefix_and_secrets_are_not_logged(
    s3_endpoint: str, client: S3Client
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    with capture_logs() as logs:
        async with open_s3(s3_config(s3_endpoint, bucket, "team/store")) as storage:
            await storage.put_checkpoint("features", b"1")
            with pytest.raises(StorageError):
                await storage.put_checkpoint("../../x", b"1")
            await storage.cache.put(1, {"h": 0.5})
    listed = await client.list_objects_v2(Bucket=bucket)
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert keys
    assert all(k.startswith("team/store/") for k in keys)
    assert DUMMY_SECRET not in repr(logs)
    assert DUMMY_KEY_ID not in repr(logs)


async def test_multipart_round_trip_and_not_found(s3_endpoint: str, client: S3Client) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    cfg = S3StorageConfig(bucket=bucket, prefix="mp", multipart_threshold_bytes=1024 * 1024)
    store = S3ObjectStore(client, cfg)
    data = bytes(range(256)) * ((MIN_PART_BYTES + 1024 * 1024) // 256)  # two parts
    await store.put("features/big.parquet", data)
    assert await store.get("features/big.parquet") == data
    head = await client.head_object(Bucket=bucket, Key="mp/features/big.parquet")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag names its part count
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads")
    with pytest.raises(StorageNotFound):
        await store.get("features/missing.parquet")


async def test_cancelled_multipart_upload_is_aborted(s3_endpoint: str, client: S3Client) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    store = S3ObjectStore(client, S3StorageConfig(bucket=bucket, prefix="mp", multipart_threshold_bytes=1))
    data = b"x" * (3 * MIN_PART_BYTES)
    task = asyncio.create_task(store.put("features/big.parquet", data))
    for _ in range(200):  # until the upload exists on the server
        if (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads"):
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads")
    with pytest.raises(StorageNotFound):
        await store.get("features/big.parquet")


async def test_exclusive_put_detects_an_existing_object(s3_endpoint: str, client: S3Client) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    store = S3ObjectStore(client, S3StorageConfig(bucket=bucket, prefix=""))
    await store.put("_manifest/00000000000000000001.json", b"{}", exclusive=True)
    with pytest.raises(ObjectExists, match=r"PreconditionFailed|HTTP 412"):
        await store.put("_manifest/00000000000000000001.json", b"{}", exclusive=True)


class ChunkSource:
    """An ``ObjectSource`` writing ``chunks`` pieces of ``chunk_bytes``; can fail or block midway."""

    def __init__(self, chunk_bytes: int, chunks: int, *, fail_after: int = -1) -> None:
        self.chunk_bytes = chunk_bytes
        self.chunks = chunks
        self.fail_after = fail_after
        self.size = 0
        self.written = threading.Event()

    def expected(self) -> bytes:
        return b"".join(bytes([i % 251]) * self.chunk_bytes for i in range(self.chunks))

    def write_to(self, sink: pa.NativeFile) -> None:
        for i in range(self.chunks):
            if i == self.fail_after:
                raise ValueError("encoder failed midway")
            sink.write(bytes([i % 251]) * self.chunk_bytes)
            self.size += self.chunk_bytes
            self.written.set()


async def test_streamed_source_uploads_parts_while_encoding(s3_endpoint: str, client: S3Client) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    store = S3ObjectStore(client, S3StorageConfig(bucket=bucket, prefix="st", multipart_threshold_bytes=1))
    source = ChunkSource(1024 * 1024, 2 * MIN_PART_BYTES // (1024 * 1024) + 3)  # 3 parts
    await store.put("features/big.parquet", source)
    assert await store.get("features/big.parquet") == source.expected()
    head = await client.head_object(Bucket=bucket, Key="st/features/big.parquet")
    assert head["ETag"].strip('"').endswith("-3")
    small = ChunkSource(1000, 3)  # under one part: a single PUT, no multipart upload
    await store.put("features/small.parquet", small)
    assert await store.get("features/small.parquet") == small.expected()
    head = await client.head_object(Bucket=bucket, Key="st/features/small.parquet")
    assert "-" not in head["ETag"]
    assert not (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads")


async def test_source_failing_midway_aborts_the_upload(s3_endpoint: str, client: S3Client) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    store = S3ObjectStore(client, S3StorageConfig(bucket=bucket, prefix="st", multipart_threshold_bytes=1))
    source = ChunkSource(1024 * 1024, 40, fail_after=2 * MIN_PART_BYTES // (1024 * 1024) + 1)
    with pytest.raises(ValueError, match="encoder failed midway"):
        await store.put("features/big.parquet", source)
    assert not (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads")
    with pytest.raises(StorageNotFound):
        await store.get("features/big.parquet")


async def test_cancelled_streamed_upload_stops_the_encoder_and_aborts(
    s3_endpoint: str, client: S3Client
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    store = S3ObjectStore(client, S3StorageConfig(bucket=bucket, prefix="st", multipart_threshold_bytes=1))
    source = ChunkSource(1024 * 1024, 10_000)  # ~10 GB if it ran to the end: it must be stopped
    task = asyncio.create_task(store.put("features/big.parquet", source))
    for _ in range(400):  # until the upload exists on the server
        if (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads"):
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.size < 100 * MIN_PART_BYTES  # the encoder thread was stopped, not run out
    assert not (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads")
    with pytest.raises(StorageNotFound):
        await store.get("features/big.parquet")
