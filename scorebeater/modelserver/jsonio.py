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
float32 arrays of ``_VECTOR_MIN_SIZE`` values or more take a vectorised path that prints the
same texts (see the comment above ``_float32_plan``).
"""

from __future__ import annotations

import base64
import json
import math
from fractions import Fraction
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


def _format_exact(flat: np.ndarray) -> list[str]:
    """``WriteDecimal`` value by value (the reference rules; any float dtype, 1-D)."""
    with np.errstate(invalid="ignore"):  # signalling NaNs warn in casts; they print as NaN
        return _format_exact_of(flat)


def _format_exact_of(flat: np.ndarray) -> list[str]:
    n = flat.size
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


# --- float32 WriteDecimal, vectorised --------------------------------------------------------
#
# Most float32 outputs (probabilities) need ``%.9g``, so the reference rules above cost two
# formattings and a parse per value. ``_float32_plan`` settles with numpy, for all values at
# once, which decimal WriteDecimal prints (the 6-digit one if it reads back as the same float32,
# else the 9-digit one) and where its exponent puts it; orjson then prints doubles in their
# shortest form, which *is* the decimal's text when the double is the one nearest to a decimal
# of <= 15 significant digits:
#
# * positional (``%g`` prints no exponent, -4 <= exponent < digits): orjson prints the value
#   itself, positionally (it does so for 1e-5 <= |v| < 1e16), and whole numbers with ".0":
#   exactly TF Serving's ".0" rule;
# * exponent form: orjson prints the mantissa (in [1, 10)), and the exponent is appended in
#   ``%g``'s style (``e-07``, ``e+38``).
#
# Each rounding is decided on ``value * 10**shift`` in float64, whose relative error is at most
# 2**-52; any value within ``_TIE_BAND`` of a decision boundary (a rounding tie, the edge of
# the float32's rounding interval) is not trusted and goes through ``_format_exact``, like the
# non-finite values. ``tests/unit/test_modelserver_jsonio.py`` checks the two paths agree.

_SLOW, _POSITIONAL, _EXPONENT = 0, 1, 2
_DIGITS = np.array([[6], [9]])
"""``%g``'s precision and the round-trip precision for float32, as a column to broadcast."""
_TOP = 10.0**_DIGITS
_LOW = _TOP / 10.0
_POW10_ZERO = 64
_POW10 = np.array([float(Fraction(10) ** k) for k in range(-_POW10_ZERO, _POW10_ZERO + 1)])
"""10**k at index k + 64, for k in [-64, 64]: each the double nearest to it (exact for 0..22)."""
_SHIFT_INDEX = _POW10_ZERO + _DIGITS - 1
"""``_POW10[_SHIFT_INDEX - e]`` is 10**(digits - 1 - e)."""
_TIE_BAND = 2.0**-45
_VECTOR_MIN_SIZE = 192
"""Below this many values the plan's fixed cost (~60 numpy calls) exceeds the per-value path."""
_EXP_SUFFIX = {k: f"e{'-' if k < 0 else '+'}{abs(k):02d}" for k in range(-64, 65)}


def _float32_plan(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How each value of a 1-D float32 array is printed (see the section comment).

    Returns ``(doubles, kind, exponent)``: ``kind`` is ``_POSITIONAL`` (orjson prints the
    double as the text), ``_EXPONENT`` (the double is the mantissa; ``exponent`` gives the
    suffix) or ``_SLOW`` (``_format_exact`` must print it; the double is 0.0 there).
    """
    with np.errstate(all="ignore"):  # signalling NaNs, log10 of 0: all handled below
        x = flat.astype(np.float64)
        regular = np.isfinite(x) & (x != 0)
        if regular.all():  # the usual case: no indexing
            doubles, kind, exponent = _plan_regular(np.abs(flat))
            return np.copysign(doubles, x), kind, exponent
        # Zeros print as "0.0" / "-0.0", as WriteDecimal does; non-finite values go the slow way.
        doubles = np.where(np.isfinite(x), x, 0.0)
        kind = np.where(np.isfinite(x), _POSITIONAL, _SLOW).astype(np.int8)
        exponent = np.zeros(x.shape, dtype=np.int64)
        idx = np.flatnonzero(regular)
        if idx.size:
            planned, kind[idx], exponent[idx] = _plan_regular(np.abs(flat[idx]))
            doubles[idx] = np.copysign(planned, x[idx])
    return doubles, kind, exponent


def _plan_regular(a32: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_float32_plan`` for finite, positive float32 values."""
    a = a32.astype(np.float64)
    # Significands with 6 and 9 digits (rows 0 and 1): r = rint(a * 10**shift) in [low, top).
    # Finite float32 exponents are in [-46, 38], so every index below is inside the table.
    e = np.floor(np.log10(a)).astype(np.intp)
    p = a * _POW10[_SHIFT_INDEX - e]
    e = e + (p >= _TOP).view(np.int8) - (p < _LOW).view(np.int8)  # log10 is one off near 10**k
    p = a * _POW10[_SHIFT_INDEX - e]
    r = np.rint(p)
    sure = np.abs(np.abs(p - r) - 0.5) > p * _TIE_BAND
    carry = r >= _TOP  # 999999.7 -> "1e+06": the exponent is that of the rounded value
    r[carry] /= 10.0
    e += carry.view(np.int8)
    # %g reads back as the same float32 iff its decimal lies inside the float32's rounding
    # interval; the float64 midpoints of neighbouring float32 values are exact.
    below = np.nextafter(a32, np.float32(0)).astype(np.float64)
    above = np.nextafter(a32, np.float32(np.inf)).astype(np.float64)
    above[np.isinf(above)] = np.float64(np.finfo(np.float32).max) * 2 - below[np.isinf(above)]
    scale6 = _POW10[_SHIFT_INDEX[0] - e[0]] * 0.5
    lo, hi = (a + below) * scale6, (a + above) * scale6
    r6 = r[0]
    inside = (r6 > lo * (1 + _TIE_BAND)) & (r6 < hi * (1 - _TIE_BAND))
    outside = (r6 < lo * (1 - _TIE_BAND)) | (r6 > hi * (1 + _TIE_BAND))
    ok = sure[0] & (inside | (outside & sure[1]))
    digits = np.where(inside, 6, 9)
    sig = np.where(inside, r6, r[1])
    exp = np.where(inside, e[0], e[1])
    positional = (exp >= -4) & (exp < digits)  # noqa: PLR2004 - %g's rule
    # One correctly rounded division of two exact doubles: the double nearest to the decimal
    # (positional) or to its mantissa (exponent form); both divisors are <= 10**12.
    doubles = sig / _POW10[_POW10_ZERO + np.where(positional, digits - 1 - exp, digits - 1)]
    kind = np.where(positional, _POSITIONAL, _EXPONENT).astype(np.int8)
    kind[~ok] = _SLOW
    doubles[~ok] = 0.0
    return doubles, kind, exp.astype(np.int64)


def _float32_items(flat: np.ndarray, plan: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[str]:
    """Every value's text, from its plan."""
    doubles, kind, exponent = plan
    items = orjson.dumps(doubles, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].decode().split(",")
    where = np.flatnonzero(kind == _EXPONENT)
    for i, exp in zip(where.tolist(), exponent[where].tolist(), strict=True):
        mantissa = items[i]
        if mantissa[-2:] == ".0":  # %g drops the point of a one-digit mantissa: "1e-38"
            mantissa = mantissa[:-2]
        items[i] = mantissa + _EXP_SUFFIX[exp]
    slow = np.flatnonzero(kind == _SLOW)
    if slow.size:
        for i, text in zip(slow.tolist(), _format_exact(flat[slow]), strict=True):
            items[i] = text
    return items


def format_floats(values: np.ndarray) -> list[str]:
    """TF Serving's text for every element of a float array (flattened, C order).

    float32 round-trips through ``%g`` or else ``%.9g``; float64 through ``%g`` or ``%.17g``.
    """
    flat = np.ascontiguousarray(values).ravel()
    if flat.size == 0:
        return []
    if flat.dtype != np.float32 or flat.size < _VECTOR_MIN_SIZE:
        return _format_exact(flat)
    return _float32_items(flat, _float32_plan(flat))


def _float32_tensor_json(array: np.ndarray) -> str:
    """``tensor_json`` of a float32 array of rank >= 1 with no empty dimension."""
    flat = np.ascontiguousarray(array).ravel()
    plan = _float32_plan(flat)
    if (plan[1] == _POSITIONAL).all():
        # orjson nests by the shape; rapidjson's single-line arrays separate items with ", ".
        text = orjson.dumps(plan[0].reshape(array.shape), option=orjson.OPT_SERIALIZE_NUMPY)
        return text.replace(b",", b", ").decode()
    return _nest(_float32_items(flat, plan), tuple(array.shape))


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
    if len(shape) == 2 and shape[1] == 1:  # noqa: PLR2004 - [n, 1], the usual model output
        return "[[" + "], [".join(items) + "]]"
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
    if array.dtype == np.float32 and shape and array.size >= _VECTOR_MIN_SIZE:
        return _float32_tensor_json(array)
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
