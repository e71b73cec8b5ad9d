"""TF Serving's REST contract, as one table of requests and expected replies.

Built from ``reference/tfserving-rest.md`` (TF Serving's source and tests). It runs against the
embedded stand-in by default. With ``TFSERVING_URL`` set (and ``TFSERVING_MODELS_DIR``, the
directory written by ``python -m scorebeater.testing.savedmodel DIR`` and mounted as ``/models``) the
same table runs against a real TF Serving (see ``tfserving/README.md``).

Models served (see ``scorebeater/testing/savedmodel.py``): ``score_beater`` v1 and v2 (the production
signature; label ``stable`` -> 1), ``single`` (one input ``x`` [batch, 3]) and ``echo``
(identity on float32 [batch], to see float formatting). Batch limit: 64 rows.

Where the stand-in may differ (documented): parse-error texts after the ``JSON Parse error:``
prefix, TensorFlow runtime error texts, and the body of 404s outside ``/v1`` (libevent's HTML
page from TF Serving, ``{"error": ...}`` from the stand-in). The table checks those by status
and prefix only. The stand-in's own error contract (encoded bodies, JSON everywhere, a logged
500 for the unexpected) is checked after the table, against the stand-in only.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME
from scorebeater.modelserver.app import ModelServer
from scorebeater.modelserver.metrics import ServerMetrics
from scorebeater.testing.savedmodel import (
    CONTRACT_MAX_BATCH_SIZE,
    ModelCache,
    cached_models,
    contract_models_from_cache,
    in_process,
    random_columns,
    standin_thread,
)

REAL_URL = os.environ.get("TFSERVING_URL", "")
REAL_MODELS = os.environ.get("TFSERVING_MODELS_DIR", "")
SB = "/v1/models/score_beater"
HUGE = "9" * 5000


@pytest.fixture(name="model_cache", scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return cached_models(tmp_path_factory.getbasetemp() / "savedmodels")


@pytest.fixture(name="models_root", scope="session")
def _models_root(model_cache: ModelCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the served models live: TFSERVING_MODELS_DIR for a real server, else a temp copy."""
    if REAL_URL:
        if not REAL_MODELS:
            pytest.fail("TFSERVING_URL is set: set TFSERVING_MODELS_DIR to the models directory it serves")
        return Path(REAL_MODELS)
    root = tmp_path_factory.mktemp("contract-models")
    contract_models_from_cache(model_cache, root)
    return root


@pytest.fixture(name="base_url", scope="session")
def _base_url(models_root: Path) -> Iterator[str]:
    """The server under test: TFSERVING_URL, or the stand-in in a background thread."""
    if REAL_URL:
        yield REAL_URL.rstrip("/")
        return
    with standin_thread(
        model_name="score_beater",
        base_path=None,
        port=0,
        poll_interval_s=5.0,
        models_config=models_root / "models.config",
        max_batch_size=CONTRACT_MAX_BATCH_SIZE,
    ) as url:
        yield url


@pytest.fixture(name="op_determinism")
def _op_determinism(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """TensorFlow's op determinism for one test: the same inputs on this machine, the same bits.

    The switch is process-wide (the stand-in runs in this process), so it is turned back off
    afterwards; TensorFlow exports no public way to do that, hence the internal module.
    """
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    monkeypatch.setenv("TF_DETERMINISTIC_OPS", "1")
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    content_type: str

    @property
    def json(self) -> Any:
        # json, not orjson: replies may hold the NaN/Infinity tokens.
        return json.loads(self.text)


async def send(base_url: str, method: str, path: str, body: bytes | None = None, **headers: str) -> Reply:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base_url + path, data=body, headers=headers) as resp,
    ):
        return Reply(resp.status, await resp.text(), resp.headers.get("Content-Type", ""))


def _body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


ROW = dict.fromkeys(INPUT_NAMES, 10.0)


@dataclass(frozen=True)
class Case:
    """One request and what the reply must be: ``error`` is an exact message, ``contains`` a part."""

    id: str
    method: str
    path: str
    body: bytes | None = None
    status: int = 200
    error: str | None = None
    contains: str | None = None
    check: Callable[[Any], bool] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _versions(doc: Any) -> list[str]:
    return [v["version"] for v in doc["model_version_status"]]


def _all_available(doc: Any) -> bool:
    return all(
        v["state"] == "AVAILABLE" and v["status"] == {"error_code": "OK", "error_message": ""}
        for v in doc["model_version_status"]
    )


def _metadata_ok(version: str) -> Callable[[Any], bool]:
    def check(doc: Any) -> bool:
        sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
        return (
            doc["model_spec"] == {"name": "score_beater", "signature_name": "", "version": version}
            and set(sig["inputs"]) == set(INPUT_NAMES)
            and all(i["dtype"] == "DT_FLOAT" for i in sig["inputs"].values())
            and all(i["tensor_shape"]["dim"][0]["size"] == "-1" for i in sig["inputs"].values())
            and set(sig["outputs"]) == {OUTPUT_NAME}
            and [d["size"] for d in sig["outputs"][OUTPUT_NAME]["tensor_shape"]["dim"]] == ["-1", "1"]
            and sig["method_name"] == "tensorflow/serving/predict"
            and "__saved_model_init_op" in doc["metadata"]["signature_def"]["signature_def"]
        )

    return check


def _predictions(n: int, key: str = "predictions") -> Callable[[Any], bool]:
    def check(doc: Any) -> bool:
        values = np.asarray(doc[key], dtype=np.float64)
        return values.shape == (n, 1) and bool(np.all((values > 0) & (values < 1)))

    return check


MALFORMED = [
    ("GET", "/v1/foo"),
    ("POST", "/v1/models"),
    ("GET", f"{SB}:predict"),
    ("POST", f"{SB}/version/1:predict"),
    ("POST", f"{SB}/versions/HELLO:regress"),
    ("POST", f"{SB}/metadata"),
    ("GET", f"{SB}/versions/1/labels/stable"),
    ("GET", f"{SB}/"),
    ("PUT", SB),
    ("DELETE", f"{SB}:predict"),
]

CASES: list[Case] = [
    # --- model status ---------------------------------------------------------------------
    Case("status", "GET", SB, check=lambda d: _versions(d) == ["2", "1"] and _all_available(d)),
    Case(
        "status-case-insensitive",
        "GET",
        "/V1/MODELS/score_beater",
        check=lambda d: _versions(d) == ["2", "1"],
    ),
    Case(
        "status-version",
        "GET",
        f"{SB}/versions/1",
        check=lambda d: _versions(d) == ["1"] and _all_available(d),
    ),
    Case("status-label-ignored", "GET", f"{SB}/labels/stable", check=lambda d: _versions(d) == ["2", "1"]),
    Case(
        "status-unknown-model",
        "GET",
        "/v1/models/nope",
        status=404,
        error="Could not find any versions of model nope",
    ),
    Case(
        "status-unknown-version",
        "GET",
        f"{SB}/versions/7",
        status=404,
        error="Could not find version 7 of model score_beater",
    ),
    Case("missing-model-name", "GET", "/v1/models", status=400, error="Missing model name in request."),
    # --- version numbers: digits only, within int64 ------------------------------------------
    Case(
        "status-version-beyond-int64",
        "GET",
        f"{SB}/versions/9223372036854775808",
        status=400,
        error="Failed to convert version: 9223372036854775808 to numeric.",
    ),
    Case(
        "metadata-version-5000-digits",
        "GET",
        f"{SB}/versions/{HUGE}/metadata",
        status=400,
        error=f"Failed to convert version: {HUGE} to numeric.",
    ),
    Case(
        "predict-version-5000-digits",
        "POST",
        f"{SB}/versions/{HUGE}:predict",
        _body({"instances": [ROW]}),
        400,
        error=f"Failed to convert version: {HUGE} to numeric.",
    ),
    Case(
        "version-leading-zeros",
        "GET",
        f"{SB}/versions/{'0' * 5000}1",
        check=lambda d: _versions(d) == ["1"],
    ),
    Case(
        "version-arabic-indic-digit",
        "GET",
        f"{SB}/versions/%D9%A1",
        status=400,
        error=f"Malformed request: GET {SB}/versions/%D9%A1",
    ),
    # --- metadata ---------------------------------------------------------------------------
    Case("metadata-version", "GET", f"{SB}/versions/1/metadata", check=_metadata_ok("1")),
    Case("metadata-latest", "GET", f"{SB}/metadata", check=_metadata_ok("2")),
    Case("metadata-label", "GET", f"{SB}/labels/stable/metadata", check=_metadata_ok("1")),
    Case(
        "metadata-unknown-label",
        "GET",
        f"{SB}/labels/nope/metadata",
        status=400,
        error="Unrecognized servable version label: nope",
    ),
    Case(
        "metadata-unknown-model",
        "GET",
        "/v1/models/nope/metadata",
        status=404,
        error="Servable not found for request: Latest(nope)",
    ),
    Case(
        "metadata-unknown-version",
        "GET",
        f"{SB}/versions/7/metadata",
        status=404,
        error="Servable not found for request: Specific(score_beater, 7)",
    ),
    # --- malformed URLs ---------------------------------------------------------------------
    *[
        Case(
            f"malformed-{i}",
            method,
            path,
            body=b"{}",
            status=400,
            error=f"Malformed request: {method} {path}",
        )
        for i, (method, path) in enumerate(MALFORMED)
    ],
    # --- servable lookup --------------------------------------------------------------------
    Case(
        "predict-unknown-model",
        "POST",
        "/v1/models/nope:predict",
        _body({"instances": [ROW]}),
        404,
        error="Servable not found for request: Latest(nope)",
    ),
    Case(
        "predict-unknown-version",
        "POST",
        f"{SB}/versions/7:predict",
        _body({"instances": [ROW]}),
        404,
        error="Servable not found for request: Specific(score_beater, 7)",
    ),
    Case(
        "predict-unknown-label",
        "POST",
        f"{SB}/labels/nope:predict",
        _body({"instances": [ROW]}),
        400,
        error="Unrecognized servable version label: nope",
    ),
    Case("bad-body-before-lookup", "POST", "/v1/models/nope:predict", b"{", 400, contains="JSON Parse error"),
    # --- body checks ------------------------------------------------------------------------
    Case("empty-body", "POST", f"{SB}:predict", b"", 400, error="JSON Parse error: The document is empty"),
    Case("malformed-json", "POST", f"{SB}:predict", b'{"instances": [1,', 400, contains="JSON Parse error: "),
    Case("not-an-object", "POST", f"{SB}:predict", b"[1, 2]", 400, contains="Is not object"),
    Case(
        "neither-key",
        "POST",
        f"{SB}:predict",
        b'{"rows": []}',
        400,
        error="Missing 'inputs' or 'instances' key",
    ),
    Case(
        "both-keys",
        "POST",
        f"{SB}:predict",
        _body({"instances": [ROW], "inputs": {}}),
        400,
        contains="expecting only one of 'inputs' or 'instances' keys to exist",
    ),
    Case(
        "signature-name-not-string",
        "POST",
        f"{SB}:predict",
        _body({"signature_name": 5, "instances": [ROW]}),
        400,
        contains="'signature_name' key must be a string value.",
    ),
    Case(
        "unknown-signature",
        "POST",
        f"{SB}:predict",
        _body({"signature_name": "nope", "instances": [ROW]}),
        400,
        error='Serving signature name: "nope" not found in signature def',
    ),
    Case(
        "instances-not-list",
        "POST",
        f"{SB}:predict",
        _body({"instances": 5}),
        400,
        contains="Expecting 'instances' to be an list/array",
    ),
    Case(
        "instances-empty",
        "POST",
        f"{SB}:predict",
        _body({"instances": []}),
        400,
        contains="No values in 'instances'",
    ),
    # --- dtypes -----------------------------------------------------------------------------
    Case(
        "wrong-dtype-string",
        "POST",
        f"{SB}:predict",
        _body({"inputs": {**{n: [1.0] for n in INPUT_NAMES}, "ftm": ["x"]}}),
        400,
        error='JSON Value: "x" Type: String is not of expected type: float',
    ),
    Case(
        "wrong-dtype-bool-for-float",
        "POST",
        f"{SB}:predict",
        _body({"instances": [{**ROW, "ftm": True}]}),
        400,
        error="Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: true Type: True is not of expected type: float",
    ),
    Case(
        "wrong-dtype-bool-for-float-columnar",
        "POST",
        f"{SB}:predict",
        _body({"inputs": {**{n: [1.0, 2.0] for n in INPUT_NAMES}, "ftm": [1.0, False]}}),
        400,
        error="JSON Value: false Type: False is not of expected type: float",
    ),
    Case(
        "integers-for-float-inputs",
        "POST",
        f"{SB}:predict",
        _body({"inputs": {n: [10, 11, 12] for n in INPUT_NAMES}}),
        check=_predictions(3, key="outputs"),
    ),
    Case(
        "wrong-dtype-null",
        "POST",
        "/v1/models/single:predict",
        _body({"inputs": [[1.0, None, 2.0]]}),
        400,
        error="JSON Value: null Type: Null is not of expected type: float",
    ),
    # --- input names ------------------------------------------------------------------------
    Case(
        "row-missing-input",
        "POST",
        f"{SB}:predict",
        _body({"instances": [{k: v for k, v in ROW.items() if k != "ftm"}]}),
        400,
        contains="keys must be equal to: ",
    ),
    Case(
        "row-unknown-input",
        "POST",
        f"{SB}:predict",
        _body({"instances": [{**ROW, "foo": 1.0}]}),
        400,
        contains="does not have named input: foo",
    ),
    Case(
        "row-plain-list-for-several-inputs",
        "POST",
        f"{SB}:predict",
        _body({"instances": [[1.0] * len(INPUT_NAMES)]}),
        400,
        contains="instances is a plain list, but expecting list of objects",
    ),
    Case(
        "columnar-missing-input",
        "POST",
        f"{SB}:predict",
        _body({"inputs": {n: [1.0] for n in INPUT_NAMES if n != "ftm"}}),
        400,
        error="Missing named input: ftm in 'inputs' object.",
    ),
    Case(
        "columnar-plain-value-for-several-inputs",
        "POST",
        f"{SB}:predict",
        _body({"inputs": [1.0]}),
        400,
        contains="inputs is a plain value/list, but expecting an object",
    ),
    Case(
        "columnar-extra-key-ignored",
        "POST",
        f"{SB}:predict",
        _body({"inputs": {**{n: [1.0, 2.0] for n in INPUT_NAMES}, "extra": [1]}}),
        check=_predictions(2, "outputs"),
    ),
    # --- shapes and batch -------------------------------------------------------------------
    Case(
        "ragged-rows",
        "POST",
        "/v1/models/single:predict",
        _body({"instances": [[1.0, 2.0, 3.0], [1.0, 2.0]]}),
        400,
        error="Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting tensor size: 3 but got: 2",
    ),
    Case(
        "ragged-columnar",
        "POST",
        "/v1/models/single:predict",
        _body({"inputs": [[1.0, 2.0, 3.0], [1.0, 2.0]]}),
        400,
        contains="Encountered list at unexpected size: 2 at level: 1 expected size: 3",
    ),
    Case(
        "batch-above-max",
        "POST",
        f"{SB}:predict",
        _body({"inputs": {n: [1.0] * 65 for n in INPUT_NAMES}}),
        400,
        error="Task size 65 is larger than maximum input batch size 64",
    ),
    Case(
        "batch-at-max",
        "POST",
        f"{SB}:predict",
        _body({"inputs": {n: [1.0] * 64 for n in INPUT_NAMES}}),
        check=_predictions(64, "outputs"),
    ),
    # --- accepted forms ---------------------------------------------------------------------
    Case("row-format", "POST", f"{SB}:predict", _body({"instances": [ROW, ROW]}), check=_predictions(2)),
    Case(
        "row-format-label",
        "POST",
        f"{SB}/labels/stable:predict",
        _body({"signature_name": "serving_default", "instances": [ROW]}),
        check=_predictions(1),
    ),
    Case(
        "columnar-format-version",
        "POST",
        f"{SB}/versions/1:predict",
        _body({"inputs": {n: [1.0, 2.0, 3.0] for n in INPUT_NAMES}}),
        check=_predictions(3, "outputs"),
    ),
    Case(
        "integers-accepted-for-float",
        "POST",
        f"{SB}:predict",
        _body({"instances": [dict.fromkeys(INPUT_NAMES, 3)]}),
        check=_predictions(1),
    ),
    Case(
        "gzip-body",
        "POST",
        f"{SB}:predict",
        gzip.compress(_body({"instances": [ROW] * 3})),
        check=_predictions(3),
        headers={"Content-Encoding": "gzip"},
    ),
    Case(
        "trailing-bytes-ignored",
        "POST",
        f"{SB}:predict",
        _body({"instances": [ROW]}) + b" trailing garbage",
        check=_predictions(1),
    ),
    Case(
        "single-row-plain",
        "POST",
        "/v1/models/single:predict",
        _body({"instances": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}),
        check=lambda d: np.asarray(d["predictions"]).shape == (2, 1),
    ),
    Case(
        "single-row-objects",
        "POST",
        "/v1/models/single:predict",
        _body({"instances": [{"x": [1.0, 2.0, 3.0]}]}),
        check=lambda d: np.asarray(d["predictions"]).shape == (1, 1),
    ),
    Case(
        "single-columnar-plain",
        "POST",
        "/v1/models/single:predict",
        _body({"inputs": [[1.0, 2.0, 3.0]]}),
        check=lambda d: np.asarray(d["outputs"]).shape == (1, 1),
    ),
    Case(
        "single-columnar-named",
        "POST",
        "/v1/models/single:predict",
        _body({"inputs": {"x": [[1.0, 2.0, 3.0]]}}),
        check=lambda d: np.asarray(d["outputs"]).shape == (1, 1),
    ),
    # --- float formatting (section 6) -------------------------------------------------------
    Case(
        "float-formatting",
        "POST",
        "/v1/models/echo:predict",
        b'{"inputs": [0.5, 3, 9000000, 0.00003, 555557.5, 0.3333333333, 1435774380]}',
        contains='"outputs":[0.5,3.0,9e+06,3e-05,555557.5,0.333333343,1.43577434e+09]',
    ),
    Case(
        "non-finite-tokens",
        "POST",
        "/v1/models/echo:predict",
        b'{"instances": [NaN, Infinity, -Infinity, 1]}',
        contains='"predictions":[NaN,Infinity,-Infinity,1.0]',
    ),
    # --- outside /v1 ------------------------------------------------------------------------
    Case("not-v1", "GET", "/healthz", status=404),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_contract(base_url: str, case: Case) -> None:
    reply = await send(base_url, case.method, case.path, case.body, **case.headers)
    assert reply.status == case.status, reply.text
    if case.path.lower().startswith("/v1"):
        assert reply.content_type.split(";")[0] == "application/json"
    if case.error is not None:
        assert reply.json == {"error": case.error}
    if case.contains is not None:
        assert case.contains in "".join(reply.text.split()) or case.contains in reply.text, reply.text
    if case.check is not None:
        assert case.check(reply.json), reply.text
    if case.status != 200 and case.path.lower().startswith("/v1"):
        assert set(reply.json) == {"error"}


@pytest.mark.usefixtures("op_determinism")
@pytest.mark.parametrize("fmt", ["row", "columnar"])
async def test_predict_matches_the_savedmodel_in_process(base_url: str, models_root: Path, fmt: str) -> None:
    """Both formats give the SavedModel's own float32 outputs, for the version asked.

    Against the stand-in, bit for bit: it runs the same signature on the same 40-row batch in
    this process (with op determinism on), so any difference is the reply's float text not
    reading back exactly; rtol 1e-6 would hide a formatting that keeps only 7 significant digits
    (float32 needs 9). A real TF Serving is another build in another process: rtol 1e-6 there.
    """
    columns = random_columns(40, seed=3)
    for version in (1, 2):
        if fmt == "row":
            rows = [
                dict(zip(INPUT_NAMES, r, strict=True))
                for r in zip(*(columns[n].tolist() for n in INPUT_NAMES), strict=True)
            ]
            doc: dict[str, Any] = {"instances": rows}
        else:
            doc = {"inputs": {n: columns[n].tolist() for n in INPUT_NAMES}}
        reply = await send(base_url, "POST", f"{SB}/versions/{version}:predict", orjson.dumps(doc))
        assert reply.status == 200, reply.text
        got = np.asarray(reply.json["predictions" if fmt == "row" else "outputs"], dtype=np.float32)
        want = in_process(models_root / "score_beater" / str(version), columns)
        np.testing.assert_allclose(got, want, rtol=1e-6 if REAL_URL else 0, atol=0)


async def test_metrics_page(base_url: str) -> None:
    await send(base_url, "POST", f"{SB}:predict", _body({"instances": [ROW]}))
    reply = await send(base_url, "GET", "/monitoring/prometheus/metrics")
    assert reply.status == 200
    assert reply.content_type.startswith("text/plain")
    assert ':tensorflow:serving:request_count{model_name="score_beater",status="OK"}' in reply.text
    assert ":tensorflow:serving:request_latency_bucket{" in reply.text
    assert 'entrypoint="REST"' in reply.text


# --- the stand-in's own error contract (not TF Serving's: skipped against a real server) ---------

standin_only = pytest.mark.skipif(bool(REAL_URL), reason="the stand-in's own behaviour")


@standin_only
@pytest.mark.parametrize(
    ("body", "encoding", "status", "contains"),
    [
        pytest.param(_body({"instances": [ROW]}), "gzip", 400, "not valid gzip", id="not-gzip"),
        pytest.param(
            gzip.compress(_body({"instances": [ROW]}))[:-8], "gzip", 400, "not valid gzip", id="truncated"
        ),
        pytest.param(
            gzip.compress(_body({"instances": [ROW]})) + b"junk", "gzip", 400, "after the end", id="trailing"
        ),
        pytest.param(_body({"instances": [ROW]}), "br", 415, "not supported", id="brotli"),
        pytest.param(
            zlib.compress(_body({"instances": [ROW] * 2})), "deflate", 200, "predictions", id="deflate"
        ),
        pytest.param(
            gzip.compress(_body({"instances": [ROW]})) + gzip.compress(b" "),
            "gzip",
            200,
            "predictions",
            id="members",
        ),
    ],
)
async def test_encoded_bodies(base_url: str, body: bytes, encoding: str, status: int, contains: str) -> None:
    reply = await send(base_url, "POST", f"{SB}:predict", body, **{"Content-Encoding": encoding})
    assert reply.status == status, reply.text
    assert reply.content_type.split(";")[0] == "application/json"
    assert contains in reply.text
    if status != 200:
        assert set(reply.json) == {"error"}


@standin_only
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/healthz"), ("GET", "/"), ("PUT", "/monitoring/prometheus/metrics")]
)
async def test_outside_v1_errors_are_json_too(base_url: str, method: str, path: str) -> None:
    reply = await send(base_url, method, path)
    assert reply.status == 404
    assert reply.content_type.split(";")[0] == "application/json"
    assert reply.json == {"error": f"The requested URL {path} was not found on this server."}


class BrokenRegistry:
    """A registry whose status lookups fail with an error nothing expects."""

    views: dict[str, Any] = {}  # noqa: RUF012 - read only

    def status(self, name: str, version: int | None) -> list[Any]:
        raise RuntimeError("injected")


async def test_an_unexpected_exception_is_logged_and_answered_500_json() -> None:
    server = ModelServer(
        cast("Any", BrokenRegistry()),
        ServerMetrics(),
        max_batch_size=64,
        request_timeout_s=5.0,
        predict_workers=1,
    )
    try:
        async with TestServer(server.make_app(), host="127.0.0.1", port=0) as test_server:
            url = f"http://127.0.0.1:{test_server.port}"
            with capture_logs() as logs:
                reply = await send(url, "GET", SB)
            assert (reply.status, reply.json) == (500, {"error": "internal error"})
            assert reply.content_type.split(";")[0] == "application/json"
            assert (await send(url, "GET", "/v1/models")).status == 400  # and it goes on serving
    finally:
        server.close()
    failed = [e for e in logs if e["event"] == "http.request_failed"]
    assert [(e["surface"], e["path"]) for e in failed] == [("modelserver", SB)]
