"""Request JSON to tensors and tensors to reply JSON, checked against a signature.

TF Serving never infers a dtype from the JSON: each value is checked against the dtype the
signature declares (``AddValueToTensor``). In Python ``bool`` is an ``int``, so exact types
are compared (``set(map(type, values))``): ``true`` is never a float, ``1.0`` is never an int.
When the request body holds no ``true``/``false`` token, numeric tensors are converted in one
numpy pass instead (``_numeric_fast``); anything numpy does not read as plain numbers falls
back to the per-value checks, so results and error texts are the same either way.
Error texts follow ``json_tensor.cc``; shape checks against the signature's TensorSpec are the
stand-in's own (TF Serving leaves them to TensorFlow, whose op messages we cannot copy).
Everything here is pure (numpy only) and runs in the server's worker threads.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from scorebeater.modelserver.jsonio import (
    RequestError,
    echo,
    json_type_name,
    object_body,
    rows_json,
    tensor_json,
)

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True, slots=True)
class DType:
    """How one TensorFlow dtype is read from JSON: its TF name, numpy dtype and JSON kind."""

    name: str
    numpy: Any
    kind: str  # "float", "int", "bool" or "string"


DTYPES: dict[str, DType] = {
    "DT_FLOAT": DType("float", np.float32, "float"),
    "DT_DOUBLE": DType("double", np.float64, "float"),
    "DT_INT8": DType("int8", np.int8, "int"),
    "DT_INT16": DType("int16", np.int16, "int"),
    "DT_INT32": DType("int32", np.int32, "int"),
    "DT_INT64": DType("int64", np.int64, "int"),
    "DT_UINT8": DType("uint8", np.uint8, "int"),
    "DT_UINT16": DType("uint16", np.uint16, "int"),
    "DT_UINT32": DType("uint32", np.uint32, "int"),
    "DT_UINT64": DType("uint64", np.uint64, "int"),
    "DT_BOOL": DType("bool", np.bool_, "bool"),
    "DT_STRING": DType("string", object, "string"),
}
"""The dtypes TF Serving converts from JSON; any other gets 501 (e.g. ``half``)."""

_ACCEPTED: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int}),
    "bool": frozenset({bool}),
    "string": frozenset({str, dict}),
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output of a signature, as its SignatureDef declares it.

    ``shape`` is ``None`` for an unknown rank; an unknown dimension is ``-1``.
    """

    alias: str
    dtype: str
    shape: tuple[int, ...] | None
    tensor_name: str = ""

    def shape_text(self) -> str:
        if self.shape is None:
            return "<unknown rank>"
        return "[" + ",".join(str(d) for d in self.shape) + "]"


# --- JSON values to arrays ----------------------------------------------------------------


def _flatten(value: Any) -> tuple[list[Any], tuple[int, ...]]:
    """Flatten a nested list; its shape comes from the first element at each level."""
    if not isinstance(value, list):
        return [value], ()
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    level: list[Any] = value
    for depth in range(1, len(shape)):
        size = shape[depth]
        nxt: list[Any] = []
        for item in level:
            if not isinstance(item, list):
                raise RequestError(
                    f"JSON Value: {echo(item)} found at incorrect level: {depth} in the input JSON"
                )
            if len(item) != size:
                raise RequestError(
                    f"Encountered list at unexpected size: {len(item)} at level: {depth} "
                    f"expected size: {size}"
                )
            nxt.extend(item)
        level = nxt
    return level, tuple(shape)


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _string_leaf(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as exc:
            raise RequestError(f"Unable to base64 decode: {echo(value)}") from exc
    raise RequestError(
        f"JSON Value: {echo(value)} Type: {json_type_name(value)} is not of expected type: string"
    )


def _first_bad(leaves: list[Any], dtype: DType) -> int:
    accepted = _ACCEPTED[dtype.kind]
    for i, v in enumerate(leaves):
        if type(v) not in accepted:
            return i
    return -1


@dataclass(frozen=True, slots=True)
class _Range:
    min: int
    max: int


_DOUBLE_EXACT_INTS = _Range(-(2**53), 2**53)
"""Integers a double holds exactly."""


def _numeric_fast(values: list[Any], dtype: DType) -> np.ndarray | None:
    """``values`` as an array of ``dtype`` in one numpy pass, when they are all plain numbers.

    For a caller that knows no value is a JSON ``true``/``false`` (numpy would read those as
    numbers): numpy infers a numeric dtype only when every value is an int or a float (a
    string, ``null``, an object or a ragged list gives another dtype or an error), so the
    result is exactly what the per-value checks accept. ``None`` means "take the checked
    path", which also writes the exact error message.
    """
    if dtype.kind not in ("float", "int"):
        return None
    try:
        inferred = np.array(values)
    except (ValueError, TypeError, OverflowError):  # ragged lists and the like
        return None
    kind = inferred.dtype.kind
    if kind not in "fiu" or (dtype.kind == "int" and kind == "f"):
        return None
    if inferred.size and kind in "iu":
        # Ints must fit the dtype (or, for a float dtype, be exact as a double: a Python int
        # becomes a float32 by way of a double, and so must the cast below).
        limits = np.iinfo(dtype.numpy) if dtype.kind == "int" else _DOUBLE_EXACT_INTS
        if inferred.min() < limits.min or inferred.max() > limits.max:
            return None
    with np.errstate(over="ignore"):  # 1e39 is inf as a float32, as in leaves_to_array
        return inferred.astype(dtype.numpy)


def leaves_to_array(
    leaves: list[Any], shape: tuple[int, ...], info: TensorInfo, *, bools_possible: bool = True
) -> np.ndarray:
    """Convert flat JSON leaves to an array of the signature's dtype and ``shape``.

    ``bools_possible=False`` promises that no leaf is a JSON ``true``/``false`` (the request
    body holds neither token); numeric leaves are then converted in one numpy pass.

    Raises:
        RequestError: 400 for a value of the wrong JSON type or out of the dtype's range;
            501 for a dtype TF Serving cannot read from JSON.
    """
    dtype = DTYPES.get(info.dtype)
    if dtype is None:
        shown = echo(leaves[0]) if leaves else "[]"
        type_name = info.dtype.removeprefix("DT_").lower()
        raise RequestError(f"Conversion of JSON Value: {shown} to type: {type_name}", http_status=501)
    if not bools_possible:
        fast = _numeric_fast(leaves, dtype)
        if fast is not None and fast.ndim == 1:
            return fast.reshape(shape)
    if dtype.kind == "string":
        out = np.empty(len(leaves), dtype=object)
        out[:] = [_string_leaf(v) for v in leaves]
        return out.reshape(shape)
    if not set(map(type, leaves)) <= _ACCEPTED[dtype.kind]:
        bad = leaves[_first_bad(leaves, dtype)]
        raise RequestError(
            f"JSON Value: {echo(bad)} Type: {json_type_name(bad)} is not of expected type: {dtype.name}"
        )
    if dtype.kind == "int" and leaves:
        limits = np.iinfo(dtype.numpy)
        for v in leaves:
            if not limits.min <= v <= limits.max:
                raise RequestError(f"JSON Value: {v} Type: Number is not of expected type: {dtype.name}")
    try:
        with np.errstate(over="ignore"):  # 1e39 is inf as a float32, as static_cast makes it
            array = np.array(leaves, dtype=dtype.numpy)
    except OverflowError as exc:  # an int beyond a double's range for a float dtype
        raise RequestError(
            f"JSON Value: a number in {echo(leaves)} is out of range for type: {dtype.name}"
        ) from exc
    return array.reshape(shape)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _columnar_stacked(
    inputs: dict[str, Any], specs: Mapping[str, TensorInfo]
) -> dict[str, np.ndarray] | None:
    """Named inputs of one dtype, each a flat list of one length, converted in one numpy pass.

    Several ``[batch]`` inputs of one dtype (the score_beater signature) are the common case:
    one conversion of a list of lists costs less than one per input. ``None`` (anything else,
    including every error) means "convert input by input".
    """
    kinds = {info.dtype for info in specs.values()}
    dtype = DTYPES.get(kinds.pop()) if len(kinds) == 1 else None
    if dtype is None or len(specs) < 2 or not all(name in inputs for name in specs):  # noqa: PLR2004
        return None
    values = [inputs[name] for name in specs]
    if not all(type(value) is list for value in values):
        return None
    stacked = _numeric_fast(values, dtype)
    if stacked is None or stacked.ndim != 2:  # noqa: PLR2004 - inputs x rows
        return None
    return {name: stacked[i] for i, name in enumerate(specs)}


def columnar_to_arrays(
    inputs: Any, specs: Mapping[str, TensorInfo], *, bools_possible: bool = True
) -> dict[str, np.ndarray]:
    """Tensors from the columnar ``inputs`` value: one tensor per signature input.

    Extra keys are ignored (as in TF Serving); each tensor has its own first dimension.
    ``bools_possible``: see :func:`leaves_to_array`.

    Raises:
        RequestError: 400 for a missing input, a plain value with several inputs, ragged lists,
            a wrong JSON type; 501 for an unsupported dtype.
    """
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(specs) != 1:
            raise RequestError(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        (info,) = specs.values()
        leaves, shape = _flatten(inputs)
        return {info.alias: leaves_to_array(leaves, shape, info, bools_possible=bools_possible)}
    if not bools_possible:
        stacked = _columnar_stacked(inputs, specs)
        if stacked is not None:
            return stacked
    arrays: dict[str, np.ndarray] = {}
    for name, info in specs.items():
        if name not in inputs:
            raise RequestError(f"Missing named input: {name} in 'inputs' object.")
        leaves, shape = _flatten(inputs[name])
        arrays[name] = leaves_to_array(leaves, shape, info, bools_possible=bools_possible)
    return arrays


def _element_error(index: int, exc: RequestError) -> RequestError:
    return RequestError(
        f"Failed to process element: {index} of 'instances' list. Error: INVALID_ARGUMENT: {exc.message}",
        http_status=exc.http_status,
    )


def _stack(values: list[Any], info: TensorInfo, *, bools_possible: bool = True) -> np.ndarray:
    """Stack per-instance values (scalars or nested lists of one shape) along a new first axis."""
    n = len(values)
    if not bools_possible:
        # numpy stacks equal-shaped nested lists exactly as the checks below would.
        fast = _numeric_fast(values, DTYPES[info.dtype]) if info.dtype in DTYPES else None
        if fast is not None and fast.ndim >= 1:
            return fast
    if list not in set(map(type, values)):
        try:
            return leaves_to_array(values, (n,), info)
        except RequestError as exc:
            if exc.http_status != 400:  # noqa: PLR2004 - only type errors name an element
                raise
            dtype = DTYPES[info.dtype]
            raise _element_error(max(_first_bad(values, dtype), 0), exc) from exc
    leaves: list[Any] = []
    first_shape: tuple[int, ...] | None = None
    for index, value in enumerate(values):
        try:
            flat, shape = _flatten(value)
        except RequestError as exc:
            raise _element_error(index, exc) from exc
        if first_shape is None:
            first_shape = shape
        elif shape != first_shape:
            size, want = int(np.prod(shape)), int(np.prod(first_shape))
            message = (
                f"Expecting tensor size: {want} but got: {size}"
                if size != want
                else f"Expecting shape {_dims(first_shape)} but got: {_dims(shape)}"
            )
            raise _element_error(index, RequestError(message))
        leaves.extend(flat)
    assert first_shape is not None  # noqa: S101 - values is never empty here
    try:
        return leaves_to_array(leaves, (n, *first_shape), info)
    except RequestError as exc:
        if exc.http_status != 400:  # noqa: PLR2004 - only type errors name an element
            raise
        per = max(int(np.prod(first_shape)), 1)
        dtype = DTYPES[info.dtype]
        raise _element_error(max(_first_bad(leaves, dtype), 0) // per, exc) from exc


def rows_to_arrays(
    instances: Any, specs: Mapping[str, TensorInfo], *, bools_possible: bool = True
) -> dict[str, np.ndarray]:
    """Tensors from the row ``instances`` value: every instance stacked along a new first axis.

    With several inputs every instance must be an object whose keys are exactly the inputs.
    ``bools_possible``: see :func:`leaves_to_array`.

    Raises:
        RequestError: 400 for an empty or non-list value, a plain list with several inputs,
            a wrong key set, ragged instances, a wrong JSON type; 501 for an unsupported dtype.
    """
    if not isinstance(instances, list):
        raise RequestError(f"JSON Value: {echo(instances)} Expecting 'instances' to be an list/array")
    if not instances:
        raise RequestError(f"JSON Value: {echo(instances)} No values in 'instances' array")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        if len(specs) != 1:
            raise RequestError(
                "instances is a plain list, but expecting list of objects as multiple input tensors "
                "required as per tensorinfo_map"
            )
        for index, value in enumerate(instances):
            if isinstance(value, dict) and not _is_b64(value):
                raise RequestError(f"Expecting value/list but got object at item {index} of input list")
        (info,) = specs.values()
        return {info.alias: _stack(instances, info, bools_possible=bools_possible)}
    names = specs.keys()
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RequestError(f"Expecting object but got list at item {index} of input list")
        if instance.keys() != names:
            extra = [k for k in instance if k not in specs]
            if extra:
                raise RequestError(
                    f"Failed to process element: {index} key: {extra[0]} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: JSON object: does not have named input: {extra[0]}"
                )
            raise RequestError(
                f"Failed to process element: {index} of 'instances' list. JSON object: {echo(instance)} "
                f"keys must be equal to: {','.join(sorted(names))}"
            )
    return {
        name: _stack(list(map(itemgetter(name), instances)), info, bools_possible=bools_possible)
        for name, info in specs.items()
    }


# --- checks against the signature and the batcher -----------------------------------------


def check_shapes(arrays: Mapping[str, np.ndarray], specs: Mapping[str, TensorInfo], signature: str) -> None:
    """Check each tensor's rank and known dimensions against the signature's TensorSpec.

    Raises:
        RequestError: 400 naming the input, the shape sent and the shape expected.
    """
    for name, array in arrays.items():
        want = specs[name].shape
        if want is None:
            continue
        got = array.shape
        if len(got) != len(want) or any(w not in (-1, g) for w, g in zip(want, got, strict=True)):
            expected = specs[name].shape_text()
            raise RequestError(
                f"Input '{name}' has shape {_dims(got)} but signature '{signature}' expects {expected}"
            )


def check_batch(arrays: Mapping[str, np.ndarray], max_batch_size: int) -> int:
    """What TF Serving's batching session checks; returns the batch size (0 when batching is off).

    Raises:
        RequestError: 400 for a scalar input, unequal first dimensions, or a batch above
            ``max_batch_size`` (``Task size N is larger than maximum input batch size M``).
    """
    if max_batch_size <= 0:
        return 0
    sizes = set()
    for array in arrays.values():
        if array.ndim == 0:
            raise RequestError("Batching session Run() input tensors must have at least one dimension.")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise RequestError("Batching session Run() input tensors must have equal 0th-dimension size.")
    size = sizes.pop() if sizes else 0
    if size > max_batch_size:
        raise RequestError(f"Task size {size} is larger than maximum input batch size {max_batch_size}")
    return int(size)


# --- arrays to the reply ------------------------------------------------------------------


def predict_reply(outputs: Mapping[str, np.ndarray], *, row_format: bool) -> bytes:
    """The ``:predict`` reply body: ``predictions`` (row format) or ``outputs`` (columnar).

    One output is written bare; several are keyed by alias. An alias ending in ``_bytes`` is
    written as ``{"b64": ...}``.

    Raises:
        RequestError: 400 in row format when an output is a scalar or the outputs disagree on
            the batch size; 500 for a dtype that has no JSON form.
    """
    items = list(outputs.items())
    if not row_format:
        if len(items) == 1:
            alias, array = items[0]
            return object_body([("outputs", tensor_json(array, b64=alias.endswith("_bytes")))])
        parts = [(alias, tensor_json(a, b64=alias.endswith("_bytes"))) for alias, a in items]
        return object_body([("outputs", object_body(parts, indent=8).decode()[:-1] + "    }")])
    batch = -1
    for alias, array in items:
        if array.ndim == 0:
            raise RequestError(f"Tensor name: {alias} has no shape information ")
        if batch < 0:
            batch = array.shape[0]
        elif array.shape[0] != batch:
            raise RequestError(
                f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
    if len(items) == 1:
        # The list of rows of a tensor of rank >= 1 is the tensor itself.
        alias, array = items[0]
        return object_body([("predictions", tensor_json(array, b64=alias.endswith("_bytes")))])
    keyed = [(orjson.dumps(alias).decode(), rows_json(a, b64=alias.endswith("_bytes"))) for alias, a in items]
    objects = [
        "{" + ", ".join(f"{key}: {rows[i]}" for key, rows in keyed) + "}" for i in range(max(batch, 0))
    ]
    return object_body([("predictions", "[" + ", ".join(objects) + "]")])
