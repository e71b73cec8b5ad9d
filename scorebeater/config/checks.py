"""The config's rules beyond field types: ranges, URLs, hosts, cron expressions, names.

:func:`validate` runs after :mod:`~scorebeater.config.conversion` has built the sections (a
field that failed to convert keeps its default here). Every numeric field is checked against
its range in :mod:`~scorebeater.config.ranges`. A backend's section is checked only when that
backend may be used, so a file need not fill sections it does not use. URLs never carry
credentials (``user:password@``): those belong in the environment, and a URL is never echoed
with them.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from urllib.parse import urlsplit

from croniter import croniter

from scorebeater.config.conversion import Problems, shown
from scorebeater.config.ranges import check_ranges
from scorebeater.config.sections import (
    Config,
    LeadershipConfig,
    ModelConfig,
    PromotionConfig,
    SchedulerConfig,
    ScoreApiConfig,
    StorageConfig,
    TFServingConfig,
    TrainingConfig,
)
from scorebeater.storage.base import is_schema_name

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_MAX_LAYERS = 16
_MAX_CRON_CHARS = 200


def validate(cfg: Config, problems: Problems) -> None:
    """Record in ``problems`` every rule ``cfg`` breaks, each with its key path; never raises."""
    check_ranges(cfg, problems, skip=_unused_backends(cfg.storage))
    _score_api(cfg.score_api, problems)
    _check_host(problems, "model_server.host", cfg.model_server.host)
    _check_host(problems, "admin.host", cfg.admin.host)
    _model(cfg.model, problems)
    _tfserving(cfg.tfserving, problems)
    _storage(cfg.storage, problems)
    _scheduler(cfg.scheduler, problems)
    _training(cfg.training, problems)
    _promotion(cfg.promotion, problems)
    _leadership(cfg.leadership, problems)


def _unused_backends(st: StorageConfig) -> set[str]:
    uses = {st.backend} if st.backend != "auto" else {"local", "s3"}
    return {f"storage.{name}" for name in ("local", "s3", "postgres") if name not in uses}


def _check_url(problems: Problems, path: str, url: str) -> None:
    """An http(s) URL with a host, a valid port, and no credentials, query or fragment."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        problems.add(path, f"is not a valid URL: {shown(url)}")
        return
    if "@" in parts.netloc:
        problems.add(
            path,
            "must not contain credentials (user:password@, not shown): "
            "secrets belong in the environment (see the *_env settings)",
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.add(path, f"must be an http(s) URL with a host, got {shown(url)}")
    elif parts.query or parts.fragment:
        problems.add(path, "must not have a query string or fragment (not shown)")


def _check_host(problems: Problems, path: str, host: str) -> None:
    """A host name or IP address to listen on: no scheme, port, path or blanks."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            problems.add(path, f"must be a host name or IP address (no scheme or port), got {shown(host)}")
        return
    if not host or any(c.isspace() or c in "/@[]\0" for c in host):
        problems.add(path, f"must be a host name or IP address (no scheme or port), got {shown(host)}")


def _check_cron(problems: Problems, path: str, expr: str) -> None:
    # The length cap first: croniter takes seconds over a long list ("1,1,1,...").
    if expr and (len(expr) > _MAX_CRON_CHARS or not croniter.is_valid(expr)):
        problems.add(path, f"is not a valid cron expression: {shown(expr)}")


def _score_api(sa: ScoreApiConfig, problems: Problems) -> None:
    _check_url(problems, "score_api.base_url", sa.base_url)
    _check_host(problems, "score_api.replay.host", sa.replay.host)
    if sa.replay.start:
        try:
            date.fromisoformat(sa.replay.start)
        except ValueError:
            problems.add("score_api.replay.start", f"must be an ISO date, got {shown(sa.replay.start)}")


def _is_label(text: str) -> bool:
    """A name that is safe as one URL path segment: ``[A-Za-z0-9._-]+``, not ``.`` or ``..``."""
    return bool(text) and set(text) <= _LABEL_CHARS and text not in {".", ".."}


def _model(model: ModelConfig, problems: Problems) -> None:
    if not _is_label(model.name):
        problems.add("model.name", f"must be a name of [A-Za-z0-9._-], got {shown(model.name)}")


def _tfserving(tf: TFServingConfig, problems: Problems) -> None:
    _check_replicas(problems, tf)
    for key, label in (("version_label", tf.version_label), ("challenger_label", tf.challenger_label)):
        if label and not _is_label(label):
            problems.add(f"tfserving.{key}", f"must be empty or a name of [A-Za-z0-9._-], got {shown(label)}")


def _check_replicas(problems: Problems, tf: TFServingConfig) -> None:
    """``base_url``: one URL, or a list of at least one, each checked as one and none repeated."""
    urls = tf.base_urls
    if not urls:
        problems.add("tfserving.base_url", "must name at least one URL")
    seen: set[tuple[str, str | None, int, str]] = set()
    for i, url in enumerate(urls):
        path = "tfserving.base_url" if isinstance(tf.base_url, str) else f"tfserving.base_url[{i}]"
        before = len(problems.items)
        _check_url(problems, path, url)
        if len(problems.items) > before:
            continue
        parts = urlsplit(url)
        # The same server written twice (case, default port, trailing slash) is one replica.
        port = parts.port or (443 if parts.scheme == "https" else 80)
        server = (parts.scheme, parts.hostname, port, parts.path.rstrip("/"))
        if server in seen:
            problems.add(path, f"repeats an earlier replica: {shown(url)}")
        seen.add(server)


def _promotion(pr: PromotionConfig, problems: Problems) -> None:
    # TF Serving's own rule for version labels, stricter than a URL segment (no '.' or '-').
    if not re.fullmatch(r"[A-Za-z0-9_]+", pr.label):
        problems.add("promotion.label", f"must be a name of [A-Za-z0-9_], got {shown(pr.label)}")


def _storage(st: StorageConfig, problems: Problems) -> None:
    unused = _unused_backends(st)
    if "storage.s3" not in unused and (st.backend == "s3" or st.s3.bucket):
        if not st.s3.bucket:
            problems.add("storage.s3.bucket", 'required when storage.backend = "s3"')
        elif not _valid_bucket(st.s3.bucket):
            problems.add("storage.s3.bucket", f"is not a valid S3 bucket name: {shown(st.s3.bucket)}")
        if st.s3.endpoint_url:
            _check_url(problems, "storage.s3.endpoint_url", st.s3.endpoint_url)
        if not _valid_prefix(st.s3.prefix):
            problems.add(
                "storage.s3.prefix",
                f"must be slash-separated [A-Za-z0-9._-] segments, got {shown(st.s3.prefix)}",
            )
        if not _is_label(st.s3.region):
            problems.add("storage.s3.region", f"must be a region name (us-east-1), got {shown(st.s3.region)}")
    if "storage.postgres" not in unused:
        schema = st.postgres.schema
        if not is_schema_name(schema):
            problems.add(
                "storage.postgres.schema",
                f"must match [a-z_][a-z0-9_]* (at most 63 characters, not pg_*), got {shown(schema)}",
            )
        if st.postgres.max_pool < st.postgres.min_pool:
            problems.add("storage.postgres.max_pool", "must be >= min_pool")


def _scheduler(sc: SchedulerConfig, problems: Problems) -> None:
    if sc.backoff_max_s < sc.backoff_initial_s:
        problems.add("scheduler.backoff_max_s", "must be >= backoff_initial_s")
    _check_cron(problems, "scheduler.validation_cron", sc.validation_cron)
    _check_cron(problems, "scheduler.refeed_cron", sc.refeed_cron)


def _leadership(le: LeadershipConfig, problems: Problems) -> None:
    # A standby polls on a session the server ends after lease_ttl_s idle (the Postgres lease),
    # and a takeover is bounded by lease_ttl_s + poll_s: a poll as long as the lease defeats both.
    if le.poll_s >= le.lease_ttl_s:
        # Named on both keys: either may be the one to change.
        problems.add("leadership.poll_s", f"must be < leadership.lease_ttl_s ({shown(le.lease_ttl_s)})")
        problems.add("leadership.lease_ttl_s", f"must be > leadership.poll_s ({shown(le.poll_s)})")


def _training(tr: TrainingConfig, problems: Problems) -> None:
    if not 1 <= len(tr.hidden_units) <= _MAX_LAYERS:
        problems.add("training.hidden_units", f"must hold 1 to {_MAX_LAYERS} layer sizes")


def _valid_bucket(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return 3 <= len(name) <= 63 and set(name) <= allowed and name[0].isalnum() and name[-1].isalnum()  # noqa: PLR2004


def _valid_prefix(prefix: str) -> bool:
    if prefix == "":
        return True
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return all(seg and seg not in {".", ".."} and set(seg) <= allowed for seg in prefix.split("/"))
