"""Leader election on S3: a lease object renewed with conditional writes.

``<prefix>/_leader/lease.json`` holds the holder (id, pid, host), the term and ``expires_at``
(Unix seconds by the holder's clock, for people and :func:`probe_s3`). It is created with
``If-None-Match: *`` and every later write is ``If-Match: <ETag it replaces>``, so of two
replicas writing on the same version exactly one wins (S3 answers the other 412). The leader
rewrites it every ``min(poll_s, lease_ttl_s / 3)`` seconds. A standby reads it every ``poll_s``
and takes it over (term + 1, ``If-Match`` on the ETag it saw) once that same ETag has stood
for ``lease_ttl_s`` seconds *by its own monotonic clock*, or at once when released: no clock
has to agree with another. A leader that cannot renew for ``lease_ttl_s`` seconds by its own
clock, or finds the ETag changed, has lost. The term is the fencing token; the object store's
manifests carry it (:meth:`~scorebeater.storage.objects.commit.Committer.claim`).

moto 5.2.5 (the tests' S3 server) checks both ``If-None-Match: *`` and ``If-Match`` on
``PutObject``, as AWS S3 (since 2024) and MinIO do. Deleting the lease object by hand restarts
terms at 1: the next leader finds the manifest at a newer term when it fences the store and
moves its lease's term past it (:func:`~scorebeater.leadership.base.fence_storage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import orjson
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from scorebeater.errors import LeadershipLost, StorageError, StorageUnavailable
from scorebeater.leadership.base import Holder, Identity, poll_until_leader, renew_interval_s
from scorebeater.storage.s3 import check_prefix

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from scorebeater.config import LeadershipConfig, StorageConfig

log = structlog.get_logger(__name__)

LEASE_KEY = "_leader/lease.json"
_PRECONDITION = frozenset({412, 409})


class _Conflict(Exception):
    """A conditional write lost: the lease is not what we last saw (or exists already)."""


class _Missing(Exception):
    """No lease object."""


class _Lease:
    """A lease as read: its ETag, its document, and when this process first saw that ETag."""

    def __init__(self, etag: str, doc: dict[str, Any], seen_at: float) -> None:
        self.etag = etag
        self.doc = doc
        self.seen_at = seen_at

    @property
    def term(self) -> int:
        term = self.doc.get("term")
        return term if isinstance(term, int) else 0

    @property
    def released(self) -> bool:
        return bool(self.doc.get("released"))

    def held_by(self, instance: str) -> bool:
        """Whether the elector ``instance`` wrote this lease and has not released it."""
        return self.doc.get("instance") == instance and not self.released

    def holder(self) -> Holder:
        doc = self.doc
        pid = doc.get("pid")
        identity = Identity(
            str(doc.get("holder_id", "")), pid if isinstance(pid, int) else 0, str(doc.get("host"))
        )
        return Holder(identity, self.term)


class _LeaseObject:
    """Conditional reads and writes of the lease object, errors translated."""

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        prefix = check_prefix(prefix)
        self._key = f"{prefix}/{LEASE_KEY}" if prefix else LEASE_KEY
        self.where = f"s3://{bucket}/{self._key}"

    async def _call(self, what: str, aw: Any) -> Any:
        try:
            return await aw
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status in _PRECONDITION or code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                raise _Conflict(what) from exc
            if status == 404 or code in {"NoSuchKey", "NotFound"}:  # noqa: PLR2004
                raise _Missing(what) from exc
            raise StorageUnavailable(f"{self.where}: {what}: {code or 'error'} (HTTP {status})") from exc
        except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
            raise StorageUnavailable(f"{self.where}: {what}: {type(exc).__name__}: {exc}") from exc

    async def read(self) -> tuple[str, dict[str, Any]]:
        """The lease's ETag and document. Raises ``_Missing``; ``StorageError`` if corrupt."""
        response = await self._call("get lease", self._client.get_object(Bucket=self._bucket, Key=self._key))
        async with response["Body"] as body:
            data = await body.read()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StorageError(f"{self.where}: corrupt lease: {exc}") from exc
        if not isinstance(doc, dict):
            raise StorageError(f"{self.where}: corrupt lease: not an object")
        return str(response["ETag"]), doc

    async def write(self, doc: dict[str, Any], *, if_match: str | None) -> str:
        """Write the lease conditionally (create when ``if_match`` is ``None``); its new ETag.

        Raises ``_Conflict`` when the condition fails.
        """
        body = orjson.dumps(doc)
        if if_match is None:
            call = self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body, IfNoneMatch="*")
        else:
            call = self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body, IfMatch=if_match)
        try:
            response = await self._call("put lease", call)
        except _Missing as exc:  # If-Match on a lease deleted meanwhile
            raise _Conflict("put lease") from exc
        return str(response["ETag"])


def _client_config(storage: StorageConfig, timeout_s: float) -> AioConfig:
    s3 = storage.s3
    return AioConfig(
        region_name=s3.region,
        s3={"addressing_style": s3.addressing_style},
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        # No retries: a conditional PUT retried after a lost reply fails its own precondition.
        # A failed renewal is simply tried again at the next interval.
        retries={"mode": "standard", "max_attempts": 1},
    )


class S3Elector:
    """The :class:`~scorebeater.leadership.base.Elector` of an S3 prefix (see the module)."""

    def __init__(self, storage: StorageConfig, leadership: LeadershipConfig, identity: Identity) -> None:
        if not storage.s3.bucket:
            raise StorageError("storage.s3.bucket is not set")
        check_prefix(storage.s3.prefix)
        self._storage = storage
        self._ttl_s = leadership.lease_ttl_s
        self._poll_s = leadership.poll_s
        self._identity = identity
        self._instance = uuid.uuid4().hex
        """Tells this elector's writes from any other's, even in the same process."""
        self._stack: AsyncExitStack | None = None
        self._lease_object: _LeaseObject | None = None
        self._seen: _Lease | None = None
        self._etag: str | None = None
        """The ETag of the lease we hold (``None``: not leader)."""
        self._renewed_at = 0.0
        self._token: int | None = None
        self.lost = asyncio.Event()

    @property
    def token(self) -> int | None:
        """The term this replica leads, or ``None``."""
        return self._token

    @property
    def nonce(self) -> str:
        """``""``: this store's fencing is the manifest's token (see the protocol)."""
        return ""

    async def _object(self) -> _LeaseObject:
        if self._lease_object is None:
            stack = AsyncExitStack()
            s3 = self._storage.s3
            client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    region_name=s3.region,
                    endpoint_url=s3.endpoint_url or None,
                    config=_client_config(self._storage, max(1.0, self._ttl_s / 3)),
                )
            )
            self._stack = stack
            self._lease_object = _LeaseObject(client, s3.bucket, s3.prefix)
        return self._lease_object

    def _doc(self, term: int, *, released: bool = False) -> dict[str, Any]:
        ident = self._identity
        return {
            "holder_id": ident.holder_id,
            "pid": ident.pid,
            "host": ident.host,
            "instance": self._instance,
            "term": term,
            "expires_at": 0.0 if released else time.time() + self._ttl_s,
            "released": released,
        }

    async def try_acquire(self) -> int | None:
        """Create the lease, or take over a released or expired one; see the protocol."""
        if self._token is not None:
            return self._token
        lease = await self._object()
        try:
            etag, doc = await lease.read()
        except _Missing:
            etag, doc = None, None
        # After the read: a lease version counts as seen from when its reply arrived, so the
        # ttl this replica waits is never shorter than the one the leader renews within.
        now = time.monotonic()
        term = 1
        if etag is not None and doc is not None:
            seen = (
                self._seen if self._seen is not None and self._seen.etag == etag else _Lease(etag, doc, now)
            )
            self._seen = seen
            if seen.held_by(self._instance):
                # Our own earlier attempt landed although its reply was lost.
                return self._won(etag, seen.term, lease.where)
            if not seen.released and now - seen.seen_at < self._ttl_s:
                return None  # a live leader (as far as we can tell yet)
            term = seen.term + 1
        try:
            new_etag = await lease.write(self._doc(term), if_match=etag)
        except _Conflict:
            return None  # another replica moved first
        return self._won(new_etag, term, lease.where)

    def _won(self, etag: str, term: int, where: str) -> int:
        self._etag, self._renewed_at, self._token = etag, time.monotonic(), term
        log.info("leadership.acquired", backend="s3", term=term, lease=where)
        return term

    async def advance(self, past: int) -> int:
        """Rewrite our lease with term ``past + 1`` (``If-Match`` on our ETag); see the protocol."""
        token = self._token
        if token is None:
            raise LeadershipLost("s3: advance() called without leadership")
        if token > past:
            return token
        lease = await self._object()
        try:
            etag = await lease.write(self._doc(past + 1), if_match=self._etag)
        except _Conflict:
            self._token = None
            self.lost.set()
            raise LeadershipLost(f"s3: leadership of term {token} lost while moving it past {past}") from None
        self._etag, self._renewed_at, self._token = etag, time.monotonic(), past + 1
        log.warning("leadership.term_advanced", backend="s3", term=past + 1, was=token, lease=lease.where)
        return past + 1

    async def _still_mine(self, lease: _LeaseObject, token: int) -> bool:
        """After a failed renewal: whether the lease is still ours (a write of ours landed
        although its reply was lost); adopts its ETag if so. A takeover bumps the term."""
        try:
            etag, doc = await lease.read()
        except _Missing:
            return False
        current = _Lease(etag, doc, 0.0)
        if current.held_by(self._instance) and current.term == token:
            self._etag = etag
            return True
        return False

    async def acquire(self) -> int:
        """Try every ``poll_s`` until leader; see the protocol."""
        return await poll_until_leader(
            self.try_acquire, poll_s=self._poll_s, backend="s3", transient=StorageError
        )

    async def hold(self) -> NoReturn:
        """Renew the lease with ``If-Match``; lost on a conflict or after ``lease_ttl_s``
        without a successful renewal (by this process's monotonic clock)."""
        token = self._token
        if token is None:
            raise LeadershipLost("s3: hold() called before leadership was acquired")
        lease = await self._object()
        interval = renew_interval_s(self._ttl_s, self._poll_s)
        reason = ""
        while not reason:
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:
                self._etag = await lease.write(self._doc(token), if_match=self._etag)
                # A renewal counts from when it was sent: the standbys' clocks start at their
                # first read of the new ETag, which comes after that.
                self._renewed_at = started
            except _Conflict:
                try:
                    if await self._still_mine(lease, token):
                        self._renewed_at = started
                        continue
                    reason = "the lease was taken over (its ETag changed)"
                except StorageError as exc:
                    log.warning("leadership.renew_failed", backend="s3", term=token, error=str(exc))
            except StorageError as exc:
                log.warning("leadership.renew_failed", backend="s3", term=token, error=str(exc))
                if time.monotonic() - self._renewed_at >= self._ttl_s:
                    reason = f"not renewed for {self._ttl_s:g} s: {exc}"
            else:
                continue
            if not reason and time.monotonic() - self._renewed_at >= self._ttl_s:
                reason = f"not renewed for {self._ttl_s:g} s"
        self._token = self._etag = None
        self.lost.set()
        log.error("leadership.lost", backend="s3", term=token, reason=reason)
        raise LeadershipLost(f"s3: leadership of term {token} lost: {reason}")

    async def release(self) -> None:
        """Mark the lease released (a standby takes it at its next poll) and close the client.
        Idempotent; never raises (an unreachable lease simply expires)."""
        token, etag = self._token, self._etag
        self._token = self._etag = None
        if token is not None and etag is not None and self._lease_object is not None:
            try:
                await self._lease_object.write(self._doc(token, released=True), if_match=etag)
                log.info("leadership.released", backend="s3", term=token)
            except (_Conflict, StorageError) as exc:
                log.warning("leadership.release_failed", backend="s3", term=token, error=str(exc))
        stack, self._stack, self._lease_object = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(BotoCoreError, aiohttp.ClientError, OSError):
                await stack.aclose()

    async def holder(self) -> Holder | None:
        """The lease's holder unless released or past ``expires_at`` (wall clock), or ``None``."""
        lease = await self._object()
        return await _probe(lease)


async def _probe(lease: _LeaseObject) -> Holder | None:
    try:
        etag, doc = await lease.read()
    except _Missing:
        return None
    found = _Lease(etag, doc, 0.0)
    expires_at = doc.get("expires_at")
    if found.released or not isinstance(expires_at, int | float) or expires_at < time.time():
        return None
    return found.holder()


async def probe_s3(storage: StorageConfig) -> Holder | None:
    """The live leader of ``storage``'s S3 prefix by its lease (wall clock), or ``None``.

    Raises:
        StorageUnavailable: the bucket cannot be reached. StorageError: a corrupt lease.
    """
    s3 = storage.s3
    async with get_session().create_client(
        "s3",
        region_name=s3.region,
        endpoint_url=s3.endpoint_url or None,
        config=_client_config(storage, 10.0),
    ) as client:
        return await _probe(_LeaseObject(client, s3.bucket, s3.prefix))
