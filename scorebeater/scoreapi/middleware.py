"""The Score API's HTTP surface rules: bearer-token auth and rate limiting.

Every answer that is not a success carries the contract's ``Error`` body
(``{"error": {"code", "message", "param"?}}``), whatever produced it: the replay application is
built by :func:`scorebeater.httpsurface.surface_app` with :func:`~scorebeater.httpsurface.coded_error`
(a handler's :class:`~scorebeater.httpsurface.ApiError`, aiohttp's own 404/405/413, an
unexpected exception as a logged 500). Probes and the contract itself (:data:`PUBLIC_PATHS`) need
no token and are never rate limited.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from scorebeater.config import Secret
from scorebeater.httpsurface import ApiError, Handler, bearer_token

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.yaml"})
"""Served without a token and outside the rate limit (probes, documentation)."""


class TokenBucket:
    """At most ``rate`` requests per real second on average, bursts up to ``burst``."""

    def __init__(
        self, rate: float, *, burst: float | None = None, monotonic: Callable[[], float] = time.monotonic
    ):
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._monotonic = monotonic
        self._last = monotonic()

    def take(self) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def auth(token: Secret) -> Middleware:
    """Require ``Authorization: Bearer <token>`` outside :data:`PUBLIC_PATHS` (401 otherwise)."""
    expected = token.get().encode("utf-8")
    challenge = {"WWW-Authenticate": 'Bearer realm="scorebeater-replay"'}

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is None:
            raise ApiError(401, "unauthorized", "missing bearer token", headers=challenge)
        presented = bearer_token(header)
        if presented is None or not hmac.compare_digest(presented.encode("ascii"), expected):
            raise ApiError(
                401,
                "unauthorized",
                "invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="scorebeater-replay", error="invalid_token"'},
            )
        return await handler(request)

    return check


def rate_limit(bucket: TokenBucket) -> Middleware:
    """429 with ``Retry-After`` beyond the bucket's rate, outside :data:`PUBLIC_PATHS`."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            wait_s = bucket.take()
            if wait_s > 0:
                retry_after = max(1, math.ceil(wait_s))
                raise ApiError(
                    429,
                    "rate_limited",
                    f"more than {bucket.rate:g} requests per second",
                    headers={"Retry-After": str(retry_after)},
                )
        return await handler(request)

    return limit
