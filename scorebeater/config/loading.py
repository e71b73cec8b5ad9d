"""Reading a config: TOML file -> typed sections -> rules -> secrets, every problem reported at once.

:func:`load_config` reads the file, :func:`parse_config` builds the sections
(:mod:`~scorebeater.config.conversion`), checks them (:mod:`~scorebeater.config.checks`) and
fills each secret from the environment variable its ``*_env`` field names. Only then, if any
step found a problem, it raises one :class:`~scorebeater.errors.ConfigError` listing them all.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scorebeater.config.checks import validate
from scorebeater.config.conversion import Problems, build_table
from scorebeater.config.secret import Secret, env_name_problem, redact_urls, secret_from_env
from scorebeater.config.sections import Config
from scorebeater.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_CONFIG_PATH = Path("config/scorebeater.toml")


def _secret(
    env: Mapping[str, str] | None, var: str, path: str, problems: Problems, *, required: bool
) -> Secret | None:
    problem = env_name_problem(var)
    if problem is not None:
        problems.add(path, problem)
        return None
    secret = secret_from_env(var, env=env)
    if secret is None and var and required:
        problems.add(path, f"environment variable {var} is not set")
    return secret


def _with_secrets(cfg: Config, env: Mapping[str, str] | None, problems: Problems) -> Config:
    sa = cfg.score_api
    token = _secret(env, sa.token_env, "score_api.token_env", problems, required=True)
    admin_token = _secret(env, cfg.admin.token_env, "admin.token_env", problems, required=False)
    pg = cfg.storage.postgres
    dsn = _secret(
        env,
        pg.dsn_env,
        "storage.postgres.dsn_env",
        problems,
        required=cfg.storage.backend == "postgres",
    )
    return dataclasses.replace(
        cfg,
        score_api=dataclasses.replace(sa, token=token),
        admin=dataclasses.replace(cfg.admin, token=admin_token),
        storage=dataclasses.replace(cfg.storage, postgres=dataclasses.replace(pg, dsn=dsn)),
    )


def parse_config(
    table: Mapping[str, Any], *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Build a :class:`Config` from a parsed TOML table.

    Args:
        table: the parsed TOML document.
        source: where it came from, for the error (a file path).
        env: environment to read secrets from (default ``os.environ``); tests pass a dict.

    Raises:
        ConfigError: listing every problem found, each with its key path.
    """
    problems = Problems()
    cfg: Config = build_table(Config, table, "", problems)
    validate(cfg, problems)
    cfg = _with_secrets(cfg, env, problems)
    if problems.items:
        raise ConfigError(source, problems.items)
    return cfg


def load_config(path: Path | str, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and check a TOML config file.

    Args:
        path: the TOML file.
        env: environment to read secrets from (default ``os.environ``); tests pass a dict.

    Raises:
        ConfigError: the file is missing, is not valid TOML, or has problems (all listed).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from exc
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an integer of 4,300+ digits
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc
    except RecursionError as exc:
        raise ConfigError(str(path), ["not valid TOML: arrays or tables nested too deeply"]) from exc
    return parse_config(table, source=str(path), env=env)


def describe(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data for ``check-config`` output.

    Secrets show as ``<set>``, and any URL's ``user:password@`` as ``***@`` (``load_config``
    refuses such URLs; this guards a config built in code).
    """

    def walk(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: walk(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Secret):
            return "<set>"
        if isinstance(obj, Path):
            return redact_urls(str(obj))
        if isinstance(obj, str):
            return redact_urls(obj)
        if isinstance(obj, tuple):
            return [walk(v) for v in obj]
        return obj

    return typing.cast("dict[str, Any]", walk(cfg))
