"""The Dockerfile: linted by hadolint (from PyPI), read for what the image must be, and its commands
run directly from the virtualenv, since no Docker engine runs here.

What "run directly" covers: the ENTRYPOINT + CMD of the runtime image (``scorebeater check-config``
on the baked config, with the environment compose gives the daemon), ``--help`` of every command
the images run, with TensorFlow and the other ``[model]`` packages made unimportable as in the slim
runtime image, the replay Score API started as the scoreapi service starts it, and the exact
HEALTHCHECK command against a real server that answers 200, then 503, then nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.ops import DOCKERFILE, REPO, VENV_BIN, binary
from tests.ops.test_compose import ALL_INTERFACES, SERVICES, _environment

HADOLINT_IGNORES: dict[str, str] = {}
"""Rule -> why it is ignored. None needed today; add here (and only here) with a reason."""

MODEL_PACKAGES = ("tensorflow", "keras", "sklearn", "matplotlib")
"""The [model] extra: absent from the runtime image."""


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and stages of a Dockerfile (continuations joined, comments dropped)."""
    logical: list[str] = []
    buffer = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append(buffer + stripped)
        buffer = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = parts[0]
            for name, value in args.items():
                base = base.replace(f"${{{name}}}", value).replace(f"${name}", value)
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(alias, base))
        elif not stages:
            if keyword == "ARG":
                name, _, value = rest.partition("=")
                args[name.strip()] = value.strip()
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}


def _inherited(stage: Stage, keyword: str) -> str | None:
    """An instruction's effective value, following FROM <stage> chains."""
    while True:
        value = stage.last(keyword)
        if value is not None:
            return value
        if stage.base not in BY_NAME:
            return None
        stage = BY_NAME[stage.base]


def _json_list(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return value


# --- lint ------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    command = [binary("hadolint"), "--no-color", "--failure-threshold", "style"]
    for rule in HADOLINT_IGNORES:
        command += ["--ignore", rule]
    result = subprocess.run(
        [*command, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip(), result.stdout


# --- what the image is -------------------------------------------------------------------------


def test_base_images_are_slim_python_311() -> None:
    assert ARGS["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    for stage in STAGES:
        assert stage.base in BY_NAME or stage.base == "python:3.11-slim-bookworm", stage


def test_multi_stage_with_the_daemon_as_default_target() -> None:
    assert {"builder", "builder-model", "base", "model", "runtime"} <= set(BY_NAME)
    assert STAGES[-1].name == "runtime", "`docker build .` builds the last stage: make it the daemon"
    runtime, model = BY_NAME["runtime"], BY_NAME["model"]
    assert any(c.startswith("--from=builder /opt/venv") for c in runtime.all("COPY"))
    assert any(c.startswith("--from=builder-model /opt/venv") for c in model.all("COPY"))


def test_tensorflow_only_in_the_model_target() -> None:
    builder_runs = " ".join(BY_NAME["builder"].all("RUN"))
    assert "-c constraints.txt" in builder_runs
    assert "['dependencies']" in builder_runs
    assert "optional-dependencies" not in builder_runs
    assert "--no-deps" in builder_runs, "the package itself must not pull extras"
    model_runs = " ".join(BY_NAME["builder-model"].all("RUN"))
    assert "['optional-dependencies']['model']" in model_runs
    assert "-c constraints.txt" in model_runs


def test_non_root_workdir_volumes() -> None:
    for name in ("runtime", "model"):
        user = _inherited(BY_NAME[name], "USER")
        assert user is not None, f"{name} runs as root"
        assert user.split(":")[0] not in {"0", "root"}, f"{name} runs as root"
        assert _inherited(BY_NAME[name], "WORKDIR") == "/app"
    volumes = _json_list(_inherited(BY_NAME["runtime"], "VOLUME") or "[]")
    assert "/app/model" in volumes
    assert "/app/var" in volumes
    assert any(c.startswith("config/ /app/config") for c in BY_NAME["base"].all("COPY"))


def test_entrypoint_and_cmd() -> None:
    runtime = BY_NAME["runtime"]
    assert _json_list(_inherited(runtime, "ENTRYPOINT") or "") == ["scorebeater"]
    cmd = _json_list(runtime.last("CMD") or "")
    assert cmd[:2] == ["run", "--config"]
    assert cmd[2].startswith("/app/config/")
    assert (REPO / "config" / Path(cmd[2]).relative_to("/app/config")).is_file()


def test_no_secret_baked_in() -> None:
    secretish = ("TOKEN", "PASSWORD", "SECRET", "DSN", "ACCESS_KEY")
    for stage in STAGES:
        for keyword in ("ENV", "ARG"):
            for args in stage.all(keyword):
                assert not any(s in args.upper() for s in secretish), f"{stage.name}: {keyword} {args}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, f"{pat}/*") or path.startswith(f"{pat}/"):
            ignored = not negate
    return ignored


def test_dockerignore_and_copy_sources() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".git", ".venv", "var", "tests", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".env"):
        assert required in patterns, f".dockerignore should exclude {required}"
    for stage in STAGES:
        for args in stage.all("COPY"):
            parts = [p for p in args.split() if not p.startswith("--")]
            if any(p.startswith("--from=") for p in args.split()):
                continue
            for raw in parts[:-1]:
                source = raw.rstrip("/")
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not _dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


# --- its commands, run here --------------------------------------------------------------------


def _blocked_import_prelude() -> str:
    """Python source that makes the [model] packages unimportable, as in the runtime image."""
    return "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in MODEL_PACKAGES)


def _run_cli(
    args: list[str], env: dict[str, str] | None = None, *, slim: bool = True
) -> subprocess.CompletedProcess[str]:
    code = (_blocked_import_prelude() if slim else "import sys\n") + (
        "from scorebeater.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(REPO)), **(env or {})},
    )


def test_cmd_runs_check_config_on_the_baked_config() -> None:
    """ENTRYPOINT + CMD with `run` swapped for `check-config`: the baked config loads with the
    environment compose gives the daemon, without TensorFlow."""
    cmd = _json_list(BY_NAME["runtime"].last("CMD") or "")
    config = REPO / "config" / Path(cmd[2]).relative_to("/app/config")
    result = _run_cli(["check-config", str(config)], env=_environment("scorebeater"))
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["admin"]["host"] == ALL_INTERFACES
    assert described["score_api"]["token"] == "<set>"  # the secret is read, never printed
    assert "demo-score-api-token" not in result.stdout + result.stderr


def test_baked_config_without_its_secret_fails_clearly() -> None:
    cmd = _json_list(BY_NAME["runtime"].last("CMD") or "")
    config = REPO / "config" / Path(cmd[2]).relative_to("/app/config")
    result = _run_cli(["check-config", str(config)])
    assert result.returncode == 2
    assert "SCOREBEATER_SCORE_API_TOKEN is not set" in result.stderr


@pytest.mark.parametrize("command", ["run", "replay-api", "check-config", "once"])
def test_runtime_image_commands_start_without_tensorflow(command: str) -> None:
    result = _run_cli([command, "--help"])
    assert result.returncode == 0, result.stderr
    assert "usage: scorebeater" in result.stdout


def test_the_daemon_imports_without_tensorflow() -> None:
    """`scorebeater run` in the runtime image: the daemon's module graph must not need TensorFlow."""

    def import_daemon(prelude: str) -> subprocess.CompletedProcess[str]:
        code = prelude + "import scorebeater.daemon\n"
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
        )

    plain = import_daemon("")
    assert plain.returncode == 0, plain.stderr
    result = import_daemon(_blocked_import_prelude())
    assert result.returncode == 0, f"the daemon needs a [model] package at import time:\n{result.stderr}"


@pytest.mark.parametrize("command", ["train", "serve-model", "evaluate"])
def test_model_image_commands_parse(command: str) -> None:
    result = _run_cli([command, "--help"], slim=False)
    assert result.returncode == 0, result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_scoreapi_service_command_serves_and_passes_its_healthcheck() -> None:
    """The scoreapi service's command (host swapped for loopback), then its compose healthcheck."""
    svc = SERVICES["scoreapi"]
    port = _free_port()
    args = [a if a != ALL_INTERFACES else "127.0.0.1" for a in svc["command"]]
    args[args.index("--port") + 1] = str(port)
    env = {**_environment("scoreapi"), "SCOREBEATER_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthz"}
    env["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '')}"
    code = _blocked_import_prelude() + "from scorebeater.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        check = svc["healthcheck"]["test"]
        assert check[0] == "CMD"
        deadline = time.monotonic() + 30
        while True:
            result = subprocess.run(
                check[1:], env=env, capture_output=True, text=True, timeout=10, check=False
            )
            if result.returncode == 0:
                break
            assert proc.poll() is None, f"replay-api exited: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"healthcheck never passed: {result.stderr[-500:]}"
            time.sleep(0.2)
        # The Score API itself requires the token the daemon sends.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/seasons")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)  # noqa: S310
        assert refused.value.code == 401
        refused.value.close()
        request.add_header("Authorization", f"Bearer {env['SCOREBEATER_SCORE_API_TOKEN']}")
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            assert response.status == 200
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


async def test_healthcheck_command_exit_codes() -> None:
    """The runtime image's HEALTHCHECK, run as Docker runs it: 0 on 200, 1 on 503 or no server."""
    healthcheck = BY_NAME["runtime"].last("HEALTHCHECK") or ""
    assert "--start-period" in healthcheck
    assert "--timeout" in healthcheck
    command = _json_list(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    env_default = dict(
        item.split("=", 1) for args in BY_NAME["base"].all("ENV") for item in args.split() if "=" in item
    )
    assert env_default["SCOREBEATER_HEALTHCHECK_URL"] == "http://127.0.0.1:8080/healthz"

    status = 200

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if status == 200 else "stopping"}, status=status)

    app = web.Application()
    app.router.add_get("/healthz", healthz)

    async def run_check(url: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *command[1:],
            env={"SCOREBEATER_HEALTHCHECK_URL": url},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), timeout=20)

    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/healthz"))
        assert await run_check(url) == 0
        status = 503
        assert await run_check(url) == 1
    assert await run_check(f"http://127.0.0.1:{_free_port()}/healthz") == 1
