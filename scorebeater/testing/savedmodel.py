"""Small Keras 3 SavedModels with the production signature, for tests and the contract suite.

``export_score_model`` writes a model with the real model's interface: the named float32
inputs of ``scorebeater.inputs.INPUT_NAMES`` (or a chosen set: an older model's, or one with
an input the daemon does not know), each of shape ``[batch]``, and one output aliased
``probability`` of shape ``[batch, 1]``. ``export_single_input_model`` writes a one-input
model (``x``: float32 ``[batch, 3]`` -> ``y``: ``[batch, 1]``) for TF Serving's single-input
request forms, and ``export_echo_model`` an identity (``x`` -> ``y``, float32 ``[batch]``) whose
replies show TF Serving's float formatting of chosen values. Weights come from ``seed``, so two
seeds give two distinguishable versions.

Exports take seconds: tests use :func:`cached_models`, which exports once per process into a
session temp dir and hands out copies.

Run ``python -m scorebeater.testing.savedmodel DIR`` to write the contract-test models and a
``models.config`` for the official TF Serving image (see ``tfserving/README.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME
from scorebeater.modelserver.app import serve_models
from scorebeater.testing.threads import serving_in_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

SCORE_MODEL = "score_beater"
SINGLE_MODEL = "single"
SINGLE_INPUT = "x"
SINGLE_OUTPUT = "y"
SINGLE_WIDTH = 3
ECHO_MODEL = "echo"

_lock = threading.Lock()
_cache: dict[Path, ModelCache] = {}


def _keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: PLC0415 - TensorFlow loads only when a model is exported

    return keras


def export_score_model(path: Path, *, seed: int = 1, inputs: Sequence[str] = INPUT_NAMES) -> Path:
    """Export a score_beater-shaped model (named ``[batch]`` float32 ``inputs`` -> ``probability``)
    to ``path``."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    tensors = {name: keras.Input(shape=(), name=name, dtype="float32") for name in inputs}
    columns = [keras.layers.Reshape((1,), name=f"col_{name}")(tensors[name]) for name in inputs]
    stacked = keras.layers.Concatenate(name="stack")(columns)
    scaled = keras.layers.Rescaling(0.02, name="scale")(stacked)
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(scaled)
    output = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME)(hidden)
    model = keras.Model(tensors, {OUTPUT_NAME: output})
    model.export(str(path), verbose=False)
    return path


def export_single_input_model(path: Path, *, seed: int = 1) -> Path:
    """Export a one-input model (``x``: float32 ``[batch, 3]`` -> ``y``: ``[batch, 1]``) to ``path``."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    x = keras.Input(shape=(SINGLE_WIDTH,), name=SINGLE_INPUT, dtype="float32")
    y = keras.layers.Dense(1, name=SINGLE_OUTPUT)(x)
    model = keras.Model({SINGLE_INPUT: x}, {SINGLE_OUTPUT: y})
    model.export(str(path), verbose=False)
    return path


def export_echo_model(path: Path) -> Path:
    """Export an identity model (``x``: float32 ``[batch]`` -> ``y`` = ``x``) to ``path``."""
    keras = _keras()
    x = keras.Input(shape=(), name=SINGLE_INPUT, dtype="float32")
    y = keras.layers.Identity(name=SINGLE_OUTPUT)(x)
    model = keras.Model({SINGLE_INPUT: x}, {SINGLE_OUTPUT: y})
    model.export(str(path), verbose=False)
    return path


@dataclass(frozen=True, slots=True)
class ModelCache:
    """Exported models on disk: ``score(seed)`` and ``single`` are version directories to copy."""

    root: Path

    def score(self, seed: int, inputs: Sequence[str] = INPUT_NAMES) -> Path:
        """A score model of ``seed`` taking ``inputs``; the directory name tells the inputs
        apart (a cache kept across runs never hands out a model of another input set)."""
        tag = hashlib.blake2b(",".join(inputs).encode(), digest_size=4).hexdigest()
        name = f"score_seed{seed}_{len(inputs)}in_{tag}"
        path = self.root / name
        with _lock:
            if not (path / "saved_model.pb").exists():
                tmp = self.root / f".tmp-{name}"
                shutil.rmtree(tmp, ignore_errors=True)
                export_score_model(tmp, seed=seed, inputs=inputs)
                tmp.rename(path)
        return path

    @property
    def single(self) -> Path:
        return self._once("single", export_single_input_model)

    @property
    def echo(self) -> Path:
        return self._once("echo", export_echo_model)

    def _once(self, name: str, export: Callable[[Path], Path]) -> Path:
        path = self.root / name
        with _lock:
            if not (path / "saved_model.pb").exists():
                tmp = self.root / f".tmp-{name}"
                shutil.rmtree(tmp, ignore_errors=True)
                export(tmp)
                tmp.rename(path)
        return path


def cached_models(root: Path) -> ModelCache:
    """The per-process export cache rooted at ``root`` (created on first use)."""
    with _lock:
        cache = _cache.get(root)
        if cache is None:
            root.mkdir(parents=True, exist_ok=True)
            cache = _cache[root] = ModelCache(root)
    return cache


def publish(source: Path, base_path: Path, version: int) -> Path:
    """Copy a version directory into ``base_path/<version>`` atomically (temp dir + rename)."""
    base_path.mkdir(parents=True, exist_ok=True)
    tmp = base_path / f".tmp-{version}"
    shutil.copytree(source, tmp)
    final = base_path / str(version)
    tmp.rename(final)
    return final


def in_process(path: Path, columns: dict[str, np.ndarray], output: str = OUTPUT_NAME) -> np.ndarray:
    """The SavedModel's ``serving_default`` called in-process: the reference for REST results."""
    import tensorflow as tf  # noqa: PLC0415 - TensorFlow loads only when a model is called

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    result = fn(**{k: tf.constant(np.asarray(v, dtype=np.float32)) for k, v in columns.items()})
    return np.asarray(result[output].numpy())


def random_columns(n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible raw inputs for ``n`` players: non-negative counts as float32."""
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, 400, size=n).astype(np.float32) for name in INPUT_NAMES}


CONTRACT_MODELS_CONFIG = """\
# Models of the contract tests (tests/contract/test_tfserving_rest.py).
model_config_list {
  config {
    name: 'score_beater'
    base_path: '/models/score_beater'
    model_platform: 'tensorflow'
    model_version_policy { all {} }
    version_labels { key: 'stable' value: 1 }
  }
  config {
    name: 'single'
    base_path: '/models/single'
    model_platform: 'tensorflow'
  }
  config {
    name: 'echo'
    base_path: '/models/echo'
    model_platform: 'tensorflow'
  }
}
"""
CONTRACT_MAX_BATCH_SIZE = 64
"""The batch limit the contract tests expect (``max_batch_size { value: 64 }`` on TF Serving)."""


def contract_models_from_cache(cache: ModelCache, root: Path) -> Path:
    """Lay the contract models out under ``root`` from the cache; returns a local models.config."""
    publish(cache.score(1), root / SCORE_MODEL, 1)
    publish(cache.score(2), root / SCORE_MODEL, 2)
    publish(cache.single, root / SINGLE_MODEL, 1)
    publish(cache.echo, root / ECHO_MODEL, 1)
    config = root / "models.config"
    config.write_text(CONTRACT_MODELS_CONFIG.replace("'/models/", f"'{root}/"), encoding="utf-8")
    return config


@contextlib.contextmanager
def standin_thread(**serve_kwargs: Any) -> Iterator[str]:
    """Run the stand-in (``serve_models(**serve_kwargs)``) on its own loop in a thread; yields its URL.

    For session-scoped (sync) fixtures: the server outlives each test's event loop.
    """
    with serving_in_thread(lambda: serve_models(**serve_kwargs), name="standin") as server:
        yield server.url


def write_contract_models(root: Path) -> None:
    """Write the contract-test models under ``root`` as the official image expects them."""
    export_score_model(root / SCORE_MODEL / "1", seed=1)
    export_score_model(root / SCORE_MODEL / "2", seed=2)
    export_single_input_model(root / SINGLE_MODEL / "1")
    export_echo_model(root / ECHO_MODEL / "1")
    (root / "models.config").write_text(CONTRACT_MODELS_CONFIG, encoding="utf-8")


if __name__ == "__main__":
    match sys.argv[1:]:
        case [directory]:
            write_contract_models(Path(directory))
            sys.stdout.write(f"wrote {directory}/score_beater/{{1,2}}, single/1, echo/1 and models.config\n")
        case _:
            sys.exit("usage: python -m scorebeater.testing.savedmodel DIR")
