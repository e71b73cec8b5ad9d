"""Local storage is single-process: an exclusive ``flock`` on ``<root>/.lock``.

The lock file holds the holder's identity and the term (JSON). The term survives in the file
after its holder has gone, so the next holder's token is one higher. ``flock`` locks die with
their process (even on SIGKILL), so a stale file never blocks a restart; a second process on
the same root gets :class:`~scorebeater.errors.LeadershipHeld` naming the holder's PID, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import IO, NoReturn

import orjson
import structlog

from scorebeater.errors import LeadershipHeld, LeadershipLost, StorageError
from scorebeater.leadership.base import Holder, Identity

log = structlog.get_logger(__name__)

LOCK_NAME = ".lock"
HOLD_CHECK_S = 2.0
"""How often a holder checks that its lock file is still the one at the path."""


def _read(handle: IO[bytes]) -> dict[str, object]:
    handle.seek(0)
    raw = handle.read()
    try:
        doc = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        return {}  # written by hand or half-written by a crash: only the term is lost
    return doc if isinstance(doc, dict) else {}


def _holder(doc: dict[str, object]) -> Holder:
    def num(name: str) -> int:
        value = doc.get(name)
        return value if isinstance(value, int) else 0

    identity = Identity(str(doc.get("holder_id", "")), num("pid"), str(doc.get("host", "?")))
    return Holder(identity, num("term"))


def _locked(handle: IO[bytes], mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


class LocalElector:
    """The :class:`~scorebeater.leadership.base.Elector` of a local root (see the module)."""

    def __init__(self, root: Path, identity: Identity) -> None:
        self._path = root / LOCK_NAME
        self._identity = identity
        self._handle: IO[bytes] | None = None
        self._token: int | None = None
        self.lost = asyncio.Event()

    @property
    def token(self) -> int | None:
        """The term this process leads, or ``None`` before :meth:`try_acquire`."""
        return self._token

    @property
    def nonce(self) -> str:
        """``""``: this store's fencing is the manifest's token (see the protocol)."""
        return ""

    def _refuse(self, holder: Holder) -> NoReturn:
        raise _held(self._path.parent, holder)

    def _record(self, term: int) -> None:
        """Write our identity and ``term`` into the lock file (held by us)."""
        doc = {
            "holder_id": self._identity.holder_id,
            "pid": self._identity.pid,
            "host": self._identity.host,
            "term": term,
        }
        # A second descriptor, closed at once: the lock stays with the held one's.
        with self._path.open("r+b") as record:
            record.truncate()
            record.write(orjson.dumps(doc))
            record.flush()
            os.fsync(record.fileno())

    def _take(self) -> int:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("ab"):  # create it; never truncate: it may be a live holder's record
            pass
        # The lock is held on a read-only descriptor, kept open while leading: a descriptor open
        # for writing would make remounting the root read-only under the daemon fail (EBUSY).
        handle = self._path.open("rb")
        try:
            if not _locked(handle, fcntl.LOCK_EX):
                self._refuse(_holder(_read(handle)))
            term = _holder(_read(handle)).term + 1
            self._record(term)
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return term

    async def try_acquire(self) -> int | None:
        """Lock the root and return the new term; see the protocol (never returns ``None``).

        Raises:
            LeadershipHeld: another process holds the root. StorageError: the lock file
                cannot be created or written.
        """
        if self._token is not None:
            return self._token
        try:
            self._token = await asyncio.to_thread(self._take)
        except OSError as exc:
            raise StorageError(f"cannot lock {self._path}: {exc}") from exc
        log.info("leadership.acquired", backend="local", term=self._token, lock=str(self._path))
        return self._token

    async def acquire(self) -> int:
        """The same as :meth:`try_acquire`: a local root never waits for another process."""
        token = await self.try_acquire()
        assert token is not None  # noqa: S101 - try_acquire raises instead
        return token

    async def advance(self, past: int) -> int:
        """Record term ``past + 1`` in the lock file we hold; see the protocol."""
        token = self._token
        if token is None:
            raise LeadershipLost("local: advance() called without leadership")
        if token > past:
            return token
        if not await self._check():
            self._token = None
            self.lost.set()
            raise LeadershipLost(f"local: the lock file {self._path} was deleted or replaced")
        try:
            await asyncio.to_thread(self._record, past + 1)
        except OSError as exc:
            raise StorageError(f"cannot write {self._path}: {exc}") from exc
        self._token = past + 1
        log.warning(
            "leadership.term_advanced", backend="local", term=past + 1, was=token, lock=str(self._path)
        )
        return past + 1

    def _still_ours(self) -> bool:
        """Whether the lock file at the path is the one whose lock we hold (it was not
        deleted, or replaced by another process's, by hand). Another error (a network file
        system's EIO or ESTALE) proves neither: it is raised."""
        handle = self._handle
        if handle is None:
            return False
        try:
            at_path = self._path.stat()
        except FileNotFoundError:
            return False
        held = os.fstat(handle.fileno())
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    async def _check(self) -> bool:
        """:meth:`_still_ours`, counting an error as ours (logged): the lock still holds."""
        try:
            return await asyncio.to_thread(self._still_ours)
        except OSError as exc:
            log.warning(
                "leadership.lock_file_unreadable", backend="local", lock=str(self._path), error=str(exc)
            )
            return True

    async def hold(self) -> NoReturn:
        """Hold the lock until cancelled. The lock itself cannot be lost while this process
        lives, but its file can be deleted by hand, and then another process can lock a new
        one: every ``HOLD_CHECK_S`` the file is checked to be ours, and lost if not."""
        token = self._token
        if token is None:
            raise LeadershipLost("local: hold() called before leadership was acquired")
        while await self._check():  # noqa: ASYNC110 - polls a file, no event to wait on
            await asyncio.sleep(HOLD_CHECK_S)
        self._token = None
        self.lost.set()
        reason = f"the lock file {self._path} was deleted or replaced"
        log.error("leadership.lost", backend="local", term=token, reason=reason)
        raise LeadershipLost(f"local: leadership of term {token} lost: {reason}")

    async def release(self) -> None:
        """Unlock (the term stays in the file for the next holder). Idempotent."""
        handle, self._handle, self._token = self._handle, None, None
        if handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    async def holder(self) -> Holder | None:
        """The live holder of the root (this process included), or ``None``."""
        return await asyncio.to_thread(probe_root, self._path.parent)


def _held(root: Path, holder: Holder) -> LeadershipHeld:
    return LeadershipHeld(
        f"{root}: local storage serves one process and another holds it "
        f"({holder.describe()}; lock file {root / LOCK_NAME}): stop pid {holder.identity.pid} "
        "first, or use Postgres or S3 storage to run replicas",
        holder=holder.describe(),
    )


async def check_root_free(root: Path) -> None:
    """Refuse at once when another live process holds ``root``: a check before a daemon starts
    its embedded servers (their ports would otherwise be the first thing to clash). Takes
    nothing: the elector's :meth:`LocalElector.try_acquire` still takes the lock afterwards.

    Raises:
        LeadershipHeld: naming the holder (pid, host, term) and the lock file.
        StorageError: the lock file cannot be read.
    """
    try:
        holder = await asyncio.to_thread(probe_root, root)
    except OSError as exc:
        raise StorageError(f"{root / LOCK_NAME}: cannot read the lock file: {exc}") from exc
    if holder is not None:
        raise _held(root, holder)


def probe_root(root: Path) -> Holder | None:
    """The live process holding ``root``'s lock, or ``None`` (blocking; a thread's work).

    Takes a shared lock for a moment when nobody holds it: harmless, as a would-be holder
    that meets it fails its attempt and the caller's next one succeeds.
    """
    path = root / LOCK_NAME
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        if _locked(handle, fcntl.LOCK_SH):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None
        return _holder(_read(handle))
