"""The shadow challenger on real parts: the replay Score API over a small synthetic league, the
TF Serving stand-in serving two versions with labels from a ``models.config`` (``stable`` -> 1,
``canary`` -> 2), local storage, and the daemon's own stages driven one run at a time.

The challenger scores exactly the rows the champion scored, stored with role ``challenger``
and served only when asked for; an outage of the challenger (its version's requests hang,
then fail, at the HTTP boundary) neither delays nor fails the champion's predictions, and the
shadow catches up afterwards; validation compares the two versions on the same labelled rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from aiohttp import web

from scorebeater import quality
from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import Daemon, open_daemon
from scorebeater.errors import ModelUnavailable
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.stages.validation import disagreement
from scorebeater.testing.savedmodel import cached_models, publish
from scorebeater.testing.score_api import RunningReplay
from tests.integration.daemon_support import BACKENDS, storage_config
from tests.integration.league import MODEL_CACHE, catalog_fixture, replay_fixture  # noqa: F401 - fixtures

SEASON = 2014
KEY = ["player_id", "season", "as_of_seq"]


def models_config(path: Path, labels: dict[str, int]) -> Path:
    """A models.config serving every published version, with ``labels``."""
    pairs = " ".join(f"version_labels {{ key: '{k}' value: {v} }}" for k, v in labels.items())
    path.write_text(
        "model_config_list { config { name: 'score_beater' base_path: '/models/score_beater' "
        f"model_platform: 'tensorflow' model_version_policy {{ all {{}} }} {pairs} }} }}"
    )
    return path


@asynccontextmanager
async def two_versions(tmp_path: Path, labels: dict[str, int]) -> AsyncIterator[str]:
    """The stand-in serving versions 1 and 2 (two seeds: they disagree) with ``labels``."""
    cache = cached_models(MODEL_CACHE)
    base = tmp_path / "model" / "score_beater"
    publish(cache.score(1), base, 1)
    publish(cache.score(2), base, 2)
    config = models_config(tmp_path / "models.config", labels)
    async with serve_models(
        base_path=base, host="127.0.0.1", port=0, poll_interval_s=60, models_config=config
    ) as server:
        yield server.url


class VersionFault:
    """A reverse proxy in front of the stand-in whose requests naming ``/versions/<N>`` can be
    held (until released) and then failed with 503: an outage of one version at the HTTP
    boundary, every other request passed through."""

    def __init__(self, upstream: str, version: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.marker = f"/versions/{version}"
        self.failing = False
        self.release = asyncio.Event()
        self.held = 0
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.failing and self.marker in request.path:
            self.held += 1
            await self.release.wait()
            return web.json_response({"error": "injected outage"}, status=503)
        body = await request.read()
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                self.upstream + request.path_qs,
                data=body,
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            ) as resp,
        ):
            payload = await resp.read()
            return web.Response(body=payload, status=resp.status, content_type="application/json")

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[VersionFault]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self.release.set()
            await runner.cleanup()


def config(
    replay: RunningReplay, model_url: str, tmp_path: Path, *, storage: StorageConfig | None = None
) -> Config:
    return Config(
        score_api=replay.client_config(max_attempts=1, retry_budget_s=2.0),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(
            base_url=model_url,
            version_label="stable",
            challenger_label="canary",
            max_attempts=1,
            retry_budget_s=2.0,
        ),
        storage=storage or StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5, shutdown_grace_s=5.0),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


def day(catalog: ReplayCatalog, n: int) -> dt.datetime:
    days = sorted({e.game.date for e in catalog.seasons[SEASON].games if e.game.season_type == "regular"})
    return timeline.final_at(days[n - 1]) + dt.timedelta(minutes=1)


def season_over(catalog: ReplayCatalog) -> dt.datetime:
    last = catalog.seasons[SEASON].last_regular_date
    assert last is not None
    return timeline.final_at(last) + dt.timedelta(hours=1)


async def predictions(daemon: Daemon, role: str | None) -> pa.Table:
    tables = [t async for t in daemon.ctx.storage.read_predictions(role=role)]
    return pa.concat_tables(tables) if tables else pa.table({k: pa.array([], pa.int64()) for k in KEY})


def keys(table: pa.Table) -> set[tuple[int, int, int]]:
    return {(r["player_id"], r["season"], r["as_of_seq"]) for r in table.select(KEY).to_pylist()}


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.ctx.metrics.registry.get_sample_value(name, labels)


async def step(daemon: Daemon, *stages: str) -> list[dict[str, Any]]:
    return [await daemon.runners[s].run_once() for s in stages]


async def test_the_challenger_scores_the_same_rows_and_is_served_only_when_asked(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    async with (
        two_versions(tmp_path, {"stable": 1, "canary": 2}) as url,
        open_daemon(config(replay, url, tmp_path)) as daemon,
    ):
        replay.clock.set(day(catalog, 2))
        _, champion_run, shadow_run = await step(daemon, "features", "predictions", "shadow")
        assert champion_run["model_version"] == 1
        assert shadow_run["model_version"] == 2
        champion = await predictions(daemon, "champion")
        challenger = await predictions(daemon, "challenger")
        assert champion.num_rows > 0
        assert set(champion.column("model_version").to_pylist()) == {1}
        assert set(challenger.column("model_version").to_pylist()) == {2}
        assert set(challenger.column("role").to_pylist()) == {"challenger"}
        assert keys(challenger) == keys(champion)
        assert daemon.handoff.shadow_pending_rows == 0
        # The next game day: the queue (not a reconcile) brings exactly the new rows.
        replay.clock.set(day(catalog, 3))
        _, next_run = await step(daemon, "features", "predictions")
        queued = daemon.handoff.shadow_pending_rows
        assert queued > 0
        again = await daemon.runners["shadow"].run_once()
        assert again["rows"] == queued
        assert "recovered_rows" not in again
        assert keys(await predictions(daemon, "challenger")) == keys(await predictions(daemon, "champion"))

        assert (
            sample(daemon, "scorebeater_shadow_predictions_total")
            == (await predictions(daemon, "challenger")).num_rows
        )
        assert sample(daemon, "scorebeater_model_role_version", role="champion") == 1
        assert sample(daemon, "scorebeater_model_role_version", role="challenger") == 2
        # The served model's gauges stay the champion's.
        assert sample(daemon, "scorebeater_model_info", model_name="score_beater", model_version="1") == 1
        assert sample(daemon, "scorebeater_model_info", model_name="score_beater", model_version="2") is None
        # predictions_total counts the champion's stores only (what its runs reported).
        champion_stored = sum(
            int(run["diff_rows"]) + int(run.get("recovered_rows", 0)) for run in (champion_run, next_run)
        )
        assert sample(daemon, "scorebeater_predictions_total", mode="diff") == champion_stored

        player = int(champion.column("player_id")[0].as_py())
        assert daemon.admin_url is not None
        async with aiohttp.ClientSession(base_url=daemon.admin_url) as http:
            path = f"/v1/predictions/{player}?season={SEASON}"
            async with http.get(path) as resp:
                served = await resp.json()
                assert resp.status == 200, served
            assert (served["model_version"], served["role"]) == (1, "champion")
            async with http.get(path + "&role=champion&history=true") as resp:
                history = await resp.json()
            assert {p["model_version"] for p in history["history"]} == {1}
            async with http.get(path + "&role=challenger") as resp:
                shadow = await resp.json()
            assert (shadow["model_version"], shadow["role"]) == (2, "challenger")
            assert shadow["as_of_seq"] == served["as_of_seq"]
            async with http.get(path + "&role=canary") as resp:
                error = await resp.json()
                assert resp.status == 400
            assert error["error"]["param"] == "role"
            async with http.get("/v1/status") as resp:
                status = await resp.json()
        challenger_status = status["challenger"]
        assert challenger_status["label"] == "canary"
        assert challenger_status["pinned_model_version"] == 2
        assert challenger_status["champion_model_version"] == 1
        assert challenger_status["skipped"] is None
        assert challenger_status["pending_rows"] == 0
        assert status["handoff"]["shadow"]["enabled"] is True


async def test_a_challenger_outage_never_delays_the_champion_and_the_shadow_catches_up(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    async with (
        two_versions(tmp_path, {"stable": 1, "canary": 2}) as upstream,
        VersionFault(upstream, 2).serving() as fault,
    ):
        cfg = config(replay, fault.url, tmp_path)
        # A long timeout: a held challenger request stays in flight for the whole test.
        cfg = dataclasses.replace(cfg, tfserving=dataclasses.replace(cfg.tfserving, timeout_s=120.0))
        async with open_daemon(cfg) as daemon:
            fault.failing = True
            replay.clock.set(day(catalog, 2))
            await step(daemon, "features", "predictions")
            shadow = asyncio.create_task(daemon.runners["shadow"].run_once())
            async with asyncio.timeout(30):
                while not fault.held:  # the challenger's request is hanging at the boundary
                    await asyncio.sleep(0.02)
            # The champion goes on, on time, while the challenger hangs.
            replay.clock.set(day(catalog, 3))
            async with asyncio.timeout(20):
                _, run = await step(daemon, "features", "predictions")
            assert run["diff_rows"] > 0
            assert not shadow.done()
            fault.release.set()  # ...then the challenger's requests fail
            with pytest.raises(ModelUnavailable):
                await shadow
            assert sample(daemon, "scorebeater_shadow_failures_total", reason="unavailable") == 1
            assert sample(daemon, "scorebeater_model_available") == 1  # the served model is fine
            assert (await predictions(daemon, "challenger")).num_rows == 0
            assert daemon.runners["predictions"].state.failures == 0
            champion = keys(await predictions(daemon, "champion"))
            # What the failed run took is back in the queue; the next run (the runner's retry
            # after its backoff) scores it and what came since.
            assert daemon.handoff.shadow_pending_rows > 0
            fault.failing = False
            result = await daemon.runners["shadow"].run_once()
            assert result["model_version"] == 2
            assert keys(await predictions(daemon, "challenger")) == champion


async def test_an_unassigned_or_champion_label_skips_the_shadow_and_it_resumes_with_a_reconcile(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    async with (
        two_versions(tmp_path, {"stable": 1}) as url,  # no canary label yet
        open_daemon(config(replay, url, tmp_path)) as daemon,
    ):
        replay.clock.set(day(catalog, 2))
        await step(daemon, "features", "predictions")
        assert (await daemon.runners["shadow"].run_once()) == {"skipped": "label_unassigned"}
        assert sample(daemon, "scorebeater_model_role_version", role="challenger") == 0
        assert daemon.handoff.shadow_pending_rows == 0  # dropped: a reconcile catches up
        assert daemon.handoff.shadow_status()["reconcile_due"] is True
        assert daemon.runners["shadow"].state.failures == 0  # a skip, not a failure

    # The same store, the canary label on the champion's version: still nothing to shadow.
    async with (
        two_versions(tmp_path / "again", {"stable": 1, "canary": 1}) as url,
        open_daemon(config(replay, url, tmp_path)) as daemon,
    ):
        await step(daemon, "predictions")
        assert (await daemon.runners["shadow"].run_once()) == {"skipped": "same_as_champion"}
        assert (await predictions(daemon, "challenger")).num_rows == 0

    # The label on version 2: the new daemon's reconcile scores every row the champion has.
    async with (
        two_versions(tmp_path / "third", {"stable": 1, "canary": 2}) as url,
        open_daemon(config(replay, url, tmp_path)) as daemon,
    ):
        result = await daemon.runners["shadow"].run_once()
        champion = keys(await predictions(daemon, "champion"))
        assert result["recovered_rows"] == len(champion) > 0
        assert keys(await predictions(daemon, "challenger")) == champion


@pytest.mark.parametrize("backend", BACKENDS)
async def test_validation_compares_both_versions_on_the_same_labelled_rows(
    backend: str,
    replay: RunningReplay,
    catalog: ReplayCatalog,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = storage_config(backend, request, tmp_path, monkeypatch)
    async with (
        two_versions(tmp_path, {"stable": 1, "canary": 2}) as url,
        open_daemon(config(replay, url, tmp_path, storage=storage)) as daemon,
    ):
        replay.clock.set(season_over(catalog))
        await step(daemon, "features", "predictions", "shadow", "validation")
        result = await daemon.runners["validation"].run_once()
        assert result["final_outcomes"] == 0  # stored by the first run
        shadow = result["shadow"]
        assert isinstance(shadow, dict)
        assert (shadow["champion_version"], shadow["challenger_version"]) == (1, 2)

        # The expected pairs, from storage: both roles' rows of each feature row with a final label.
        every = await predictions(daemon, None)
        champion = every.filter(pc.equal(every.column("role"), "champion")).select([*KEY, "probability"])
        challenger = every.filter(pc.equal(every.column("role"), "challenger")).select([*KEY, "probability"])
        pairs = champion.rename_columns([*KEY, "a"]).join(
            challenger.rename_columns([*KEY, "b"]), keys=KEY, join_type="inner"
        )
        outcomes = pa.concat_tables([t async for t in daemon.ctx.storage.read_outcomes(season=SEASON)])
        final = outcomes.filter(pc.equal(outcomes.column("resolution"), "final"))
        labelled = pairs.join(
            final.select(["player_id", "season", "beat"]), keys=["player_id", "season"], join_type="inner"
        )
        rows = labelled.num_rows
        assert shadow["labelled_rows"] == rows > 0
        y = labelled.column("beat").to_numpy(zero_copy_only=False)
        probs = {"champion": labelled.column("a").to_numpy(), "challenger": labelled.column("b").to_numpy()}
        want = disagreement(probs["champion"], probs["challenger"])
        assert want.mean_abs_diff > 0  # two seeds: two different models

        def gauge(name: str, **labels: str) -> float | None:
            return sample(daemon, f"scorebeater_shadow_{name}", **labels)

        for role, version in (("champion", "1"), ("challenger", "2")):
            expected = quality.summary(y, probs[role])  # both on exactly these rows
            assert gauge("eval_rows", model_version=version, role=role, bucket="all") == rows
            for metric in ("brier", "log_loss", "ece", "accuracy", "roc_auc"):
                got = gauge(f"eval_{metric}", model_version=version, role=role, bucket="all")
                if math.isnan(expected[metric]):  # a single class (AUC): left unset
                    assert got is None
                else:
                    assert got == pytest.approx(expected[metric])
        labelled_rows = {"model_version": "2", "role": "challenger", "rows": "labelled"}
        assert gauge("flip_ratio", **labelled_rows) == pytest.approx(want.flip_rate)
        assert gauge("abs_diff_mean", **labelled_rows) == pytest.approx(want.mean_abs_diff)
        latest_rows = {"model_version": "2", "role": "challenger", "rows": "latest"}
        assert gauge("flip_ratio", **latest_rows) is not None
        assert gauge("abs_diff_mean", **latest_rows) is not None
        auc = [quality.roc_auc(y, probs[role]) for role in ("champion", "challenger")]
        gain = gauge("auc_gain", bucket="all")
        if math.isnan(auc[1] - auc[0]):
            assert gain is None
        else:
            assert gain == pytest.approx(auc[1] - auc[0])
        # The realized (champion) gauges stay the champion's: version 2 never appears there.
        assert sample(daemon, "scorebeater_eval_rows", model_version="2", bucket="all") is None
        assert sample(daemon, "scorebeater_eval_rows", model_version="1", bucket="all") is not None

        comparison = daemon.handoff.latest_comparison()
        assert comparison is not None
        assert (comparison.champion_version, comparison.challenger_version) == (1, 2)
        assert comparison.labelled_rows == rows
        assert comparison.flip_rate == pytest.approx(want.flip_rate)
        assert comparison.mean_abs_diff == pytest.approx(want.mean_abs_diff)
        assert comparison.challenger["brier"] == pytest.approx(quality.brier(y, probs["challenger"]))


async def test_without_a_challenger_label_nothing_is_queued_or_scored(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    async with two_versions(tmp_path, {"stable": 1, "canary": 2}) as url:
        cfg = config(replay, url, tmp_path)
        cfg = dataclasses.replace(cfg, tfserving=dataclasses.replace(cfg.tfserving, challenger_label=""))
        async with open_daemon(cfg) as daemon:
            replay.clock.set(day(catalog, 2))
            await step(daemon, "features", "predictions")
            assert daemon.handoff.shadow_status()["enabled"] is False
            assert daemon.handoff.shadow_pending_rows == 0
            assert (await daemon.runners["shadow"].run_once()) == {"skipped": "off"}
            assert (await predictions(daemon, "challenger")).num_rows == 0
            assert sample(daemon, "scorebeater_model_role_version", role="challenger") == 0
            assert daemon.runners["shadow"].status()["watermark"]["label"] is None
