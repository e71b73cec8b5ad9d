"""The admin API's quarantine endpoints, on local storage: filters, decisions, every 4xx, 503."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from scorebeater.admin.app import AdminState, create_app
from scorebeater.config import Config, LocalStorageConfig, Secret, StorageConfig
from scorebeater.errors import StorageUnavailable
from scorebeater.metrics import Metrics
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.features import FeaturesStage
from scorebeater.stages.handoff import Handoff
from scorebeater.storage import open_storage
from scorebeater.storage.base import Storage
from scorebeater.storage.quarantine import QuarantineEntry, quarantine_id

TOKEN = "admin-quarantine-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = dt.datetime(2014, 11, 2, 2, 30, tzinfo=dt.UTC)


def _entry(key: str, season: int = 2014, state: Any = "open") -> QuarantineEntry:
    return QuarantineEntry(
        kind="box_score",
        key=key,
        season=season,
        reason="unknown_game",
        detail="asked for one game, got another",
        payload=b'{"game_id": "other"}',
        first_seen=T0,
        last_seen=T0,
        state=state,
    )


@dataclass
class Admin:
    url: str
    storage: Storage
    woken: list[str]


class Unreachable:
    """Storage whose quarantine table cannot be reached."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def quarantine(self) -> Any:
        return self

    async def entries(self, **kwargs: Any) -> list[QuarantineEntry]:
        raise StorageUnavailable("injected: connection refused")

    async def get(self, entry_id: int) -> QuarantineEntry | None:
        raise StorageUnavailable("injected: connection refused")


async def _serve(storage: Any, *, token: str | None = TOKEN) -> AsyncIterator[Admin]:
    ctx = StageContext(
        cfg=Config(),
        storage=storage,
        scores=cast("Any", None),
        model=cast("Any", None),
        metrics=Metrics(CollectorRegistry()),
        clock=SystemClock(),
    )
    woken: list[str] = []
    handoff = Handoff(woken.append)
    state = AdminState(
        ctx=ctx,
        handoff=handoff,
        runners={},
        features=FeaturesStage(ctx, handoff),
        token=Secret(token) if token else None,
        started=asyncio.Event(),
    )
    server = TestServer(create_app(state), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Admin(url=f"http://127.0.0.1:{server.port}", storage=storage, woken=woken)
    finally:
        await server.close()


@pytest.fixture(name="storage")
async def _storage(tmp_path: Path) -> AsyncIterator[Storage]:
    cfg = StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))
    async with open_storage(cfg) as storage:
        await storage.quarantine.put(
            [_entry("201400001"), _entry("201400002", state="resolved"), _entry("201500003", season=2015)]
        )
        yield storage


@pytest.fixture(name="admin")
async def _admin(storage: Storage) -> AsyncIterator[Admin]:
    async for admin in _serve(storage):
        yield admin


async def _call(
    admin: Admin, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, admin.url + path, data=data, headers=headers) as resp,
    ):
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


def _keys(body: Any) -> Sequence[str]:
    return [e["key"] for e in body["entries"]]


async def test_list_filters_by_season_and_state(admin: Admin) -> None:
    assert _keys((await _call(admin, "GET", "/v1/quarantine"))[1]) == ["201400001", "201400002", "201500003"]
    status, body = await _call(admin, "GET", "/v1/quarantine?season=2014&state=open")
    assert status == 200
    assert _keys(body) == ["201400001"]
    (entry,) = body["entries"]
    assert entry["id"] == quarantine_id("box_score", "201400001")
    assert entry["payload"] == '{"game_id": "other"}'
    assert entry["first_seen"] == T0.isoformat()
    assert _keys((await _call(admin, "GET", "/v1/quarantine?season=2016"))[1]) == []


@pytest.mark.parametrize(
    "query", ["?state=lost", "?season=abc", "?season=٣٨٠٥", "?season=1946", "?season=2101", "?status=open"]
)
async def test_a_bad_filter_is_a_400_naming_it(admin: Admin, query: str) -> None:
    status, body = await _call(admin, "GET", "/v1/quarantine" + query)
    assert status == 400
    assert body["error"]["code"] == "invalid_parameter"
    assert body["error"]["param"] in {"state", "season", "status"}


async def test_retry_and_skip_change_the_state_and_wake_the_feature_stage(admin: Admin) -> None:
    entry_id = quarantine_id("box_score", "201400001")
    status, body = await _call(admin, "POST", f"/v1/quarantine/{entry_id}:retry", headers=AUTH)
    assert (status, body["accepted"], body["entry"]["state"]) == (202, True, "retry")
    assert admin.woken == ["features"]
    status, body = await _call(admin, "POST", f"/v1/quarantine/{entry_id}:skip", data=b"{}", headers=AUTH)
    assert (status, body["entry"]["state"]) == (202, "skipped")
    assert admin.woken == ["features", "features"]
    stored = await admin.storage.quarantine.get(entry_id)
    assert stored is not None
    assert stored.state == "skipped"


@pytest.mark.parametrize(
    ("path", "headers", "data", "status", "code"),
    [
        ("/v1/quarantine/{open}:retry", {}, None, 401, "unauthorized"),
        ("/v1/quarantine/{open}:skip", {"Authorization": "Bearer wrong"}, None, 401, "unauthorized"),
        ("/v1/quarantine/{absent}:retry", AUTH, None, 404, "not_found"),
        ("/v1/quarantine/{resolved}:retry", AUTH, None, 409, "already_resolved"),
        ("/v1/quarantine/{resolved}:skip", AUTH, None, 409, "already_resolved"),
        ("/v1/quarantine/abc:retry", AUTH, None, 400, "invalid_parameter"),
        ("/v1/quarantine/-1:skip", AUTH, None, 400, "invalid_parameter"),
        ("/v1/quarantine/99999999999999999999:skip", AUTH, None, 400, "invalid_parameter"),
        ("/v1/quarantine/{open}:retry", AUTH, b'{"force": true}', 400, "unknown_field"),
        ("/v1/quarantine/{open}:retry", AUTH, b"[1]", 400, "bad_body"),
    ],
)
async def test_a_refused_decision_is_a_4xx_and_changes_nothing(
    admin: Admin, path: str, headers: dict[str, str], data: bytes | None, status: int, code: str
) -> None:
    ids = {
        "open": quarantine_id("box_score", "201400001"),
        "resolved": quarantine_id("box_score", "201400002"),
        "absent": quarantine_id("box_score", "nope"),
    }
    got, body = await _call(admin, "POST", path.format(**ids), data=data, headers=headers)
    assert (got, body["error"]["code"]) == (status, code)
    assert admin.woken == []
    assert {e.key: e.state for e in await admin.storage.quarantine.entries()} == {
        "201400001": "open",
        "201400002": "resolved",
        "201500003": "open",
    }


async def test_decisions_are_refused_without_a_configured_token(storage: Storage) -> None:
    async for admin in _serve(storage, token=None):
        entry_id = quarantine_id("box_score", "201400001")
        status, body = await _call(admin, "POST", f"/v1/quarantine/{entry_id}:skip", headers=AUTH)
        assert (status, body["error"]["code"]) == (403, "admin_token_not_configured")


async def test_unreachable_storage_is_a_503_not_a_500(storage: Storage) -> None:
    async for admin in _serve(Unreachable(storage)):
        status, body = await _call(admin, "GET", "/v1/quarantine")
        assert (status, body["error"]["code"]) == (503, "storage_unavailable")
        entry_id = quarantine_id("box_score", "201400001")
        status, body = await _call(admin, "POST", f"/v1/quarantine/{entry_id}:retry", headers=AUTH)
        assert (status, body["error"]["code"]) == (503, "storage_unavailable")
        assert admin.woken == []
