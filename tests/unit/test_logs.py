"""Logging never shows secrets held in stack frames, and malformed requests cannot flood it."""

from __future__ import annotations

import asyncio
import logging
import os

import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from scorebeater.logs import MalformedRequests, configure_logging


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_do_not_show_local_variables(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt, "info")  # type: ignore[arg-type]
    log = structlog.get_logger("test")

    def call_with_a_secret_in_scope() -> None:
        headers = {"Authorization": "Bearer SUPERSECRET123"}
        raise ConnectionError(f"refused ({len(headers)} headers)")

    try:
        call_with_a_secret_in_scope()
    except ConnectionError:
        log.exception("upstream.failed")
    logging.getLogger().handlers[0].flush()
    err = capsys.readouterr().err
    assert "upstream.failed" in err
    assert "ConnectionError" in err
    assert "SUPERSECRET123" not in err


async def _raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return reply


async def test_a_malformed_request_costs_one_warning_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("json", "info")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    port = server.port
    assert port is not None
    try:
        long_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
        for _ in range(3):  # any client can send these: one line, then held back
            assert (await _raw_request(port, long_header)).split(b" ", 2)[1] == b"400"
        monkeypatch.setattr(MalformedRequests, "INTERVAL_S", 0.0)
        bad_bytes = b"GET /?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await _raw_request(port, bad_bytes)).split(b" ", 2)[1] == b"400"
        assert (await _raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).endswith(
            b"ok"
        )
    finally:
        await server.close()
    logging.getLogger().handlers[0].flush()
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    malformed = [line for line in lines if "http.malformed_request" in line["event"]]
    assert [line["level"] for line in malformed] == ["warning", "warning"]
    assert "held_back=0" in malformed[0]["event"]
    assert "held_back=2" in malformed[1]["event"]  # the two long headers held back
    assert not any("exception" in line or line["level"] == "error" for line in lines)


@pytest.mark.parametrize(("level", "tf_level"), [("info", None), ("warning", "1"), ("error", "2")])
def test_tensorflow_runtime_logs_follow_the_level(
    level: str, tf_level: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    configure_logging("json", level)
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == tf_level
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # an operator's own setting is kept
    configure_logging("json", level)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
