"""Load SavedModel versions and run their ``serving_default`` signature under *this* interpreter's
TensorFlow: the TensorFlow of the pinned ``tensorflow/serving`` release, in the virtualenv made by
scripts/tf-pairing-venv.sh. Imports nothing from scorebeater (that virtualenv has only
tensorflow-cpu); tests/ops/test_serving_pairing.py compares the outputs with the project's own.

    python scripts/serving_pairing_predict.py INPUTS.npz OUTPUT.npz VERSION_DIR...

INPUTS.npz holds one float array per input alias; OUTPUT.npz gets ``<version dir name>/<output
alias>`` for every version, and ``__tensorflow_version__``. A version that fails to load or to run
exits 1 with TensorFlow's error on stderr.
"""

# ruff: noqa: INP001 - a standalone script, run by the pairing virtualenv's interpreter
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

SIGNATURE = "serving_default"


def main(argv: list[str]) -> int:
    if len(argv) < 3:  # noqa: PLR2004 - inputs, output and at least one version
        sys.stderr.write(__doc__ or "")
        return 2
    inputs_path, output_path, *versions = argv
    with np.load(inputs_path) as data:
        inputs = {name: data[name] for name in data.files}
    out: dict[str, np.ndarray] = {"__tensorflow_version__": np.array(tf.__version__)}
    for version in map(Path, versions):
        loaded = tf.saved_model.load(str(version))
        fn = loaded.signatures[SIGNATURE]
        _, wanted = fn.structured_input_signature
        args = {name: tf.constant(inputs[name], dtype=spec.dtype) for name, spec in wanted.items()}
        for alias, tensor in fn(**args).items():
            out[f"{version.name}/{alias}"] = tensor.numpy()
    np.savez(output_path, **out)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
