"""The recipe that fits the published model: one or more seeds averaged in one graph.

One :class:`Recipe` says everything the fit depends on (network shape, optimiser, how many
seeds, how much a long-history season-start row weighs, whether to calibrate). ``train``,
``backtest`` and the promotion gate all call :func:`fit`, so the recipe the backtest chose is
the recipe that is published.

The served graph: raw inputs -> ``members`` networks of :mod:`scorebeater.training.network`
(same features and normalisation, different seeds) -> the mean of their logits -> Platt
scaling ``sigmoid(a * mean_logit + b)`` fitted on the validation season (identity when
``calibrate`` is off) -> ``{"probability": [batch, 1]}``. Still one SavedModel with one
signature: TF Serving sees no difference.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import keras
import numpy as np
import structlog

from scorebeater.config import TrainingConfig
from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME
from scorebeater.training import network
from scorebeater.training.dataset import TrainingSet

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - the progress display


_DEFAULTS = TrainingConfig()


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to fit the model; ``asdict`` goes into the model card and the backtest report."""

    # the defaults are TrainingConfig's (one place): the recipe the backtest chose
    seed: int = _DEFAULTS.seed
    members: int = _DEFAULTS.ensemble_members
    """Networks averaged in the graph (seeds ``seed .. seed + members - 1``)."""
    hidden_units: tuple[int, ...] = _DEFAULTS.hidden_units
    dropout: float = _DEFAULTS.dropout
    learning_rate: float = _DEFAULTS.learning_rate
    batch_size: int = _DEFAULTS.batch_size
    max_epochs: int = _DEFAULTS.epochs
    """Upper bound with early stopping (on the validation season)."""
    long_history_weight: float = _DEFAULTS.long_history_weight
    """Loss weight of one season-start row from the long history (per-game rows weigh 1)."""
    calibrate: bool = _DEFAULTS.calibrate
    """Fit Platt scaling on the validation season's mean logits."""
    weight_decay: float = network.WEIGHT_DECAY
    noise_std: float = network.INPUT_NOISE_STD
    wide: bool = network.WIDE

    @classmethod
    def from_config(cls, cfg: TrainingConfig) -> Recipe:
        """The recipe of a ``[training]`` config section."""
        return cls(
            seed=cfg.seed,
            members=cfg.ensemble_members,
            hidden_units=tuple(cfg.hidden_units),
            dropout=cfg.dropout,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            max_epochs=cfg.epochs,
            long_history_weight=cfg.long_history_weight,
            calibrate=cfg.calibrate,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists)."""
        out = asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        return out

    def training_config(self, seed: int) -> TrainingConfig:
        """The per-network settings of member ``seed``."""
        return replace(
            TrainingConfig(),
            seed=seed,
            epochs=self.max_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            hidden_units=self.hidden_units,
            dropout=self.dropout,
        )


@dataclass(frozen=True, slots=True)
class Fitted:
    """A fitted ensemble and how it got there."""

    model: keras.Model
    """Serving model: raw inputs -> ``{"probability": [batch, 1]}``."""
    best_epochs: list[int]
    """Per member, the epoch whose weights were kept (the fixed count in a refit)."""
    platt_scale: float
    platt_bias: float
    seconds: float
    validation_loss: list[float]
    """Per member, the best validation loss (``nan`` in a refit without validation)."""


@keras.saving.register_keras_serializable(package="scorebeater")
class MeanLogit(keras.layers.Layer):  # type: ignore[misc]
    """The mean of the members' ``[batch, 1]`` logits."""

    def call(self, logits: list[Any]) -> Any:
        return keras.ops.mean(keras.ops.stack(logits, axis=0), axis=0)


def assemble(members: list[keras.Model], scale: float, bias: float) -> keras.Model:
    """One serving model from the members' logit models: mean logit -> Platt layer."""
    inputs = {n: keras.Input(shape=(), name=n, dtype="float32") for n in INPUT_NAMES}
    logits = [m(inputs) for m in members]
    mean = MeanLogit(name="mean_logit")(logits) if len(logits) > 1 else logits[0]
    platt = network.PlattScaling(name=OUTPUT_NAME)
    prob = platt(mean)
    platt.scale.assign(scale)
    platt.bias.assign(bias)
    return keras.Model(inputs, {OUTPUT_NAME: prob}, name="score_beater")


def fit(
    recipe: Recipe,
    train: TrainingSet,
    validation: TrainingSet,
    *,
    epochs: list[int] | None = None,
    progress: Progress = _stderr,
    label: str = "",
    platt: tuple[float, float] | None = None,
) -> Fitted:
    """Fit ``recipe.members`` networks on ``train`` and assemble them into one serving model.

    Without ``epochs``, each member early-stops on ``validation`` (best weights kept) and the
    Platt layer is fitted on ``validation`` (if ``recipe.calibrate``). With ``epochs`` (one
    count per member, e.g. the best epochs of a backtest fold), each member trains exactly
    that long; calibration still uses ``validation`` when it has rows, unless ``platt``
    gives the parameters (a refit on every season keeps its fold twin's). ``progress`` gets
    one line per member and epoch.

    Raises:
        ValueError: ``train`` is empty; ``validation`` is empty while early stopping; ``epochs``
            does not have one entry per member.
    """
    if epochs is not None and len(epochs) != recipe.members:
        raise ValueError(f"epochs has {len(epochs)} entries for {recipe.members} members")
    started = time.perf_counter()
    members, best, val_losses = [], [], []
    for k in range(recipe.members):
        seed = recipe.seed + k
        member_epochs = None if epochs is None else epochs[k]
        total = member_epochs or recipe.max_epochs

        def on_epoch(epoch: int, logs: dict[str, float], k: int = k, total: int = total) -> None:
            parts = " ".join(f"{n}={v:.4f}" for n, v in sorted(logs.items()) if n != "learning_rate")
            progress(f"{label}member {k + 1}/{recipe.members} epoch {epoch + 1}/{total} {parts}")

        trained = network.train_mlp(
            recipe.training_config(seed),
            train,
            validation,
            epochs=member_epochs,
            noise_std=recipe.noise_std,
            weight_decay=recipe.weight_decay,
            wide=recipe.wide,
            long_history_weight=recipe.long_history_weight,
            on_epoch=on_epoch,
            member=k,
        )
        members.append(trained.logit_model)
        best.append(trained.best_epoch)
        val = trained.history.get("val_loss") or []
        val_losses.append(float(min(val)) if val else math.nan)
    scale, bias = 1.0, 0.0
    if platt is not None:
        scale, bias = platt if recipe.calibrate else (1.0, 0.0)
    elif recipe.calibrate and len(validation):
        mean_logit = np.mean([network.predict_logits(m, validation) for m in members], axis=0)
        scale, bias = network.fit_platt(mean_logit, validation.label)
        if not (math.isfinite(scale) and math.isfinite(bias)):
            scale, bias = 1.0, 0.0
    model = assemble(members, scale, bias)
    seconds = time.perf_counter() - started
    log.info(
        "training.ensemble_fitted",
        members=recipe.members,
        best_epochs=best,
        platt_scale=round(scale, 4),
        platt_bias=round(bias, 4),
        rows=len(train),
        seconds=round(seconds, 1),
    )
    return Fitted(
        model=model,
        best_epochs=best,
        platt_scale=scale,
        platt_bias=bias,
        seconds=seconds,
        validation_loss=val_losses,
    )
