"""Typed configuration read from TOML; the only package that reads ``os.environ``.

(This Python package reads the TOML files; the repository's top-level ``config/`` directory
holds them.) The file maps onto a tree of frozen dataclasses. :func:`load_config` checks the
whole file and raises one :class:`~scorebeater.errors.ConfigError` listing every problem with
its key path (``storage.s3.bucket: required when storage.backend = "s3"``), so a user fixes a
file in one pass. Secrets never appear in the file: it names the environment variable that
holds each one (``token_env = "SCOREBEATER_ADMIN_TOKEN"``) and the value is wrapped in
:class:`Secret`, whose ``repr`` and ``str`` never show it. A secret pasted into a ``*_env``
key, or credentials in a URL, are refused without being echoed.

Relative paths in the file are resolved against the current working directory (the
project root in development, ``/app`` in the container).

Import from here; the modules, in import order:

- ``secret``: :class:`Secret` and the environment (its only reader);
- ``sections``: the typed sections, one frozen dataclass per TOML table;
- ``conversion``: TOML values to those types, problems collected with key paths;
- ``ranges``: the sane range of every numeric field;
- ``checks``: the rules beyond types (ranges, URLs, hosts, cron, names);
- ``loading``: :func:`load_config`, :func:`parse_config`, :func:`describe`.
"""

from scorebeater.config.loading import DEFAULT_CONFIG_PATH, describe, load_config, parse_config
from scorebeater.config.secret import Secret, secret_from_env, secret_from_option
from scorebeater.config.sections import (
    AddressingStyle,
    AdminConfig,
    BackendName,
    Config,
    DataConfig,
    GateConfig,
    LeadershipConfig,
    LocalStorageConfig,
    LogFormat,
    LoggingConfig,
    LogLevel,
    ModelConfig,
    ModelServerConfig,
    MonitoringConfig,
    PostgresStorageConfig,
    PredictFormat,
    PromotionConfig,
    ReplayConfig,
    S3StorageConfig,
    SchedulerConfig,
    ScoreApiConfig,
    StorageConfig,
    TFServingConfig,
    TrainingConfig,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AddressingStyle",
    "AdminConfig",
    "BackendName",
    "Config",
    "DataConfig",
    "GateConfig",
    "LeadershipConfig",
    "LocalStorageConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "ModelConfig",
    "ModelServerConfig",
    "MonitoringConfig",
    "PostgresStorageConfig",
    "PredictFormat",
    "PromotionConfig",
    "ReplayConfig",
    "S3StorageConfig",
    "SchedulerConfig",
    "ScoreApiConfig",
    "Secret",
    "StorageConfig",
    "TFServingConfig",
    "TrainingConfig",
    "describe",
    "load_config",
    "parse_config",
    "secret_from_env",
    "secret_from_option",
]
