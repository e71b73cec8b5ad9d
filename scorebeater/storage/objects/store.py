"""The object store under the tables: bytes by validated key under one root.

:class:`ObjectStore` is what the local and S3 backends implement (a directory, an S3 prefix);
everything above it (manifests, segments, commits) is shared. Keys pass :func:`check_key`
before they reach a store, so no key can point outside its root.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from scorebeater.errors import StorageError
from scorebeater.storage.objects.tables import ROW_GROUP_ROWS, TableSpec, parquet_options

_KEY_PART = re.compile(r"[A-Za-z0-9_.=-]{1,200}")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``StorageError``.

    Keys are ``/``-separated parts of ``[A-Za-z0-9_.=-]``, never ``.`` or ``..``, never
    absolute: joined to a local root or an S3 prefix they cannot point outside it.
    """
    parts = key.split("/")
    if not key or any(not _KEY_PART.fullmatch(p) or p in {".", ".."} for p in parts):
        raise StorageError(f"unsafe object key {key!r}")
    return key


class ObjectExists(StorageError):
    """An exclusive create found the key already present (another commit got there first)."""


class ObjectSource(Protocol):
    """An object's bytes, produced on demand into an output stream."""

    size: int
    """Bytes written by the last ``write_to`` (0 before)."""

    def write_to(self, sink: pa.NativeFile) -> None:
        """Write the whole object into ``sink`` (leaving it open). CPU-bound: called in a
        worker thread; raises whatever the encoder or the sink raises."""
        ...


class ParquetSource:
    """A table encoded as one Parquet object with :func:`parquet_options` when stored."""

    def __init__(self, table: pa.Table, spec: TableSpec) -> None:
        self.table = table
        self.spec = spec
        self.size = 0

    def write_to(self, sink: pa.NativeFile) -> None:
        start = sink.tell()
        pq.write_table(self.table, sink, row_group_size=ROW_GROUP_ROWS, **parquet_options(self.spec))
        self.size = sink.tell() - start


def render(data: bytes | ObjectSource) -> bytes:
    """The object's bytes in memory (for a store that needs them whole). CPU: worker thread."""
    if isinstance(data, bytes):
        return data
    sink = pa.BufferOutputStream()
    data.write_to(sink)
    return bytes(sink.getvalue())


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object, as a listing reports it."""

    key: str
    """Relative to the store's root, ``/``-separated."""
    size: int
    """Bytes."""
    modified: float
    """Last modification, POSIX seconds."""


class ObjectStore(Protocol):
    """Bytes by validated key under one root (a directory or an S3 prefix).

    Every method raises ``StorageUnavailable`` when the store cannot be reached (I/O error,
    network, auth, 5xx) and ``StorageError`` for other failures, ``from`` the driver's error.
    """

    where: str
    """Human-readable location for logs and errors (no credentials)."""
    ranged_reads: bool
    """Whether a reader that needs a few row groups of a segment should fetch their byte
    ranges (:meth:`read_ranges`) rather than open the whole object: true where opening it
    transfers it (S3), false where it maps a local file."""

    async def put(self, key: str, data: bytes | ObjectSource, *, exclusive: bool = False) -> None:
        """Store ``data`` at ``key``, atomically: readers see the old object or the new one.

        ``data`` is bytes, or an :class:`ObjectSource` whose ``write_to`` the store calls once,
        in a worker thread, with the stream the object's bytes go to (a temporary file, or the
        parts of an S3 upload), so a large object is never held whole. If the source raises or
        the put is cancelled, nothing appears at ``key`` (an S3 multipart upload is aborted).
        With ``exclusive`` the put fails with ``ObjectExists`` if ``key`` exists.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; ``StorageNotFound`` if absent."""
        ...

    async def open_input(self, key: str) -> pa.NativeFile:
        """A random-access Arrow file over the object (for Parquet); ``StorageNotFound`` if absent."""
        ...

    async def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes ``[start, end)`` of each range of the object, in order (a remote store
        fetches them concurrently); ``StorageNotFound`` if absent, ``StorageError`` for a
        range outside the object."""
        ...

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (ending in ``/``), in key order."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; absent keys are not an error (idempotent)."""
        ...
