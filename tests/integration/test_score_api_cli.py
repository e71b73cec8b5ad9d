"""``scorebeater replay-api`` as a real process: serves, authenticates, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scorebeater", "--log-format", "json", "replay-api", "--port", "0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _wait_for_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "replay.started":
                return str(event["url"])
    pytest.fail(f"replay-api exited with {proc.wait()} before listening")


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)  # noqa: S310 - loopback http only
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_replay_api_serves_until_sigterm_and_exits_0() -> None:
    """Scenario: start with a token variable set; probe healthz; a /v1 call without the
    token is 401, with it 200; SIGTERM; exit status 0 and a replay.stopped event."""
    env = {**os.environ, "REPLAY_TEST_TOKEN": "cli-token"}
    proc = _start("--speed", "86400", "--season", "2013", "--token-env", "REPLAY_TEST_TOKEN", env=env)
    try:
        url = _wait_for_url(proc)
        status, body = _get(f"{url}/healthz")
        assert (status, body["status"]) == (200, "ok")
        assert body["replay_time"] >= "2012-10-29T00:00:00Z"
        assert _get(f"{url}/v1/seasons/2013")[0] == 401
        status, season = _get(f"{url}/v1/seasons/2013", token="cli-token")
        assert (status, season["season"]) == (200, 2013)
        status, body = _get(f"{url}/v1/seasons/2014", token="cli-token")
        assert (status, body["error"]["code"]) == (404, "season_not_found")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        assert proc.stderr is not None
        rest = proc.stderr.read()
        proc.stderr.close()
    assert code == 0
    assert "replay.stopped" in rest
    assert "cli-token" not in rest


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--start", "someday"], "--start"), (["--season", "1999"], "season 1999 has no regular-season games")],
)
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scorebeater", "--log-format", "json", "replay-api", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("scorebeater:")]
    assert len(errors) == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("token_env", "message"),
    [
        ("SCOREBEATER_TEST_UNSET_VAR", "SCOREBEATER_TEST_UNSET_VAR is not set or is empty"),
        ("SCOREBEATER_TEST_EMPTY_VAR", "SCOREBEATER_TEST_EMPTY_VAR is not set or is empty"),
        ("postgresql://u:hunter2@db/x", "looks like a secret value, not an environment variable name"),
    ],
)
def test_a_token_variable_that_cannot_be_used_exits_2(token_env: str, message: str) -> None:
    """Naming a variable is asking for auth: unset or empty is an error, not an open server."""
    env = {k: v for k, v in os.environ.items() if k != "SCOREBEATER_TEST_UNSET_VAR"}
    env["SCOREBEATER_TEST_EMPTY_VAR"] = ""
    proc = subprocess.run(
        [sys.executable, "-m", "scorebeater", "replay-api", "--port", "0", "--token-env", token_env],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("scorebeater:")] == [
        "scorebeater: config error: --token-env:"
    ]
    assert message in proc.stderr
    assert "hunter2" not in proc.stderr


@pytest.mark.parametrize("args", [["--token-env", ""], []], ids=["explicit-empty", "default-unset"])
def test_serving_without_auth_logs_a_warning(args: list[str]) -> None:
    """Scenario: --token-env '' (or the default variable unset); a warning names the variable
    before the server listens; /v1 answers without a token; SIGTERM exits 0."""
    env = {k: v for k, v in os.environ.items() if k != "SCOREBEATER_SCORE_API_TOKEN"}
    proc = _start("--season", "2013", *args, env=env)
    try:
        assert proc.stderr is not None
        events = []
        for line in proc.stderr:
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1]["event"] == "replay.started":
                    break
        warning = next(e for e in events if e["event"] == "replay.auth_disabled")
        assert warning["level"] == "warning"
        assert warning["token_env"] == ("" if args else "SCOREBEATER_SCORE_API_TOKEN")
        assert events[-1]["auth"] is False
        assert _get(f"{events[-1]['url']}/v1/seasons/2013")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        assert proc.stderr is not None
        proc.stderr.read()
        proc.stderr.close()
    assert code == 0
