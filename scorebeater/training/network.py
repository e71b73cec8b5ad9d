"""The score_beater Keras MLP, with every derived feature computed inside the graph.

The model takes the raw inputs of :data:`scorebeater.inputs.MODEL_INPUTS` as named float32
tensors of shape ``[batch]`` and returns ``{"probability": [batch, 1]}``. Inside the graph:

1. :class:`DerivedFeatures` turns the raw counts into rates, pace projections, remaining
   games, the deficit to beat and log transforms (:data:`DERIVED_NAMES`);
2. a ``Normalization`` layer whose mean/variance are computed on the training rows only
   (TF Transform's analyzers, baked in as constants; variance floored at
   :data:`VARIANCE_FLOOR`), then clipped to +-:data:`NORMALIZED_CLIP`;
3. a linear ("wide") logit, initialised as a logistic regression on those features, plus the
   hidden layers' ("deep") logit, initialised at zero (``hidden_units``, ReLU, dropout, L2);
4. :class:`PlattScaling`: ``sigmoid(a * logit + b)``; ``a, b`` are fitted on the validation
   season when the recipe calibrates (:mod:`scorebeater.training.recipe`), otherwise the
   layer is the identity ``a = 1, b = 0``.

Several such networks can be averaged in one graph (:mod:`scorebeater.training.recipe`).

TensorFlow is imported here and only here (with ``evaluate``/``export``/``gate``): the daemon
never imports this module.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import structlog
from keras import ops

from scorebeater.config import TrainingConfig
from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME
from scorebeater.training.dataset import TrainingSet

log = structlog.get_logger(__name__)

PRIOR_GAMES = 10.0
"""Team games of weight given to last season's rate when shrinking the current pace."""

EARLY_STOPPING_PATIENCE = 6
"""Epochs without validation-loss improvement before training stops (best weights restored)."""

PREDICT_BATCH = 8192
_NEWTON_TOLERANCE = 1e-8
_MIN_STEP = 1e-6

INPUT_NOISE_STD = 0.0
"""Gaussian noise (in standard deviations) added to the normalised features while training.

A player-season gives ~150 rows with identical previous-season inputs and one label, so a
flexible network can memorise players; noise blurs that fingerprint (tuned on validation).
"""

WEIGHT_DECAY = 1e-4
"""L2 penalty on the hidden layers' kernels (tuned on validation)."""

WIDE = True
"""Add a linear ("wide") logit on the normalised features to the MLP's ("deep") logit.

The linear part carries the strong, smooth pace signal (a logistic regression on these
features is a strong baseline); the hidden layers learn corrections to it.
"""

DERIVED_NAMES: tuple[str, ...] = (
    "progress",
    "log_remaining_games",
    "log_prev_ftm",
    "log_prev_fta",
    "prev_games_share",
    "log_prev_minutes",
    "log_prev_ftm_per_game",
    "prev_ft_pct",
    "log_prev2_ftm",
    "prev2_games_share",
    "has_prev2",
    "prev_trend",
    "log_prev3_ftm",
    "has_prev3",
    "prev2_trend",
    "log_schedule_ratio",
    "prev_missed_share",
    "log_prev_ftm_scheduled",
    "experience",
    "age",
    "age_known",
    "log_ftm",
    "log_fta",
    "ft_pct",
    "shoot_game_share",
    "ftm_per_team_game",
    "fta_per_team_game",
    "pace_ratio",
    "shrunk_ratio",
    "shrunk_z",
    "already_beat",
    "signed_log_need",
    "need_per_remaining_game",
)


def _log1p(x: Any) -> Any:
    return ops.log1p(ops.maximum(x, 0.0))


def derive(x: Mapping[str, Any]) -> Any:
    """Derived features ``[batch, len(DERIVED_NAMES)]`` from raw inputs ``{name: [batch]}``.

    Written with ``keras.ops`` so the same code runs in the served graph and on numpy arrays
    (the baselines call it too). Every division is guarded: a row with zero games gives
    finite values.
    """
    sg = ops.maximum(x["season_games"], 1.0)
    prev_sg = ops.maximum(x["prev_season_games"], 1.0)
    tg = ops.clip(x["team_games"], 0.0, sg)
    rem = sg - tg
    prev_ftm, prev_fta, prev_games = x["prev_ftm"], x["prev_fta"], x["prev_games"]
    ftm, fta = x["ftm"], x["fta"]
    tg1 = ops.maximum(tg, 1.0)
    has_prev2 = ops.cast(x["prev2_games"] > 0, "float32")
    has_prev3 = ops.cast(x["prev3_games"] > 0, "float32")
    age_known = ops.cast(x["age"] > 0, "float32")
    pace_total = ftm / tg1 * sg
    # his rate per team game last season: after a shortened season (66 games in 2012) the
    # same rate over a full schedule beats last season's total far more often
    prior_rate = prev_ftm / prev_sg
    shrunk_rate = (ftm + PRIOR_GAMES * prior_rate) / (tg + PRIOR_GAMES)
    shrunk_remaining = shrunk_rate * rem
    need = prev_ftm - ftm
    features = [
        tg / sg,
        _log1p(rem),
        _log1p(prev_ftm),
        _log1p(prev_fta),
        prev_games / prev_sg,
        _log1p(x["prev_minutes"]),
        _log1p(prev_ftm / ops.maximum(prev_games, 1.0)),
        (prev_ftm + 1.0) / (prev_fta + 2.0),
        _log1p(x["prev2_ftm"]),
        x["prev2_games"] / sg,
        has_prev2,
        (_log1p(prev_ftm) - _log1p(x["prev2_ftm"])) * has_prev2,
        _log1p(x["prev3_ftm"]),
        has_prev3,
        (_log1p(x["prev2_ftm"]) - _log1p(x["prev3_ftm"])) * has_prev3 * has_prev2,
        ops.log(sg / prev_sg),
        x["prev_games_missed"] / prev_sg,
        _log1p(prior_rate * sg) - _log1p(prev_ftm),
        x["experience"],
        x["age"] + (1.0 - age_known) * 27.0,
        age_known,
        _log1p(ftm),
        _log1p(fta),
        (ftm + 1.0) / (fta + 2.0),
        x["games_with_fta"] / tg1,
        ftm / tg1,
        fta / tg1,
        ops.log((pace_total + 1.0) / (prev_ftm + 1.0)),
        ops.log((ftm + shrunk_remaining + 1.0) / (prev_ftm + 1.0)),
        (ftm + shrunk_remaining - prev_ftm - 0.5) / ops.sqrt(shrunk_remaining + 1.0),
        ops.cast(ftm > prev_ftm, "float32"),
        ops.sign(need) * ops.log1p(ops.abs(need)),
        need / (rem + 1.0),
    ]
    return ops.stack([ops.cast(f, "float32") for f in features], axis=-1)


def derive_numpy(ts: TrainingSet) -> np.ndarray:
    """:func:`derive` on a training set, as a float32 numpy matrix (for the baselines)."""
    out = derive({n: ts.inputs[n].astype(np.float32) for n in INPUT_NAMES})
    return np.asarray(ops.convert_to_numpy(out), dtype=np.float32)


@keras.saving.register_keras_serializable(package="scorebeater")
class DerivedFeatures(keras.layers.Layer):  # type: ignore[misc]
    """Raw named inputs -> the derived feature matrix (see :func:`derive`)."""

    def call(self, inputs: Mapping[str, Any]) -> Any:
        return derive(inputs)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, int]:  # noqa: ARG002 - Keras API
        return (None, len(DERIVED_NAMES))


@keras.saving.register_keras_serializable(package="scorebeater")
class PlattScaling(keras.layers.Layer):  # type: ignore[misc]
    """``sigmoid(scale * logit + bias)``; ``scale``/``bias`` are set by :func:`fit_platt`, never trained."""

    def build(self, input_shape: Any) -> None:  # noqa: ARG002 - Keras API
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros", trainable=False)

    def call(self, logit: Any) -> Any:
        return ops.sigmoid(self.scale * logit + self.bias)


VARIANCE_FLOOR = 0.01
"""Smallest variance the normalisation divides by (a feature constant in most rows, like the
schedule ratio, would otherwise be scaled by a near-zero spread)."""

NORMALIZED_CLIP = 5.0
"""Normalised features are clipped to +-this many standard deviations."""


@keras.saving.register_keras_serializable(package="scorebeater")
class ClipLayer(keras.layers.Layer):  # type: ignore[misc]
    """``clip(x, -limit, limit)``."""

    def __init__(self, limit: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = float(limit)

    def call(self, x: Any) -> Any:
        return ops.clip(x, -self.limit, self.limit)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "limit": self.limit}


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A trained network and how it got there (:mod:`scorebeater.training.recipe` puts
    members behind one Platt layer for serving)."""

    logit_model: keras.Model
    """Raw inputs -> the network's logit, ``[batch, 1]``."""
    epochs_run: int
    best_epoch: int
    """1-based epoch whose weights were kept (lowest validation loss); 0 when no epoch beat
    the starting point (the logistic initialisation), which is then kept."""
    train_seconds: float
    history: Mapping[str, list[float]]


def _inputs_dict(ts: TrainingSet) -> dict[str, np.ndarray]:
    return {n: ts.inputs[n].astype(np.float32) for n in INPUT_NAMES}


def build_model(
    cfg: TrainingConfig,
    train: TrainingSet,
    *,
    noise_std: float = INPUT_NOISE_STD,
    weight_decay: float = WEIGHT_DECAY,
    wide: bool = WIDE,
    sample_weight: np.ndarray | None = None,
    member: int = 0,
) -> keras.Model:
    """The logit model: raw inputs -> derived features -> normalisation (computed on ``train``) -> logit.

    With ``wide``, the network starts as a logistic regression: the wide part is initialised
    with a logistic regression fitted on the normalised training features (with
    ``sample_weight``) and the deep part's output layer with zeros, so training only keeps
    what the hidden layers add to it.
    """
    inputs = {n: keras.Input(shape=(), name=n, dtype="float32") for n in INPUT_NAMES}
    derived = DerivedFeatures(name="derived_features")(inputs)
    features = derive_numpy(train)
    mean = features.astype(np.float64).mean(axis=0)
    variance = np.maximum(features.astype(np.float64).var(axis=0), VARIANCE_FLOOR)
    # TF Transform's analyzers, baked in as constants
    norm = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")
    # A feature nearly constant in the training rows (the schedule ratio is 0 in every normal
    # season) gets a tiny variance; a shortened season would then sit hundreds of standard
    # deviations out and the ReLU layers extrapolate wildly. Clipping bounds that.
    normalized = ClipLayer(NORMALIZED_CLIP, name="clip_normalized")(norm(derived))
    h = normalized
    if noise_std > 0:
        # active only in training; an identity in the served graph
        h = keras.layers.GaussianNoise(noise_std, seed=cfg.seed, name="input_noise")(h)
    reg = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
    for i, units in enumerate(cfg.hidden_units):
        h = keras.layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"hidden_{i}")(h)
        if cfg.dropout > 0:
            h = keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(h)
    deep_init = "zeros" if wide else "glorot_uniform"
    logit = keras.layers.Dense(1, kernel_initializer=deep_init, name="deep_logit")(h)
    if wide:
        wide_layer = keras.layers.Dense(1, name="wide_logit")
        linear = wide_layer(normalized)
        logit = keras.layers.Add(name="logit")([logit, linear])
        std = np.sqrt(np.maximum(variance, 1e-12))
        clipped = np.clip((features - mean) / std, -NORMALIZED_CLIP, NORMALIZED_CLIP)
        kernel, bias = _logistic_init(clipped, train.label, sample_weight)
        wide_layer.set_weights([kernel.reshape(-1, 1).astype(np.float32), np.asarray([bias], np.float32)])
    return keras.Model(inputs, logit, name=f"member_{member}")


WIDE_INIT_C = 1.0
"""Inverse L2 strength of the logistic regression that initialises the wide part."""


def _logistic_init(
    x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - only when training

    lr = LogisticRegression(C=WIDE_INIT_C, max_iter=2000)
    lr.fit(x, y.astype(np.int64), sample_weight=sample_weight)
    return np.asarray(lr.coef_, np.float64).ravel(), float(lr.intercept_[0])


def _log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    y = labels.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


class _NoHistory:
    """What ``fit`` returns, for a refit of zero epochs (the initialisation was best)."""

    history: dict[str, list[float]] = {}  # noqa: RUF012 - read-only


EpochHook = Callable[[int, dict[str, float]], None]
"""Called after each epoch with its 0-based index and its logs (loss, val_loss, ...)."""


def _print_epoch(epochs: int) -> EpochHook:
    def hook(epoch: int, logs: dict[str, float]) -> None:
        parts = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if k != "learning_rate")
        print(f"epoch {epoch + 1}/{epochs} {parts}", file=sys.stderr, flush=True)  # noqa: T201

    return hook


class _EpochLine(keras.callbacks.Callback):  # type: ignore[misc]
    """Hands each epoch's logs to a hook: the training progress display."""

    def __init__(self, hook: EpochHook) -> None:
        super().__init__()
        self._hook = hook

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self._hook(epoch, {k: float(v) for k, v in (logs or {}).items()})


def fit_platt(logits: np.ndarray, labels: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Platt scaling: ``a, b`` minimising the log loss of ``sigmoid(a * logit + b)`` (Newton's method).

    Returns ``(1.0, 0.0)`` (identity) when the labels hold a single class.
    """
    z = logits.astype(np.float64).ravel()
    y = labels.astype(np.float64).ravel()
    if y.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    design = np.column_stack([z, np.ones_like(z)])

    def loss(a: float, b: float) -> float:
        t = a * z + b
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = np.exp(-np.logaddexp(0.0, -(a * z + b)))  # sigmoid without overflow
        grad = design.T @ (p - y)
        w = p * (1.0 - p) + 1e-9
        hess = design.T @ (design * w[:, None]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        size = 1.0  # backtracking: a full step from far away overshoots to a huge scale
        na, nb, candidate = a, b, current
        while size > _MIN_STEP:
            na, nb = a - size * float(step[0]), b - size * float(step[1])
            candidate = loss(na, nb)
            if candidate <= current:
                break
            size /= 2
        else:
            break
        a, b, current = na, nb, candidate
        if float(np.abs(size * step).max()) < _NEWTON_TOLERANCE:
            break
    return a, b


def predict_logits(model: keras.Model, ts: TrainingSet) -> np.ndarray:
    """Logits of the logit model on every row, shape ``[rows]``."""
    out = model.predict(_inputs_dict(ts), batch_size=PREDICT_BATCH, verbose=0)
    return np.asarray(out, dtype=np.float64).ravel()


def train_mlp(
    cfg: TrainingConfig,
    train: TrainingSet,
    validation: TrainingSet,
    *,
    epochs: int | None = None,
    noise_std: float = INPUT_NOISE_STD,
    weight_decay: float = WEIGHT_DECAY,
    wide: bool = WIDE,
    long_history_weight: float = 1.0,
    on_epoch: EpochHook | None = None,
    member: int = 0,
) -> TrainedModel:
    """Train the network on ``train``; early-stop on ``validation``.

    Season-start rows from the long history (``train.is_long_history()``) weigh
    ``long_history_weight`` each in the loss, per-game rows 1. ``on_epoch`` gets each epoch's
    logs (default: one line on stderr).

    With ``epochs`` given, train exactly that many epochs without early stopping (a refit
    with a tuned epoch count); otherwise stop when the validation loss has not improved for
    ``EARLY_STOPPING_PATIENCE`` epochs and keep the best weights. Deterministic for a given
    ``cfg.seed`` on the same machine.

    Raises:
        ValueError: ``train`` is empty, or ``validation`` is empty while early stopping.
    """
    if len(train) == 0:
        raise ValueError("the training split has no rows")
    if epochs is None and len(validation) == 0:
        raise ValueError("the validation split has no rows: cannot early-stop")
    keras.utils.set_random_seed(cfg.seed)
    weights = np.where(train.is_long_history(), np.float32(long_history_weight), np.float32(1.0))
    logit_model = build_model(
        cfg,
        train,
        noise_std=noise_std,
        weight_decay=weight_decay,
        wide=wide,
        sample_weight=weights,
        member=member,
    )
    logit_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    max_epochs = epochs if epochs is not None else cfg.epochs
    callbacks: list[keras.callbacks.Callback] = [_EpochLine(on_epoch or _print_epoch(max_epochs))]
    monitor = "val_loss"
    if epochs is None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode="min", patience=EARLY_STOPPING_PATIENCE, restore_best_weights=True
            )
        )
    val_data = (_inputs_dict(validation), validation.label.astype(np.float32)) if len(validation) else None
    started = time.perf_counter()
    start_loss, start_weights = math.inf, None
    if val_data is not None and epochs is None:
        start_loss = _log_loss(predict_logits(logit_model, validation), validation.label)
        start_weights = logit_model.get_weights()
    hist = (
        _NoHistory()
        if max_epochs == 0
        else logit_model.fit(
            _inputs_dict(train),
            train.label.astype(np.float32),
            sample_weight=weights,
            batch_size=cfg.batch_size,
            epochs=max_epochs,
            validation_data=val_data,
            shuffle=True,
            callbacks=callbacks,
            verbose=0,
        )
    )
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    epochs_run = len(history.get("loss", []))
    val_loss = history.get(monitor, [])
    best_epoch = int(np.argmin(val_loss)) + 1 if (val_loss and epochs is None) else epochs_run
    if (
        start_weights is not None
        and _log_loss(predict_logits(logit_model, validation), validation.label) >= start_loss
    ):
        # no epoch beat the starting point (the logistic initialisation): keep that
        logit_model.set_weights(start_weights)
        best_epoch = 0
    log.info(
        "training.mlp_trained",
        rows=len(train),
        validation_rows=len(validation),
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        seconds=round(seconds, 1),
    )
    return TrainedModel(
        logit_model=logit_model,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        train_seconds=seconds,
        history=history,
    )


def predict(model: keras.Model, ts: TrainingSet) -> np.ndarray:
    """P(beat) of the in-memory serving model on every row, shape ``[rows]`` (float64)."""
    out = model.predict(_inputs_dict(ts), batch_size=PREDICT_BATCH, verbose=0)
    return np.asarray(out[OUTPUT_NAME], dtype=np.float64).ravel()
