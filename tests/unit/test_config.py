"""Config loading: every problem reported at once with its key path; secrets only from the env."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorebeater.config import Secret, describe, load_config, parse_config
from scorebeater.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("scorebeater.toml", "local"),
        ("s3.example.toml", "s3"),
        ("postgres.example.toml", "postgres"),
        ("production.example.toml", "auto"),
    ],
)
def test_shipped_configs_are_valid(name: str, backend: str) -> None:
    env = {"SCOREBEATER_PG_DSN": "postgresql://u:pw@h/db", "SCOREBEATER_SCORE_API_TOKEN": "t"}
    cfg = load_config(ROOT / "config" / name, env=env)
    assert cfg.storage.backend == backend  # the file's settings, not the defaults


def test_embedded_default_needs_no_environment() -> None:
    cfg = load_config(ROOT / "config" / "scorebeater.toml", env={})
    assert cfg.storage.backend == "local"
    assert cfg.score_api.replay.enabled
    assert cfg.model_server.enabled
    assert cfg.admin.token is None


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[storage]
backend = "s4"
batch_rows = -1
[score_api]
base_url = "ftp://x"
timeout_s = "fast"
unknown_key = 1
[scheduler]
validation_cron = "every minute"
[admin]
port = 70000
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    problems = "\n".join(info.value.problems)
    for fragment in (
        "storage.backend: must be one of",
        "storage.batch_rows: must be > 0",
        "score_api.base_url: must be an http(s) URL",
        "score_api.timeout_s: must be a number",
        "score_api.unknown_key: unknown key",
        "scheduler.validation_cron: is not a valid cron expression",
        "admin.port: must be a TCP port",
    ):
        assert fragment in problems
    assert len(info.value.problems) >= 7


def test_backend_sections_are_checked_only_when_selected() -> None:
    parse_config({"storage": {"backend": "local", "postgres": {"schema": "Bad-Name"}}}, env={})
    with pytest.raises(ConfigError, match=r"storage\.s3\.bucket: required"):
        parse_config({"storage": {"backend": "s3"}}, env={})
    with pytest.raises(
        ConfigError, match=r"storage\.postgres\.dsn_env: environment variable SCOREBEATER_PG_DSN"
    ):
        parse_config({"storage": {"backend": "postgres"}}, env={})


def test_secrets_come_from_the_environment_and_never_show() -> None:
    cfg = parse_config(
        {"storage": {"backend": "postgres"}, "admin": {"token_env": "MY_ADMIN"}},
        env={"SCOREBEATER_PG_DSN": "postgresql://u:hunter2@db/x", "MY_ADMIN": "s3cret"},
    )
    assert cfg.storage.postgres.dsn == Secret("postgresql://u:hunter2@db/x")
    assert cfg.admin.token is not None
    assert cfg.admin.token.get() == "s3cret"
    shown = repr(cfg) + str(describe(cfg))
    assert "hunter2" not in shown
    assert "s3cret" not in shown


def test_a_secret_cannot_be_written_in_the_file() -> None:
    with pytest.raises(ConfigError, match=r"admin\.token: unknown key"):
        parse_config({"admin": {"token": "inline"}}, env={})


def test_env_var_names_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"admin\.token_env: must name an environment variable"):
        parse_config({"admin": {"token_env": "not a name"}}, env={})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
