"""Typed configuration read from TOML; the only module that reads ``os.environ``.

The file maps onto a tree of frozen dataclasses. :func:`load_config` checks the whole file
and raises one :class:`~scorebeater.errors.ConfigError` listing every problem with its key
path (``storage.s3.bucket: required when storage.backend = "s3"``), so a user fixes a file in
one pass. Secrets never appear in the file: it names the environment variable that holds
each one (``token_env = "SCOREBEATER_ADMIN_TOKEN"``) and the value is wrapped in
:class:`Secret`, whose ``repr`` and ``str`` never show it.

Relative paths in the file are resolved against the current working directory (the
project root in development, ``/app`` in the container).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from croniter import croniter

from scorebeater.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config/scorebeater.toml")


class Secret:
    """A secret value read from the environment. Shows as ``Secret('***')`` everywhere."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret itself; call only where it is sent (an HTTP header, a DSN)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
BackendName = Literal["local", "s3", "postgres", "auto"]
PredictFormat = Literal["columnar", "row"]
AddressingStyle = Literal["path", "virtual", "auto"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    format: LogFormat = "auto"
    """``auto``: console on a terminal, JSON lines otherwise."""
    level: LogLevel = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class DataConfig:
    dir: Path | None = None
    """Directory laid out like the bundled data; ``None`` uses the copy inside the package."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayConfig:
    """The embedded replay Score API, started by ``scorebeater run`` when enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8600
    speed: float = 86400.0
    """Replay seconds per real second (86400: one day of the season per second)."""
    start: str = ""
    """ISO date the replay clock starts at; empty: the day before the season's first game."""
    season: int = 0
    """Season (end year) whose games are replayed; 0: the last season with games in the data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreApiConfig:
    base_url: str = "http://127.0.0.1:8600"
    token_env: str = ""
    """Environment variable holding the bearer token; empty: send no token."""
    token: Secret | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    max_attempts: int = 6
    retry_budget_s: float = 60.0
    """Bound on the total time one call may spend retrying."""
    page_size: int = 500
    max_connections: int = 8
    replay: ReplayConfig = ReplayConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    name: str = "score_beater"
    base_path: Path = Path("model/score_beater")
    """TF Serving's model base path: integer version directories live under it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelServerConfig:
    """The embedded TF Serving stand-in, started by ``scorebeater run`` when enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8501
    poll_interval_s: float = 1.0
    models_config: Path | None = None
    """Optional TF Serving ``models.config`` text file (version policy, labels)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TFServingConfig:
    base_url: str = "http://127.0.0.1:8501"
    version_label: str = ""
    """Label to resolve the pinned version from (``stable``); empty: the latest AVAILABLE."""
    format: PredictFormat = "columnar"
    max_batch_size: int = 1024
    """Rows per ``:predict`` call; keep at or below the server's ``max_batch_size``."""
    max_concurrency: int = 4
    timeout_s: float = 30.0
    connect_timeout_s: float = 3.0
    max_attempts: int = 5
    retry_budget_s: float = 60.0
    gzip: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalStorageConfig:
    root: Path = Path("var/store")


@dataclass(frozen=True, slots=True, kw_only=True)
class S3StorageConfig:
    bucket: str = ""
    prefix: str = "scorebeater"
    endpoint_url: str = ""
    """Empty: AWS's own endpoint for ``region``."""
    region: str = "us-east-1"
    addressing_style: AddressingStyle = "auto"
    multipart_threshold_bytes: int = 16 * 1024 * 1024
    max_pool_connections: int = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresStorageConfig:
    dsn_env: str = "SCOREBEATER_PG_DSN"
    dsn: Secret | None = field(default=None, repr=False)
    schema: str = "scorebeater"
    min_pool: int = 1
    max_pool: int = 8
    command_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    backend: BackendName = "local"
    auto_threshold_rows: int = 5_000_000
    """With ``backend = "auto"``: expected feature rows at or above this choose S3."""
    expected_rows: int = 0
    """With ``backend = "auto"``: the size estimate the choice is made on."""
    batch_rows: int = 50_000
    """Rows per streamed batch in reads and writes."""
    local: LocalStorageConfig = LocalStorageConfig()
    s3: S3StorageConfig = S3StorageConfig()
    postgres: PostgresStorageConfig = PostgresStorageConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    poll_interval_s: float = 5.0
    """How often the Score API's games feed is polled for newly final games."""
    validation_cron: str = "*/15 * * * *"
    refeed_cron: str = ""
    """Cron expression for a full refeed (``0 4 * * *`` nightly); empty: none."""
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    shutdown_grace_s: float = 10.0
    seasons: tuple[int, ...] = ()
    """Seasons the daemon follows; empty: every season the Score API reports."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    token_env: str = "SCOREBEATER_ADMIN_TOKEN"  # noqa: S105 - the name of a variable, not a secret
    token: Secret | None = field(default=None, repr=False)
    """Bearer token for state-changing endpoints; unset: those endpoints answer 403."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    """Promotion gate tolerances: how much worse than the champion a candidate may be."""

    max_auc_drop: float = 0.005
    max_brier_increase: float = 0.002
    max_log_loss_increase: float = 0.005
    max_ece: float = 0.03
    eval_seasons: tuple[int, ...] = ()
    """Seasons both models are scored on; empty: the last season with games."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingConfig:
    # Tuned on season 2013 with 2007-2012 for fitting (docs/model/evaluation.md); the
    # remaining choices (wide part, L2, patience) are constants in training/network.py.
    seed: int = 7
    epochs: int = 40
    batch_size: int = 1024
    learning_rate: float = 0.001
    hidden_units: tuple[int, ...] = (32, 16)
    dropout: float = 0.2
    holdout_seasons: int = 1
    """The last N seasons with games are never used for fitting (the honest test set)."""
    validation_seasons: int = 1
    """The N seasons before the holdout are used for early stopping and tuning."""
    retrain_on_season_final: bool = False
    report_dir: Path = Path("reports")
    gate: GateConfig = GateConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    logging: LoggingConfig = LoggingConfig()
    data: DataConfig = DataConfig()
    score_api: ScoreApiConfig = ScoreApiConfig()
    model: ModelConfig = ModelConfig()
    model_server: ModelServerConfig = ModelServerConfig()
    tfserving: TFServingConfig = TFServingConfig()
    storage: StorageConfig = StorageConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    admin: AdminConfig = AdminConfig()
    training: TrainingConfig = TrainingConfig()


# --- loading -------------------------------------------------------------------------------

_SECRET_FIELDS = {"token", "dsn"}
"""Fields filled from the environment, never from the file."""


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"array of {_type_name(get_args(tp)[0])}"
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            tp.__name__, "path" if tp is Path else tp.__name__
        )
    return str(tp)


def _convert(tp: Any, value: Any, path: str, problems: _Problems) -> Any:  # noqa: C901, PLR0911, PLR0912
    """Convert one TOML value to ``tp``; record a problem and return ``None`` if it does not fit."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if value == "" and Path in inner:
            return None
        return _convert(inner[0], value, path, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.add(path, f"must be one of {_type_name(tp)}, got {value!r}")
            return None
        return value
    if origin is tuple:
        if not isinstance(value, list):
            problems.add(path, f"must be an {_type_name(tp)}, got {type(value).__name__}")
            return None
        item_tp = get_args(tp)[0]
        items = [_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.add(path, f"must be a table, got {type(value).__name__}")
            return None
        return _build(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"must be a boolean, got {value!r}")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"must be an integer, got {value!r}")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(path, f"must be a number, got {value!r}")
            return None
        if not math.isfinite(value):
            problems.add(path, f"must be finite, got {value!r}")
            return None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"must be a string, got {value!r}")
            return None
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            problems.add(path, f"must be a non-empty path string, got {value!r}")
            return None
        return Path(value)
    problems.add(path, f"unsupported type {tp!r}")  # pragma: no cover - a bug in this module
    return None


def _build(cls: Any, table: Mapping[str, Any], path: str, problems: _Problems) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name not in _SECRET_FIELDS}
    for key in table:
        if key not in known:
            where = f"{path}.{key}" if path else key
            problems.add(where, "unknown key")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in table or f.name in _SECRET_FIELDS:
            continue
        where = f"{path}.{f.name}" if path else f.name
        value = _convert(hints[f.name], table[f.name], where, problems)
        if value is not None:
            kwargs[f.name] = value
    return cls(**kwargs)


_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _secret_from_env(
    env: Mapping[str, str], var: str, path: str, problems: _Problems, *, required: bool
) -> Secret | None:
    if not var:
        return None
    if not set(var) <= _ENV_NAME_CHARS or var[0].isdigit():
        problems.add(path, f"must name an environment variable (A-Z, 0-9, _), got {var!r}")
        return None
    value = env.get(var, "")
    if not value:
        if required:
            problems.add(path, f"environment variable {var} is not set")
        return None
    return Secret(value)


def secret_from_env(var: str, *, env: Mapping[str, str] | None = None) -> Secret | None:
    """The secret held by environment variable ``var`` (``None`` when unset or empty).

    For commands that take no config file (``replay-api --token-env VAR``); config files go
    through ``load_config``, which also validates the variable's name.
    """
    if not var:
        return None
    value = (os.environ if env is None else env).get(var, "")
    return Secret(value) if value else None


def _check_positive(problems: _Problems, path: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        problems.add(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_url(problems: _Problems, path: str, url: str) -> None:
    if not url.startswith(("http://", "https://")):
        problems.add(path, f"must be an http(s) URL, got {url!r}")


def _check_port(problems: _Problems, path: str, port: int) -> None:
    if not 0 <= port <= 65535:  # noqa: PLR2004 - the TCP port range
        problems.add(path, f"must be a TCP port (0-65535), got {port}")


def _check_cron(problems: _Problems, path: str, expr: str) -> None:
    if expr and not croniter.is_valid(expr):
        problems.add(path, f"is not a valid cron expression: {expr!r}")


def _validate(cfg: Config, problems: _Problems) -> None:  # noqa: C901, PLR0912, PLR0915 - one flat list of checks
    sa = cfg.score_api
    _check_url(problems, "score_api.base_url", sa.base_url)
    for name in ("timeout_s", "connect_timeout_s", "retry_budget_s"):
        _check_positive(problems, f"score_api.{name}", getattr(sa, name))
    for name in ("max_attempts", "page_size", "max_connections"):
        _check_positive(problems, f"score_api.{name}", getattr(sa, name))
    _check_port(problems, "score_api.replay.port", sa.replay.port)
    _check_positive(problems, "score_api.replay.speed", sa.replay.speed)
    if sa.replay.start:
        from datetime import date  # noqa: PLC0415 - only needed here

        try:
            date.fromisoformat(sa.replay.start)
        except ValueError:
            problems.add("score_api.replay.start", f"must be an ISO date, got {sa.replay.start!r}")

    _check_port(problems, "model_server.port", cfg.model_server.port)
    _check_positive(problems, "model_server.poll_interval_s", cfg.model_server.poll_interval_s)
    if not cfg.model.name or "/" in cfg.model.name or ":" in cfg.model.name:
        problems.add("model.name", f"must be non-empty without '/' or ':', got {cfg.model.name!r}")

    tf = cfg.tfserving
    _check_url(problems, "tfserving.base_url", tf.base_url)
    for name in ("max_batch_size", "max_concurrency", "timeout_s", "connect_timeout_s"):
        _check_positive(problems, f"tfserving.{name}", getattr(tf, name))
    for name in ("max_attempts", "retry_budget_s"):
        _check_positive(problems, f"tfserving.{name}", getattr(tf, name))

    st = cfg.storage
    _check_positive(problems, "storage.batch_rows", st.batch_rows)
    _check_positive(problems, "storage.auto_threshold_rows", st.auto_threshold_rows)
    _check_positive(problems, "storage.expected_rows", st.expected_rows, allow_zero=True)
    uses = {st.backend} if st.backend != "auto" else {"local", "s3"}
    if "s3" in uses and (st.backend == "s3" or st.s3.bucket):
        if not st.s3.bucket:
            problems.add("storage.s3.bucket", 'required when storage.backend = "s3"')
        elif not _valid_bucket(st.s3.bucket):
            problems.add("storage.s3.bucket", f"is not a valid S3 bucket name: {st.s3.bucket!r}")
        if st.s3.endpoint_url:
            _check_url(problems, "storage.s3.endpoint_url", st.s3.endpoint_url)
        if not _valid_prefix(st.s3.prefix):
            problems.add(
                "storage.s3.prefix", f"must be slash-separated [A-Za-z0-9._-] segments, got {st.s3.prefix!r}"
            )
    if st.backend == "postgres":
        schema = st.postgres.schema
        if not _PG_SCHEMA.fullmatch(schema) or schema.startswith("pg_"):
            problems.add(
                "storage.postgres.schema",
                f"must match [a-z_][a-z0-9_]* (at most 63 characters, not pg_*), got {schema!r}",
            )
        if st.postgres.min_pool < 1 or st.postgres.max_pool < st.postgres.min_pool:
            problems.add("storage.postgres.max_pool", "must be >= min_pool >= 1")

    sc = cfg.scheduler
    for name in ("poll_interval_s", "backoff_initial_s", "backoff_max_s"):
        _check_positive(problems, f"scheduler.{name}", getattr(sc, name))
    _check_positive(problems, "scheduler.shutdown_grace_s", sc.shutdown_grace_s, allow_zero=True)
    _check_cron(problems, "scheduler.validation_cron", sc.validation_cron)
    _check_cron(problems, "scheduler.refeed_cron", sc.refeed_cron)
    _check_port(problems, "admin.port", cfg.admin.port)

    tr = cfg.training
    for name in ("epochs", "batch_size", "learning_rate"):
        _check_positive(problems, f"training.{name}", getattr(tr, name))
    if not 0 <= tr.dropout < 1:
        problems.add("training.dropout", f"must be in [0, 1), got {tr.dropout}")
    if not tr.hidden_units or any(u <= 0 for u in tr.hidden_units):
        problems.add("training.hidden_units", "must be a non-empty array of positive integers")
    _check_positive(problems, "training.holdout_seasons", tr.holdout_seasons, allow_zero=True)
    _check_positive(problems, "training.validation_seasons", tr.validation_seasons)


_PG_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _valid_bucket(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return 3 <= len(name) <= 63 and set(name) <= allowed and name[0].isalnum() and name[-1].isalnum()  # noqa: PLR2004


def _valid_prefix(prefix: str) -> bool:
    if prefix == "":
        return True
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return all(seg and seg not in {".", ".."} and set(seg) <= allowed for seg in prefix.split("/"))


def _with_secrets(cfg: Config, env: Mapping[str, str], problems: _Problems) -> Config:
    sa = cfg.score_api
    token = _secret_from_env(env, sa.token_env, "score_api.token_env", problems, required=True)
    admin_token = _secret_from_env(env, cfg.admin.token_env, "admin.token_env", problems, required=False)
    pg = cfg.storage.postgres
    dsn = _secret_from_env(
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

    Raises:
        ConfigError: listing every problem found, each with its key path.
    """
    problems = _Problems()
    cfg = _build(Config, table, "", problems)
    _validate(cfg, problems)
    cfg = _with_secrets(cfg, os.environ if env is None else env, problems)
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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc
    return parse_config(table, source=str(path), env=env)


def describe(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data for ``check-config`` output; secrets show as set/unset."""

    def walk(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: walk(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Secret):
            return "<set>"
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, tuple):
            return [walk(v) for v in obj]
        return obj

    return typing.cast("dict[str, Any]", walk(cfg))
