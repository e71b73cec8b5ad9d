"""The config's rules beyond field types: ranges, URLs, ports, cron expressions, names.

:func:`validate` runs after :mod:`~scorebeater.config.conversion` has built the sections (a
field that failed to convert keeps its default here). A backend's section is checked only
when that backend may be used, so a file need not fill sections it does not use.
"""

from __future__ import annotations

from datetime import date

from croniter import croniter

from scorebeater.config.conversion import Problems
from scorebeater.config.sections import (
    Config,
    ModelConfig,
    ModelServerConfig,
    SchedulerConfig,
    ScoreApiConfig,
    StorageConfig,
    TFServingConfig,
    TrainingConfig,
)
from scorebeater.storage.base import is_schema_name


def validate(cfg: Config, problems: Problems) -> None:
    """Record in ``problems`` every rule ``cfg`` breaks, each with its key path; never raises."""
    _score_api(cfg.score_api, problems)
    _model(cfg.model_server, cfg.model, problems)
    _tfserving(cfg.tfserving, problems)
    _storage(cfg.storage, problems)
    _scheduler(cfg.scheduler, problems)
    _check_port(problems, "admin.port", cfg.admin.port)
    _training(cfg.training, problems)


def _check_positive(problems: Problems, path: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        problems.add(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_url(problems: Problems, path: str, url: str) -> None:
    if not url.startswith(("http://", "https://")):
        problems.add(path, f"must be an http(s) URL, got {url!r}")


def _check_port(problems: Problems, path: str, port: int) -> None:
    if not 0 <= port <= 65535:  # noqa: PLR2004 - the TCP port range
        problems.add(path, f"must be a TCP port (0-65535), got {port}")


def _check_cron(problems: Problems, path: str, expr: str) -> None:
    if expr and not croniter.is_valid(expr):
        problems.add(path, f"is not a valid cron expression: {expr!r}")


def _score_api(sa: ScoreApiConfig, problems: Problems) -> None:
    _check_url(problems, "score_api.base_url", sa.base_url)
    for name in ("timeout_s", "connect_timeout_s", "retry_budget_s"):
        _check_positive(problems, f"score_api.{name}", getattr(sa, name))
    for name in ("max_attempts", "page_size", "max_connections"):
        _check_positive(problems, f"score_api.{name}", getattr(sa, name))
    _check_port(problems, "score_api.replay.port", sa.replay.port)
    _check_positive(problems, "score_api.replay.speed", sa.replay.speed)
    if sa.replay.start:
        try:
            date.fromisoformat(sa.replay.start)
        except ValueError:
            problems.add("score_api.replay.start", f"must be an ISO date, got {sa.replay.start!r}")


def _model(server: ModelServerConfig, model: ModelConfig, problems: Problems) -> None:
    _check_port(problems, "model_server.port", server.port)
    _check_positive(problems, "model_server.poll_interval_s", server.poll_interval_s)
    if not model.name or "/" in model.name or ":" in model.name:
        problems.add("model.name", f"must be non-empty without '/' or ':', got {model.name!r}")


def _tfserving(tf: TFServingConfig, problems: Problems) -> None:
    _check_url(problems, "tfserving.base_url", tf.base_url)
    for name in ("max_batch_size", "max_concurrency", "timeout_s", "connect_timeout_s"):
        _check_positive(problems, f"tfserving.{name}", getattr(tf, name))
    for name in ("max_attempts", "retry_budget_s"):
        _check_positive(problems, f"tfserving.{name}", getattr(tf, name))


def _storage(st: StorageConfig, problems: Problems) -> None:
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
        if not is_schema_name(schema):
            problems.add(
                "storage.postgres.schema",
                f"must match [a-z_][a-z0-9_]* (at most 63 characters, not pg_*), got {schema!r}",
            )
        if st.postgres.min_pool < 1 or st.postgres.max_pool < st.postgres.min_pool:
            problems.add("storage.postgres.max_pool", "must be >= min_pool >= 1")


def _scheduler(sc: SchedulerConfig, problems: Problems) -> None:
    for name in ("poll_interval_s", "backoff_initial_s", "backoff_max_s"):
        _check_positive(problems, f"scheduler.{name}", getattr(sc, name))
    _check_positive(problems, "scheduler.shutdown_grace_s", sc.shutdown_grace_s, allow_zero=True)
    _check_cron(problems, "scheduler.validation_cron", sc.validation_cron)
    _check_cron(problems, "scheduler.refeed_cron", sc.refeed_cron)


def _training(tr: TrainingConfig, problems: Problems) -> None:
    for name in ("epochs", "batch_size", "learning_rate"):
        _check_positive(problems, f"training.{name}", getattr(tr, name))
    if not 0 <= tr.dropout < 1:
        problems.add("training.dropout", f"must be in [0, 1), got {tr.dropout}")
    if not tr.hidden_units or any(u <= 0 for u in tr.hidden_units):
        problems.add("training.hidden_units", "must be a non-empty array of positive integers")
    _check_positive(problems, "training.holdout_seasons", tr.holdout_seasons, allow_zero=True)
    _check_positive(problems, "training.validation_seasons", tr.validation_seasons)


def _valid_bucket(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return 3 <= len(name) <= 63 and set(name) <= allowed and name[0].isalnum() and name[-1].isalnum()  # noqa: PLR2004


def _valid_prefix(prefix: str) -> bool:
    if prefix == "":
        return True
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return all(seg and seg not in {".", ".."} and set(seg) <= allowed for seg in prefix.split("/"))
