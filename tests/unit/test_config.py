"""Config loading: every problem reported at once with its key path; secrets only from the env."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from scorebeater.cli import main
from scorebeater.config import (
    Config,
    ScoreApiConfig,
    Secret,
    describe,
    load_config,
    parse_config,
    secret_from_option,
)
from scorebeater.config.ranges import RANGES
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
        "storage.batch_rows: must be from 1 to 10000000, got -1",
        "score_api.base_url: must be an http(s) URL",
        "score_api.timeout_s: must be a number",
        "score_api.unknown_key: unknown key",
        "scheduler.validation_cron: is not a valid cron expression",
        "admin.port: must be from 0 to 65535, got 70000",
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


def test_env_var_names_are_validated_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match=r"admin\.token_env: must name an environment variable") as info:
        parse_config({"admin": {"token_env": "my_token"}}, env={})
    assert "my_token" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


# --- types: a value of the wrong type anywhere is a problem with its key path, never a crash ---


def _leaf_paths(cls: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every field a file may set, as (key path, type), nested tables walked."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if tp is Secret or Secret in typing.get_args(tp):
            continue
        if dataclasses.is_dataclass(tp):
            found += _leaf_paths(tp, f"{prefix}{f.name}.")
        else:
            found.append((f"{prefix}{f.name}", tp))
    return found


LEAVES = _leaf_paths(Config)
WRONG_VALUES: list[Any] = [
    "a",
    "",
    -1,
    0,
    10**20,
    -(10**30),
    1.5,
    math.inf,
    math.nan,
    True,
    [],
    ["a", 16],
    [[1]],
    [-2014, 0],
    {"x": 1},
    {},
    dt.date(2014, 1, 1),
    dt.datetime(2014, 1, 1, tzinfo=dt.UTC),
    "postgresql://u:hunter2@db/x",
    "\0",
]


def _table(path: str, value: Any) -> dict[str, Any]:
    table: dict[str, Any] = {}
    node = table
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return table


@pytest.mark.parametrize("path", [p for p, _ in LEAVES])
def test_any_value_in_any_field_is_accepted_or_a_config_error(path: str) -> None:
    """No value of any type reaches the rules as the wrong type (the old ``TypeError``)."""
    for backend in ("local", "s3", "postgres") if path.startswith("storage.") else ("local",):
        for value in WRONG_VALUES:
            table = _table(path, value)
            table.setdefault("storage", {}).setdefault("backend", backend)
            if backend == "s3":
                table["storage"].setdefault("s3", {}).setdefault("bucket", "bkt")
            problems: tuple[str, ...] = ()
            try:
                parse_config(table, env={"SCOREBEATER_PG_DSN": "dsn"})
            except ConfigError as exc:
                problems = exc.problems or ("<none>",)
            if problems:
                assert any(p.startswith(path) for p in problems), (path, value, problems)
                assert "hunter2" not in "".join(problems)


def test_type_errors_inside_arrays_name_the_item(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[training]\nhidden_units = ["a", 16]\n[scheduler]\nseasons = [2014, true, 2.5]\n'
        "[training.gate]\neval_seasons = [[2014]]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == (
        "scheduler.seasons[1]: must be an integer, got True",
        "scheduler.seasons[2]: must be an integer, got 2.5",
        "training.hidden_units[0]: must be an integer, got 'a'",
        "training.gate.eval_seasons[0]: must be an integer, got [2014]",
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", True, "training.epochs: must be an integer, got True"),
        ("learning_rate", False, "training.learning_rate: must be a number, got False"),
        ("retrain_on_season_final", 1, "training.retrain_on_season_final: must be a boolean, got 1"),
        ("epochs", 40.0, "training.epochs: must be an integer, got 40.0"),
        ("learning_rate", 10**400, "training.learning_rate: must be a finite number"),
        ("gate", [1], "training.gate: must be a table, got list"),
        ("hidden_units", 32, "training.hidden_units: must be an array of integer, got int"),
        ("report_dir", "a\0b", "training.report_dir: must be a non-empty path string"),
    ],
)
def test_booleans_are_not_numbers_and_tables_are_not_values(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"training": {key: value}}, env={})
    assert info.value.problems[0].startswith(message)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("logging.level", "x" * 1_000_000),
        ("score_api.base_url", "a://" * 250_000),
        ("scheduler.validation_cron", "1," * 100_000 + "1 * * * *"),
        ("admin.token_env", "A" * 1_000_000),
    ],
)
@pytest.mark.timeout(5)
def test_long_values_are_checked_quickly_and_shortened_in_messages(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_table(key, value), env={})
    assert len(info.value.problems[0]) < 250


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = " + "9" * 5000, "not valid TOML: Exceeds the limit"),
        ("a = " + "[" * 100_000 + "]" * 100_000, "not valid TOML: arrays or tables nested too deeply"),
    ],
)
def test_toml_the_parser_chokes_on_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, env={})


# --- ranges: every numeric field has a sane range, and all violations are reported at once ---


def test_every_numeric_field_has_a_range_and_every_range_a_field() -> None:
    numeric = {
        path
        for path, tp in LEAVES
        if tp in (int, float) or (typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is int)
    }
    assert numeric == set(RANGES)


def test_ranges_are_checked_with_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "[scheduler]\nseasons = [-2014, 0, 2014]\nbackoff_initial_s = 60.0\nbackoff_max_s = 1.0\n"
        "[storage]\nbatch_rows = 100000000000000000000\n"
        "[score_api]\ntimeout_s = 0\npage_size = 5000\n[score_api.replay]\nseason = 1900\n"
        "[training]\ndropout = 1.0\nhidden_units = [32, 0]\nseed = -1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert sorted(info.value.problems) == [
        "scheduler.backoff_max_s: must be >= backoff_initial_s",
        "scheduler.seasons[0]: must be from 1947 to 2100, got -2014",
        "scheduler.seasons[1]: must be from 1947 to 2100, got 0",
        "score_api.page_size: must be from 1 to 1000, got 5000",
        "score_api.replay.season: must be 0 or from 1947 to 2100, got 1900",
        "score_api.timeout_s: must be > 0 and <= 3600, got 0.0",
        "storage.batch_rows: must be from 1 to 10000000, got 100000000000000000000",
        "training.dropout: must be >= 0 and < 1, got 1.0",
        "training.hidden_units[1]: must be from 1 to 65536, got 0",
        "training.seed: must be from 0 to 4294967295, got -1",
    ]


@pytest.mark.parametrize("path", sorted(RANGES))
def test_each_range_accepts_its_ends_and_refuses_beyond(path: str) -> None:
    bound = RANGES[path]
    is_array = path in {"scheduler.seasons", "training.hidden_units", "training.gate.eval_seasons"}
    is_int = next(tp for p, tp in LEAVES if p == path) is not float
    step = 1 if is_int else 1e-6
    backend = next((b for b in ("s3", "postgres") if path.startswith(f"storage.{b}.")), "local")
    # Fields a cross-field rule ties to this one take the same value, so only the range speaks.
    partner = {
        "storage.postgres.min_pool": "max_pool",
        "scheduler.backoff_initial_s": "backoff_max_s",
        "scheduler.backoff_max_s": "backoff_initial_s",
    }.get(path)

    # Fields a strict cross-field rule orders against this one take a value that satisfies it.
    fixed = {"leadership.poll_s": ("lease_ttl_s", 3600.0), "leadership.lease_ttl_s": ("poll_s", 1e-3)}.get(
        path
    )

    def table(value: float) -> dict[str, Any]:
        number = int(value) if is_int else float(value)
        merged = _table(path, [number] if is_array else number)
        if partner:
            section = merged[path.split(".", maxsplit=1)[0]]
            (section.get("postgres") or section)[partner] = number
        if fixed:
            merged["leadership"][fixed[0]] = fixed[1]
        merged.setdefault("storage", {})["backend"] = backend
        if backend == "s3":
            merged["storage"].setdefault("s3", {})["bucket"] = "bkt"
        return merged

    env = {"SCOREBEATER_PG_DSN": "dsn"}
    for inside in (bound.lo + (step if bound.lo_open else 0), bound.hi - (step if bound.hi_open else 0)):
        parse_config(table(inside), env=env)
    for outside in (bound.lo - step, bound.hi + step):
        with pytest.raises(ConfigError, match=re.escape(path)):
            parse_config(table(outside), env=env)


def test_unused_backend_sections_are_not_range_checked() -> None:
    parse_config({"storage": {"backend": "local", "s3": {"max_pool_connections": 0}}}, env={})
    with pytest.raises(ConfigError, match=r"storage\.s3\.max_pool_connections: must be from 1"):
        parse_config(
            {"storage": {"backend": "auto", "s3": {"bucket": "bkt", "max_pool_connections": 0}}}, env={}
        )


# --- secrets: refused where a name belongs, never echoed; URLs never carry credentials ---

SECRETS = [
    "postgresql://scorebeater:hunter2@db:5432/scorebeater",
    "hunter2@db",
    "TOKEN=hunter2",
    "Bearer hunter2",
    "AKIAHUNTER2EXAMPLE0",
    "GHP_16C7E42F292C6912E7710C838347AE178B4A",
    "H" * 101,
]


@pytest.mark.parametrize("value", SECRETS)
@pytest.mark.parametrize("key", ["score_api.token_env", "admin.token_env", "storage.postgres.dsn_env"])
def test_a_secret_pasted_into_an_env_key_is_refused_unseen(key: str, value: str) -> None:
    table = _table(key, value)
    table.setdefault("storage", {})["backend"] = "postgres"
    with pytest.raises(ConfigError) as info:
        parse_config(table, env={"SCOREBEATER_PG_DSN": "dsn"})
    assert info.value.problems == (
        (
            f"{key}: looks like a secret value, not an environment variable name (value not shown): "
            "put the secret in the environment and name the variable here"
        ),
    )
    assert value not in str(info.value)


@pytest.mark.parametrize(
    "name", ["SCOREBEATER_SCORE_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "DEMO_TOKEN_2024", "MY_" + "LONG_" * 19]
)
def test_ordinary_variable_names_are_not_taken_for_secrets(name: str) -> None:
    parse_config({"admin": {"token_env": name}}, env={})


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        ("score_api.base_url", {}),
        ("tfserving.base_url", {}),
        ("storage.s3.endpoint_url", {"storage": {"backend": "s3", "s3": {"bucket": "bkt"}}}),
    ],
)
@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@host:9000",
        "https://hunter2@host/base",
        "ftp://user:hunter2@host",
        "http://u:hunter2@ss@h",
    ],
)
def test_urls_with_credentials_are_refused_unseen(key: str, extra: dict[str, Any], url: str) -> None:
    table = _table(key, url)
    for name, section in extra.items():
        table.setdefault(name, {}).setdefault("backend", section["backend"])
        table[name].setdefault("s3", {}).update(section["s3"])
    with pytest.raises(ConfigError) as info:
        parse_config(table, env={})
    assert f"{key}: must not contain credentials (user:password@, not shown)" in info.value.problems[0]
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host/?token=hunter2", "must not have a query string or fragment (not shown)"),
        ("http://host/#hunter2", "must not have a query string or fragment (not shown)"),
        ("http://host:99999", "is not a valid URL"),
        ("http://[::1", "is not a valid URL"),
        ("http://u:p/hunter2@h", "is not a valid URL"),  # a port "p"; the rest masked all the same
        ("http://", "must be an http(s) URL with a host"),
        ("ftp://host", "must be an http(s) URL with a host"),
    ],
)
def test_urls_are_checked(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"score_api": {"base_url": url}}, env={})
    assert info.value.problems[0].startswith(f"score_api.base_url: {message}")
    assert "hunter2" not in str(info.value)


def test_check_config_never_prints_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Scenario: a DSN pasted into dsn_env and a URL with a password; check-config fails, silently."""
    path = tmp_path / "leaky.toml"
    path.write_text(
        '[score_api]\nbase_url = "http://svc:hunter2@scoreapi:8600"\n'
        '[storage]\nbackend = "postgres"\n[storage.postgres]\ndsn_env = "postgresql://u:hunter2@db/x"\n'
    )
    assert main(["check-config", str(path)]) == 2
    out = capsys.readouterr()
    assert "storage.postgres.dsn_env: looks like a secret value" in out.err
    assert "score_api.base_url: must not contain credentials" in out.err
    assert "hunter2" not in out.out + out.err


def test_an_unknown_key_is_named_with_url_credentials_masked() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"score_api": {"http://u:hunter2@h": 1}}, env={})
    assert info.value.problems == ("score_api.http://***@h: unknown key",)


def test_describe_masks_url_credentials_in_a_config_built_in_code() -> None:
    cfg = Config(score_api=ScoreApiConfig(base_url="http://svc:hunter2@scoreapi:8600"))
    assert describe(cfg)["score_api"]["base_url"] == "http://***@scoreapi:8600"


@pytest.mark.parametrize(
    ("key", "host", "ok"),
    [
        ("admin.host", "0.0.0.0", True),  # noqa: S104 - a value under test
        ("admin.host", "::", True),
        ("admin.host", "scorebeater.internal", True),
        ("admin.host", "http://0.0.0.0", False),
        ("model_server.host", "127.0.0.1:8501", False),
        ("score_api.replay.host", "", False),
        ("score_api.replay.host", "local host", False),
    ],
)
def test_listen_hosts_are_checked(key: str, host: str, ok: bool) -> None:
    if ok:
        parse_config(_table(key, host), env={})
    else:
        with pytest.raises(ConfigError, match=re.escape(f"{key}: must be a host name or IP address")):
            parse_config(_table(key, host), env={})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"model": {"name": ".."}}, "model.name: must be a name of [A-Za-z0-9._-]"),
        ({"tfserving": {"version_label": "a/b"}}, "tfserving.version_label: must be empty or a name"),
        ({"tfserving": {"challenger_label": "../x"}}, "tfserving.challenger_label: must be empty or a name"),
        (
            {"storage": {"backend": "s3", "s3": {"bucket": "bkt", "region": "us east"}}},
            "storage.s3.region: must be a region name",
        ),
        ({"training": {"hidden_units": []}}, "training.hidden_units: must hold 1 to 16 layer sizes"),
        (
            {"storage": {"backend": "postgres", "postgres": {"min_pool": 4, "max_pool": 2}}},
            "storage.postgres.max_pool: must be >= min_pool",
        ),
    ],
)
def test_names_and_cross_field_rules(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(table, env={"SCOREBEATER_PG_DSN": "dsn"})


# --- a secret named on the command line (replay-api --token-env) ---


def test_secret_from_option() -> None:
    env = {"SET_VAR": "tok", "EMPTY_VAR": ""}
    assert secret_from_option("SET_VAR", option="--token-env", required=True, env=env) == Secret("tok")
    assert secret_from_option("", option="--token-env", required=True, env=env) is None
    assert secret_from_option("UNSET_VAR", option="--token-env", required=False, env=env) is None
    for var in ("UNSET_VAR", "EMPTY_VAR"):
        with pytest.raises(ConfigError, match=f"--token-env: 1 problem.*{var} is not set or is empty"):
            secret_from_option(var, option="--token-env", required=True, env=env)
    with pytest.raises(ConfigError, match="looks like a secret value") as info:
        secret_from_option("s3cr3t=hunter2", option="--token-env", required=False, env=env)
    assert "hunter2" not in str(info.value)
