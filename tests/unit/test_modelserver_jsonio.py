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
