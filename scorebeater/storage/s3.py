"""The S3 backend: Parquet objects under a bucket prefix, through aiobotocore.

Works against any S3 endpoint (AWS, MinIO, moto). ``open_s3(cfg)`` checks that the bucket
exists and is reachable (it never creates one), then yields a ready :class:`S3Storage`. The
layout and the commit protocol are :mod:`scorebeater.storage.objects`'s; commits are exclusive
creates with ``If-None-Match: *`` (supported by AWS S3 since 2024, MinIO and moto 5).

Credentials are botocore's standard chain, which reads the usual AWS environment variables
first (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, or
``AWS_PROFILE``/``AWS_WEB_IDENTITY_TOKEN_FILE``); they are never part of the config and never
logged. Objects above ``multipart_threshold_bytes`` are uploaded in parts, and the upload is
aborted if any part fails or the write is cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import pyarrow as pa
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from scorebeater.errors import StorageError, StorageNotFound, StorageUnavailable
from scorebeater.storage.objects.commit import DEFAULT_GC_GRACE_S
from scorebeater.storage.objects.engine import ObjectTableStorage
from scorebeater.storage.objects.store import ObjectExists, ObjectInfo, ObjectSource, check_key, render

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Sequence

    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from scorebeater.config import S3StorageConfig, StorageConfig

log = structlog.get_logger(__name__)

T = TypeVar("T")

MIN_PART_BYTES = 8 * 1024 * 1024
"""S3 needs parts of at least 5 MiB (but the last); larger parts mean fewer requests."""
_PARTS_IN_FLIGHT = 4
"""Parts of one upload sent at once (and encoded ahead of the uploads, at most)."""
_SINK_BUFFER_BYTES = 1024 * 1024
"""The encoder's writes are gathered into this much before they cross into Python."""
_STOP_POLL_S = 0.05
"""How often an encoder waiting for a free part slot checks whether the upload was given up."""
_DELETE_BATCH = 1000
"""S3's limit of keys per DeleteObjects request."""
_PREFIX = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_AUTH_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})


def check_prefix(prefix: str) -> str:
    """Return the prefix without surrounding slashes if safe (``""`` allowed), else raise."""
    stripped = prefix.strip("/")
    if stripped and (not _PREFIX.fullmatch(stripped) or any(p in {".", ".."} for p in stripped.split("/"))):
        raise StorageError(f"unsafe S3 prefix {prefix!r}: use [A-Za-z0-9._-] segments separated by /")
    return stripped


class S3ObjectStore:
    """``ObjectStore`` over ``s3://bucket/prefix/``; keys never leave the prefix."""

    def __init__(self, client: S3Client, cfg: S3StorageConfig) -> None:
        self._client = client
        self.bucket = cfg.bucket
        self.prefix = check_prefix(cfg.prefix)
        self._multipart_threshold = cfg.multipart_threshold_bytes
        self.where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    ranged_reads = True
    """Opening an object fetches it whole: a reader of a few row groups asks for their bytes."""

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        """Await a client call, translating driver errors at the boundary."""
        try:
            return await aw
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            message = f"{self.where}: {what}: {code or 'error'} (HTTP {status})"
            if code in _CONFLICT_CODES or status in {409, 412}:
                raise ObjectExists(message) from exc
            if code in _NOT_FOUND_CODES or status == 404:  # noqa: PLR2004
                raise StorageNotFound(message) from exc
            if code in _AUTH_CODES or status in {401, 403} or status >= 500:  # noqa: PLR2004
                raise StorageUnavailable(message) from exc
            raise StorageError(message) from exc
        except (
            BotoConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            CredentialRetrievalError,
            aiohttp.ClientError,
            TimeoutError,
        ) as exc:
            raise StorageUnavailable(f"{self.where}: {what}: {type(exc).__name__}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{self.where}: {what}: {type(exc).__name__}: {exc}") from exc

    async def check_bucket(self) -> None:
        """``StorageUnavailable`` naming the bucket if it is missing or not ours to use."""
        try:
            await self._call("head bucket", self._client.head_bucket(Bucket=self.bucket))
        except StorageNotFound as exc:
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} does not exist (create it first)") from exc
        except StorageError as exc:
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} cannot be used: {exc}") from exc

    async def put(self, key: str, data: bytes | ObjectSource, *, exclusive: bool = False) -> None:
        """One PUT (``If-None-Match: *`` when ``exclusive``), or a multipart upload if large.

        A source is encoded in a worker thread into parts that upload while it encodes (at
        most ``_PARTS_IN_FLIGHT`` at once); if it stays under the threshold it is one PUT.
        """
        full = self._key(key)
        if exclusive:
            body = data if isinstance(data, bytes) else await asyncio.to_thread(render, data)
            await self._call(
                f"put {key}",
                self._client.put_object(Bucket=self.bucket, Key=full, Body=body, IfNoneMatch="*"),
            )
        elif isinstance(data, bytes) and len(data) <= self._multipart_threshold:
            await self._call(f"put {key}", self._client.put_object(Bucket=self.bucket, Key=full, Body=data))
        else:
            await self._put_streamed(key, full, _BytesSource(data) if isinstance(data, bytes) else data)

    async def _put_streamed(self, key: str, full: str, source: ObjectSource) -> None:
        sink = _PartSink(
            asyncio.get_running_loop(), max(MIN_PART_BYTES, self._multipart_threshold), _PARTS_IN_FLIGHT
        )
        producer = asyncio.ensure_future(asyncio.to_thread(sink.produce, source))
        upload_id = ""
        try:
            chunk = await sink.next_part(producer)
            if chunk.last:  # the whole object fitted under the threshold
                await producer
                await self._call(
                    f"put {key}", self._client.put_object(Bucket=self.bucket, Key=full, Body=chunk.data)
                )
                return
            created = await self._call(
                f"create multipart {key}",
                self._client.create_multipart_upload(Bucket=self.bucket, Key=full),
            )
            upload_id = created["UploadId"]
            parts = await self._upload_parts(key, full, upload_id, sink=sink, producer=producer, chunk=chunk)
            await producer
            await self._call(
                f"complete multipart {key}",
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            # Failed or cancelled: stop the encoder and wait for its thread, so that no part
            # is sent after the abort (an unfinished upload keeps its parts, billed, until then).
            sink.stop()
            await asyncio.shield(_settle(producer))
            if upload_id:
                await asyncio.shield(self._abort(full, upload_id))
            raise

    async def _upload_parts(
        self,
        key: str,
        full: str,
        upload_id: str,
        *,
        sink: _PartSink,
        producer: asyncio.Future[None],
        chunk: _Chunk,
    ) -> list[CompletedPartTypeDef]:
        """Upload parts as the encoder hands them over, concurrently; the first error wins."""
        etags: dict[int, str] = {}

        async def upload(number: int, data: bytes) -> None:
            try:
                part = await self._call(
                    f"upload part {number} of {key}",
                    self._client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=data
                    ),
                )
            finally:
                sink.release()
            etags[number] = part["ETag"]

        try:
            async with asyncio.TaskGroup() as group:
                for number in itertools.count(1):
                    group.create_task(upload(number, chunk.data))
                    if chunk.last:
                        break
                    chunk = await sink.next_part(producer)
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [{"ETag": etags[n], "PartNumber": n} for n in sorted(etags)]

    async def _abort(self, full: str, upload_id: str) -> None:
        try:
            await self._call(
                f"abort multipart {full}",
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id),
            )
        except StorageError:
            log.warning("storage.s3.abort_failed", key=full, exc_info=True)

    async def get(self, key: str) -> bytes:
        """The object's bytes; ``StorageNotFound`` if absent."""

        async def fetch() -> bytes:
            response = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            async with response["Body"] as body:
                return await body.read()

        return await self._call(f"get {key}", fetch())

    async def open_input(self, key: str) -> pa.NativeFile:
        """The whole object fetched into memory, as an Arrow buffer reader."""
        return pa.BufferReader(pa.py_buffer(await self.get(key)))

    async def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """One ranged ``GetObject`` per range, all at once; see the protocol."""
        full = self._key(key)

        async def fetch(start: int, end: int) -> bytes:
            if not 0 <= start <= end:
                raise StorageError(f"{self.where}: bad range [{start}, {end}) of {key!r}")
            if start == end:
                return b""
            response = await self._client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={start}-{end - 1}"
            )
            async with response["Body"] as body:
                data = await body.read()
            if len(data) != end - start:
                raise StorageError(
                    f"{self.where}: range [{start}, {end}) of {key!r} returned {len(data)} bytes"
                )
            return data

        # A task group: one failed range cancels the others' requests at once.
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._call(f"get {key} bytes {a}-{b}", fetch(a, b))) for a, b in ranges
                ]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Objects under ``prefix``, in key order (paginated ListObjectsV2)."""
        root = f"{self.prefix}/" if self.prefix else ""
        full = root + (check_key(prefix.rstrip("/")) + "/" if prefix.strip("/") else "")

        async def pages() -> list[ObjectInfo]:
            found = []
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"][len(root) :]
                    found.append(ObjectInfo(key, item["Size"], item["LastModified"].timestamp()))
            return found

        return await self._call(f"list {prefix}", pages())

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete objects in batches of 1000; missing keys are not an error."""
        full = [self._key(k) for k in keys]
        for start in range(0, len(full), _DELETE_BATCH):
            batch = full[start : start + _DELETE_BATCH]
            response = await self._call(
                "delete objects",
                self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                ),
            )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"{self.where}: could not delete {len(errors)} object(s), first {first.get('Key')!r}: "
                    f"{first.get('Code')}"
                )


class _BytesSource:
    """Bytes already in memory, through the streamed multipart path."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = 0

    def write_to(self, sink: pa.NativeFile) -> None:
        sink.write(self.data)
        self.size = len(self.data)


@dataclass(frozen=True, slots=True)
class _Chunk:
    data: bytes
    last: bool


_FAILED = _Chunk(b"", last=True)
"""Put on the queue by the encoder thread when it stops on an error."""


class _Stopped(Exception):
    """Raised in the encoder thread once the upload has been given up."""


async def _settle(producer: asyncio.Future[None]) -> None:
    """Wait for the encoder thread to end; its error, if any, is the caller's to report."""
    await asyncio.wait([producer])
    if not producer.cancelled():
        producer.exception()  # retrieved, so asyncio does not log it as never retrieved


class _PartSink:
    """A file-like sink, written by the encoder thread, that hands multipart parts to the loop.

    It holds at most one part being filled; each full part (``part_bytes``) waits for one of
    ``in_flight`` slots, so the encoder runs ahead of the uploads by at most that many parts
    (memory stays bounded by about ``(in_flight + 1) * part_bytes``). A part is handed over
    only once more data follows it, so an object of at most ``part_bytes`` arrives as one
    ``last`` chunk: a single PUT. ``stop()`` makes the encoder's next write raise.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, part_bytes: int, in_flight: int) -> None:
        self._loop = loop
        self._part_bytes = part_bytes
        self._slots = threading.Semaphore(in_flight)
        self._queue: asyncio.Queue[_Chunk] = asyncio.Queue()
        self._buffer = bytearray()
        self._position = 0
        self._stopped = threading.Event()
        self.closed = False

    # --- the encoder thread's side (a Python file object for pa.PythonFile) ---

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data: bytes | memoryview) -> int:
        if self._stopped.is_set():
            raise _Stopped
        self._buffer += data
        self._position += len(data)
        while len(self._buffer) > self._part_bytes:
            part = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            self._hand_over(_Chunk(part, last=False))
        return len(data)

    def flush(self) -> None:
        """Nothing to do: parts leave when full."""

    def close(self) -> None:
        self.closed = True

    def produce(self, source: ObjectSource) -> None:
        """Run ``source`` into this sink, then hand over the last part (worker thread)."""
        try:
            out = pa.BufferedOutputStream(pa.PythonFile(self, mode="w"), buffer_size=_SINK_BUFFER_BYTES)
            source.write_to(out)
            out.flush()
            self._hand_over(_Chunk(bytes(self._buffer), last=True))
        except BaseException:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _FAILED)
            raise

    def _hand_over(self, chunk: _Chunk) -> None:
        while not self._slots.acquire(timeout=_STOP_POLL_S):
            if self._stopped.is_set():
                raise _Stopped
        if self._stopped.is_set():
            raise _Stopped
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)

    # --- the event loop's side ---

    async def next_part(self, producer: asyncio.Future[None]) -> _Chunk:
        """The next part; if the encoder failed, its error."""
        chunk = await self._queue.get()
        if chunk is _FAILED:
            await producer
            raise StorageError("the encoder stopped without an error")  # unreachable in practice
        return chunk

    def release(self) -> None:
        """A part has been sent (or failed): the encoder may hand over another."""
        self._slots.release()

    def stop(self) -> None:
        self._stopped.set()


class S3Storage(ObjectTableStorage):
    """``Storage`` in Parquet objects under an S3 prefix.

    Single writer process: see :mod:`scorebeater.storage.objects`.
    """


@asynccontextmanager
async def open_s3(cfg: StorageConfig, *, gc_grace_s: float = DEFAULT_GC_GRACE_S) -> AsyncIterator[S3Storage]:
    """Yield a ready :class:`S3Storage` over ``s3://{bucket}/{prefix}``; close the client on exit.

    Raises:
        StorageUnavailable: the endpoint cannot be reached, the credentials are refused, or
            the bucket does not exist (named in the message).
        StorageError: the prefix is unsafe or the committed manifest is corrupt.
    """
    s3 = cfg.s3
    if not s3.bucket:
        raise StorageError("storage.s3.bucket is not set")
    check_prefix(s3.prefix)
    config = AioConfig(
        region_name=s3.region,
        s3={"addressing_style": s3.addressing_style},
        max_pool_connections=s3.max_pool_connections,
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 3},
    )
    session = get_session()
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            session.create_client(
                "s3", region_name=s3.region, endpoint_url=s3.endpoint_url or None, config=config
            )
        )
        objects = S3ObjectStore(client, s3)
        await objects.check_bucket()
        storage = S3Storage(objects, batch_rows=cfg.batch_rows, gc_grace_s=gc_grace_s)
        await storage.open()
        try:
            yield storage
        finally:
            await storage.drain_commits()
