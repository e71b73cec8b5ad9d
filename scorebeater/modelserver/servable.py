"""A servable: one loaded SavedModel version, its signatures, and how a request runs it.

:func:`load_saved_model` reads a version directory the way TF Serving does: the signature
defs from ``saved_model.pb`` (what ``/metadata`` serves) and the concrete functions from
``tf.saved_model.load``. The model server imports TensorFlow (3 s, 600 MB) only here, on the
first load or run, in a worker thread. TensorFlow's error codes and their HTTP statuses are TF Serving's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scorebeater.modelserver.jsonio import RequestError
from scorebeater.modelserver.tensors import DTYPES, TensorInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# TensorFlow error codes (tf.errors.*) by number, and how TF Serving maps them to HTTP.
ERROR_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
HTTP_BY_CODE = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
CODE_BY_HTTP = {
    200: "OK",
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class LoadError(Exception):
    """A version directory could not be loaded; ``code`` is a TF error-code name."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature of a loaded SavedModel; ``fn`` takes the inputs as keyword tensors."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    fn: Callable[..., Any] | None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A loaded version: its signatures and the ``signature_def`` JSON served by ``/metadata``."""

    path: Path
    signatures: Mapping[str, Signature]
    signature_def_json: Mapping[str, Any]
    handle: Any = None
    """Keeps the loaded TensorFlow object (and so its variables) alive while served."""

    def run(self, signature: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature's concrete function (blocking; run in a worker thread).

        Raises:
            RequestError: TensorFlow rejected the call; the HTTP status follows its error code.
        """
        import tensorflow as tf  # noqa: PLC0415 - TensorFlow is imported only when a model runs

        fn = self.signatures[signature].fn
        if fn is None:
            raise RequestError(f"Signature {signature} cannot be run", http_status=500)
        try:
            result = fn(**{name: tf.constant(value) for name, value in arrays.items()})
        except tf.errors.OpError as exc:
            code = ERROR_CODE_NAMES.get(exc.error_code, "UNKNOWN")
            raise RequestError(exc.message, http_status=HTTP_BY_CODE[code]) from exc
        except (TypeError, ValueError) as exc:
            raise RequestError(str(exc)) from exc
        return {alias: result[alias].numpy() for alias in self.signatures[signature].outputs}


def _tensor_info(alias: str, proto: Any) -> TensorInfo:
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415 - TensorFlow only when loading

    shape = None if proto.tensor_shape.unknown_rank else tuple(int(d.size) for d in proto.tensor_shape.dim)
    return TensorInfo(
        alias=alias, dtype=types_pb2.DataType.Name(proto.dtype), shape=shape, tensor_name=proto.name
    )


def _warm_up(signatures: Mapping[str, Signature]) -> None:
    """Run each numeric signature once on a one-row zero batch, so the first request pays no setup."""
    for sig in signatures.values():
        if sig.fn is None or not sig.inputs:
            continue
        arrays: dict[str, np.ndarray] = {}
        for alias, info in sig.inputs.items():
            if info.shape is None or not info.shape or any(d < 0 for d in info.shape[1:]):
                break
            dtype = DTYPES.get(info.dtype)
            if dtype is None or dtype.kind == "string":
                break
            arrays[alias] = np.zeros((1, *info.shape[1:]), dtype=dtype.numpy)
        else:
            with contextlib.suppress(Exception):  # warm-up is best effort; real requests report errors
                LoadedModel(Path(), {sig.name: sig}, {}).run(sig.name, arrays)


def load_saved_model(path: Path) -> LoadedModel:
    """Load one SavedModel version directory (blocking: call in a worker thread).

    Reads ``saved_model.pb`` for the signature defs (what ``/metadata`` serves, as TF Serving
    does) and ``tf.saved_model.load`` for the concrete functions, then warms each signature up.

    Raises:
        LoadError: ``NOT_FOUND`` when there is no ``saved_model.pb``/``.pbtxt``; ``INVALID_ARGUMENT``
            or ``UNKNOWN`` when it cannot be parsed or loaded.
    """
    pb, pbtxt = path / "saved_model.pb", path / "saved_model.pbtxt"
    if not pb.is_file() and not pbtxt.is_file():
        raise LoadError(
            "NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
        )
    # TensorFlow (3 s, 600 MB) is imported by the first load, in the loader thread.
    import tensorflow as tf  # noqa: PLC0415
    from google.protobuf import json_format, text_format  # type: ignore[import-untyped]  # noqa: PLC0415
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    saved = saved_model_pb2.SavedModel()
    try:
        if pb.is_file():
            saved.ParseFromString(pb.read_bytes())
        else:
            text_format.Parse(pbtxt.read_text(encoding="utf-8"), saved)
    except Exception as exc:
        raise LoadError("INVALID_ARGUMENT", f"Could not parse the SavedModel at {path}: {exc}") from exc
    if not saved.meta_graphs:
        raise LoadError("INVALID_ARGUMENT", f"The SavedModel at {path} has no MetaGraphDef")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise LoadError("UNKNOWN", f"Could not load the SavedModel at {path}: {exc}") from exc
    signature_defs = saved.meta_graphs[0].signature_def
    signatures: dict[str, Signature] = {}
    for name, sig in signature_defs.items():
        fn = loaded.signatures.get(name, None)
        signatures[name] = Signature(
            name=name,
            method_name=sig.method_name,
            inputs={alias: _tensor_info(alias, info) for alias, info in sig.inputs.items()},
            outputs={alias: _tensor_info(alias, info) for alias, info in sig.outputs.items()},
            fn=fn,
        )
    defs_json = {
        name: json_format.MessageToDict(
            sig, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
        for name, sig in signature_defs.items()
    }
    _warm_up(signatures)
    return LoadedModel(path=path, signatures=signatures, signature_def_json=defs_json, handle=loaded)
