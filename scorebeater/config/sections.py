"""The config's typed sections: one frozen dataclass per TOML table, with its defaults.

Each field's type is what :mod:`scorebeater.config.conversion` checks a file value against;
the cross-field rules live in :mod:`scorebeater.config.checks`. Fields typed :class:`Secret`
are never read from the file: they are filled from the environment variable named by the
matching ``*_env`` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scorebeater.config.secret import Secret

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
    base_url: str | tuple[str, ...] = "http://127.0.0.1:8501"
    """One TF Serving URL, or a list of replicas serving the same models (read :attr:`base_urls`)."""
    version_label: str = ""
    """Label to resolve the pinned version from (``stable``); empty: the latest AVAILABLE."""
    challenger_label: str = ""
    """Label of the shadow challenger (``canary``): its version scores every row the champion
    scores, stored with role ``challenger`` and never served by default; empty: no shadow.
    Skipped while the label is unassigned or names the champion's version."""
    format: PredictFormat = "columnar"
    max_batch_size: int = 1024
    """Rows per ``:predict`` call; keep at or below the server's ``max_batch_size``."""
    max_concurrency: int = 4
    timeout_s: float = 30.0
    connect_timeout_s: float = 3.0
    max_attempts: int = 5
    retry_budget_s: float = 60.0
    gzip: bool = False
    eject_cooldown_s: float = 10.0
    """With several replicas: how long one that failed to connect, or failed a health check, gets
    no requests before it is probed back in."""
    pin_wait_s: float = 30.0
    """With several replicas: how long a pin waits for the healthy replicas to agree on a
    version (a label moved, or a version loaded, on some only) before it settles on the version
    most of them serve and ejects the others."""
    models_config: Path | None = None
    """The ``models.config`` file TF Serving polls, which ``scorebeater promote`` and the promotion
    stage rewrite to move a label; ``None``/empty: ``model_server.models_config``."""

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The replicas' URLs, in configured order (one for a single ``base_url`` string)."""
        return (self.base_url,) if isinstance(self.base_url, str) else self.base_url


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
    """With ``backend = "auto"``: the size estimate (feature rows) the choice is made on. 0: the
    daemon measures it at start-up (players x game days x followed seasons from the Score API,
    plus the rows already stored; a store already holding rows is kept:
    :mod:`scorebeater.storage.sizing`); non-zero: this number, nothing is measured."""
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
    """Promotion gate tolerances: how much worse than the champion a candidate may be (a negative
    tolerance requires the candidate to be that much better)."""

    max_auc_drop: float = 0.005
    max_brier_increase: float = 0.002
    max_log_loss_increase: float = 0.005
    max_ece: float = 0.03
    eval_seasons: tuple[int, ...] = ()
    """Seasons both models are scored on; empty: the last season with games."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingConfig:
    # Chosen on the rolling-origin backtest (docs/model/backtest.md); the remaining choices
    # (wide part, L2, patience, variance floor) are constants in training/network.py.
    seed: int = 7
    epochs: int = 40
    batch_size: int = 1024
    learning_rate: float = 0.0003
    hidden_units: tuple[int, ...] = (32, 16)
    dropout: float = 0.3
    ensemble_members: int = 1
    """Networks (seeds) averaged inside the served graph (3 gained nothing on the backtest)."""
    long_history_from: int = 1960
    """First season of the season-start rows built from season totals alone (0: none); the
    backtest preferred 1960 to 1980: the 1960s' changing schedules teach what a change does."""
    long_history_weight: float = 10.0
    """Loss weight of one season-start row (a per-game row weighs 1)."""
    calibrate: bool = False
    """Fit Platt scaling on the validation season, inside the graph. Off: on the backtest it
    moved mean ECE by 0.0002 (noise: the fitted bias swings between -0.23 and +0.26 with the
    validation season's base rate), and the published refit, which is fitted on that season
    too, would count its shift twice."""
    holdout_seasons: int = 1
    """The gate fold's evaluation: the last N seasons with games (at least 1), never fitted on
    by the fold model the gate judges. The published refit then uses every season."""
    validation_seasons: int = 1
    """The N seasons before those early-stop (and calibrate) the gate fold's model."""
    retrain_on_season_final: bool = False
    report_dir: Path = Path("reports")
    gate: GateConfig = GateConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionConfig:
    """Moving a label (``stable``) to another model version, by an operator or by the policy."""

    auto: bool = False
    """Promote the challenger automatically when :attr:`min_labelled_rows`,
    :attr:`min_auc_gain` and :attr:`max_ece_increase` all hold (off: operators only)."""
    label: str = "stable"
    """The label promotions move (TF Serving's rule: ``[A-Za-z0-9_]+``)."""
    min_labelled_rows: int = 2000
    """Labelled rows (final outcomes) both versions predicted, at least, before the policy judges."""
    min_auc_gain: float = 0.002
    """Challenger ROC AUC minus champion ROC AUC on the same labelled rows (bucket ``all``), at least."""
    max_ece_increase: float = 0.0
    """Challenger ECE minus champion ECE, at most (0: no worse calibrated)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringConfig:
    """The monitoring stage: input drift (PSI) and estimated performance (CBPE) of the champion."""

    enabled: bool = True
    interval_s: float = 900.0
    """Seconds between runs; a prediction run that stored rows also wakes it (coalesced)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeadershipConfig:
    """Active/standby replicas of ``scorebeater run`` over one store: one leader runs the stages.

    A standby takes over at most ``lease_ttl_s + poll_s`` seconds after the leader stops renewing.
    """

    lease_ttl_s: float = 10.0
    """How long a leader that stops renewing (paused, partitioned, killed) keeps leadership."""
    poll_s: float = 2.0
    """How often a standby tries to take over; a leader renews every ``min(poll_s, lease_ttl_s / 3)``."""
    holder_id: str = ""
    """This replica's name in the lease and logs; empty: ``<host>:<pid>``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration: one field per top-level TOML table. Build it with ``load_config``."""

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
    promotion: PromotionConfig = PromotionConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    leadership: LeadershipConfig = LeadershipConfig()
