"""The pinned ``tensorflow/serving`` release serves the SavedModels this project publishes.

No Docker engine runs here, so ``tensorflow_model_server`` itself cannot. What can: TF Serving
X.Y.Z is built from TensorFlow X.Y.Z (its ``tensorflow-serving-api`` X.Y.Z requires
``tensorflow>=X.Y.Z``), so the release's TensorFlow is ``tensorflow-cpu`` of the image's tag.

1. The tag pinned in docker-compose.yml (and deploy/k8s, tests/ops/test_k8s_manifests.py) is the
   minor release of the TensorFlow that exported every published version (its model card's
   ``runtime.tensorflow``) and of the ``tensorflow-cpu`` pyproject.toml trains with.
2. Every published version under model/score_beater/ loads and predicts under that TensorFlow, in
   the interpreter scripts/tf-pairing-venv.sh gives (the project's own virtualenv when its
   tensorflow-cpu is exactly that version, else a virtualenv cached per version under
   ~/.cache/scorebeater/; SCOREBEATER_PAIRING_ISOLATED=1 always uses the cached one). The
   probabilities equal the project's own (the embedded stand-in's servable, in this process) to
   ``ABS_TOLERANCE``. A virtualenv that cannot be created fails the test, never skips it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from scorebeater.modelserver.servable import LoadedModel, load_saved_model
from tests.ops import REPO
from tests.ops.test_compose import MODEL_SERVERS, SERVICES

MODEL_DIR = REPO / "model" / "score_beater"
VENV_SCRIPT = REPO / "scripts" / "tf-pairing-venv.sh"
PREDICT_SCRIPT = REPO / "scripts" / "serving_pairing_predict.py"
SIGNATURE = "serving_default"
ROWS = 512
ABS_TOLERANCE = 1e-6
"""Probabilities in [0, 1] as float32 (spacing 6e-8 near 1): one TensorFlow build reproduces
them bit for bit; another patch release may sum in another order (oneDNN), a few ulps apart."""
VENV_TIMEOUT_S = 900
"""Creating the cached virtualenv downloads ~300 MB once (44 s here, measured)."""


def pinned_release() -> str:
    images = {str(SERVICES[name]["image"]) for name in MODEL_SERVERS}
    assert len(images) == 1, f"the TF Serving replicas run different images: {images}"
    repository, _, tag = images.pop().rpartition(":")
    assert repository == "tensorflow/serving"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag!r}"
    return tag


def published_versions() -> list[Path]:
    versions = sorted((p for p in MODEL_DIR.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert versions, f"no published version under {MODEL_DIR}"
    return versions


def minor(version: str) -> tuple[int, int]:
    major, minor_, *_ = (int(part) for part in version.split("."))
    return major, minor_


def test_pinned_release_matches_the_exporting_tensorflow() -> None:
    release = pinned_release()
    for version in published_versions():
        card = json.loads((version / "assets.extra" / "model_card.json").read_text())
        exported = card["runtime"]["tensorflow"]
        assert minor(exported) == minor(release), (
            f"model {version.name} was exported by TensorFlow {exported}; tensorflow/serving:{release} "
            "is another minor release: pin the serving release of that TensorFlow"
        )
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (trainer,) = [req for req in extras["model"] if req.startswith("tensorflow-cpu==")]
    assert minor(trainer.partition("==")[2]) == minor(release), (
        f"new versions are exported by {trainer}; tensorflow/serving:{release} is another minor release"
    )


def _inputs(models: dict[str, LoadedModel]) -> dict[str, np.ndarray]:
    """One fixed batch over every version's inputs (they share aliases): zeros in the first row,
    then non-negative values of the size the features have (counts, games, minutes)."""
    rng = np.random.default_rng(20261127)
    arrays: dict[str, np.ndarray] = {}
    for name, model in models.items():
        for alias, info in sorted(model.signatures[SIGNATURE].inputs.items()):
            assert info.dtype == "DT_FLOAT", f"{name}: {alias} is {info.dtype}"
            assert info.shape == (-1,), f"{name}: {alias} has shape {info.shape}"
            if alias not in arrays:
                values = rng.gamma(2.0, 40.0, size=ROWS).astype(np.float32)
                values[0] = 0.0
                arrays[alias] = values
    return arrays


def _serving_python() -> str:
    try:
        done = subprocess.run(
            [str(VENV_SCRIPT), pinned_release(), "--reuse", sys.executable],
            capture_output=True,
            text=True,
            timeout=VENV_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{VENV_SCRIPT.name} took over {VENV_TIMEOUT_S} s: {exc.stderr!r}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"{VENV_SCRIPT.name} failed ({done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.timeout(VENV_TIMEOUT_S + 120)
def test_published_models_predict_alike_under_the_serving_tensorflow(tmp_path: Path) -> None:
    python = _serving_python()
    versions = published_versions()
    models = {version.name: load_saved_model(version) for version in versions}
    inputs = _inputs(models)
    inputs_path, output_path = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs_path, **inputs)  # type: ignore[arg-type]
    # One interpreter for every version: TensorFlow's import is most of the cost.
    done = subprocess.run(
        [python, str(PREDICT_SCRIPT), str(inputs_path), str(output_path), *map(str, versions)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"under the serving TensorFlow:\n{done.stderr[-3000:]}"
    with np.load(output_path) as theirs:
        assert str(theirs["__tensorflow_version__"]) == pinned_release()
        for name, model in models.items():
            wanted = model.signatures[SIGNATURE].inputs
            ours = model.run(SIGNATURE, {alias: inputs[alias] for alias in wanted})
            assert sorted(k.partition("/")[2] for k in theirs.files if k.startswith(f"{name}/")) == sorted(
                ours
            )
            for alias, expected in ours.items():
                got = theirs[f"{name}/{alias}"]
                assert got.shape == expected.shape == (ROWS, 1)
                assert got.dtype == expected.dtype
                assert np.isfinite(got).all()
                np.testing.assert_allclose(got, expected, rtol=0, atol=ABS_TOLERANCE)
                # A model that answers the same for every row would pass the comparison vacuously.
                assert float(np.ptp(expected)) > 0.01, f"model {name}: {alias} does not vary"


@pytest.mark.parametrize("version", ["2.21", "latest", "2.21.0; rm -rf /", "../2.21.0"])
def test_venv_script_takes_only_a_release_number(version: str) -> None:
    """The version names a cache directory and goes to pip: anything else is refused up front."""
    done = subprocess.run(
        [str(VENV_SCRIPT), version, "--reuse", sys.executable],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "not a release version" in done.stderr
    assert not done.stdout
