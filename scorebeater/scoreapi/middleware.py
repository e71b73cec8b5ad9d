"""The Score API's HTTP surface rules: its error shape, bearer-token auth and rate limiting.

Every answer that is not a success carries the contract's ``Error`` body
(``{"error": {"code", "message", "param"?}}``), whatever produced it: a handler's
:class:`ApiError`, aiohttp's own 404/405, or an unexpected exception (a 500 that is logged).
Probes and the contract itself (:data:`PUBLIC_PATHS`) need no token and are never rate limited.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import orjson
import structlog
from aiohttp import web

from scorebeater.config import Secret

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

log = structlog.get_logger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.yaml"})
"""Served without a token and outside the rate limit (probes, documentation)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Stamp = Callable[[web.Request, web.StreamResponse], None]
"""Adds the headers every answer carries (the replay time), errors included."""


class ApiError(Exception):
    """An error answer: HTTP ``status``, stable ``code``, and the offending ``param`` if any."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        super().__init__(f"{status} {code}: {message}")


def json_response(
    payload: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


def error_response(exc: ApiError) -> web.Response:
    """The contract's ``Error`` body for ``exc``."""
    error: dict[str, str] = {"code": exc.code, "message": exc.message}
    if exc.param is not None:
        error["param"] = exc.param
    return json_response({"error": error}, status=exc.status, headers=exc.headers)


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


def errors(stamp: Stamp) -> Middleware:
    """Turn every failure into the ``Error`` body, then ``stamp`` the answer."""

    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:
            # Unknown routes and methods get the same JSON error shape as everything else.
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = error_response(ApiError(exc.status, code, exc.reason, headers=headers))
        except Exception:
            log.exception("replay.request_failed", path=request.path)
            response = error_response(ApiError(500, "internal", "internal error"))
        stamp(request, response)
        return response

    return handle


def auth(token: Secret) -> Middleware:
    """Require ``Authorization: Bearer <token>`` outside :data:`PUBLIC_PATHS` (401 otherwise)."""
    expected = token.get().encode("utf-8")
    challenge = {"WWW-Authenticate": 'Bearer realm="scorebeater-replay"'}

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "unauthorized", "missing bearer token", headers=challenge)
        if not hmac.compare_digest(presented.strip().encode("utf-8"), expected):
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
