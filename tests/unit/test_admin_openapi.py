"""The admin API's contract: its OpenAPI document is valid and describes exactly the routes the
app serves, and every error it gives is a JSON ``Error`` (no input gets a 500, none a plain-text
answer): strict ids, seasons and bodies, non-ASCII headers, bounded and checked decompression."""

from __future__ import annotations

import asyncio
import gzip
import io
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from scorebeater.admin.app import MAX_BODY_BYTES, AdminState, create_app
from scorebeater.config import Config, LocalStorageConfig, Secret, StorageConfig
from scorebeater.metrics import Metrics
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.features import FeaturesStage
from scorebeater.stages.handoff import Handoff
from scorebeater.storage import open_storage
from scorebeater.storage.base import Storage
from scorebeater.testing.admin import storage_only_state
from tests.services.rawhttp import raw_request

TOKEN = "admin-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _spec() -> dict[str, Any]:
    text = resources.files("scorebeater.admin").joinpath("openapi.yaml").read_text("utf-8")
    spec = yaml.safe_load(text)
    assert isinstance(spec, dict)
    return spec


def test_document_is_valid_openapi() -> None:
    validate(_spec())


def test_every_route_is_documented_and_every_documented_path_is_served() -> None:
    state = storage_only_state(None)  # routing never touches storage
    app = create_app(state)
    served = {
        (re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.resource.canonical), route.method)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(path, method.upper()) for path, ops in _spec()["paths"].items() for method in ops}
    assert served == documented


# --- the error contract ----------------------------------------------------------------------


@dataclass(frozen=True)
class Admin:
    url: str
    handoff: Handoff


class BrokenStorage:
    """Storage whose prediction reads fail with an error no handler expects."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read_predictions(self, **kwargs: Any) -> Any:
        raise RuntimeError("injected: not a storage error")


async def _serve_admin(storage: Any) -> AsyncIterator[Admin]:
    ctx = StageContext(
        cfg=Config(),
        storage=storage,
        scores=cast("Any", None),
        model=cast("Any", None),
        metrics=Metrics(CollectorRegistry()),
        clock=SystemClock(),
    )
    handoff = Handoff()
    state = AdminState(
        ctx=ctx,
        handoff=handoff,
        runners={},
        features=FeaturesStage(ctx, handoff),
        token=Secret(TOKEN),
        started=asyncio.Event(),
    )
    server = TestServer(create_app(state), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Admin(url=f"http://127.0.0.1:{server.port}", handoff=handoff)
    finally:
        await server.close()


def _storage_config(tmp_path: Path) -> StorageConfig:
    return StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))


@pytest.fixture(name="admin")
async def _admin(tmp_path: Path) -> AsyncIterator[Admin]:
    async with open_storage(_storage_config(tmp_path)) as storage:
        async for admin in _serve_admin(storage):
            yield admin


async def _call(
    admin: Admin, method: str, path: str, *, data: bytes | None = None, **headers: str
) -> tuple[int, Any, dict[str, str]]:
    payload = io.BytesIO(data) if data is not None else None  # large bodies stream from a file
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, admin.url + path, data=payload, headers=headers) as resp,
    ):
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, await resp.json(), dict(resp.headers)


def _code(body: Any) -> str:
    assert set(body) == {"error"}
    assert set(body["error"]) <= {"code", "message", "param"}
    assert isinstance(body["error"]["message"], str)
    code: str = body["error"]["code"]
    return code


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/v1/predictions/1/history", 404, "not_found"),
        ("PUT", "/v1/status", 405, "method_not_allowed"),
        ("GET", "/v1/refeed", 405, "method_not_allowed"),
        ("DELETE", "/v1/stages/features:run", 405, "method_not_allowed"),
    ],
)
async def test_unknown_paths_and_methods_answer_json(
    admin: Admin, method: str, path: str, status: int, code: str
) -> None:
    got, body, headers = await _call(admin, method, path)
    assert (got, _code(body)) == (status, code)
    if status == 405:
        assert "Allow" in headers


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/predictions/9223372036854775808?season=2014", "player_id"),  # int64 max + 1
        pytest.param("/v1/predictions/" + "9" * 5000 + "?season=2014", "player_id", id="5000-digits"),
        ("/v1/predictions/%D9%A3%D9%A8%D9%A0%D9%A5?season=2014", "player_id"),  # Arabic-Indic 3805
        ("/v1/predictions/3805%0A?season=2014", "player_id"),  # "3805\n"
        ("/v1/predictions/-3805?season=2014", "player_id"),
        ("/v1/predictions/+3805?season=2014", "player_id"),
        ("/v1/predictions/3805?season=9223372036854775808", "season"),
        ("/v1/predictions/3805?season=%D9%A2%D9%A0%D9%A1%D9%A4", "season"),  # Arabic-Indic 2014
        ("/v1/predictions/3805?season=2014%0A", "season"),
        ("/v1/predictions/3805?season=2101", "season"),
        ("/v1/predictions/3805?season=1946", "season"),
        ("/v1/predictions/0?season=2014", "player_id"),
        ("/v1/predictions/3805?season=2014&history=maybe", "history"),
    ],
)
async def test_ids_and_seasons_are_ascii_digits_in_range(admin: Admin, path: str, param: str) -> None:
    status, body, _ = await _call(admin, "GET", path)
    assert (status, _code(body), body["error"]["param"]) == (400, "invalid_parameter", param)
    assert len(body["error"]["message"]) < 200  # a 5,000-digit id is not echoed whole


async def test_the_largest_int64_id_is_looked_up(admin: Admin) -> None:
    status, body, _ = await _call(admin, "GET", "/v1/predictions/9223372036854775807?season=2014&history=1")
    assert (status, _code(body)) == (404, "not_found")


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b'{"clear_cahce": true}', 400, "unknown_field", "clear_cahce"),
        (b'{"clear_cache": true, "force": 1}', 400, "unknown_field", "force"),
        (b'{"clear_cache": "yes"}', 400, "bad_field", "clear_cache"),
        (b'{"clear_cache": 1}', 400, "bad_field", "clear_cache"),
        (b'{"clear_cache": null}', 400, "bad_field", "clear_cache"),
        (b"[true]", 400, "bad_body", None),
        (b"true", 400, "bad_body", None),
        (b'{"clear_cache": tru', 400, "bad_json", None),
        (b"\xff\xfe", 400, "bad_json", None),
    ],
)
async def test_refeed_bodies_are_validated_strictly(
    admin: Admin, body: bytes, status: int, code: str, param: str | None
) -> None:
    got, reply, _ = await _call(admin, "POST", "/v1/refeed", data=body, **AUTH)
    assert (got, _code(reply), reply["error"].get("param")) == (status, code, param)
    if param is not None:
        assert repr(param) in reply["error"]["message"] or param in reply["error"]["message"]
    assert admin.handoff.status()["refeed_requested"] is None


@pytest.mark.parametrize(
    ("body", "encoding", "clear_cache"),
    [
        (b"", None, False),
        (b"{}", None, False),
        (b'{"clear_cache": true}', None, True),
        (gzip.compress(b'{"clear_cache": true}'), "gzip", True),
        (zlib.compress(b'{"clear_cache": false}'), "deflate", False),
    ],
)
async def test_refeed_accepts_the_documented_bodies(
    admin: Admin, body: bytes, encoding: str | None, clear_cache: bool
) -> None:
    headers = {**AUTH, **({"Content-Encoding": encoding} if encoding else {})}
    status, reply, _ = await _call(admin, "POST", "/v1/refeed", data=body, **headers)
    assert (status, reply) == (202, {"accepted": True, "clear_cache": clear_cache})
    assert admin.handoff.status()["refeed_requested"] == {"clear_cache": clear_cache}


@pytest.mark.parametrize(
    ("body", "encoding", "status", "code"),
    [
        pytest.param(b'{"clear_cache": true}', "gzip", 400, "bad_content_encoding", id="not-gzip"),
        pytest.param(
            gzip.compress(b'{"clear_cache": true}')[:-6], "gzip", 400, "bad_content_encoding", id="truncated"
        ),
        pytest.param(b'{"clear_cache": true}', "br", 415, "unsupported_content_encoding", id="brotli"),
        pytest.param(  # a few hundred bytes that inflate past the limit
            gzip.compress(b" " * (MAX_BODY_BYTES + 1)), "gzip", 413, "body_too_large", id="gzip-bomb"
        ),
        pytest.param(b" " * (2 * 1024**2), None, 413, "body_too_large", id="over-client-max-size"),
    ],
)
async def test_bad_and_oversized_bodies_are_4xx(
    admin: Admin, body: bytes, encoding: str | None, status: int, code: str
) -> None:
    headers = {**AUTH, **({"Content-Encoding": encoding} if encoding else {})}
    got, reply, _ = await _call(admin, "POST", "/v1/refeed", data=body, **headers)
    assert (got, _code(reply)) == (status, code)
    assert admin.handoff.status()["refeed_requested"] is None


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer admin-t0k\xc3\xa9n",  # UTF-8
        b"Authorization: Bearer \xff\xfe",  # not even UTF-8
        b"Authorization: B\xc3\xa9arer " + TOKEN.encode(),
    ],
)
async def test_a_non_ascii_authorization_header_is_a_401(admin: Admin, header: bytes) -> None:
    reply = await raw_request(admin.url, "POST", b"/v1/refeed", headers=[header], body=b"{}")
    assert reply.status == 401
    assert reply.headers["content-type"].startswith("application/json")
    assert _code(reply.json) == "unauthorized"
    assert reply.headers["www-authenticate"].startswith("Bearer")


async def test_an_unexpected_exception_is_logged_and_answered_500_json(tmp_path: Path) -> None:
    async with open_storage(_storage_config(tmp_path)) as storage:
        async for admin in _serve_admin(BrokenStorage(storage)):
            with capture_logs() as logs:
                status, body, _ = await _call(admin, "GET", "/v1/predictions/3805?season=2014")
            assert (status, _code(body)) == (500, "internal")
            assert "injected" not in body["error"]["message"]  # no internals in the answer
            failed = [e for e in logs if e["event"] == "http.request_failed"]
            assert failed
            assert failed[0]["surface"] == "admin"
            assert failed[0]["path"] == "/v1/predictions/3805"
