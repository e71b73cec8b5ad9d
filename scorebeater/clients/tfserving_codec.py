"""TF Serving's REST messages as data: replies parsed, predict requests built and read back.

The wire half of :class:`scorebeater.clients.tfserving.TFServingClient`, with no I/O
(``reference/tfserving-rest.md``):

* **Status and metadata replies** become :class:`VersionStatus` and :class:`ModelMetadata`
  (TF Serving's nested ``signature_def`` layout; ``__saved_model_init_op`` skipped).
* **Inputs are checked against the signature** once per call (:func:`prepare_inputs`):
  names, lengths, rank, dtype, finiteness. Float inputs that hold whole numbers (counts) are
  written as JSON integers, the same numbers.
* **Predict bodies** in row (``instances``) or columnar (``inputs``) format, orjson both ways;
  a reply holding the ``NaN``/``Infinity`` tokens TF Serving may print is read with the
  standard library.
* **Errors by HTTP status**, never by message (:func:`error_for`).

Every failure is a :class:`~scorebeater.errors.TFServingError` (or subclass) naming the
target ``tfserving``. TensorFlow is never imported here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from scorebeater.errors import BadModelRequest, ModelNotFound, ModelUnavailable, TFServingError
from scorebeater.inputs import OUTPUT_NAME

if TYPE_CHECKING:
    from collections.abc import Mapping

    from scorebeater.config import PredictFormat

TARGET = "tfserving"
INIT_OP = "__saved_model_init_op"
DEFAULT_SIGNATURE = "serving_default"
_NUMERIC = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64}
_INTEGER = {"DT_INT8", "DT_INT16", "DT_INT32", "DT_INT64", "DT_UINT8", "DT_UINT16", "DT_UINT32", "DT_UINT64"}
_EXACT_INT_IN_DOUBLE = 2**53


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One entry of the model status reply."""

    version: int
    state: str
    """UNKNOWN, START, LOADING, AVAILABLE, UNLOADING or END."""
    error_code: str = "OK"
    error_message: str = ""

    @property
    def available(self) -> bool:
        """True when the version serves requests (only ``AVAILABLE`` does)."""
        return self.state == "AVAILABLE"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output alias of a signature; ``shape`` is ``None`` for an unknown rank, -1 unknown dim."""

    alias: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A version's serving signature, read from ``/metadata``."""

    name: str
    version: int
    signature_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


def loads(body: bytes) -> Any:
    """Parse a reply; TF Serving's non-finite tokens (not strict JSON) fall back to the stdlib."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if b"NaN" not in body and b"Infinity" not in body:
            raise
    return json.loads(body)


def _floats(value: Any, rows: int) -> np.ndarray:
    """A reply tensor as float32; ``[[p], [p], ...]`` (``rows`` x 1) is read without nested lists."""
    if isinstance(value, list) and len(value) == rows and rows and isinstance(value[0], list):
        with contextlib.suppress(TypeError, ValueError):
            flat = np.fromiter(itertools.chain.from_iterable(value), dtype=np.float32)
            if flat.size == rows:
                return flat.reshape(rows, 1)
    return np.asarray(value, dtype=np.float32)


def _whole_as_int(array: np.ndarray) -> np.ndarray:
    """A float array of whole numbers as int64, else unchanged.

    JSON ``3`` and ``3.0`` are the same number, and TF Serving reads any JSON number for a
    float input, but orjson writes int64 about three times faster than float32 and shorter
    (the model's inputs are counts). Kept as floats: values beyond 2**53 (not exact as a
    double) and ``-0.0`` (its sign would be lost).
    """
    if array.size == 0 or not np.array_equal(array, np.trunc(array)):
        return array
    if np.abs(array).max() > _EXACT_INT_IN_DOUBLE or (np.signbit(array) & (array == 0)).any():
        return array
    return array.astype(np.int64)


def error_for(status: int, message: str, retry_after_s: float | None) -> TFServingError:
    """The typed error for a non-200 reply: 404, 400, 429/503/504 (transient), anything else."""
    if status == 404:  # noqa: PLR2004 - HTTP status codes
        return ModelNotFound(TARGET, message, status=status)
    if status == 400:  # noqa: PLR2004
        return BadModelRequest(TARGET, message, status=status)
    if status in (429, 503, 504):
        return ModelUnavailable(TARGET, message, status=status, transient=True, retry_after_s=retry_after_s)
    return TFServingError(TARGET, message, status=status)


def _spec(alias: str, raw: Mapping[str, Any]) -> TensorSpec:
    shape_doc = raw.get("tensor_shape") or {}
    shape = (
        None
        if shape_doc.get("unknown_rank")
        else tuple(int(d.get("size", -1)) for d in shape_doc.get("dim", []))
    )
    return TensorSpec(alias=alias, dtype=str(raw.get("dtype", "DT_INVALID")), shape=shape)


def parse_metadata(doc: Mapping[str, Any], signature_name: str = DEFAULT_SIGNATURE) -> ModelMetadata:
    """The signature ``signature_name`` from a ``/metadata`` reply (TF Serving's nested layout).

    Raises:
        TFServingError: the reply lacks the signature or is not shaped as TF Serving's.
    """
    try:
        spec = doc["model_spec"]
        defs = doc["metadata"]["signature_def"]["signature_def"]
        version = int(spec["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TFServingError(TARGET, f"metadata reply is not TF Serving's shape: {exc!r}") from exc
    signatures = {k: v for k, v in defs.items() if k != INIT_OP}
    if signature_name not in signatures:
        raise TFServingError(
            TARGET, f"model has no signature {signature_name!r}; it has {sorted(signatures)}", status=200
        )
    sig = signatures[signature_name]
    return ModelMetadata(
        name=str(spec.get("name", "")),
        version=version,
        signature_name=signature_name,
        inputs={a: _spec(a, r) for a, r in (sig.get("inputs") or {}).items()},
        outputs={a: _spec(a, r) for a, r in (sig.get("outputs") or {}).items()},
    )


def parse_status(doc: Any) -> list[VersionStatus]:
    """The version states of a status reply, highest version first.

    Raises:
        TFServingError: the reply is not shaped as TF Serving's.
    """
    try:
        entries = [
            VersionStatus(
                version=int(e["version"]),
                state=str(e["state"]),
                error_code=str((e.get("status") or {}).get("error_code", "OK")),
                error_message=str((e.get("status") or {}).get("error_message", "")),
            )
            for e in doc["model_version_status"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise TFServingError(TARGET, f"status reply is not TF Serving's shape: {exc!r}") from exc
    return sorted(entries, key=lambda e: e.version, reverse=True)


def output_alias(meta: ModelMetadata, wanted: str | None, *, where: str) -> str:
    """The output to read: ``wanted``, else the only one, else the model's ``probability``.

    Raises:
        BadModelRequest: the signature has no such output.
    """
    if wanted is None:
        wanted = next(iter(meta.outputs)) if len(meta.outputs) == 1 else OUTPUT_NAME
    if wanted not in meta.outputs:
        raise BadModelRequest(TARGET, f"{where}: no output {wanted!r}; outputs: {sorted(meta.outputs)}")
    return wanted


def prepare_inputs(
    columns: Mapping[str, Any], meta: ModelMetadata, *, where: str
) -> tuple[dict[str, np.ndarray], int]:
    """Check names, lengths, dtypes and finiteness; returns contiguous arrays and the row count.

    ``where`` names the model version in messages. Whole-number float columns come back as
    int64 (see :func:`_whole_as_int`).

    Raises:
        BadModelRequest: the columns do not match the signature, or a value is NaN/infinite.
    """
    missing = sorted(set(meta.inputs) - set(columns))
    extra = sorted(set(columns) - set(meta.inputs))
    if missing or extra:
        raise BadModelRequest(
            TARGET, f"{where}: inputs do not match the signature: missing {missing}, unexpected {extra}"
        )
    arrays: dict[str, np.ndarray] = {}
    lengths: set[int] = set()
    for name, spec in meta.inputs.items():
        dtype = _NUMERIC.get(spec.dtype)
        if dtype is None and spec.dtype not in _INTEGER and spec.dtype != "DT_BOOL":
            raise BadModelRequest(TARGET, f"{where}: input {name!r} has dtype {spec.dtype}, not supported")
        raw = np.asarray(columns[name])
        try:
            array = np.ascontiguousarray(raw, dtype=dtype) if dtype is not None else np.ascontiguousarray(raw)
        except (TypeError, ValueError) as exc:
            raise BadModelRequest(TARGET, f"{where}: input {name!r} is not {spec.dtype}: {exc}") from exc
        if array.ndim == 0:
            raise BadModelRequest(TARGET, f"{where}: input {name!r} must have a batch dimension")
        if spec.shape is not None and array.ndim != len(spec.shape):
            raise BadModelRequest(
                TARGET,
                f"{where}: input {name!r} has rank {array.ndim}, the signature wants {len(spec.shape)}",
            )
        if dtype is not None:
            finite = np.isfinite(array)
            if finite.ndim > 1:
                finite = finite.all(axis=tuple(range(1, finite.ndim)))
            bad = np.flatnonzero(~finite)
            if bad.size:
                raise BadModelRequest(
                    TARGET,
                    f"{where}: input {name!r} is not finite at row {int(bad[0])} ({bad.size} rows)",
                )
            array = _whole_as_int(array)
        arrays[name] = array
        lengths.add(array.shape[0])
    if len(lengths) != 1:
        raise BadModelRequest(TARGET, f"{where}: inputs have different lengths {sorted(lengths)}")
    return arrays, lengths.pop()


def encode_predict(
    arrays: Mapping[str, np.ndarray], start: int, stop: int, *, signature_name: str, fmt: PredictFormat
) -> bytes:
    """The JSON body predicting rows ``[start, stop)`` of ``arrays`` (from :func:`prepare_inputs`)."""
    names = list(arrays)
    single = len(names) == 1
    doc: dict[str, Any] = {"signature_name": signature_name}
    if fmt == "columnar":
        doc["inputs"] = arrays[names[0]][start:stop] if single else {n: arrays[n][start:stop] for n in names}
    elif single:
        doc["instances"] = arrays[names[0]][start:stop]
    else:
        cols = [arrays[n][start:stop].tolist() for n in names]
        doc["instances"] = [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_predict(doc: Any, output: str, rows: int, *, fmt: PredictFormat, url: str) -> np.ndarray:
    """The ``output`` tensor of a parsed predict reply as float32 of shape ``[rows]``.

    Raises:
        TFServingError: the reply lacks the output or its shape is not ``[rows, 1]``
            (``url`` names the request in the message).
    """
    reply_key = "predictions" if fmt == "row" else "outputs"
    try:
        value = doc[reply_key]
        if isinstance(value, dict):
            value = value[output]
        elif value and isinstance(value, list) and isinstance(value[0], dict):
            value = [row[output] for row in value]
        result = _floats(value, rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise TFServingError(TARGET, f"POST {url}: unexpected predict reply: {exc!r}", status=200) from exc
    flat = result.reshape(result.shape[0], -1) if result.ndim else result.reshape(1, 1)
    if flat.shape != (rows, 1):
        raise TFServingError(
            TARGET,
            f"POST {url}: reply has shape {list(result.shape)} for {rows} rows; expected [{rows}, 1]",
            status=200,
        )
    return flat[:, 0]


__all__ = [
    "DEFAULT_SIGNATURE",
    "INIT_OP",
    "TARGET",
    "ModelMetadata",
    "TensorSpec",
    "VersionStatus",
    "decode_predict",
    "encode_predict",
    "error_for",
    "loads",
    "output_alias",
    "parse_metadata",
    "parse_status",
    "prepare_inputs",
]
