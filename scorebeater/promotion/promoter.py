"""Promoter: move a label to a version the model server reports AVAILABLE, and record it.

Used by the three ways a label moves: ``scorebeater promote`` (:func:`promote_command`), the
admin API's ``POST /v1/models/promote`` and the promotion stage (the automatic policy). The
order is fixed: ask the model server for the version's state (refuse unless ``AVAILABLE``, as
TF Serving refuses a label on a version it does not serve), rewrite ``models.config``
atomically, then append the record. The model server moves its label at its next poll of
the file.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog

from scorebeater.errors import ConfigError, ModelNotFound, ScorebeaterError
from scorebeater.modelserver.modelsconfig import check_version_label
from scorebeater.promotion.labels import move_label, read_labels
from scorebeater.promotion.records import PromotionLog, PromotionRecord, Trigger, comparison_json

if TYPE_CHECKING:
    from scorebeater.clients.tfserving import TFServingClient
    from scorebeater.config import Config
    from scorebeater.metrics import Metrics
    from scorebeater.stages.handoff import ShadowComparison

log = structlog.get_logger(__name__)

EXIT_REFUSED = 2
"""``scorebeater promote``'s exit code when the promotion is refused."""

RefusalCode = Literal["no_models_config", "invalid_models_config", "unknown_version", "not_available"]


class PromotionRefused(ScorebeaterError):
    """The label was not moved: ``code`` says why (``no_models_config``: no file to rewrite is
    configured; ``invalid_models_config``: the file is unreadable, invalid or lacks the model;
    ``unknown_version``: the model server knows no such version; ``not_available``:
    the version is not ``AVAILABLE``)."""

    def __init__(self, code: RefusalCode, message: str, *, version: int) -> None:
        self.code = code
        self.version = version
        super().__init__(message)


def models_config_path(cfg: Config) -> Path | None:
    """The ``models.config`` file promotions rewrite: ``[tfserving] models_config``, else
    ``[model_server] models_config`` (the embedded stand-in's), else ``None``."""
    return cfg.tfserving.models_config or cfg.model_server.models_config


class Promoter:
    """Moves labels of ``cfg.model.name`` (see the module docstring). Safe to share: promotions
    in one process are serialized."""

    def __init__(
        self, cfg: Config, model: TFServingClient, history: PromotionLog, *, metrics: Metrics | None = None
    ) -> None:
        self.cfg = cfg
        self.history = history
        self._model = model
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self.path = models_config_path(cfg)

    async def labels(self) -> dict[str, int]:
        """The model's labels as the file says (``{}`` without a file); updates the label gauges.

        Raises:
            ConfigError: the file is unreadable or invalid.
        """
        if self.path is None:
            return {}
        labels = await asyncio.to_thread(read_labels, self.path, self.cfg.model.name)
        if self._metrics is not None:
            for label, version in labels.items():
                self._metrics.model_label_version.labels(label).set(version)
        return labels

    def _refuse(self, trigger: Trigger, code: RefusalCode, message: str, version: int) -> PromotionRefused:
        if self._metrics is not None:
            self._metrics.promotions.labels(trigger, "refused").inc()
        log.warning("promotion.refused", code=code, version=version, reason=message, trigger=trigger)
        return PromotionRefused(code, message, version=version)

    async def _check_available(self, version: int, trigger: Trigger) -> None:
        name = self.cfg.model.name
        try:
            states = await self._model.status()
        except ModelNotFound as exc:
            raise self._refuse(
                trigger, "unknown_version", f"the model server knows no version of {name}: {exc}", version
            ) from exc
        state = next((s for s in states if s.version == version), None)
        if state is None:
            known = ", ".join(f"{s.version} ({s.state})" for s in states) or "none"
            raise self._refuse(
                trigger, "unknown_version", f"{name} has no version {version}; versions: {known}", version
            )
        if not state.available:
            detail = f": {state.error_message}" if state.error_message else ""
            raise self._refuse(
                trigger,
                "not_available",
                f"{name} version {version} is {state.state}, not AVAILABLE{detail}",
                version,
            )

    async def promote(
        self,
        version: int,
        *,
        by: str,
        trigger: Trigger,
        label: str | None = None,
        reason: str = "",
        comparison: ShadowComparison | None = None,
    ) -> PromotionRecord:
        """Point ``label`` (default ``promotion.label``) at ``version`` and record who did it.

        Idempotent for the file (a label already on ``version`` is not rewritten); every call
        that moves or confirms the label appends a record. ``comparison`` is the latest
        champion-versus-challenger comparison, kept in the record as the metrics at the time.

        Raises:
            PromotionRefused: no models.config is configured, the file is unreadable or
                invalid, or the version is unknown to the model server or not AVAILABLE (the
                file is untouched).
            ConfigError: the label is not a valid TF Serving label.
            ModelUnavailable, TFServingError: the model server cannot be asked.
            OSError: the file cannot be rewritten (the old one is left as it was).
            StorageError: the label moved but the record could not be stored.
            Fenced: another replica leads now (checked before the file is touched).
        """
        label = check_version_label(label or self.cfg.promotion.label)
        if self.path is None:
            raise self._refuse(
                trigger,
                "no_models_config",
                "no models.config to rewrite: set [tfserving] models_config "
                "(or [model_server] models_config for the embedded stand-in)",
                version,
            )
        async with self._lock:
            await self._check_available(version, trigger)
            # models.config is outside the store's fencing: prove this replica still leads
            # (a fenced write) just before rewriting it, not only when the record is written.
            await self.history.check_writable()
            try:
                previous = await asyncio.to_thread(
                    move_label, self.path, model=self.cfg.model.name, label=label, version=version
                )
            except ConfigError as exc:
                # Not the daemon's own config (a FatalError would stop it): a refusal.
                message = f"{exc.source}: " + "; ".join(exc.problems)
                raise self._refuse(trigger, "invalid_models_config", message, version) from exc
            record = PromotionRecord(
                label=label,
                from_version=previous,
                to_version=version,
                by=by,
                trigger=trigger,
                at=datetime.now(UTC),
                reason=reason,
                metrics=comparison_json(comparison),
            )
            log.info(
                "promotion.label_moved",
                label=label,
                from_version=previous,
                to_version=version,
                by=by,
                trigger=trigger,
                path=str(self.path),
            )
            if self._metrics is not None:
                self._metrics.promotions.labels(trigger, "promoted").inc()
                self._metrics.model_label_version.labels(label).set(version)
                self._metrics.last_promotion.set(time.time())
            await self.history.append(record)
        return record


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return "operator"


async def promote_command(args: argparse.Namespace) -> int:
    """``scorebeater promote --to VERSION``: move the label, record it, print the record as JSON.

    Exit 0 when the label names the version; 2 when refused (the reason on stderr).
    """
    from scorebeater.clients.tfserving import TFServingClient  # noqa: PLC0415 - keep imports light
    from scorebeater.storage import open_storage  # noqa: PLC0415

    cfg: Config = args.cfg
    async with (
        TFServingClient.open(cfg.tfserving, cfg.model.name) as model,
        open_storage(cfg.storage) as storage,
    ):
        promoter = Promoter(cfg, model, PromotionLog(storage))
        try:
            record = await promoter.promote(
                args.to, by=args.by or _login_name(), trigger="operator", label=args.label, reason=args.reason
            )
        except PromotionRefused as exc:
            print(f"scorebeater: promotion refused ({exc.code}): {exc}", file=sys.stderr)  # noqa: T201
            return EXIT_REFUSED
    print(json.dumps({"promoted": True, "models_config": str(promoter.path), **record.to_json()}, indent=2))  # noqa: T201
    return 0
