"""The shared HTTP surface rules, as properties: parameters and bodies either parse or are a 4xx.

The surfaces' own tests (admin, replay, stand-in) check the error shapes over HTTP; these check
the parsing rules they share on any input hypothesis can think of.
"""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorebeater.bounds import INT64_MAX
from scorebeater.httpsurface import (
    INFLATE_CHUNK,
    INFLATE_HOLD,
    ApiError,
    bearer_token,
    bool_param,
    inflate,
    int_param,
    query_params,
)

PROPERTIES = settings(max_examples=300, database=None, deadline=None)


@PROPERTIES
@given(st.text())
def test_int_param_takes_ascii_digits_in_range_and_refuses_everything_else(raw: str) -> None:
    ascii_integer = raw.isascii() and raw.lstrip("-").isdigit() and raw.count("-") <= raw.startswith("-")
    if ascii_integer and -5 <= int(raw) <= 10**6:
        assert int_param(raw, "n", lo=-5, hi=10**6) == int(raw)
        return
    with pytest.raises(ApiError) as caught:
        int_param(raw, "n", lo=-5, hi=10**6)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_parameter", "n")
    assert len(caught.value.message) < 200


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("3805", 3805), ("0003805", 3805), (str(INT64_MAX), INT64_MAX), ("0" * 5000 + "7", 7)],
)
def test_int_param_accepts(raw: str, value: int) -> None:
    assert int_param(raw, "id") == value


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "-",
        "3805\n",
        " 3805",
        "+3805",
        "3_805",
        "\u0663\u0668\u0660\u0665",  # Arabic-Indic digits
        "\uff13\uff18",  # fullwidth digits
        "3805.0",
        "1e3",
        str(INT64_MAX + 1),
        "9" * 5000,
        "-1",
    ],
)
def test_int_param_refuses(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        int_param(raw, "id")
    assert (caught.value.status, caught.value.param) == (400, "id")


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)]
)
def test_bool_param(raw: str, value: bool) -> None:
    assert bool_param(raw, "history") is value


@pytest.mark.parametrize("raw", ["", "yes", "2", "truee", "\u0661"])
def test_bool_param_refuses(raw: str) -> None:
    with pytest.raises(ApiError):
        bool_param(raw, "history")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearer ab\udcc3\udca9c", None),  # non-ASCII bytes, as aiohttp hands them over
        ("Bearer abé", None),
        ("", None),
    ],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token(header) == token


@PROPERTIES
@given(st.binary(max_size=4096), st.sampled_from(["gzip", "deflate"]))
def test_inflate_round_trips_and_enforces_the_limit(data: bytes, encoding: str) -> None:
    body = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)
    assert inflate(body, encoding, limit=len(data)) == data
    if data:
        with pytest.raises(ApiError) as caught:
            inflate(body, encoding, limit=len(data) - 1)
        assert (caught.value.status, caught.value.code) == (413, "body_too_large")


@PROPERTIES
@given(st.binary(max_size=512), st.sampled_from(["gzip", "x-gzip", "deflate", "GZIP"]))
def test_inflate_of_any_bytes_is_bytes_or_a_400(body: bytes, encoding: str) -> None:
    out: bytes | ApiError
    try:
        out = inflate(body, encoding, limit=1 << 20)
    except ApiError as exc:
        out = exc
    if isinstance(out, ApiError):
        assert (out.status, out.code) in {(400, "bad_content_encoding"), (413, "body_too_large")}


@PROPERTIES
@given(st.binary(min_size=1, max_size=2048), st.integers(min_value=1, max_value=64))
def test_inflate_of_a_damaged_gzip_body_is_a_400(data: bytes, cut: int) -> None:
    body = gzip.compress(data)
    with pytest.raises(ApiError) as caught:
        inflate(body[: max(0, len(body) - cut)], "gzip", limit=1 << 20)
    assert caught.value.status == 400


def test_inflate_counts_a_large_body_first_and_inflates_it_again_only_if_it_fits() -> None:
    data = bytes(range(256)) * ((INFLATE_HOLD + 3 * INFLATE_CHUNK) // 256)
    body = gzip.compress(data)
    assert inflate(body, "gzip", limit=len(data)) == data
    with pytest.raises(ApiError) as caught:
        inflate(body, "gzip", limit=len(data) - 1)
    assert caught.value.status == 413


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        (b"plain", "", 200),
        (b"plain", "identity", 200),
        (b"plain", "br", 415),
        (b"plain", "gzip, gzip", 415),
        (gzip.compress(b"a") + gzip.compress(b"b"), "gzip", 200),  # members, as gzip(1) writes them
        (gzip.compress(b"a") + b"junk", "gzip", 400),
        (zlib.compress(b"a") + b"junk", "deflate", 400),
        (zlib.compress(b"a")[2:-4], "deflate", 200),  # raw deflate, as some clients send
    ],
)
def test_inflate_encodings(body: bytes, encoding: str, status: int) -> None:
    if status == 200:
        assert inflate(body, encoding, limit=100) in {b"plain", b"ab", b"a"}
        return
    with pytest.raises(ApiError) as caught:
        inflate(body, encoding, limit=100)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        ("season=2014&seson=2013", "seson", "unknown parameter 'seson'"),
        ("season=2014&season=2013", "season", "parameter 'season' is given more than once"),
        ("limit=5&limit=5&zz=1", "zz", "unknown parameter 'zz'"),  # unknown first
    ],
)
def test_query_params_refuse_unknown_and_repeated_names(query: str, param: str, message: str) -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request("GET", f"/v1/x?{query}")
    with pytest.raises(ApiError) as caught:
        query_params(request, ("season", "limit"))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert message in str(caught.value)


def test_query_params_return_the_query_when_it_is_known_and_single() -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request("GET", "/v1/x?season=2014&limit=5")
    assert dict(query_params(request, ("season", "limit", "cursor"))) == {"season": "2014", "limit": "5"}
    assert dict(query_params(make_mocked_request("GET", "/v1/x"), ())) == {}
