"""The web page's serving side: packaged assets with strict security headers, nothing loaded
from elsewhere, no markup built from data, and ``GET /v1/quality`` from the validation gauges."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from importlib import resources
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from scorebeater.admin.app import AdminState, create_app
from scorebeater.admin.ui import CONTENT_SECURITY_POLICY, load_assets
from scorebeater.config import Config, SchedulerConfig
from scorebeater.metrics import CALIBRATION_BINS, Metrics
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff

STATIC = resources.files("scorebeater.admin").joinpath("static")


def _text(name: str) -> str:
    return STATIC.joinpath(name).read_text("utf-8")


@pytest.fixture(name="metrics")
def _metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture(name="client")
async def _client(metrics: Metrics) -> AsyncIterator[TestClient[Any, Any]]:
    unused = cast("Any", None)
    ctx = StageContext(
        cfg=Config(scheduler=SchedulerConfig(seasons=(2014,))),
        storage=unused,
        scores=unused,
        model=unused,
        metrics=metrics,
        clock=SystemClock(),
    )
    features = cast("Any", SimpleNamespace(seasons={2015: object()}))
    state = AdminState(
        ctx=ctx, handoff=Handoff(), runners={}, features=features, token=None, started=asyncio.Event()
    )
    async with TestClient(TestServer(create_app(state))) as client:
        yield client


async def test_the_page_and_its_assets_carry_the_security_headers(client: TestClient[Any, Any]) -> None:
    for path, content_type in (
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == content_type
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/nope.js", "/ui/..%2Fui.py", "/ui/ui.py", "/ui/"])
async def test_other_names_are_json_404s(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


def test_every_asset_is_local_and_no_script_is_inline() -> None:
    index = _text("index.html")
    assert re.findall(r"<script\b[^>]*>[^<]*</script>", index) == ['<script src="/ui/app.js" defer></script>']
    assert " style=" not in index
    assert not re.search(r"\son[a-z]+=", index)  # no inline handlers
    names = set(load_assets())
    for ref in re.findall(r'(?:src|href)="([^"]+)"', index):
        assert ref.startswith("/"), ref  # same origin, no CDN
        if ref.startswith("/ui/"):
            assert ref.removeprefix("/ui/") in names
    for name in ("app.js", "app.css", "index.html"):
        urls = set(re.findall(r"https?://[^\s\"')]+", _text(name)))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)


def test_the_script_never_builds_markup_from_strings() -> None:
    script = re.sub(r"(?m)^\s*//.*$", "", _text("app.js"))  # comments may name what is never used
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in script, sink
    assert 'setAttribute("style"' not in script  # style attributes would need 'unsafe-inline'


async def test_quality_reports_the_validation_gauges(client: TestClient[Any, Any], metrics: Metrics) -> None:
    body = await (await client.get("/v1/quality")).json()
    assert body["versions"] == []
    assert body["seasons"] == [2014, 2015]  # configured and loaded
    assert body["computed_at"] is None
    m = metrics
    for bucket, auc in (("all", 0.8), ("25-50", 0.7), ("0-25", 0.6)):
        m.eval_roc_auc.labels("3", bucket).set(auc)
        m.eval_brier.labels("3", bucket).set(0.2)
        m.eval_rows.labels("3", bucket).set(10)
    m.eval_ece.labels("3", "all").set(0.05)
    m.calibration_count.labels("3", CALIBRATION_BINS[2]).set(4)
    m.calibration_predicted.labels("3", CALIBRATION_BINS[2]).set(0.25)
    m.calibration_observed.labels("3", CALIBRATION_BINS[2]).set(0.5)
    m.calibration_count.labels("3", CALIBRATION_BINS[0]).set(0)
    m.validation_last_success.set(1_700_000_000)
    body = await (await client.get("/v1/quality")).json()
    assert body["computed_at"].startswith("2023-11-14T22:13:20")
    [version] = body["versions"]
    assert version["version"] == 3
    assert [b["bucket"] for b in version["buckets"]] == ["all", "0-25", "25-50"]
    assert version["buckets"][0] == {
        "bucket": "all",
        "roc_auc": 0.8,
        "brier": 0.2,
        "log_loss": None,
        "ece": 0.05,
        "accuracy": None,
        "rows": 10,
    }
    bins = version["reliability"]
    assert [b["bin"] for b in bins] == list(CALIBRATION_BINS)
    assert bins[2] == {"bin": "0.2-0.3", "lo": 0.2, "hi": 0.3, "rows": 4, "predicted": 0.25, "observed": 0.5}
    assert bins[0]["rows"] == 0
    assert bins[0]["predicted"] is None
