"""What scorebeater's HTTP surfaces share: one error contract each, strict parameters, bounded bodies.

There are three surfaces: the admin API, the replay Score API and the TF Serving stand-in. Each
has its own JSON error shape (the first two ``{"error": {"code", "message", "param"?}}``, see
:func:`coded_error`; the stand-in TF Serving's ``{"error": "..."}``), and each builds its
application with :func:`surface_app`, whose :func:`error_middleware` renders every failure in
that shape:

* a handler's :class:`ApiError`;
* an ``HTTPException`` aiohttp raises (unknown path 404, wrong method 405, body over the
  application's ``client_max_size`` 413);
* an error response a handler returns in another content type;
* an unexpected exception: logged with its traceback (``http.request_failed``) and answered
  500. None should happen, whatever the input (``tests/fuzz`` looks for them).

Only what aiohttp refuses before any application code runs (a malformed request line, a header
over 8 KiB) keeps aiohttp's plain-text 400.

Bodies: :func:`surface_app` turns aiohttp's own decompression off, and :func:`read_body` (or
:func:`inflate`, for a worker thread) decodes ``Content-Encoding: gzip``/``deflate`` itself in
chunks of at most :data:`INFLATE_CHUNK` bytes (``zlib`` with ``max_length``), counting as it
goes: a small body that inflates past the limit is refused (413) without its inflated bytes
ever being held. Parameters: :func:`int_param` takes ASCII digits only, within a range that is
at most int64.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from scorebeater.bounds import INT64_MAX

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

log = structlog.get_logger(__name__)

INFLATE_CHUNK = 64 * 1024
"""The most bytes one decompression step produces."""
INFLATE_HOLD = 8 * 1024 * 1024
"""An encoded body is kept from its first pass while it inflates to at most this many bytes;
a larger one is counted first and inflated again only if it fits (peak memory stays bounded)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Stamp = Callable[[web.Request, web.StreamResponse], None]
"""Adds the headers every answer of a surface carries, errors included."""


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


Render = Callable[[ApiError], web.StreamResponse]
"""A surface's error shape: the response for one :class:`ApiError`."""


def json_response(
    payload: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def coded_error(exc: ApiError) -> web.Response:
    """The admin API's and the Score API's shape: ``{"error": {"code", "message", "param"?}}``."""
    error: dict[str, str] = {"code": exc.code, "message": exc.message}
    if exc.param is not None:
        error["param"] = exc.param
    return json_response({"error": error}, status=exc.status, headers=exc.headers)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _from_http(request: web.Request, exc: web.HTTPException) -> ApiError:
    status = exc.status
    headers = {name: exc.headers[name] for name in ("Allow", "Retry-After") if name in exc.headers}
    if status == 404:  # noqa: PLR2004
        message = f"no such path: {request.method} {request.path}"
    elif status == 405:  # noqa: PLR2004
        message = f"method {request.method} is not allowed here; allowed: {headers.get('Allow', 'none')}"
    else:
        # aiohttp's own texts are informative ("Maximum request body size ... exceeded").
        default = f"{status}: {exc.reason}"
        message = exc.text if exc.text and exc.text != default else exc.reason
    return ApiError(status, _CODES.get(status, "http_error"), message, headers=headers)


def _is_json(response: web.StreamResponse) -> bool:
    return response.content_type == "application/json"


def error_middleware(render: Render, *, surface: str, stamp: Stamp | None = None) -> Middleware:
    """Render every 4xx/5xx of a surface with ``render``, then ``stamp`` the answer (see module doc)."""

    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = render(exc)
        except web.HTTPException as exc:
            if exc.status < 400:  # noqa: PLR2004 - redirects pass through
                raise
            response = render(_from_http(request, exc))
        except Exception:
            log.exception("http.request_failed", surface=surface, method=request.method, path=request.path)
            response = render(ApiError(500, "internal", "internal error"))
        else:
            if response.status >= 400 and not _is_json(response):  # noqa: PLR2004
                reason = response.reason or "error"
                response = render(
                    ApiError(response.status, _CODES.get(response.status, "http_error"), reason)
                )
        if stamp is not None:
            stamp(request, response)
        return response

    return handle


def surface_app(
    render: Render,
    *,
    surface: str,
    stamp: Stamp | None = None,
    middlewares: Sequence[Middleware] = (),
    client_max_size: int = 1024**2,
) -> web.Application:
    """An application whose every error comes in ``render``'s shape (outermost middleware).

    ``middlewares`` run inside the error middleware. ``client_max_size`` bounds a body as
    sent (still encoded); aiohttp's decompression is off, so bodies are read with
    :func:`read_body`.
    """
    return web.Application(
        middlewares=[error_middleware(render, surface=surface, stamp=stamp), *middlewares],
        client_max_size=client_max_size,
        handler_args={"auto_decompress": False},
    )


# --- parameters --------------------------------------------------------------------------------

_INTEGER = re.compile(r"-?[0-9]+")
"""ASCII only: ``\\d`` (and ``int()``) would take other scripts' digits, ``$`` a trailing newline."""
_INT64_DIGITS = len(str(INT64_MAX))


def shown(raw: str, limit: int = 40) -> str:
    """``raw`` quoted for an error message (escaped), cut to about ``limit`` characters."""
    text = repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(raw)} characters)"


def query_params(request: web.Request, allowed: Collection[str]) -> Mapping[str, str]:
    """The request's query parameters, if each one is in ``allowed`` and given once.

    A misspelt parameter would otherwise be ignored silently (``?seson=2013`` answering for
    the default season), and of a repeated one only the first would count.

    Raises:
        ApiError: 400 ``invalid_parameter`` naming the first unknown or repeated parameter.
    """
    query = request.query
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ApiError(400, "invalid_parameter", f"unknown parameter {shown(unknown[0])}", param=unknown[0])
    if len(query) != len(set(query)):
        repeated = min(name for name in set(query) if len(query.getall(name)) > 1)
        raise ApiError(
            400, "invalid_parameter", f"parameter {shown(repeated)} is given more than once", param=repeated
        )
    return query


def int_param(raw: str, name: str, *, lo: int = 0, hi: int = INT64_MAX) -> int:
    """``raw`` as an integer in ``lo..hi``: ASCII digits with an optional leading ``-``, nothing else.

    Raises:
        ApiError: 400 ``invalid_parameter`` naming ``name``.
    """
    if _INTEGER.fullmatch(raw) is None:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{name} must be an integer of ASCII digits, got {shown(raw)}",
            param=name,
        )
    # Past 19 significant digits it is out of any int64 range (and int() refuses thousands).
    sign, digits = ("-", raw[1:]) if raw.startswith("-") else ("", raw)
    digits = digits.lstrip("0") or "0"
    value = int(sign + digits) if len(digits) <= _INT64_DIGITS else None
    if value is None or not lo <= value <= hi:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be in {lo}..{hi}, got {shown(raw)}", param=name
        )
    return value


def bool_param(raw: str, name: str) -> bool:
    """``true``/``false`` (also ``1``/``0``), case-insensitive.

    Raises:
        ApiError: 400 ``invalid_parameter`` naming ``name``.
    """
    value = {"true": True, "1": True, "false": False, "0": False}.get(raw.lower())
    if value is None:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be true or false, got {shown(raw)}", param=name
        )
    return value


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` when absent or malformed.

    A header with bytes that are not ASCII is malformed (aiohttp hands them over as surrogate
    escapes, which no token comparison can encode).
    """
    if not header.isascii():
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# --- bodies ------------------------------------------------------------------------------------

_GZIP_WBITS = 16 + zlib.MAX_WBITS


def _wbits(encoding: str, body: bytes) -> int | None:
    """zlib's ``wbits`` for ``encoding``; ``None`` for an identity body."""
    if encoding in {"", "identity"}:
        return None
    if encoding in {"gzip", "x-gzip"}:
        return _GZIP_WBITS
    if encoding == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some clients send raw deflate (as aiohttp accepts).
        return zlib.MAX_WBITS if body[:1] and body[0] & 0x0F == 8 else -zlib.MAX_WBITS  # noqa: PLR2004
    raise ApiError(
        415,
        "unsupported_content_encoding",
        f"Content-Encoding {shown(encoding)} is not supported; use gzip, deflate or none",
    )


def _bad(encoding: str, why: str) -> ApiError:
    return ApiError(
        400,
        "bad_content_encoding",
        f"the body is not valid {encoding} data (Content-Encoding: {encoding}): {why}",
    )


def _inflated_chunks(body: bytes, encoding: str, wbits: int) -> Iterator[bytes]:
    """The inflated body, at most :data:`INFLATE_CHUNK` bytes at a time (gzip: every member)."""
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        pending = rest
        try:
            while not inflater.eof:
                out = inflater.decompress(pending, INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                if out:
                    yield out
                elif not pending and not inflater.eof:
                    raise _bad(encoding, "the stream ends early")
        except zlib.error as exc:
            raise _bad(encoding, str(exc)) from None
        rest = inflater.unused_data
        if not rest:
            return
        if wbits != _GZIP_WBITS or not rest.startswith(b"\x1f\x8b"):  # gzip: another member
            raise _bad(encoding, f"{len(rest)} bytes after the end of the stream")


def inflate(body: bytes, content_encoding: str, *, limit: int) -> bytes:
    """``body`` decoded per its ``Content-Encoding``, if it is at most ``limit`` bytes decoded.

    Blocking (CPU-bound for large bodies): call it from a worker thread, or through
    :func:`read_body`. Never holds more than :data:`INFLATE_HOLD` inflated bytes before it
    knows the whole body fits.

    Raises:
        ApiError: 400 ``bad_content_encoding`` (not valid gzip/deflate), 413
            ``body_too_large``, 415 ``unsupported_content_encoding``.
    """
    encoding = content_encoding.strip().lower()
    wbits = _wbits(encoding, body)
    too_large = ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")
    if wbits is None:
        if len(body) > limit:
            raise too_large
        return body
    held: list[bytes] | None = []
    size = 0
    for chunk in _inflated_chunks(body, encoding, wbits):
        size += len(chunk)
        if size > limit:
            raise too_large
        if held is not None:
            held.append(chunk)
            if size > INFLATE_HOLD:
                held = None  # counted from here on; inflated again below if it fits
    if held is not None:
        return b"".join(held)
    return b"".join(_inflated_chunks(body, encoding, wbits))


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The request body, decoded per its ``Content-Encoding`` (in a worker thread), at most ``limit`` bytes.

    The body as sent is bounded by the application's ``client_max_size`` (413 from aiohttp).

    Raises:
        ApiError: see :func:`inflate`.
    """
    body = await request.read()
    encoding = request.headers.get("Content-Encoding", "")
    if not encoding:
        return inflate(body, encoding, limit=limit)
    return await asyncio.to_thread(inflate, body, encoding, limit=limit)


async def json_object_body(request: web.Request, fields: Mapping[str, type], *, limit: int) -> dict[str, Any]:
    """The request's JSON object, holding only ``fields`` (each optional) of their types; ``{}`` if no body.

    Raises:
        ApiError: 400 naming the unknown field or the field of the wrong type, or for a body
            that is not a JSON object; 413/415 as :func:`read_body`.
    """
    if not request.can_read_body:
        return {}
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", f"body must be a JSON object, got {type(body).__name__}")
    for name, value in body.items():
        kind = fields.get(name)
        if kind is None:
            known = ", ".join(sorted(fields)) or "none"
            raise ApiError(400, "unknown_field", f"unknown field {shown(name)}; known: {known}", param=name)
        # bool is an int in Python: a field typed int must not take true/false.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            got = type(value).__name__
            if kind is int and isinstance(value, float):
                # orjson reads an integer past 64 bits as a float: say so, not just "float".
                got = "a number with a fraction, an exponent or past 64 bits"
            raise ApiError(400, "bad_field", f"{name} must be {kind.__name__}, got {got}", param=name)
    return body
