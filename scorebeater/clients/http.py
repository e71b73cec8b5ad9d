"""What both HTTP clients share: session factory, the retry policy, response -> error mapping.

Retries live in one layer only, the client method, through :func:`retrying`: exponential
backoff with jitter, bounded by attempts *and* total time, and only for transient failures
(timeouts, connection errors, 429, 5xx). A server's ``Retry-After`` replaces the computed
backoff for that attempt (capped by the remaining budget). Every retry is logged as
``upstream.retry_scheduled`` and counted through the optional ``on_retry`` callback.

"One layer" includes aiohttp itself: a session from :func:`make_session` does not resend a
request on its own when a reused keep-alive connection turns out to be closed, so that retry
too goes through :func:`retrying` and is logged, counted and bounded like any other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import stamina
import structlog

from scorebeater import __version__
from scorebeater.errors import UpstreamError

log = structlog.get_logger(__name__)

USER_AGENT = f"scorebeater/{__version__}"
RETRY_AFTER_CAP_S = 120.0
"""Never sleep longer than this on a server's say-so, whatever it asks."""


def make_session(
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_connections: int,
    headers: Mapping[str, str] | None = None,
    raise_for_status: bool = False,
) -> aiohttp.ClientSession:
    """A keep-alive session with a deadline on every request and a bounded connection pool.

    aiohttp's own silent resend of an idempotent request over a reused connection that the
    server closed is turned off: the caller's :func:`retrying` sees that failure (a transient
    connection error) and counts its retry. The caller owns the session and must close it
    (``async with``).
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=max_connections, keepalive_timeout=30
    )
    timeout = aiohttp.ClientTimeout(
        total=timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
    )
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    session = aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=all_headers, raise_for_status=raise_for_status
    )
    # aiohttp resends a GET once, silently, when a reused keep-alive connection was closed under
    # it (ServerDisconnectedError, ClientOSError): a second retry layer that nothing logs,
    # counts or bounds. It has no public switch; its own TestClient clears the same attribute.
    # tests/integration/test_keepalive_retries.py fails if this stops taking effect.
    session._retry_connection = False  # noqa: SLF001
    return session


def is_transient_status(status: int) -> bool:
    """429 and 5xx may succeed on retry; every other status will not."""
    return status == 429 or status >= 500  # noqa: PLR2004 - HTTP status codes


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``.

    Negative or unparsable values give ``None``; the result is capped at ``RETRY_AFTER_CAP_S``.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if seconds != seconds or seconds < 0:  # NaN or in the past  # noqa: PLR0124
        return None
    return min(seconds, RETRY_AFTER_CAP_S)


def _backoff_hook(exc: Exception) -> bool | float:
    if isinstance(exc, UpstreamError):
        if not exc.transient:
            return False
        if exc.retry_after_s is not None:
            return exc.retry_after_s
        return True
    # Raw transport failures that escaped translation are transient by nature.
    return isinstance(exc, asyncio.TimeoutError | aiohttp.ClientConnectionError)


def retrying(
    *,
    target: str,
    attempts: int,
    budget_s: float,
    wait_initial_s: float = 0.2,
    wait_max_s: float = 10.0,
    on_retry: Callable[[UpstreamError | Exception], None] | None = None,
) -> AsyncIterator[stamina.Attempt]:
    """Iterate retry attempts for one idempotent call (``async for attempt in retrying(...)``).

    Usage::

        async for attempt in retrying(target="score_api", attempts=6, budget_s=60):
            with attempt:
                return await self._get(path)

    Only :class:`UpstreamError` with ``transient=True`` (and raw timeouts / connection errors)
    are retried; anything else propagates at once. After the last attempt or when the budget
    is spent, the last error propagates.
    """

    failures = 0

    def hook(exc: Exception) -> bool | float:
        nonlocal failures
        failures += 1
        decision = _backoff_hook(exc)
        # stamina asks before checking its attempt budget: after the last attempt nothing is
        # retried, so nothing is logged or counted as a retry.
        if decision is not False and failures < attempts:
            log.warning(
                "upstream.retry_scheduled",
                target=target,
                error=str(exc),
                status=getattr(exc, "status", None),
                retry_after_s=decision if isinstance(decision, float) else None,
            )
            if on_retry is not None:
                on_retry(exc)
        return decision

    return stamina.retry_context(
        on=hook,
        attempts=attempts,
        timeout=budget_s,
        wait_initial=wait_initial_s,
        wait_max=wait_max_s,
        wait_jitter=wait_initial_s,
    ).__aiter__()
