"""A reused keep-alive connection that the server closes: the retry is ours, logged and counted.

aiohttp on its own resends an idempotent request once, silently, when a pooled connection
turns out to be closed. ``make_session`` turns that off so the client's retry policy sees the
failure: ``score_api_retries_total`` counts every retry, none happens behind its back.

The server is a raw asyncio server on loopback speaking just enough HTTP/1.1: it answers the
first request of each connection with a keep-alive response, reads the second one and closes
the connection without answering (a server that closed an idle keep-alive connection at the
moment the client reused it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import stamina
from structlog.testing import capture_logs

from scorebeater.clients.http import make_session
from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.config import ScoreApiConfig
from scorebeater.metrics import Metrics

BODY = b'{"data": []}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class ClosesReusedConnections:
    """Answers each connection's first request; closes the connection on its second."""

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.closed_unanswered = 0
        self._handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")  # a GET: no body
            self.requests += 1
            writer.write(RESPONSE)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            self.closed_unanswered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection first
        finally:
            writer.close()
            self._handlers.discard(task)

    async def drain(self) -> None:
        """Wait for the handlers of connections the client has closed."""
        if self._handlers:
            await asyncio.wait_for(asyncio.gather(*self._handlers), 5)


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[tuple[str, ClosesReusedConnections]]:
    behaviour = ClosesReusedConnections()
    server = await asyncio.start_server(behaviour.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", behaviour
    finally:
        server.close()
        await behaviour.drain()
        await server.wait_closed()


@pytest.fixture(name="fast_retries")
def _fast_retries() -> Iterator[None]:
    stamina.set_testing(True, attempts=100, cap=True)
    try:
        yield
    finally:
        stamina.set_testing(False)


async def test_the_session_does_not_resend_over_a_closed_keepalive_connection(
    server: tuple[str, ClosesReusedConnections],
) -> None:
    url, behaviour = server
    async with make_session(timeout_s=5, connect_timeout_s=2, max_connections=1) as session:
        async with session.get(url + "/v1/seasons") as resp:
            assert await resp.read() == BODY
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.get(url + "/v1/seasons") as resp:
                await resp.read()
    # aiohttp's own resend would have opened a second connection and been answered there.
    assert (behaviour.connections, behaviour.requests, behaviour.closed_unanswered) == (1, 2, 1)


@pytest.mark.usefixtures("fast_retries")
async def test_a_reset_of_a_reused_connection_is_retried_by_the_client_and_counted(
    server: tuple[str, ClosesReusedConnections], metrics: Metrics
) -> None:
    url, behaviour = server
    cfg = ScoreApiConfig(base_url=url, timeout_s=5.0, max_attempts=3, retry_budget_s=10.0)
    async with ScoreApiClient.open(cfg, metrics=metrics) as api:
        assert await api.seasons() == []
        with capture_logs() as logs:
            assert await api.seasons() == []  # reuses the connection: closed, then retried
    assert (behaviour.connections, behaviour.requests, behaviour.closed_unanswered) == (2, 3, 1)
    assert api.retries == 1
    assert metrics.registry.get_sample_value("scorebeater_score_api_retries_total") == 1
    retries = [e for e in logs if e["event"] == "upstream.retry_scheduled"]
    assert len(retries) == 1
    assert retries[0]["target"] == "score_api"
    assert "connection failed" in retries[0]["error"]
