"""The sane range of every numeric config field, by key path, and the check against them.

A value of the right type can still fail every run (``storage.batch_rows = 10^20``,
``scheduler.seasons = [-2014]``): :data:`RANGES` bounds each numeric field, including the
items of an integer array (``training.hidden_units[0]``; seasons share
:data:`scorebeater.bounds.SEASON` with every other boundary), and :func:`check_ranges` reports
each value outside its range with its key path. A unit test checks that every numeric field
of :class:`~scorebeater.config.sections.Config` has an entry here, so a new field cannot
ship unbounded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scorebeater import bounds

if TYPE_CHECKING:
    from collections.abc import Collection

    from scorebeater.config.conversion import Problems


@dataclass(frozen=True, slots=True)
class Range:
    """An interval ``lo..hi``; ``lo_open``/``hi_open`` exclude that end; ``or_zero`` also allows 0."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    or_zero: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (or is 0 when ``or_zero``)."""
        if self.or_zero and value == 0:
            return True
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        """The interval in words: ``from 1 to 100``, ``> 0 and <= 3600``, ``0 or from 1947 to 2100``."""
        if not self.lo_open and not self.hi_open:
            text = f"from {_num(self.lo)} to {_num(self.hi)}"
        else:
            low = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
            high = f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
            text = f"{low} and {high}"
        return f"0 or {text}" if self.or_zero else text


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


SEASON = Range(bounds.SEASON.lo, bounds.SEASON.hi)
"""A season, by its end year: the range the loader, the Score API records and storage accept."""
PORT = Range(0, 65535)
"""A TCP port; 0 picks a free one."""
TIMEOUT_S = Range(0, 3600, lo_open=True)
"""One request's deadline: more than nothing, at most an hour."""
BUDGET_S = Range(0, 86400, lo_open=True)
"""A total time spent retrying or waiting: more than nothing, at most a day."""
ATTEMPTS = Range(1, 100)
CONNECTIONS = Range(1, 1000)
ROWS = Range(1, 10**12)
FRACTION = Range(0, 1)

RANGES: dict[str, Range] = {
    "score_api.timeout_s": TIMEOUT_S,
    "score_api.connect_timeout_s": TIMEOUT_S,
    "score_api.max_attempts": ATTEMPTS,
    "score_api.retry_budget_s": BUDGET_S,
    "score_api.page_size": Range(1, 1000),  # the API's own maximum (clients/score_api.py)
    "score_api.max_connections": CONNECTIONS,
    "score_api.replay.port": PORT,
    "score_api.replay.speed": Range(0, 1e9, lo_open=True),
    "score_api.replay.season": Range(SEASON.lo, SEASON.hi, or_zero=True),
    "model_server.port": PORT,
    "model_server.poll_interval_s": TIMEOUT_S,
    "tfserving.max_batch_size": Range(1, 1_000_000),
    "tfserving.max_concurrency": CONNECTIONS,
    "tfserving.timeout_s": TIMEOUT_S,
    "tfserving.connect_timeout_s": TIMEOUT_S,
    "tfserving.max_attempts": ATTEMPTS,
    "tfserving.retry_budget_s": BUDGET_S,
    "tfserving.eject_cooldown_s": Range(0, 3600, lo_open=True),
    "tfserving.pin_wait_s": Range(0, 3600),
    "storage.auto_threshold_rows": ROWS,
    "storage.expected_rows": Range(0, ROWS.hi),
    "storage.batch_rows": Range(1, 10_000_000),
    # Up to S3's largest single PUT (5 GiB); parts are never smaller than S3's 5 MiB minimum.
    "storage.s3.multipart_threshold_bytes": Range(1, 5 * 1024**3),
    "storage.s3.max_pool_connections": CONNECTIONS,
    "storage.postgres.min_pool": CONNECTIONS,
    "storage.postgres.max_pool": CONNECTIONS,
    "storage.postgres.command_timeout_s": BUDGET_S,
    "scheduler.poll_interval_s": BUDGET_S,
    "scheduler.backoff_initial_s": BUDGET_S,
    "scheduler.backoff_max_s": BUDGET_S,
    "scheduler.shutdown_grace_s": Range(0, 3600),
    "scheduler.seasons": SEASON,
    "admin.port": PORT,
    "training.seed": Range(0, 2**32 - 1),  # NumPy and TensorFlow seeds are 32-bit
    "training.epochs": Range(1, 10_000),
    "training.batch_size": Range(1, 1_000_000),
    "training.learning_rate": Range(0, 10, lo_open=True),
    "training.hidden_units": Range(1, 65536),
    "training.dropout": Range(0, 1, hi_open=True),
    "training.ensemble_members": Range(1, 32),
    "training.long_history_from": Range(SEASON.lo, SEASON.hi, or_zero=True),
    "training.long_history_weight": Range(0, 1000),
    "training.holdout_seasons": Range(0, 100),
    "training.validation_seasons": Range(1, 100),
    # Negative tolerances are allowed: the candidate must then beat the champion by that much.
    "training.gate.max_auc_drop": Range(-1, 1),
    "training.gate.max_brier_increase": Range(-1, 1),
    "training.gate.max_log_loss_increase": Range(-100, 100),
    "training.gate.max_ece": FRACTION,
    "training.gate.eval_seasons": SEASON,
    "promotion.min_labelled_rows": ROWS,
    # AUC and ECE differences lie in -1..1; a negative gain lets a slightly worse AUC through.
    "promotion.min_auc_gain": Range(-1, 1),
    "promotion.max_ece_increase": Range(-1, 1),
    "monitoring.interval_s": BUDGET_S,
    "leadership.lease_ttl_s": Range(0.5, 3600),
    "leadership.poll_s": Range(0, 600, lo_open=True),
}
"""Key path -> range. For an integer array the range applies to each item."""


def check_ranges(cfg: Any, problems: Problems, *, skip: Collection[str] = ()) -> None:
    """Record every numeric value of ``cfg`` outside its range in :data:`RANGES`.

    ``skip``: key paths of tables not checked (a storage backend that is not used).
    Fields without an entry are not checked (the unit test keeps the table complete).
    """
    _walk(cfg, "", problems, frozenset(skip))


def _walk(obj: Any, prefix: str, problems: Problems, skip: frozenset[str]) -> None:
    for f in dataclasses.fields(obj):
        path = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if path in skip:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _walk(value, f"{path}.", problems, skip)
            continue
        bound = RANGES.get(path)
        if bound is None:
            continue
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                _check(problems, f"{path}[{i}]", item, bound)
        else:
            _check(problems, path, value, bound)


def _check(problems: Problems, path: str, value: float, bound: Range) -> None:
    if not bound.contains(value):
        problems.add(path, f"must be {bound.describe()}, got {value!r}")
