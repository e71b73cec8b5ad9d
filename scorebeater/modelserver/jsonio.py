"""JSON in and out, as TF Serving's REST layer does it.

Parsing (``parse_document``): orjson first (fast); a body orjson refuses is parsed again with
the standard library, which accepts what TF Serving's rapidjson accepts and orjson does not:
the ``NaN``/``Infinity``/``-Infinity`` tokens, trailing bytes after the top-level value (TF
Serving parses with *stop-when-done*) and integers beyond 64 bits. Parse-error *texts* come
from Python's parser, not rapidjson (a documented difference); the prefix and status match.

Writing (``format_floats`` and ``tensor_json``): TF Serving's ``WriteDecimal``: ``%g`` (6
significant digits); if that does not read back as the identical float32 (double), ``%.9g``
(``%.17g``); ``.0`` appended when the text has neither ``.`` nor ``e``; non-finite values as
the bare tokens ``NaN``, ``Infinity``, ``-Infinity`` (not strict JSON, as with TF Serving).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import orjson

ECHO_LIMIT = 256
"""TF Serving cuts the JSON it echoes in error messages to about this many bytes."""

_DECODER = json.JSONDecoder()
_TYPE_WORDS: dict[type, str] = {dict: "Object", list: "Array", str: "String"}


class RequestError(Exception):
    """A request the server rejects; ``http_status`` and ``message`` become the reply."""

    def __init__(self, message: str, *, http_status: int = 400) -> None:
        self.message = message
        self.http_status = http_status
        super().__init__(message)


def parse_document(body: bytes) -> Any:
    """Parse one JSON document the way TF Serving does (NaN/Infinity allowed, trailing bytes ignored).

    Raises:
        RequestError: 400 ``JSON Parse error: ...`` for an empty or invalid document.
    """
    if not body.strip():
        raise RequestError("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # fall through to the permissive parser below
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
    start = len(text) - len(text.lstrip())
    try:
        value, _end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise RequestError(f"JSON Parse error: {exc.msg}. at offset: {exc.pos}") from exc
    except RecursionError as exc:
        raise RequestError("JSON Parse error: Document nests too deeply. at offset: 0") from exc
    return value


def echo(value: Any) -> str:
    """The JSON text of ``value`` as TF Serving quotes it in errors (cut to ``ECHO_LIMIT`` bytes)."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = json.dumps(value, default=str)
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "..."


def json_type_name(value: Any) -> str:
    """rapidjson's type word for a parsed JSON value: Null, False, True, Object, Array, String, Number."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return _TYPE_WORDS.get(type(value), "Number")


def _nonfinite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def format_floats(values: np.ndarray) -> list[str]:
    """TF Serving's text for every element of a float array (flattened, C order).

    float32 round-trips through ``%g`` or else ``%.9g``; float64 through ``%g`` or ``%.17g``.
    """
    flat = np.ascontiguousarray(values).ravel()
    n = flat.size
    if n == 0:
        return []
    is32 = flat.dtype == np.float32
    as_double = flat.astype(np.float64).tolist()
    # One %-format over the whole tuple is cheaper than one per value.
    short = (("%g\x00" * n) % tuple(as_double)).split("\x00")[:n]
    finite = np.isfinite(flat)
    try:
        back = np.array(list(map(float, short)), dtype=np.float64)
    except ValueError:  # pragma: no cover - %g always prints a float() readable text
        back = np.full(n, np.nan)
    if is32:
        back = back.astype(np.float32)
    exact = (back == flat) | ~finite
    long_fmt = "%.9g" if is32 else "%.17g"
    for i in np.flatnonzero(~exact).tolist():
        short[i] = long_fmt % as_double[i]
    for i in np.flatnonzero(~finite).tolist():
        short[i] = _nonfinite(as_double[i])
    # Whole numbers print without a point ("3"); TF Serving makes them "3.0" (not "1e+06").
    for i in np.flatnonzero(finite & (flat == np.trunc(flat))).tolist():
        text = short[i]
        if "." not in text and "e" not in text:
            short[i] = text + ".0"
    return short


def _scalars_json(array: np.ndarray, *, b64: bool) -> list[str]:
    kind = array.dtype.kind
    if kind == "f":
        return format_floats(array)
    flat = array.ravel()
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    if kind in "OSU":
        out: list[str] = []
        for item in flat.tolist():
            raw = item if isinstance(item, bytes) else str(item).encode()
            if b64:
                out.append('{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}')
            else:
                out.append(json.dumps(raw.decode("utf-8", errors="replace"), ensure_ascii=False))
        return out
    raise RequestError(f"Failed to write JSON value for tensor type: {array.dtype}", http_status=500)


def _nest(items: list[str], shape: tuple[int, ...]) -> str:
    """Nest ``items`` (C order) into arrays by ``shape``; no dimension may be 0."""
    if not shape:
        return items[0]
    # Group from the innermost dimension outwards; rapidjson's single-line arrays use ", ".
    level = items
    for dim in reversed(shape):
        if dim == 1:  # [n, 1] outputs are the common case: skip the slicing
            level = ["[" + item + "]" for item in level]
            continue
        level = ["[" + ", ".join(level[i : i + dim]) + "]" for i in range(0, len(level), dim)]
    return level[0]


def tensor_json(array: np.ndarray, *, b64: bool = False) -> str:
    """The JSON text of a whole tensor (a scalar, or nested lists by its shape)."""
    shape = tuple(array.shape)
    if 0 in shape:
        # Every level before the first empty one is present but holds empty lists.
        head = shape[: shape.index(0)]
        return _nest(["[]"] * int(np.prod(head, dtype=np.int64)), head)
    return _nest(_scalars_json(array, b64=b64), shape)


def rows_json(array: np.ndarray, *, b64: bool = False) -> list[str]:
    """The JSON text of each row (first-dimension slice) of a tensor of rank >= 1."""
    n = array.shape[0]
    inner = tuple(array.shape[1:])
    if n == 0:
        return []
    if 0 in inner:
        one = tensor_json(np.empty(inner, dtype=array.dtype), b64=b64)
        return [one] * n
    items = _scalars_json(array, b64=b64)
    if not inner:
        return items
    per_row = len(items) // n
    return [_nest(items[i * per_row : (i + 1) * per_row], inner) for i in range(n)]


def error_body(message: str) -> bytes:
    """TF Serving's error reply body: ``{"error": "..."}``, pretty-printed, message escaped."""
    return b'{\n    "error": ' + orjson.dumps(message) + b"\n}"


def object_body(members: list[tuple[str, str]], *, indent: int = 4) -> bytes:
    """A pretty-printed JSON object from already-encoded member values (keys are escaped here)."""
    pad = " " * indent
    inner = ",\n".join(f"{pad}{orjson.dumps(key).decode()}: {value}" for key, value in members)
    return ("{\n" + inner + "\n}").encode()
