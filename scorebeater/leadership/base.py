"""The elector contract: which of the ``scorebeater run`` replicas over one store leads.

Exactly one replica at a time is leader and runs the stages; the others are standbys that
serve reads and wait. Each leadership term has a **fencing token**, an integer that grows with
every new term on a store. The leader hands its token to storage
(:meth:`~scorebeater.storage.base.Storage.set_fencing_token`), and storage rejects any commit
carrying an older one with :class:`~scorebeater.errors.Fenced`: a leader that was paused or
partitioned past its lease can never overwrite its successor's work, whatever it believes.

Backends (one module each): ``postgres`` (a session advisory lock on a dedicated connection;
the term is a row bumped on acquisition), ``s3`` (a lease object renewed with conditional
writes), ``local`` (an exclusive ``flock``: one process per root, a second refuses to start).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol

import structlog

from scorebeater.errors import Fenced

if TYPE_CHECKING:
    from scorebeater.storage.base import Storage

log = structlog.get_logger(__name__)

Role = Literal["leader", "standby"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a replica is, as recorded by the leadership it holds."""

    holder_id: str
    pid: int
    host: str

    @classmethod
    def of_this_process(cls, holder_id: str = "") -> Identity:
        """This process: ``holder_id`` or, when empty, ``<host>:<pid>``."""
        host, pid = socket.gethostname(), os.getpid()
        return cls(holder_id or f"{host}:{pid}", pid, host)


@dataclass(frozen=True, slots=True)
class Holder:
    """A live leadership as another process sees it."""

    identity: Identity
    term: int

    def describe(self) -> str:
        """``pid 123 on host h, term 7`` (with the holder id when it is not the default)."""
        who = f"pid {self.identity.pid} on host {self.identity.host}"
        if self.identity.holder_id and self.identity.holder_id != f"{self.identity.host}:{self.identity.pid}":
            who += f" ({self.identity.holder_id})"
        return f"{who}, term {self.term}"


class Elector(Protocol):
    """One replica's side of the election on one store. Not safe for use by two tasks at once.

    Open one with :func:`scorebeater.leadership.open_elector`, which releases leadership and
    closes the elector's connections on exit.
    """

    lost: asyncio.Event
    """Set when this replica was leader and is no longer (never cleared: a lost leader exits)."""

    @property
    def token(self) -> int | None:
        """The fencing token of the term this replica leads, or ``None`` when not leader."""
        ...

    @property
    def nonce(self) -> str:
        """This elector's own random id, stored with each term it wins (Postgres), for
        :meth:`~scorebeater.storage.base.Storage.set_fencing_token`; ``""`` where the store's
        fencing needs none (the object stores' manifest chain)."""
        ...

    async def try_acquire(self) -> int | None:
        """One attempt: become leader now and return the new term's fencing token, or ``None``
        when another live replica leads. Idempotent: a leader gets its current token back.

        Raises:
            LeadershipHeld: (local backend only) another process holds the store: a second
                process on a local root never waits. StorageUnavailable: the store cannot
                be reached.
        """
        ...

    async def acquire(self) -> int:
        """Wait until this replica leads (one attempt every ``poll_s`` seconds); return its
        fencing token. A standby survives a store that is briefly unreachable (it logs and
        tries again). Cancellable at any time. Idempotent.

        Raises:
            LeadershipHeld: (local backend) another process holds the root.
        """
        ...

    async def advance(self, past: int) -> int:
        """Move the term this replica leads past ``past`` and return the new token.

        For a store whose fencing records a newer term than the election does (an S3 lease
        object or a local lock file deleted by hand or restored from a backup restarts its
        terms): without this, every new leader would be fenced and exit until the terms
        caught up. Written only while this replica still holds the leadership (a conditional
        write, the held lock). Returns the current token when it is already past ``past``.

        Raises:
            LeadershipLost: this replica does not lead (any more). StorageUnavailable,
                StorageError: the store cannot be reached or written.
        """
        ...

    async def hold(self) -> NoReturn:
        """Keep the leadership (renewing it every ``min(poll_s, lease_ttl_s / 3)`` seconds)
        until it is lost, then set :attr:`lost` and raise. Run it beside the stages: its
        failure must stop them. Cancel it to stop renewing (then :meth:`release`).

        Raises:
            LeadershipLost: the lease expired or was taken, or the lock's connection died.
        """
        ...

    async def release(self) -> None:
        """Give up leadership at once (a standby then takes over within ``poll_s``) and close
        connections. Never raises for an unreachable store (the lease then simply expires).
        Idempotent."""
        ...

    async def holder(self) -> Holder | None:
        """The live leader of the store (possibly this replica), or ``None`` when none leads.

        Raises:
            StorageUnavailable: the store cannot be reached.
        """
        ...


class LeadershipState:
    """This replica's role and term, for ``/readyz`` and the metrics (updated by the daemon)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.role: Role = "standby"
        self.term: int | None = None

    def as_dict(self) -> dict[str, object]:
        """``{"role": "leader", "term": 7, "backend": "postgres"}``."""
        return {"role": self.role, "term": self.term, "backend": self.backend}


def renew_interval_s(lease_ttl_s: float, poll_s: float) -> float:
    """How often a leader renews: every ``poll_s``, and at least three times per lease."""
    return min(poll_s, lease_ttl_s / 3)


async def fence_storage(storage: Storage, elector: Elector, token: int) -> int:
    """Fence ``storage`` with this replica's term ``token`` and return the token in force.

    When the store records a newer term than the election handed out (its lease object or
    lock file was deleted or restored from a backup, so terms restarted), the term is moved
    past the store's once (:meth:`Elector.advance`) and the store fenced with that: otherwise
    each new leader would be fenced, exit and be restarted until the terms caught up.

    Raises:
        Fenced: the store moved on again meanwhile (another leader). LeadershipLost: the
            leadership was lost while moving the term. StorageUnavailable, StorageError.
    """
    try:
        await storage.set_fencing_token(token, nonce=elector.nonce)
    except Fenced as exc:
        if exc.current <= token:
            raise
        log.warning("leadership.term_behind_store", term=token, store_term=exc.current)
        token = await elector.advance(exc.current)
        await storage.set_fencing_token(token, nonce=elector.nonce)
    return token


async def poll_until_leader(
    try_acquire: Callable[[], Awaitable[int | None]],
    *,
    poll_s: float,
    backend: str,
    transient: type[Exception],
) -> int:
    """:meth:`Elector.acquire` over an elector's ``try_acquire``: one attempt every ``poll_s``
    seconds until it returns a token; a ``transient`` error is logged and tried again (a
    standby survives a store that is briefly unreachable)."""
    while True:
        try:
            token = await try_acquire()
        except transient as exc:
            log.warning("leadership.poll_failed", backend=backend, error=str(exc))
            token = None
        if token is not None:
            return token
        await asyncio.sleep(poll_s)
