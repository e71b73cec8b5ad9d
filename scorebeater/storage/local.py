"""The embedded default backend: Parquet files under a directory, in S3's object layout.

``open_local(cfg)`` creates ``cfg.local.root`` if needed and yields a ready
:class:`LocalStorage`. Every file operation runs in a worker thread (``asyncio.to_thread``), so
the event loop never blocks on the disk. Files are written to a temporary name in the target
directory, fsynced, then renamed (``os.replace``), or hard-linked for an exclusive create, and
the directory is fsynced, so a crash leaves the old file or the new one, never half of one.
See :mod:`scorebeater.storage.objects` for the commit protocol and layout.
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import pyarrow as pa

from scorebeater.errors import StorageError, StorageNotFound, StorageUnavailable
from scorebeater.storage.objects.commit import DEFAULT_GC_GRACE_S
from scorebeater.storage.objects.engine import ObjectTableStorage
from scorebeater.storage.objects.store import ObjectExists, ObjectInfo, ObjectSource, check_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from scorebeater.config import StorageConfig

P = ParamSpec("P")
T = TypeVar("T")

_WRITE_BUFFER_BYTES = 1024 * 1024


def _read_ranges(path: Path, ranges: list[tuple[int, int]], where: str, key: str) -> list[bytes]:
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        found = []
        for start, end in ranges:
            if not 0 <= start <= end <= size:
                raise StorageError(f"{where}: range [{start}, {end}) is outside {key!r} ({size} bytes)")
            file.seek(start)
            found.append(file.read(end - start))
    return found


class LocalObjectStore:
    """``ObjectStore`` over a directory; keys map to paths below ``root``, never outside it."""

    ranged_reads = False
    """A segment is memory-mapped: pages load on demand, so readers open it whole."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.where = str(self.root)

    def path(self, key: str) -> Path:
        """The file of ``key``; ``StorageError`` if the key is unsafe or resolves outside the root."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"object key {key!r} resolves outside {self.root}")
        return path

    async def _run(self, key: str, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except FileNotFoundError as exc:
            raise StorageNotFound(f"{self.where}: no object {key!r}") from exc
        except FileExistsError as exc:
            raise ObjectExists(f"{self.where}: object {key!r} already exists") from exc
        except OSError as exc:
            # Permissions, a full or read-only disk, an unmounted volume: the store cannot be used.
            raise StorageUnavailable(
                f"{self.where}: {errno.errorcode.get(exc.errno or 0, 'OSError')} on {key!r}: {exc.strerror}"
            ) from exc

    async def ensure_root(self) -> None:
        """Create the root directory (and parents) if missing, then create and remove a file in it.

        Raises:
            StorageUnavailable: naming the root and why it cannot be used (it cannot be created,
                is not a directory, or no file can be created in it: read-only, permissions).
        """
        for failure, check in (("cannot be created", _make_root), ("is not writable", _probe_root)):
            try:
                await asyncio.to_thread(check, self.root)
            except OSError as exc:
                reason = f"{errno.errorcode.get(exc.errno or 0, type(exc).__name__)} ({exc.strerror or exc})"
                raise StorageUnavailable(f"storage.local.root: {self.root} {failure}: {reason}") from exc

    async def put(self, key: str, data: bytes | ObjectSource, *, exclusive: bool = False) -> None:
        """Write ``data`` atomically at ``key``; ``exclusive`` fails with ``ObjectExists`` if present.

        A source writes straight into the temporary file (no copy of the object in memory).
        """
        await self._run(key, _write_file, self.path(key), data, exclusive)

    async def get(self, key: str) -> bytes:
        """The file's bytes; ``StorageNotFound`` if absent."""
        return await self._run(key, self.path(key).read_bytes)

    async def open_input(self, key: str) -> pa.NativeFile:
        """A memory map of the file (pages load on demand); ``StorageNotFound`` if absent."""
        return await self._run(key, pa.memory_map, str(self.path(key)))

    async def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``[start, end)`` of the file; see the protocol."""
        return await self._run(key, _read_ranges, self.path(key), list(ranges), self.where, key)

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Files under ``prefix`` (a directory path ending in ``/``), in key order."""
        directory = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        return await self._run(prefix, _walk, self.root, directory)

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove these files; missing ones are ignored."""
        paths = [self.path(k) for k in keys]
        await self._run(",".join(keys[:3]), _unlink_all, paths)


def _write_file(path: Path, data: bytes | ObjectSource, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        if isinstance(data, bytes):
            with tmp.open("xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            # Arrow's own file: the encoder writes without taking the GIL; the buffer turns
            # its many small writes (page headers) into few system calls.
            raw = pa.OSFile(str(tmp), "w")
            out = pa.BufferedOutputStream(raw, buffer_size=_WRITE_BUFFER_BYTES)
            try:
                data.write_to(out)
                out.flush()
                os.fsync(raw.fileno())
            finally:
                out.close()  # closes the file too
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError: the exclusive create
        else:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _make_root(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)  # FileExistsError: it exists and is not a directory


def _probe_root(root: Path) -> None:
    probe = root / f".probe-{uuid.uuid4().hex}"
    probe.touch(exist_ok=False)
    probe.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk(root: Path, directory: Path) -> list[ObjectInfo]:
    found = []
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(dirpath, name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # deleted between the listing and the stat: it is gone either way
            found.append(ObjectInfo(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime))
    found.sort(key=lambda info: info.key)
    return found


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class LocalStorage(ObjectTableStorage):
    """``Storage`` in Parquet files under a local directory (the embedded default).

    Single writer process: see :mod:`scorebeater.storage.objects`.
    """


@asynccontextmanager
async def open_local(
    cfg: StorageConfig, *, gc_grace_s: float = DEFAULT_GC_GRACE_S
) -> AsyncIterator[LocalStorage]:
    """Yield a ready :class:`LocalStorage` over ``cfg.local.root`` (created if missing).

    Raises:
        StorageUnavailable: the root cannot be created, read or written.
        StorageError: the committed manifest is corrupt.
    """
    objects = LocalObjectStore(cfg.local.root)
    await objects.ensure_root()
    storage = LocalStorage(objects, batch_rows=cfg.batch_rows, gc_grace_s=gc_grace_s)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.drain_commits()
