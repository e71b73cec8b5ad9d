"""The admin API's OpenAPI document is valid and describes exactly the routes the app serves."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Any, cast

import yaml
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from scorebeater.admin.app import AdminState, create_app
from scorebeater.config import Config
from scorebeater.metrics import Metrics
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff


def _spec() -> dict[str, Any]:
    text = resources.files("scorebeater.admin").joinpath("openapi.yaml").read_text("utf-8")
    spec = yaml.safe_load(text)
    assert isinstance(spec, dict)
    return spec


def test_document_is_valid_openapi() -> None:
    validate(_spec())


def test_every_route_is_documented_and_every_documented_path_is_served() -> None:
    unused = cast("Any", None)  # routing never touches these
    ctx = StageContext(
        cfg=Config(),
        storage=unused,
        scores=unused,
        model=unused,
        metrics=Metrics(CollectorRegistry()),
        clock=SystemClock(),
    )
    state = AdminState(
        ctx=ctx, handoff=Handoff(), runners={}, features=unused, token=None, started=asyncio.Event()
    )
    app = create_app(state)
    served = {
        (re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.resource.canonical), route.method)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(path, method.upper()) for path, ops in _spec()["paths"].items() for method in ops}
    assert served == documented
