"""Promotion on real parts: the TF Serving stand-in serving model/score_beater 1 and 2 from a
models.config in a temporary directory, local storage, the admin API and the CLI.

- ``Promoter`` moves ``stable`` and the stand-in's label follows at its next poll; an unknown
  or not-AVAILABLE version is refused and the file left untouched;
- ``scorebeater promote`` end to end (a child process): exit 0 with the record as JSON, exit 2
  when refused, the record stored;
- ``GET /v1/models`` and ``POST /v1/models/promote`` (token rules, 400/409) answer what their
  OpenAPI schemas say;
- the promotion stage promotes the challenger of a fabricated comparison when the policy
  passes, once, and never with ``auto`` off.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from openapi_schema_validator import OAS30Validator
from prometheus_client import CollectorRegistry

from scorebeater.admin.app import AdminState, create_app
from scorebeater.clients.tfserving import TFServingClient
from scorebeater.clients.tfserving_codec import VersionStatus
from scorebeater.config import Config, LocalStorageConfig, Secret, StorageConfig, TFServingConfig
from scorebeater.errors import Fenced
from scorebeater.metrics import Metrics
from scorebeater.modelserver.app import serve_models
from scorebeater.promotion.labels import read_labels
from scorebeater.promotion.promoter import Promoter, PromotionRefused
from scorebeater.promotion.records import PromotionLog
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff, ShadowComparison
from scorebeater.stages.promotion import PromotionStage
from scorebeater.storage import open_storage
from scorebeater.storage.base import Storage

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.2
TOKEN = "promote-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Served:
    cfg: Config
    config_file: Path
    storage: Storage
    model: TFServingClient
    metrics: Metrics

    def promoter(self) -> Promoter:
        return Promoter(self.cfg, self.model, PromotionLog(self.storage), metrics=self.metrics)

    def ctx(self) -> StageContext:
        return StageContext(
            cfg=self.cfg,
            storage=self.storage,
            scores=cast("Any", None),
            model=self.model,
            metrics=self.metrics,
            clock=SystemClock(),
        )

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def _config(tmp_path: Path, url: str, config_file: Path, **promotion: Any) -> Config:
    cfg = Config()
    return dataclasses.replace(
        cfg,
        tfserving=dataclasses.replace(
            cfg.tfserving, base_url=url, models_config=config_file, version_label="stable"
        ),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        promotion=dataclasses.replace(cfg.promotion, **promotion),
    )


@pytest.fixture(name="served")
async def _served(tmp_path: Path) -> AsyncIterator[Served]:
    config_file = tmp_path / "tfserving" / "models.config"
    config_file.parent.mkdir()
    config_file.write_text((REPO / "tfserving/models.config").read_text())  # stable -> 1, latest 2
    async with serve_models(
        base_path=REPO / "model/score_beater", models_config=config_file, port=0, poll_interval_s=POLL_S
    ) as server:
        cfg = _config(tmp_path, server.url, config_file, auto=True, min_labelled_rows=100)
        async with (
            open_storage(cfg.storage) as storage,
            TFServingClient.open(cfg.tfserving, cfg.model.name) as model,
        ):
            yield Served(cfg, config_file, storage, model, Metrics(CollectorRegistry()))


async def _served_label(model: TFServingClient, label: str, want: int, timeout_s: float = 10.0) -> int:
    """The version the stand-in serves ``label`` as, once it is ``want`` (or at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        version = (await model.metadata(label=label)).version
        if version == want or time.monotonic() > deadline:
            return version
        await asyncio.sleep(POLL_S / 2)


def _comparison(challenger: int = 2, *, gain: float = 0.01, rows: int = 500) -> ShadowComparison:
    return ShadowComparison(
        champion_version=1,
        challenger_version=challenger,
        labelled_rows=rows,
        champion={"roc_auc": 0.80, "ece": 0.03, "brier": 0.20, "log_loss": 0.6, "accuracy": 0.7},
        challenger={"roc_auc": 0.80 + gain, "ece": 0.02, "brier": 0.19, "log_loss": 0.58, "accuracy": 0.72},
        flip_rate=0.04,
        mean_abs_diff=0.02,
        computed_at=time.time(),
    )


# --- Promoter against the stand-in ------------------------------------------------------------


async def test_promote_moves_stable_and_the_stand_in_follows(served: Served) -> None:
    assert (await served.model.metadata(label="stable")).version == 1
    before = served.config_file.read_text()
    record = await served.promoter().promote(
        2, by="ops", trigger="operator", reason="beats v1", comparison=_comparison()
    )
    assert (record.label, record.from_version, record.to_version, record.by) == ("stable", 1, 2, "ops")
    assert record.metrics is not None
    assert record.metrics["challenger_version"] == 2
    after = served.config_file.read_text()
    assert after == before.replace("key: 'stable' value: 1", "key: 'stable' value: 2")
    assert await _served_label(served.model, "stable", 2) == 2
    history = await served.promoter().history.records()
    assert [r.to_version for r in history] == [2]
    assert served.sample("scorebeater_promotions_total", trigger="operator", outcome="promoted") == 1
    assert served.sample("scorebeater_model_label_version", label="stable") == 2
    assert (served.sample("scorebeater_last_promotion_timestamp_seconds") or 0) > 0

    # a rollback is a label move too
    await served.promoter().promote(1, by="ops", trigger="operator", reason="rollback")
    assert await _served_label(served.model, "stable", 1) == 1


async def test_a_version_the_server_does_not_serve_is_refused_and_the_file_untouched(served: Served) -> None:
    before = served.config_file.read_bytes()
    promoter = served.promoter()
    with pytest.raises(PromotionRefused, match="has no version 3") as info:
        await promoter.promote(3, by="ops", trigger="operator")
    assert info.value.code == "unknown_version"
    assert served.config_file.read_bytes() == before
    assert await promoter.history.records() == []
    assert served.sample("scorebeater_promotions_total", trigger="operator", outcome="refused") == 1


async def test_a_replica_that_no_longer_leads_leaves_the_label_alone(served: Served) -> None:
    """models.config is outside the store: a fenced promoter learns it lost leadership (a
    fenced write) before it rewrites the file."""
    before = served.config_file.read_bytes()
    async with open_storage(served.cfg.storage) as successor:
        await served.storage.set_fencing_token(1)
        await successor.set_fencing_token(2)  # a newer leader has claimed the store
        with pytest.raises(Fenced):
            await served.promoter().promote(2, by="ops", trigger="operator")
        assert served.config_file.read_bytes() == before
        assert await PromotionLog(successor).records() == []


class LoadingModel:
    """A model server that reports version 2 still LOADING (a real one is AVAILABLE too fast)."""

    async def status(self, version: int | None = None) -> list[VersionStatus]:
        del version
        return [VersionStatus(2, "LOADING"), VersionStatus(1, "AVAILABLE")]


async def test_a_version_that_is_not_available_is_refused(served: Served) -> None:
    before = served.config_file.read_bytes()
    promoter = Promoter(served.cfg, cast("Any", LoadingModel()), PromotionLog(served.storage))
    with pytest.raises(PromotionRefused, match="version 2 is LOADING, not AVAILABLE") as info:
        await promoter.promote(2, by="ops", trigger="operator")
    assert info.value.code == "not_available"
    assert served.config_file.read_bytes() == before


async def test_without_a_models_config_promotion_is_refused(served: Served) -> None:
    cfg = dataclasses.replace(
        served.cfg, tfserving=dataclasses.replace(served.cfg.tfserving, models_config=None)
    )
    with pytest.raises(PromotionRefused, match=r"set \[tfserving\] models_config") as info:
        await Promoter(cfg, served.model, PromotionLog(served.storage)).promote(
            2, by="ops", trigger="operator"
        )
    assert info.value.code == "no_models_config"


# --- the CLI ----------------------------------------------------------------------------------


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scorebeater",
        "--log-level",
        "warning",
        "promote",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_promote_command_end_to_end(served: Served, tmp_path: Path) -> None:
    config = tmp_path / "scorebeater.toml"
    config.write_text(
        f'[model_server]\nenabled = false\n[tfserving]\nbase_url = "{served.cfg.tfserving.base_urls[0]}"\n'
        f'models_config = "{served.config_file}"\n[storage]\nbackend = "local"\n'
        f'[storage.local]\nroot = "{tmp_path / "store"}"\n'
    )
    code, out, err = await _cli("--config", str(config), "--to", "9")
    assert code == 2, err
    assert "promotion refused (unknown_version)" in err
    assert "has no version 9" in err
    assert read_labels(served.config_file, "score_beater") == {"stable": 1}

    code, out, err = await _cli(
        "--config", str(config), "--to", "2", "--by", "alice", "--reason", "canary won"
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["promoted"] is True
    assert (record["label"], record["from_version"], record["to_version"]) == ("stable", 1, 2)
    assert (record["by"], record["trigger"], record["reason"]) == ("alice", "operator", "canary won")
    assert record["metrics"] is None  # no daemon, no comparison
    assert read_labels(served.config_file, "score_beater") == {"stable": 2}
    assert await _served_label(served.model, "stable", 2) == 2
    assert [r.by for r in await PromotionLog(served.storage).records()] == ["alice"]

    code, out, err = await _cli("--config", str(config), "--to", "1", "--label", "st-able")
    assert code == 2
    assert "A-Za-z0-9_" in err


# --- the admin API ----------------------------------------------------------------------------


def _schema(path: str, method: str, status: str) -> dict[str, Any]:
    spec = yaml.safe_load(resources.files("scorebeater.admin").joinpath("openapi.yaml").read_text("utf-8"))
    schemas = spec["components"]["schemas"]

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(copy.deepcopy(schemas[node["$ref"].rsplit("/", 1)[1]]))
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    op = spec["paths"][path][method]
    return cast("dict[str, Any]", inline(op["responses"][status]["content"]["application/json"]["schema"]))


@dataclass
class Admin:
    url: str
    handoff: Handoff
    session: aiohttp.ClientSession


async def _admin(
    served: Served, *, token: str | None = TOKEN, model: TFServingClient | None = None
) -> AsyncIterator[Admin]:
    handoff = Handoff()
    ctx = served.ctx() if model is None else dataclasses.replace(served.ctx(), model=model)
    state = AdminState(
        ctx=ctx,
        handoff=handoff,
        runners={},
        features=cast("Any", None),
        token=Secret(token) if token else None,
        started=asyncio.Event(),
    )
    server = TestServer(create_app(state), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Admin(f"http://127.0.0.1:{server.port}", handoff, session)
    finally:
        await server.close()


@pytest.fixture(name="admin")
async def _admin_fixture(served: Served) -> AsyncIterator[Admin]:
    async for admin in _admin(served):
        yield admin


async def _get_models(admin: Admin) -> dict[str, Any]:
    async with admin.session.get(f"{admin.url}/v1/models") as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    OAS30Validator(_schema("/v1/models", "get", "200")).validate(body)
    return cast("dict[str, Any]", body)


async def test_get_models_shows_versions_labels_roles_metrics_and_history(
    admin: Admin, served: Served
) -> None:
    body = await _get_models(admin)
    assert body["model"] == "score_beater"
    assert body["models_config"] == str(served.config_file)
    assert [(v["version"], v["state"]) for v in body["versions"]] == [(2, "AVAILABLE"), (1, "AVAILABLE")]
    assert body["labels"] == {"stable": 1}
    assert body["roles"] == {"champion": 1, "challenger": None}  # version_label = stable
    assert body["versions"][1]["labels"] == ["stable"]
    assert body["versions"][1]["roles"] == ["champion"]
    assert body["realized"] == {"comparison": None, "validation": None}
    assert body["promotions"] == []
    assert body["errors"] == {"model_server": None, "models_config": None}

    admin.handoff.shadow_compared(_comparison())
    async with admin.session.post(
        f"{admin.url}/v1/models/promote", json={"version": 2, "reason": "shadow won"}, headers=AUTH
    ) as resp:
        assert resp.status == 200, await resp.text()
        promoted = await resp.json()
    OAS30Validator(_schema("/v1/models/promote", "post", "200")).validate(promoted)
    assert (promoted["by"], promoted["trigger"], promoted["to_version"]) == ("admin-api", "operator", 2)
    assert promoted["metrics"]["labelled_rows"] == 500

    body = await _get_models(admin)
    assert body["labels"] == {"stable": 2}
    assert body["roles"]["champion"] == 2
    assert body["realized"]["comparison"]["challenger_version"] == 2
    assert [(p["from_version"], p["to_version"], p["reason"]) for p in body["promotions"]] == [
        (1, 2, "shadow won")
    ]
    assert await _served_label(served.model, "stable", 2) == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "missing_field"),
        ({"version": "2"}, 400, "bad_field"),
        ({"version": True}, 400, "bad_field"),
        ({"version": -1}, 400, "bad_field"),
        ({"version": 2, "label": "st-able"}, 400, "bad_field"),
        ({"version": 2, "force": True}, 400, "unknown_field"),
        ({"version": 7}, 409, "unknown_version"),
    ],
)
async def test_bad_promote_requests_are_refused(
    admin: Admin, served: Served, body: dict[str, Any], status: int, code: str
) -> None:
    before = served.config_file.read_bytes()
    async with admin.session.post(f"{admin.url}/v1/models/promote", json=body, headers=AUTH) as resp:
        assert resp.status == status, await resp.text()
        assert (await resp.json())["error"]["code"] == code
    assert served.config_file.read_bytes() == before


async def test_promote_needs_the_token(served: Served) -> None:
    before = served.config_file.read_bytes()
    async for admin in _admin(served):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with admin.session.post(
                f"{admin.url}/v1/models/promote", json={"version": 2}, headers=headers
            ) as r:
                assert r.status == 401
    async for admin in _admin(served, token=None):
        async with admin.session.post(
            f"{admin.url}/v1/models/promote", json={"version": 2}, headers=AUTH
        ) as r:
            assert r.status == 403
        await _get_models(admin)  # reads need no token
    assert served.config_file.read_bytes() == before


async def test_an_unreachable_model_server_is_reported_not_promoted(served: Served) -> None:
    dead = TFServingConfig(base_url="http://127.0.0.1:9", max_attempts=1, retry_budget_s=0.5, timeout_s=1.0)
    before = served.config_file.read_bytes()
    async with TFServingClient.open(dead, "score_beater") as model:
        async for admin in _admin(served, model=model):
            body = await _get_models(admin)
            assert body["versions"] == []
            assert body["errors"]["model_server"].startswith("ModelUnavailable")
            assert body["labels"] == {"stable": 1}  # the file is still read
            async with admin.session.post(
                f"{admin.url}/v1/models/promote", json={"version": 2}, headers=AUTH
            ) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "model_server_unavailable"
    assert served.config_file.read_bytes() == before


# --- the promotion stage ----------------------------------------------------------------------


async def _run(stage: PromotionStage, run_id: str) -> dict[str, Any]:
    return cast("dict[str, Any]", await stage.run(run_id))


async def test_the_stage_promotes_a_challenger_that_passes_the_policy_once(served: Served) -> None:
    woken: list[str] = []
    handoff = Handoff(woken.append)
    stage = PromotionStage(served.ctx(), handoff, served.promoter())

    result = await _run(stage, "r0")
    assert result["promote"] is False
    assert "no champion-versus-challenger comparison yet" in result["reasons"]

    handoff.shadow_compared(_comparison(gain=0.001))  # below min_auc_gain
    assert woken == ["promotion"]
    result = await _run(stage, "r1")
    assert (result["promote"], result["promoted"]) == (False, None)

    handoff.shadow_compared(_comparison())
    result = await _run(stage, "r2")
    assert result["promote"] is True
    assert result["promoted"]["by"] == "auto-policy"
    assert result["promoted"]["trigger"] == "auto"
    assert "AUC gain +0.0100" in result["promoted"]["reason"]
    assert read_labels(served.config_file, "score_beater") == {"stable": 2}
    assert served.sample("scorebeater_promotions_total", trigger="auto", outcome="promoted") == 1
    assert stage.status()["last_decision"] == result

    result = await _run(stage, "r3")  # the same comparison again: the label already names v2
    assert result["promoted"] is None
    assert any("already names v2" in r for r in result["reasons"])
    assert len(await PromotionLog(served.storage).records()) == 1
    assert await _served_label(served.model, "stable", 2) == 2


async def test_the_stage_never_acts_on_a_comparison_of_another_champion(served: Served) -> None:
    """The label names v1 (say, an operator rolled back), the comparison judged a champion v3
    against the challenger v2: the policy waits for a comparison against v1."""
    handoff = Handoff()
    stage = PromotionStage(served.ctx(), handoff, served.promoter())
    stale = dataclasses.replace(_comparison(challenger=2), champion_version=3)
    handoff.shadow_compared(stale)
    result = await _run(stage, "r")
    assert result["promote"] is True  # the policy's rules pass ...
    assert result["promoted"] is None  # ... but the comparison is not about the current champion
    assert any("not the compared champion v3" in r for r in result["reasons"])
    assert read_labels(served.config_file, "score_beater") == {"stable": 1}


async def test_the_stage_refuses_a_challenger_that_is_not_served(served: Served) -> None:
    handoff = Handoff()
    stage = PromotionStage(served.ctx(), handoff, served.promoter())
    handoff.shadow_compared(_comparison(challenger=5))
    result = await _run(stage, "r")
    assert result["promoted"] is None
    assert result["refused"]["code"] == "unknown_version"
    assert served.sample("scorebeater_promotions_total", trigger="auto", outcome="refused") == 1
    assert read_labels(served.config_file, "score_beater") == {"stable": 1}


async def test_with_auto_off_the_stage_only_reads_the_labels(served: Served) -> None:
    cfg = dataclasses.replace(served.cfg, promotion=dataclasses.replace(served.cfg.promotion, auto=False))
    ctx = dataclasses.replace(served.ctx(), cfg=cfg)
    handoff = Handoff()
    stage = PromotionStage(
        ctx, handoff, Promoter(cfg, served.model, PromotionLog(served.storage), metrics=served.metrics)
    )
    handoff.shadow_compared(_comparison())
    assert await _run(stage, "r") == {"auto": False, "labels": {"stable": 1}}
    assert read_labels(served.config_file, "score_beater") == {"stable": 1}
    assert served.sample("scorebeater_model_label_version", label="stable") == 1
