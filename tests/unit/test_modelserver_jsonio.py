"""TF Serving's JSON rules: permissive parsing and WriteDecimal float formatting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scorebeater.modelserver.jsonio import (
    RequestError,
    echo,
    error_body,
    format_floats,
    parse_document,
    rows_json,
    tensor_json,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "0.5"),
        (3.0, "3.0"),
        (9e6, "9e+06"),
        (3e-5, "3e-05"),
        (555557.5, "555557.5"),
        (1 / 3, "0.333333343"),
        (1435774380, "1.43577434e+09"),
        (-2.0, "-2.0"),
        (-0.0, "-0.0"),
        (1e-7, "1e-07"),
        (123456.0, "123456.0"),
        (1234567.0, "1234567.0"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
    ],
)
def test_float32_formatting(value: float, text: str) -> None:
    assert format_floats(np.array([value], dtype=np.float32)) == [text]


def test_float32_text_reads_back_exactly() -> None:
    values = np.random.default_rng(1).standard_normal(5000).astype(np.float32) * 1e3
    texts = format_floats(values)
    assert np.array_equal(np.array([float(t) for t in texts], dtype=np.float32), values)


@pytest.mark.parametrize(("value", "text"), [(0.1, "0.1"), (1 / 3, "0.33333333333333331"), (2.0, "2.0")])
def test_float64_formatting(value: float, text: str) -> None:
    assert format_floats(np.array([value], dtype=np.float64)) == [text]


@pytest.mark.parametrize(
    ("array", "text"),
    [
        (np.array([[0.5], [3.0]], dtype=np.float32), "[[0.5], [3.0]]"),
        (np.array(2.5, dtype=np.float32), "2.5"),
        (np.zeros((0,), dtype=np.float32), "[]"),
        (np.zeros((2, 0), dtype=np.float32), "[[], []]"),
        (np.array([[1, 2], [3, 4]], dtype=np.int64), "[[1, 2], [3, 4]]"),
        (np.array([True, False]), "[true, false]"),
        (np.array([b"a", "é".encode()], dtype=object), '["a", "é"]'),
    ],
)
def test_tensor_json(array: np.ndarray, text: str) -> None:
    assert tensor_json(array) == text


def test_bytes_alias_is_base64() -> None:
    assert tensor_json(np.array([b"\x00\xff"], dtype=object), b64=True) == '[{"b64": "AP8="}]'


def test_rows_json_splits_the_first_dimension() -> None:
    assert rows_json(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)) == ["[1.0, 2.0]", "[3.0, 4.0]"]
    assert rows_json(np.array([1.0, 2.0], dtype=np.float32)) == ["1.0", "2.0"]


def test_parse_accepts_non_finite_tokens_and_trailing_bytes() -> None:
    doc = parse_document(b'  {"inputs": [NaN, Infinity, -Infinity]} trailing')
    values = doc["inputs"]
    assert np.isnan(values[0])
    assert values[1:] == [float("inf"), float("-inf")]


def test_parse_accepts_integers_beyond_64_bits() -> None:
    assert parse_document(b"[18446744073709551616]") == [2**64]


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_parse_empty(body: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_document(body)
    assert info.value.message == "JSON Parse error: The document is empty"
    assert info.value.http_status == 400


def test_parse_error_names_the_offset() -> None:
    with pytest.raises(RequestError) as info:
        parse_document(b'{"a": }')
    assert info.value.message.startswith("JSON Parse error: ")
    assert info.value.message.endswith("at offset: 6")


def test_parse_rejects_invalid_utf8() -> None:
    with pytest.raises(RequestError, match="JSON Parse error: Invalid encoding"):
        parse_document(b'{"a": "\xff"}')


def test_error_body_is_valid_json_with_escapes() -> None:
    body = error_body('bad "quote" \n and \\ slash')
    assert json.loads(body) == {"error": 'bad "quote" \n and \\ slash'}


def test_echo_is_cut() -> None:
    text = echo(list(range(1000)))
    assert len(text) == 259
    assert text.endswith("...")


# --- the vectorised float32 path against WriteDecimal written out value by value ------------


def _write_decimal32(value: float) -> str:
    """TF Serving's WriteDecimal for one float32, straight from the reference (the oracle)."""
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = "%g" % value  # noqa: UP031 - %g is the rule being checked
    if np.float32(float(text)) != np.float32(value):
        text = "%.9g" % value  # noqa: UP031
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _hard_float32_values(n: int) -> np.ndarray:
    """Values that stress every branch: probabilities, every exponent, whole numbers, random
    bit patterns (subnormals, NaN, inf), neighbours of powers of ten, rounding carries and ties."""
    rng = np.random.default_rng(7)
    sigmoid = 1 / (1 + np.exp(-rng.standard_normal(n) * 8))
    wide = rng.standard_normal(n) * 10.0 ** rng.integers(-45, 39, n)
    whole = rng.integers(-(2**31), 2**31, n).astype(np.float64)
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    pow10 = (10.0 ** rng.integers(-40, 38, n)).astype(np.float32).view(np.int32)
    near_pow10 = (pow10 + rng.integers(-3, 4, n).astype(np.int32)).view(np.float32)
    carry = (999999.5 * 10.0 ** rng.integers(-10, 20, n)).astype(np.float32).view(np.int32)
    near_carry = (carry + rng.integers(-3, 4, n).astype(np.int32)).view(np.float32)
    ties = (rng.integers(100000, 999999, n) * 10 + 5) * 10.0 ** rng.integers(-8, 4, n)
    parts = [sigmoid, wide, whole, bits, near_pow10, near_carry, ties, [0.0, -0.0, 1e-45, 3.4028235e38]]
    with np.errstate(over="ignore", invalid="ignore"):
        return np.concatenate([np.asarray(p, dtype=np.float64).astype(np.float32) for p in parts])


def test_float32_fast_path_agrees_with_write_decimal() -> None:
    values = _hard_float32_values(4000)
    with np.errstate(invalid="ignore"):
        expected = [_write_decimal32(v) for v in values.astype(np.float64).tolist()]
    assert format_floats(values) == expected


@pytest.mark.parametrize("n", [1, 191, 192, 1024])
def test_float32_tensor_json_of_model_outputs(n: int) -> None:
    """[n, 1] outputs, either side of the size where the vectorised path starts, with the
    exponent forms a saturated sigmoid gives (1e-31) and whole values (0.0, 1.0)."""
    rng = np.random.default_rng(n)
    column = 1 / (1 + np.exp(-rng.standard_normal(n) * 80))
    column[::7] = 0.0
    column[::11] = 1.0
    array = column.astype(np.float32).reshape(n, 1)
    rows = ", ".join(f"[{_write_decimal32(v)}]" for v in array.ravel().astype(np.float64).tolist())
    assert tensor_json(array) == f"[{rows}]"
    assert "[" + ", ".join(rows_json(array)) + "]" == tensor_json(array)


def test_float32_tensor_json_keeps_shape_and_separators() -> None:
    array = np.arange(2 * 3 * 40, dtype=np.float32).reshape(2, 3, 40) / 7
    texts = [_write_decimal32(v) for v in array.ravel().astype(np.float64).tolist()]
    inner = [", ".join(texts[i : i + 40]) for i in range(0, len(texts), 40)]
    expected = (
        "[" + ", ".join("[" + ", ".join(f"[{r}]" for r in inner[i : i + 3]) + "]" for i in (0, 3)) + "]"
    )
    assert tensor_json(array) == expected
    assert json.loads(expected) == json.loads(tensor_json(array))
