"""TFServingClient against the stand-in (formats, splitting, gzip, versions) and fault-injecting apps.

Fault apps are small aiohttp servers on loopback that answer as TF Serving would, with
injected 429/503/400/404 replies or a dropped connection; the client's retries, typed errors
and metrics are checked against them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import stamina
from aiohttp import web
from aiohttp.test_utils import TestServer

from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import TFServingConfig
from scorebeater.errors import BadModelRequest, ModelNotFound, ModelUnavailable, TFServingError
from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME
from scorebeater.metrics import Metrics
from scorebeater.modelserver.app import ModelServer, serve_models
from scorebeater.testing.savedmodel import ModelCache, cached_models, in_process, publish, random_columns


@pytest.fixture(name="model_cache", scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return cached_models(tmp_path_factory.getbasetemp() / "savedmodels")


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    # Retries happen at once, still bounded by each config's max_attempts.
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture(name="standin")
async def _standin(model_cache: ModelCache, tmp_path: Path) -> AsyncIterator[ModelServer]:
    base = tmp_path / "score_beater"
    publish(model_cache.score(1), base, 1)
    publish(model_cache.score(2), base, 2)
    publish(model_cache.single, tmp_path / "single", 1)
    config = tmp_path / "models.config"
    config.write_text(
        f"model_config_list {{ config {{ name: 'score_beater' base_path: '/elsewhere' "
        f"model_version_policy {{ all {{}} }} version_labels {{ key: 'stable' value: 1 }} }} "
        f"config {{ name: 'single' base_path: '{tmp_path}/single' }} }}"
    )
    # base_path replaces the file's '/elsewhere' for score_beater (the documented override).
    async with serve_models(
        base_path=base, port=0, poll_interval_s=60, models_config=config, max_batch_size=64
    ) as s:
        yield s


def cfg(url: str, **kw: Any) -> TFServingConfig:
    return dataclasses.replace(TFServingConfig(base_url=url, max_batch_size=64, max_attempts=3), **kw)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """A sample's value on the test's registry (``None``: no such series)."""
    return metrics.registry.get_sample_value(name, labels)


async def test_status_metadata_and_pinning(
    standin: ModelServer, model_cache: ModelCache, metrics: Metrics
) -> None:
    async with TFServingClient.open(cfg(standin.url), "score_beater", metrics=metrics) as client:
        states = await client.status()
        assert [(s.version, s.state, s.available) for s in states] == [
            (2, "AVAILABLE", True),
            (1, "AVAILABLE", True),
        ]
        assert [s.version for s in await client.status(1)] == [1]
        meta = await client.metadata(2)
        assert (meta.name, meta.version, meta.signature_name) == ("score_beater", 2, "serving_default")
        assert set(meta.inputs) == set(INPUT_NAMES)
        assert meta.inputs["ftm"].dtype == "DT_FLOAT"
        assert meta.inputs["ftm"].shape == (-1,)
        assert meta.outputs[OUTPUT_NAME].shape == (-1, 1)
        assert await client.pin_version(None) == 2
        assert await client.pin_version("") == 2
        assert await client.pin_version("stable") == 1
        assert sample(metrics, "scorebeater_model_available") == 1
        assert sample(metrics, "scorebeater_tfserving_requests_total", api="status", code="200") == 4
        with pytest.raises(ModelUnavailable, match="label 'nope'") as exc:
            await client.pin_version("nope")
        assert exc.value.status == 400
        assert sample(metrics, "scorebeater_model_available") == 0


@pytest.mark.parametrize("fmt", ["row", "columnar"])
@pytest.mark.parametrize("use_gzip", [False, True])
async def test_predict_splits_and_matches_in_process(
    standin: ModelServer, model_cache: ModelCache, metrics: Metrics, fmt: str, use_gzip: bool
) -> None:
    columns = random_columns(150, seed=5)  # 64 + 64 + 22: three requests under the server's limit
    # The reference runs the 150 rows as one batch: TensorFlow's CPU kernels may round the rows
    # of a partial batch differently (1 ulp), so equal to float32 rounding, not bit for bit.
    async with TFServingClient.open(
        cfg(standin.url, format=fmt, gzip=use_gzip, max_concurrency=2), "score_beater", metrics=metrics
    ) as client:
        for version in (1, 2):
            got = await client.predict(columns, version=version)
            assert got.dtype == np.float64
            assert got.shape == (150,)
            want = in_process(model_cache.score(version), columns)[:, 0]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
            # What a caller sends a version (see stages/scoring.py), from the same cached read.
            assert set((await client.signature(version)).inputs) == set(columns)
    assert sample(metrics, "scorebeater_tfserving_requests_total", api="predict", code="200") == 6
    # Metadata is read once per version.
    assert sample(metrics, "scorebeater_tfserving_requests_total", api="metadata", code="200") == 2


@pytest.mark.parametrize("fmt", ["row", "columnar"])
async def test_single_input_model(standin: ModelServer, model_cache: ModelCache, fmt: str) -> None:
    x = np.random.default_rng(2).standard_normal((70, 3)).astype(np.float32)
    async with TFServingClient.open(cfg(standin.url, format=fmt), "single") as client:
        version = await client.pin_version(None)
        got = await client.predict({"x": x}, version=version)
    want = in_process(model_cache.single, {"x": x}, output="y")[:, 0]
    # 64 + 6 rows against one batch of 70 (see above). The output is linear, so it can be near 0,
    # where a rounding difference is absolute, not relative: hence atol.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


async def test_bad_inputs_are_refused_before_sending(standin: ModelServer) -> None:
    columns = random_columns(3)
    async with TFServingClient.open(cfg(standin.url), "score_beater") as client:
        with pytest.raises(BadModelRequest, match=r"missing \['ftm'\], unexpected \['foo'\]"):
            await client.predict(
                {**{k: v for k, v in columns.items() if k != "ftm"}, "foo": columns["fta"]}, version=1
            )
        bad = dict(columns, ftm=np.array([1.0, np.nan, 2.0]))
        with pytest.raises(BadModelRequest, match="'ftm' is not finite at row 1"):
            await client.predict(bad, version=1)
        with pytest.raises(BadModelRequest, match="different lengths"):
            await client.predict(dict(columns, ftm=np.zeros(2)), version=1)
        with pytest.raises(BadModelRequest, match="rank 2"):
            await client.predict(dict(columns, ftm=np.zeros((3, 1))), version=1)
        assert (await client.predict({k: v[:0] for k, v in columns.items()}, version=1)).shape == (0,)


async def test_unknown_version_is_not_retried(standin: ModelServer, metrics: Metrics) -> None:
    async with TFServingClient.open(cfg(standin.url), "score_beater", metrics=metrics) as client:
        with pytest.raises(ModelNotFound) as exc:
            await client.predict(random_columns(2), version=9)
    assert exc.value.status == 404
    assert sample(metrics, "scorebeater_tfserving_retries_total") == 0
    assert sample(metrics, "scorebeater_model_available") == 0


# --- fault injection ------------------------------------------------------------------------------

METADATA = {
    "model_spec": {"name": "score_beater", "signature_name": "", "version": "1"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "serving_default": {
                    "inputs": {
                        n: {
                            "dtype": "DT_FLOAT",
                            "name": f"serving_default_{n}:0",
                            "tensor_shape": {"dim": [{"size": "-1"}]},
                        }
                        for n in INPUT_NAMES
                    },
                    "outputs": {
                        OUTPUT_NAME: {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {"dim": [{"size": "-1"}, {"size": "1"}], "unknown_rank": False},
                        }
                    },
                    "method_name": "tensorflow/serving/predict",
                },
                "__saved_model_init_op": {"inputs": {}, "outputs": {}},
            }
        }
    },
}


class FaultyServing:
    """A TF Serving look-alike answering each predict with the next scripted status (then 200)."""

    def __init__(self, script: list[int], *, reply_text: str | None = None) -> None:
        self.script = list(script)
        self.reply_text = reply_text
        self.bodies: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.encodings: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/models/score_beater/versions/1/metadata", self.metadata)
        self.app.router.add_post("/v1/models/score_beater/versions/1:predict", self.predict)

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response(METADATA)

    async def predict(self, request: web.Request) -> web.Response:
        self.encodings.append(request.headers.get("Content-Encoding"))
        self.bodies.append(await request.read())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            # Hold each request a moment so concurrent ones overlap and the bound is visible.
            await asyncio.sleep(0.02)
        finally:
            self.in_flight -= 1
        status = self.script.pop(0) if self.script else 200
        if status == 0:
            request.transport.close()  # type: ignore[union-attr]
            return web.Response(status=500)
        if status != 200:
            headers = {"Retry-After": "0"} if status == 429 else {}
            return web.json_response({"error": f"injected {status}"}, status=status, headers=headers)
        doc = json.loads(self.bodies[-1])
        n = len(doc["inputs"]["ftm"]) if "inputs" in doc else len(doc["instances"])
        if self.reply_text is not None:
            return web.Response(text=self.reply_text, content_type="application/json")
        return web.json_response({"outputs": [[0.25]] * n})


async def serve(fake: FaultyServing) -> TestServer:
    server = TestServer(fake.app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


@pytest.mark.parametrize("script", [[503, 503], [429], [504, 0]])
async def test_transient_failures_are_retried(script: list[int], metrics: Metrics) -> None:
    fake = FaultyServing(script)
    server = await serve(fake)
    try:
        async with TFServingClient.open(
            cfg(str(server.make_url("")), max_attempts=5), "score_beater", metrics=metrics
        ) as c:
            got = await c.predict(random_columns(3), version=1)
        assert got.tolist() == [0.25, 0.25, 0.25]
        assert len(fake.bodies) == len(script) + 1
        assert sample(metrics, "scorebeater_tfserving_retries_total") == len(script)
    finally:
        await server.close()


async def test_retries_are_bounded(metrics: Metrics) -> None:
    fake = FaultyServing([503] * 10)
    server = await serve(fake)
    try:
        async with TFServingClient.open(
            cfg(str(server.make_url("")), max_attempts=3), "score_beater", metrics=metrics
        ) as c:
            with pytest.raises(ModelUnavailable) as exc:
                await c.predict(random_columns(3), version=1)
        assert exc.value.status == 503
        assert exc.value.transient
        assert len(fake.bodies) == 3
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadModelRequest), (404, ModelNotFound), (500, TFServingError), (501, TFServingError)],
)
async def test_other_errors_are_never_retried(status: int, error: type[Exception], metrics: Metrics) -> None:
    fake = FaultyServing([status])
    server = await serve(fake)
    try:
        async with TFServingClient.open(
            cfg(str(server.make_url("")), max_attempts=5), "score_beater", metrics=metrics
        ) as c:
            with pytest.raises(error) as exc:
                await c.predict(random_columns(3), version=1)
        assert type(exc.value) is error
        assert f"injected {status}" in str(exc.value)
        assert len(fake.bodies) == 1
        assert sample(metrics, "scorebeater_tfserving_retries_total") == 0
        assert sample(metrics, "scorebeater_tfserving_requests_total", api="predict", code=str(status)) == 1
    finally:
        await server.close()


async def test_unreachable_server_is_unavailable(unused_tcp_port: int, metrics: Metrics) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with TFServingClient.open(cfg(url, max_attempts=2), "score_beater", metrics=metrics) as client:
        with pytest.raises(ModelUnavailable) as exc:
            await client.status()
    assert exc.value.status is None
    assert sample(metrics, "scorebeater_tfserving_requests_total", api="status", code="0") == 2


async def test_gzip_bodies_and_concurrency_bound() -> None:
    fake = FaultyServing([])
    server = await serve(fake)
    try:
        config = cfg(str(server.make_url("")), gzip=True, max_batch_size=10, max_concurrency=3)
        async with TFServingClient.open(config, "score_beater") as client:
            got = await client.predict(random_columns(95), version=1)
        assert got.shape == (95,)
        assert fake.encodings == ["gzip"] * 10
        # aiohttp decoded each gzip body on arrival, as TF Serving does.
        sizes = sorted(len(json.loads(b)["inputs"]["ftm"]) for b in fake.bodies)
        assert sizes == [5] + [10] * 9
        assert 2 <= fake.max_in_flight <= 3  # bounded; exact overlap depends on scheduling
    finally:
        await server.close()


async def test_non_finite_reply_tokens_are_read() -> None:
    fake = FaultyServing([], reply_text='{\n    "outputs": [[NaN], [0.5], [Infinity]]\n}')
    server = await serve(fake)
    try:
        async with TFServingClient.open(cfg(str(server.make_url(""))), "score_beater") as client:
            got = await client.predict(random_columns(3), version=1)
        assert np.isnan(got[0])
        assert got[1:].tolist() == [0.5, float("inf")]
    finally:
        await server.close()


async def test_reply_of_the_wrong_shape_is_an_error() -> None:
    fake = FaultyServing([], reply_text='{"outputs": [[0.5], [0.5]]}')
    server = await serve(fake)
    try:
        async with TFServingClient.open(cfg(str(server.make_url(""))), "score_beater") as client:
            with pytest.raises(TFServingError, match=r"reply has shape \[2, 1\] for 3 rows"):
                await client.predict(random_columns(3), version=1)
    finally:
        await server.close()


async def test_whole_number_floats_are_sent_as_json_integers() -> None:
    """The same numbers, written shorter: whole columns as integers, the rest untouched."""
    fake = FaultyServing([])
    server = await serve(fake)
    columns = {name: np.arange(4, dtype=np.float64) * 3 for name in INPUT_NAMES}
    columns["ftm"] = np.array([0.5, 1.0, 2.0, 3.0])  # not all whole: stays float
    columns["fta"] = np.array([-0.0, 1.0, 2.0, 3.0])  # -0.0 would lose its sign as an integer
    columns["age"] = np.array([2.0**54, 1.0, 2.0, 3.0])  # beyond 2**53: not exact as a double
    try:
        async with TFServingClient.open(cfg(str(server.make_url(""))), "score_beater") as client:
            await client.predict(columns, version=1)
        (body,) = fake.bodies
        sent = json.loads(body)["inputs"]
        assert body.count(b'"prev_ftm":[0,3,6,9]') == 1
        assert all(type(v) is int for v in sent["team_games"])
        assert sent["ftm"] == [0.5, 1.0, 2.0, 3.0]
        assert all(type(v) is float for v in sent["fta"])
        assert str(sent["fta"][0]) == "-0.0"
        assert all(type(v) is float for v in sent["age"])
        for name, column in columns.items():
            np.testing.assert_array_equal(np.asarray(sent[name], dtype=np.float32), column.astype(np.float32))
    finally:
        await server.close()


async def test_the_client_exists_only_inside_its_block(standin: ModelServer) -> None:
    """open() builds the session on entry and closes it on exit: there is no half-open client."""
    async with TFServingClient.open(cfg(standin.url), "score_beater") as client:
        assert await client.pin_version(None) == 2
    with pytest.raises(RuntimeError, match="Session is closed"):
        await client.status()
