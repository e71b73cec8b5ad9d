"""JSON values to tensors by the signature's dtypes, the checks before TensorFlow, and replies."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from scorebeater.modelserver.jsonio import RequestError
from scorebeater.modelserver.tensors import (
    TensorInfo,
    check_batch,
    check_shapes,
    columnar_to_arrays,
    leaves_to_array,
    predict_reply,
    rows_to_arrays,
)


def info(dtype: str = "DT_FLOAT", shape: tuple[int, ...] | None = (-1,), alias: str = "a") -> TensorInfo:
    return TensorInfo(alias=alias, dtype=dtype, shape=shape)


@pytest.mark.parametrize(
    ("dtype", "leaves", "expected"),
    [
        ("DT_FLOAT", [1, 2.5, -3e3], np.array([1, 2.5, -3e3], dtype=np.float32)),
        ("DT_DOUBLE", [0.1], np.array([0.1])),
        ("DT_INT32", [1, -2], np.array([1, -2], dtype=np.int32)),
        ("DT_INT64", [2**62], np.array([2**62], dtype=np.int64)),
        ("DT_UINT64", [2**64 - 1], np.array([2**64 - 1], dtype=np.uint64)),
        ("DT_BOOL", [True, False], np.array([True, False])),
    ],
)
def test_accepted_values(dtype: str, leaves: list[Any], expected: np.ndarray) -> None:
    got = leaves_to_array(leaves, (len(leaves),), info(dtype))
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_strings_and_b64() -> None:
    got = leaves_to_array(["é", {"b64": "AP8="}], (2,), info("DT_STRING"))
    assert got.tolist() == ["é".encode(), b"\x00\xff"]


@pytest.mark.parametrize(
    ("dtype", "leaves", "message"),
    [
        ("DT_FLOAT", [1.0, True], "JSON Value: true Type: True is not of expected type: float"),
        ("DT_FLOAT", [False], "JSON Value: false Type: False is not of expected type: float"),
        ("DT_FLOAT", ["1.5"], 'JSON Value: "1.5" Type: String is not of expected type: float'),
        ("DT_FLOAT", [None], "JSON Value: null Type: Null is not of expected type: float"),
        (
            "DT_FLOAT",
            [{"b64": "AA=="}],
            'JSON Value: {"b64":"AA=="} Type: Object is not of expected type: float',
        ),
        ("DT_INT32", [1.0], "JSON Value: 1.0 Type: Number is not of expected type: int32"),
        ("DT_INT32", [True], "JSON Value: true Type: True is not of expected type: int32"),
        ("DT_INT8", [300], "JSON Value: 300 Type: Number is not of expected type: int8"),
        ("DT_BOOL", [1], "JSON Value: 1 Type: Number is not of expected type: bool"),
        ("DT_STRING", [5], "JSON Value: 5 Type: Number is not of expected type: string"),
        ("DT_STRING", [{"b64": "!!"}], "Unable to base64 decode"),
    ],
)
def test_rejected_values(dtype: str, leaves: list[Any], message: str) -> None:
    with pytest.raises(RequestError) as exc:
        leaves_to_array(leaves, (len(leaves),), info(dtype))
    assert exc.value.http_status == 400
    assert message in exc.value.message


def test_unsupported_dtype_is_501() -> None:
    with pytest.raises(RequestError) as exc:
        leaves_to_array([1.0], (1,), info("DT_HALF"))
    assert exc.value.http_status == 501
    assert exc.value.message == "Conversion of JSON Value: 1.0 to type: half"


SPECS = {"a": info(alias="a"), "b": info(alias="b", shape=(-1, 2))}


def test_columnar_named_inputs_each_with_its_shape() -> None:
    arrays = columnar_to_arrays({"a": [1, 2, 3], "b": [[1, 2]], "ignored": 1}, SPECS)
    assert arrays["a"].shape == (3,)
    assert arrays["b"].shape == (1, 2)


def test_columnar_single_input_plain_value_and_scalar() -> None:
    assert columnar_to_arrays([[1, 2], [3, 4]], {"x": info(alias="x")})["x"].shape == (2, 2)
    assert columnar_to_arrays(5, {"x": info(alias="x")})["x"].shape == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1]}, "Missing named input: b in 'inputs' object."),
        ([1, 2], "inputs is a plain value/list, but expecting an object"),
        (
            {"a": [1], "b": [[1, 2], [1]]},
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        ),
        ({"a": [1], "b": [[1, 2], 3]}, "JSON Value: 3 found at incorrect level: 1"),
    ],
)
def test_columnar_errors(value: Any, message: str) -> None:
    with pytest.raises(RequestError, match=None) as exc:
        columnar_to_arrays(value, SPECS)
    assert message in exc.value.message


def test_rows_stack_named_instances() -> None:
    arrays = rows_to_arrays([{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, 4]}], SPECS)
    np.testing.assert_array_equal(arrays["a"], [1, 2])
    np.testing.assert_array_equal(arrays["b"], [[1, 2], [3, 4]])


def test_rows_single_input_plain_and_named() -> None:
    spec = {"x": info(alias="x", shape=(-1, 2))}
    assert rows_to_arrays([[1, 2], [3, 4]], spec)["x"].shape == (2, 2)
    assert rows_to_arrays([{"x": [1, 2]}], spec)["x"].shape == (1, 2)


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ({"a": 1}, "Expecting 'instances' to be an list/array"),
        ([], "No values in 'instances' array"),
        ([[1, 2]], "instances is a plain list, but expecting list of objects"),
        ([{"a": 1, "b": [1, 2]}, [1]], "Expecting object but got list at item 1 of input list"),
        ([{"a": 1, "b": [1, 2], "c": 1}], "Failed to process element: 0 key: c of 'instances' list."),
        ([{"a": 1}], "Failed to process element: 0 of 'instances' list. JSON object: "),
        (
            [{"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 2, 3]}],
            (
                "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
                "Expecting tensor size: 2 but got: 3"
            ),
        ),
        (
            [{"a": 1, "b": [1, 2]}, {"a": 2, "b": [[1, 2]]}],
            "Expecting shape [2] but got: [1,2]",
        ),
        (
            [{"a": 1, "b": [1, 2]}, {"a": "x", "b": [1, 2]}],
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"x\"",
        ),
        (
            [{"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, None]}],
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: null",
        ),
    ],
)
def test_rows_errors(instances: Any, message: str) -> None:
    with pytest.raises(RequestError) as exc:
        rows_to_arrays(instances, SPECS)
    assert message in exc.value.message


def test_rows_single_input_rejects_an_object_among_values() -> None:
    with pytest.raises(RequestError, match="Expecting value/list but got object at item 1"):
        rows_to_arrays([[1, 2], {"x": [1, 2]}], {"x": info(alias="x", shape=(-1, 2))})


def test_check_shapes_against_the_signature() -> None:
    check_shapes({"b": np.zeros((3, 2))}, SPECS, "serving_default")
    with pytest.raises(
        RequestError, match=r"Input 'b' has shape \[3,4\] but signature 'serving_default' expects \[-1,2\]"
    ):
        check_shapes({"b": np.zeros((3, 4))}, SPECS, "serving_default")
    with pytest.raises(RequestError, match="has shape \\[3\\]"):
        check_shapes({"b": np.zeros(3)}, SPECS, "serving_default")
    check_shapes({"u": np.zeros((1, 2, 3))}, {"u": info(shape=None, alias="u")}, "s")


def test_check_batch() -> None:
    assert check_batch({"a": np.zeros(64), "b": np.zeros((64, 2))}, 64) == 64
    assert check_batch({"a": np.zeros(100)}, 0) == 0
    with pytest.raises(RequestError, match="Task size 65 is larger than maximum input batch size 64"):
        check_batch({"a": np.zeros(65)}, 64)
    with pytest.raises(RequestError, match="equal 0th-dimension size"):
        check_batch({"a": np.zeros(2), "b": np.zeros(3)}, 64)
    with pytest.raises(RequestError, match="at least one dimension"):
        check_batch({"a": np.zeros(())}, 64)


def test_replies_in_both_formats() -> None:
    out = {"probability": np.array([[0.25], [0.5]], dtype=np.float32)}
    assert json.loads(predict_reply(out, row_format=True)) == {"predictions": [[0.25], [0.5]]}
    assert json.loads(predict_reply(out, row_format=False)) == {"outputs": [[0.25], [0.5]]}


def test_replies_with_several_outputs() -> None:
    out = {"p": np.array([0.5, 1.0], dtype=np.float32), "k_bytes": np.array([b"a", b"b"], dtype=object)}
    rows = json.loads(predict_reply(out, row_format=True))
    assert rows == {
        "predictions": [{"p": 0.5, "k_bytes": {"b64": "YQ=="}}, {"p": 1.0, "k_bytes": {"b64": "Yg=="}}]
    }
    cols = json.loads(predict_reply(out, row_format=False))
    assert cols == {"outputs": {"p": [0.5, 1.0], "k_bytes": [{"b64": "YQ=="}, {"b64": "Yg=="}]}}


def test_row_replies_need_one_batch_size() -> None:
    with pytest.raises(RequestError, match="Tensor name: b has inconsistent batch size: 1 expecting: 2"):
        predict_reply({"a": np.zeros(2), "b": np.zeros(1)}, row_format=True)
    with pytest.raises(RequestError, match="Tensor name: a has no shape information"):
        predict_reply({"a": np.zeros(())}, row_format=True)
    assert json.loads(predict_reply({"a": np.zeros(2), "b": np.zeros(1)}, row_format=False))["outputs"][
        "b"
    ] == [0.0]


# --- the one-pass numeric conversion (no true/false in the body) gives the checked results ------


def _outcome(convert: Any) -> tuple[Any, ...]:
    try:
        arrays = convert()
    except RequestError as exc:
        return ("error", exc.http_status, exc.message)
    return ("ok", {k: (a.dtype.str, a.shape, a.tobytes()) for k, a in arrays.items()})


NUMERIC_CASES: list[tuple[str, Any]] = [
    ("DT_FLOAT", [1, 2.5, -3e3, 0.1, 1e39, -0.0]),
    ("DT_FLOAT", [2**53, -(2**53), 2**53 + 1, 2**63, 2**64, 2**70]),
    ("DT_FLOAT", [float("nan"), float("inf"), 7]),
    ("DT_FLOAT", [1.0, "1.5"]),
    ("DT_FLOAT", [1.0, None]),
    ("DT_FLOAT", [1.0, {"b64": "AA=="}]),
    ("DT_FLOAT", []),
    ("DT_DOUBLE", [0.1, 2**60 + 1, 3]),
    ("DT_INT8", [1, -128, 127]),
    ("DT_INT8", [1, 300]),
    ("DT_INT32", [1, 2.0]),
    ("DT_INT64", [2**63 - 1, -(2**63)]),
    ("DT_INT64", [2**63]),
    ("DT_UINT64", [2**64 - 1, 0]),
    ("DT_UINT8", [-1]),
    ("DT_INT32", []),
]


@pytest.mark.parametrize(("dtype", "values"), NUMERIC_CASES)
def test_one_pass_columnar_conversion_matches_the_checked_path(dtype: str, values: list[Any]) -> None:
    specs = {"a": info(dtype, shape=None)}
    checked = _outcome(lambda: columnar_to_arrays({"a": values}, specs))
    assert _outcome(lambda: columnar_to_arrays({"a": values}, specs, bools_possible=False)) == checked


# An empty instances list is its own error, covered by test_rows_errors.
@pytest.mark.parametrize(("dtype", "values"), [(d, v) for d, v in NUMERIC_CASES if v])
def test_one_pass_row_conversion_matches_the_checked_path(dtype: str, values: list[Any]) -> None:
    specs = {"a": info(dtype, shape=None), "b": info(shape=None, alias="b")}
    instances = [{"a": v, "b": [float(i), 1]} for i, v in enumerate(values)]
    checked = _outcome(lambda: rows_to_arrays(instances, specs))
    assert _outcome(lambda: rows_to_arrays(instances, specs, bools_possible=False)) == checked


@pytest.mark.parametrize(
    "values",
    [[[1, 2], [3, 4]], [[1, 2], [3]], [[1, 2], 3], [[[1], [2]], [[3], [4]]], [[], []], [[1, "x"], [2, 3]]],
)
def test_one_pass_nested_values_match_the_checked_path(values: Any) -> None:
    spec = {"x": info(alias="x", shape=None)}
    checked_rows = _outcome(lambda: rows_to_arrays(values, spec))
    assert _outcome(lambda: rows_to_arrays(values, spec, bools_possible=False)) == checked_rows
    checked_cols = _outcome(lambda: columnar_to_arrays(values, spec))
    assert _outcome(lambda: columnar_to_arrays(values, spec, bools_possible=False)) == checked_cols


@pytest.mark.parametrize(("dtype", "values"), NUMERIC_CASES)
@pytest.mark.parametrize("other", ["same", "shorter", "nested", "missing"])
def test_stacked_columnar_conversion_matches_the_checked_path(
    dtype: str, values: list[Any], other: str
) -> None:
    """Several inputs of one dtype go through numpy together; the result is the checked one."""
    specs = {"a": info(dtype, shape=None), "b": info(dtype, shape=None, alias="b")}
    second = {"same": [1] * len(values), "shorter": [1], "nested": [[1]] * len(values), "missing": None}[
        other
    ]
    doc = {"a": values} if second is None else {"a": values, "b": second}
    checked = _outcome(lambda: columnar_to_arrays(doc, specs))
    assert _outcome(lambda: columnar_to_arrays(doc, specs, bools_possible=False)) == checked
