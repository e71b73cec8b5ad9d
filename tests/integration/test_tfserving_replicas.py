"""TFServingClient over several replicas: balancing, ejection, fail-over and consistent pins.

Two real stand-ins show that predictions spread over replicas and stay exact. Small aiohttp
look-alikes on loopback (:class:`Replica`) answer status, metadata and predict as TF Serving
does, with scripted versions, labels, delays and failures, for the balancer's decisions.
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
from structlog.testing import capture_logs

from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import TFServingConfig
from scorebeater.errors import BadModelRequest, ModelNotFound, ModelUnavailable
from scorebeater.metrics import Metrics
from scorebeater.modelserver.app import serve_models
from scorebeater.testing.savedmodel import ModelCache, cached_models, in_process, publish, random_columns
from tests.integration.league import MODEL_CACHE
from tests.integration.test_tfserving_client import METADATA


@pytest.fixture(name="model_cache", scope="session")
def _model_cache() -> ModelCache:
    return cached_models(MODEL_CACHE)


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def cfg(*urls: str, **kw: Any) -> TFServingConfig:
    base = TFServingConfig(base_url=tuple(urls), max_batch_size=10, max_attempts=3, eject_cooldown_s=60.0)
    return dataclasses.replace(base, **kw)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class Replica:
    """A TF Serving look-alike for model ``score_beater``: status from :attr:`versions`, label
    metadata from :attr:`labels`, predicts answered 0.25 per row after :attr:`delay_s`, or with
    the next status of :attr:`script` (0: the connection dropped)."""

    def __init__(self, versions: dict[int, str] | None = None, **labels: int) -> None:
        self.versions = versions if versions is not None else {1: "AVAILABLE"}
        self.labels = labels
        self.script: list[int] = []
        self.delay_s = 0.0
        self.predicts = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/v1/models/score_beater")
        if request.method == "GET" and path == "":
            return web.json_response(
                {
                    "model_version_status": [
                        {"version": str(v), "state": s, "status": {"error_code": "OK", "error_message": ""}}
                        for v, s in sorted(self.versions.items(), reverse=True)
                    ]
                }
            )
        if request.method == "GET" and path.endswith("/metadata"):
            if path.startswith("/labels/"):
                label = path.split("/")[2]
                if label not in self.labels:
                    return web.json_response(
                        {"error": f"Unrecognized servable version label: {label}"}, status=400
                    )
                version = self.labels[label]
            else:
                version = int(path.split("/")[2])
            if self.versions.get(version) != "AVAILABLE":
                return web.json_response({"error": "Servable not found"}, status=404)
            doc = json.loads(json.dumps(METADATA))
            doc["model_spec"]["version"] = str(version)
            return web.json_response(doc)
        if request.method == "POST" and path.endswith(":predict"):
            return await self.predict(request, int(path.removesuffix(":predict").split("/")[2]))
        return web.json_response({"error": f"Malformed request: {request.method} {path}"}, status=400)

    async def predict(self, request: web.Request, version: int) -> web.StreamResponse:
        body = await request.read()
        self.predicts += 1
        await asyncio.sleep(self.delay_s)
        status = self.script.pop(0) if self.script else 200
        if status == 0:
            request.transport.close()  # type: ignore[union-attr]
            return web.Response(status=500)
        if self.versions.get(version) != "AVAILABLE":
            status = 404
        if status != 200:
            return web.json_response({"error": f"injected {status}"}, status=status)
        return web.json_response({"outputs": [[0.25]] * len(json.loads(body)["inputs"]["ftm"])})


@pytest.fixture(name="replicas")
async def _replicas() -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for replica in made:
        if replica.server is not None:
            await replica.server.close()


async def start(replicas: list[Replica], replica: Replica, port: int = 0) -> Replica:
    replica.server = TestServer(replica.app, host="127.0.0.1", port=port)
    await replica.server.start_server()
    replicas.append(replica)
    return replica


# --- balancing and fail-over -----------------------------------------------------------------


async def test_predictions_spread_over_two_stand_ins_and_stay_exact(
    model_cache: ModelCache, tmp_path: Path, metrics: Metrics
) -> None:
    for name in ("a", "b"):
        publish(model_cache.score(1), tmp_path / name / "score_beater", 1)
    columns = random_columns(200, seed=3)
    async with (
        serve_models(base_path=tmp_path / "a" / "score_beater", port=0, poll_interval_s=60) as a,
        serve_models(base_path=tmp_path / "b" / "score_beater", port=0, poll_interval_s=60) as b,
        TFServingClient.open(
            cfg(a.url, b.url, max_batch_size=20, max_concurrency=4), "score_beater", metrics=metrics
        ) as client,
    ):
        version = await client.pin_version(None)
        got = await client.predict(columns, version=version)
    np.testing.assert_allclose(got, in_process(model_cache.score(1), columns)[:, 0], rtol=1e-6, atol=1e-7)
    per_replica = [
        sample(metrics, "scorebeater_tfserving_replica_requests_total", replica=u) for u in (a.url, b.url)
    ]
    # 10 predicts, 1 metadata read, 2 status reads (the pin asks both).
    assert sum(n or 0 for n in per_replica) == 13
    assert all((n or 0) >= 4 for n in per_replica), per_replica
    assert sample(metrics, "scorebeater_tfserving_healthy_replicas") == 2


async def test_a_slow_replica_gets_fewer_requests(replicas: list[Replica]) -> None:
    slow = await start(replicas, Replica())
    fast = await start(replicas, Replica())
    slow.delay_s = 0.5
    async with TFServingClient.open(cfg(slow.url, fast.url, max_concurrency=4), "score_beater") as client:
        await client.predict(random_columns(200), version=1)
    assert slow.predicts + fast.predicts == 20
    # Least outstanding: the slow one holds its first requests while the fast one drains the rest.
    assert slow.predicts <= 4 < fast.predicts


async def test_a_dead_replica_is_ejected_the_predict_retried_elsewhere_then_probed_back(
    replicas: list[Replica], unused_tcp_port: int, metrics: Metrics
) -> None:
    """Scenario: one replica refuses connections; predicts succeed on the other; the dead one
    is ejected; once it listens again and its cool-down is over, a probe restores it."""
    live = await start(replicas, Replica())
    dead_url = f"http://127.0.0.1:{unused_tcp_port}"
    config = cfg(dead_url, live.url, eject_cooldown_s=0.3)
    async with TFServingClient.open(config, "score_beater", metrics=metrics) as client:
        with capture_logs() as logs:
            got = await client.predict(random_columns(30), version=1)
        assert got.tolist() == [0.25] * 30
        assert [e["replica"] for e in logs if e["event"] == "tfserving.replica_ejected"] == [dead_url]
        assert sample(metrics, "scorebeater_tfserving_replica_ejections_total", replica=dead_url) == 1
        assert (sample(metrics, "scorebeater_tfserving_replica_errors_total", replica=dead_url) or 0) >= 1
        assert sample(metrics, "scorebeater_tfserving_healthy_replicas") == 1
        assert live.predicts == 3  # every chunk answered there
        revived = await start(replicas, Replica(), port=unused_tcp_port)
        await asyncio.sleep(0.3)  # the cool-down, in real time
        await client.predict(random_columns(5), version=1)  # starts the probe
        for _ in range(100):  # the probe runs in the background: poll its effect
            if len(client.replicas.healthy()) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(client.replicas.healthy()) == 2
        assert sample(metrics, "scorebeater_tfserving_healthy_replicas") == 2
        await client.predict(random_columns(40), version=1)
        assert revived.predicts >= 1


async def test_a_dropped_connection_and_a_503_are_retried_on_the_other_replica(
    replicas: list[Replica], metrics: Metrics
) -> None:
    flaky = await start(replicas, Replica())
    steady = await start(replicas, Replica())
    async with TFServingClient.open(cfg(flaky.url, steady.url), "score_beater", metrics=metrics) as client:
        await client.signature(1)
        # Idle replicas take turns, so one of two single-chunk predicts goes to each first.
        flaky.script = [503]
        for _ in range(2):
            assert (await client.predict(random_columns(5), version=1)).tolist() == [0.25] * 5
        assert (flaky.predicts, steady.predicts) == (1, 2)
        assert len(client.replicas.healthy()) == 2  # a 503 is an answer: the replica is alive
        flaky.script = [0]
        for _ in range(2):
            assert (await client.predict(random_columns(5), version=1)).tolist() == [0.25] * 5
        assert (flaky.predicts, steady.predicts) == (2, 4)
        assert [r.url for r in client.replicas.healthy()] == [steady.url]  # a dropped connection ejects
    assert sample(metrics, "scorebeater_tfserving_retries_total") == 2
    assert sample(metrics, "scorebeater_tfserving_replica_errors_total", replica=flaky.url) == 2


async def test_a_replica_without_the_version_is_ejected_and_the_predict_goes_elsewhere(
    replicas: list[Replica],
) -> None:
    behind = await start(replicas, Replica({1: "AVAILABLE"}))
    ahead = await start(replicas, Replica({1: "AVAILABLE", 2: "AVAILABLE"}))
    async with TFServingClient.open(cfg(behind.url, ahead.url), "score_beater") as client:
        await client.signature(2)  # read from the replica that has it
        behind.script = []
        got = await client.predict(random_columns(20), version=2)
        assert got.tolist() == [0.25] * 20
        assert client.replicas.replicas[0].ejected
        assert ahead.predicts == 2


async def test_a_version_no_replica_has_is_not_found_and_ejects_nobody(replicas: list[Replica]) -> None:
    a = await start(replicas, Replica())
    b = await start(replicas, Replica())
    async with TFServingClient.open(cfg(a.url, b.url), "score_beater") as client:
        with pytest.raises(ModelNotFound):
            await client.predict(random_columns(3), version=9)
        assert client.replicas.healthy() == list(client.replicas.replicas)


async def test_one_replica_keeps_the_single_url_behaviour(replicas: list[Replica]) -> None:
    only = await start(replicas, Replica())
    only.script = [503, 503, 503]
    async with TFServingClient.open(cfg(only.url), "score_beater") as client:
        with pytest.raises(ModelUnavailable):
            await client.predict(random_columns(3), version=1)
        assert not client.replicas.replicas[0].ejected
    assert only.predicts == 3


# --- consistent pins -------------------------------------------------------------------------


async def test_pin_takes_the_highest_version_every_replica_has(replicas: list[Replica]) -> None:
    a = await start(replicas, Replica({2: "AVAILABLE", 1: "AVAILABLE"}))
    b = await start(replicas, Replica({2: "LOADING", 1: "AVAILABLE"}))
    async with TFServingClient.open(cfg(a.url, b.url), "score_beater") as client:
        assert await client.pin_version(None) == 1
        assert [(s.version, s.state) for s in await client.status()] == [(2, "LOADING"), (1, "AVAILABLE")]
        b.versions[2] = "AVAILABLE"
        assert await client.pin_version(None) == 2


async def test_pin_waits_for_a_lagging_replica(replicas: list[Replica]) -> None:
    """Scenario: the new version is on one replica only, the old one already unloaded there;
    the pin waits and logs, the other replica loads it, the pin takes it; nobody is ejected."""
    a = await start(replicas, Replica({2: "AVAILABLE", 1: "END"}))
    b = await start(replicas, Replica({1: "AVAILABLE", 2: "LOADING"}))
    asyncio.get_running_loop().call_later(0.3, b.versions.update, {2: "AVAILABLE", 1: "UNLOADING"})
    async with TFServingClient.open(cfg(a.url, b.url, pin_wait_s=10.0), "score_beater") as client:
        with capture_logs() as logs:
            assert await client.pin_version(None) == 2
        events = [e["event"] for e in logs if e["event"].startswith("tfserving.replicas_")]
        assert events == ["tfserving.replicas_disagree", "tfserving.replicas_agree"]
        disagree = next(e for e in logs if e["event"] == "tfserving.replicas_disagree")
        assert disagree["versions"] == {a.url: [2], b.url: [1]}
        assert client.replicas.healthy() == list(client.replicas.replicas)


async def test_after_the_wait_the_pin_takes_the_most_served_version_and_ejects_the_rest(
    replicas: list[Replica], metrics: Metrics
) -> None:
    a = await start(replicas, Replica({2: "AVAILABLE"}))
    stuck = await start(replicas, Replica({1: "AVAILABLE", 2: "END"}))
    c = await start(replicas, Replica({2: "AVAILABLE"}))
    config = cfg(a.url, stuck.url, c.url, pin_wait_s=0.3)
    async with TFServingClient.open(config, "score_beater", metrics=metrics) as client:
        with capture_logs() as logs:
            assert await client.pin_version(None) == 2
        lagging = next(e for e in logs if e["event"] == "tfserving.replicas_lagging")
        assert lagging["lagging"] == [stuck.url]
        assert [r.url for r in client.replicas.healthy()] == [a.url, c.url]
        await client.predict(random_columns(30), version=2)
        assert stuck.predicts == 0
    assert sample(metrics, "scorebeater_tfserving_healthy_replicas") == 2


async def test_a_label_must_name_the_same_version_on_every_replica(replicas: list[Replica]) -> None:
    both = {1: "AVAILABLE", 2: "AVAILABLE"}
    a = await start(replicas, Replica(dict(both), stable=2))
    b = await start(replicas, Replica(dict(both), stable=1))
    asyncio.get_running_loop().call_later(0.3, b.labels.update, {"stable": 2})
    async with TFServingClient.open(cfg(a.url, b.url, pin_wait_s=10.0), "score_beater") as client:
        with capture_logs() as logs:
            assert await client.pin_version("stable") == 2
        assert any(e["event"] == "tfserving.replicas_disagree" for e in logs)
        # A label no replica knows is unassigned: the cause stays a 400 (the shadow stage skips).
        with pytest.raises(ModelUnavailable, match="label 'canary'") as info:
            await client.pin_version("canary")
        assert isinstance(info.value.__cause__, BadModelRequest)


async def test_a_replica_with_no_available_version_fails_its_health_check(
    replicas: list[Replica], unused_tcp_port: int
) -> None:
    loading = await start(replicas, Replica({1: "LOADING"}))
    ready = await start(replicas, Replica({1: "AVAILABLE"}))
    dead_url = f"http://127.0.0.1:{unused_tcp_port}"
    async with TFServingClient.open(cfg(loading.url, ready.url, dead_url), "score_beater") as client:
        assert await client.pin_version(None) == 1
        assert [r.url for r in client.replicas.healthy()] == [ready.url]
        assert [(s.version, s.state) for s in await client.status()] == [(1, "AVAILABLE")]
    # With no replica serving anything, the pin fails at once, as with one URL.
    ready.versions[1] = "LOADING"
    async with TFServingClient.open(cfg(loading.url, ready.url), "score_beater") as client:
        with pytest.raises(ModelUnavailable, match=r"no AVAILABLE version of score_beater \(1:LOADING\)"):
            await client.pin_version(None)
