"""State-changing admin endpoints on a standby replica: refused with 409 ``not_leader``, reads served."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from scorebeater.admin.app import create_app
from scorebeater.config import Secret
from scorebeater.leadership.base import LeadershipState
from scorebeater.testing.admin import storage_only_state

TOKEN = "standby-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POSTS: tuple[tuple[str, object], ...] = (
    ("/v1/refeed", {}),
    ("/v1/stages/features:run", None),
    ("/v1/models/promote", {"version": 2}),
    ("/v1/quarantine/1:retry", None),
    ("/v1/quarantine/1:skip", None),
)


@pytest.fixture(name="served")
async def _served() -> AsyncIterator[tuple[str, LeadershipState]]:
    leadership = LeadershipState("postgres")
    state = dataclasses.replace(storage_only_state(None), token=Secret(TOKEN), leadership=leadership)
    server = TestServer(create_app(state), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", leadership
    finally:
        await server.close()


@pytest.mark.parametrize(("path", "body"), POSTS)
async def test_a_standby_refuses_every_state_changing_request(
    served: tuple[str, LeadershipState], path: str, body: object
) -> None:
    url, leadership = served
    assert leadership.role == "standby"
    async with aiohttp.ClientSession() as http, http.post(url + path, json=body, headers=AUTH) as response:
        assert response.status == 409
        error = (await response.json())["error"]
    assert error["code"] == "not_leader"
    assert "standby" in error["message"]


async def test_authentication_comes_before_the_role(served: tuple[str, LeadershipState]) -> None:
    url, _ = served
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/refeed", json={}) as response:
        assert response.status == 401


async def test_the_leader_accepts(served: tuple[str, LeadershipState]) -> None:
    url, leadership = served
    leadership.role = "leader"
    leadership.term = 3
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/refeed", json={}, headers=AUTH) as response,
    ):
        assert response.status == 202
