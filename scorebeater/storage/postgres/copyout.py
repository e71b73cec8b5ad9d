"""Streaming a query's rows out of Postgres as Arrow tables through binary ``COPY``.

The fast read path of large scans (the refeed's read of every latest feature row): ``COPY
(query) TO STDOUT (FORMAT binary)`` sends the rows without asyncpg building a record and a
Python object per value, and :func:`~scorebeater.storage.postgres.codec.decode_copy` turns
them into Arrow column by column in a worker thread, while the server keeps sending the next
rows. The query's ``SELECT`` list must be :func:`~scorebeater.storage.postgres.codec.copy_select`'s
for the same schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

import pyarrow as pa

from scorebeater.errors import StorageError
from scorebeater.storage.postgres.codec import decode_copy
from scorebeater.storage.postgres.connection import Database, discard

_HEADER = b"PGCOPY\n\xff\r\n\x00"
_HEADER_FIXED = len(_HEADER) + 8  # signature, flags, length of the header extension
_QUEUED_BYTES = 16 * 1024 * 1024
"""Received bytes held before the server is made to wait (a bound on memory, not a batch)."""
_ROW_BYTES_GUESS = 256
"""Bytes per row assumed until the first batch tells (only sets how much is gathered first)."""


SCAN_SETTINGS = {"max_parallel_workers_per_gather": "0", "work_mem": "64MB"}
"""What a whole-table read (the refeed's) runs with. No parallel workers: the client decodes
about 100,000 rows a second, far below what one backend sends, so workers would only take CPU
from everything else (measured: three processes each as busy as one alone). Room for its hash
tables in memory: at 4 MB a hash join of a million rows spills to disk in batches (30% slower)."""


async def stream_copy(
    db: Database,
    op: str,
    query: str,
    *args: object,
    schema: pa.Schema,
    settings: Mapping[str, str] = SCAN_SETTINGS,
) -> AsyncGenerator[pa.Table, None]:
    """The rows of ``query`` as ``schema`` tables of at most ``db.batch_rows`` rows, from one
    consistent snapshot (a read-only ``REPEATABLE READ`` transaction), as ``Database.stream``.
    ``settings`` (server settings, constants of ours) hold for that transaction only.

    Memory stays bounded: at most about ``_QUEUED_BYTES`` received and not decoded, plus the
    batch being decoded. Closing the generator early stops the ``COPY`` (its task is cancelled;
    the pool resets the connection).

    Raises:
        StorageUnavailable, StorageError: as ``Database`` translates driver errors; StorageError
            also when the stream is not what ``schema`` implies.
    """
    batch_rows = db.batch_rows
    async with db.connection(op) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        if settings:
            calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, true)" for i in range(len(settings)))
            await conn.execute(f"SELECT {calls}", *(v for item in settings.items() for v in item))
        received = _Received()

        async def copy() -> None:
            try:
                await conn.copy_from_query(query, *args, output=received.put, format="binary")
            finally:
                received.end()  # wakes the reader, who then sees how the copy ended

        task = asyncio.ensure_future(copy())
        try:
            pending = b""  # received, not decoded yet: from a row's start (after the header)
            start: int | None = None  # where the first row starts, once the header is read
            row_bytes = _ROW_BYTES_GUESS
            starved = False  # the last decode found no complete row: wait for more bytes
            while True:
                want = 1 + len(pending) if starved else max(_HEADER_FIXED, row_bytes * batch_rows)
                data, done = await received.take(pending, want, task)
                if start is None:
                    start = _header_length(data, op)
                table, end, finished = await asyncio.to_thread(
                    decode_copy, data, schema, start=start, max_rows=batch_rows
                )
                if table.num_rows:
                    row_bytes = max(1, (end - start) // table.num_rows)
                pending, start = data[end:], 0
                starved = table.num_rows == 0
                if table.num_rows:
                    yield table
                if finished:
                    break
                if done and starved:
                    raise StorageError(f"postgres {op}: the COPY stream ended inside a row")
            await task
        finally:
            discard(task)
            await asyncio.gather(task, return_exceptions=True)


class _Received:
    """The chunks a ``COPY`` has sent and the reader has not taken yet, with back-pressure."""

    def __init__(self) -> None:
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._room = asyncio.Event()  # set while at most _QUEUED_BYTES wait
        self._room.set()
        self._queued = 0
        self._done = False

    async def put(self, chunk: bytes) -> None:
        """asyncpg's output callback: waits while too much is queued (the server then waits)."""
        while self._queued > _QUEUED_BYTES:
            self._room.clear()
            await self._room.wait()
        self._queued += len(chunk)
        self._chunks.put_nowait(chunk)

    def end(self) -> None:
        self._chunks.put_nowait(None)

    async def take(self, pending: bytes, want: int, copy: asyncio.Future[None]) -> tuple[bytes, bool]:
        """``pending`` and chunks after it up to at least ``want`` bytes (fewer at the end),
        and whether the ``COPY`` has ended (then its error, if any, is raised here)."""
        parts = [pending]
        have = len(pending)
        while not self._done and have < want:
            chunk = await self._chunks.get()
            if chunk is None:
                await copy  # raises the copy's error, if it failed
                self._done = True
                break
            self._queued -= len(chunk)
            if self._queued <= _QUEUED_BYTES:
                self._room.set()
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts), self._done


def _header_length(data: bytes, op: str) -> int:
    """Bytes of the binary COPY header at the start of ``data`` (where the first row starts).

    Raises:
        StorageError: ``data`` does not start with a binary COPY header.
    """
    if len(data) < _HEADER_FIXED or not data.startswith(_HEADER):
        raise StorageError(f"postgres {op}: the COPY stream does not start with its header")
    extension = int.from_bytes(data[_HEADER_FIXED - 4 : _HEADER_FIXED], "big")
    return _HEADER_FIXED + extension
