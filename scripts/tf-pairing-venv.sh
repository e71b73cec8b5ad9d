#!/usr/bin/env bash
# Print the path of a Python interpreter that has exactly `tensorflow-cpu==VERSION`, the
# TensorFlow inside the pinned `tensorflow/serving:VERSION` image, creating a throwaway virtualenv
# for it when needed. tests/ops/test_serving_pairing.py loads the published SavedModels with it.
#
#   scripts/tf-pairing-venv.sh VERSION [--reuse PYTHON]
#
# --reuse PYTHON: print PYTHON itself when its installed tensorflow-cpu is already VERSION (read
#   from the distribution's metadata, without importing TensorFlow), so a checkout whose training
#   TensorFlow matches the serving release downloads nothing. SCOREBEATER_PAIRING_ISOLATED=1 turns
#   the reuse off (the separate virtualenv is always used).
# Otherwise the virtualenv lives in ${SCOREBEATER_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/scorebeater}
#   /tf-venvs/tensorflow-cpu-VERSION, one per version, kept between runs. It counts as ready only
#   once a stamp file is written after `import tensorflow` reported VERSION; a half-built one (an
#   interrupted download) is deleted and rebuilt. Creating it downloads tensorflow-cpu and its
#   dependencies (~300 MB of wheels, ~1.3 GB installed) from the package index.
# Concurrent callers wait on a lock file beside the virtualenv. Idempotent.
# stdout: the interpreter's path, nothing else. stderr: progress. Exit 1 on any failure (in CI a
# virtualenv that cannot be created fails the test; it is never a skip).
set -euo pipefail

usage() { echo "usage: $0 VERSION [--reuse PYTHON]" >&2; exit 2; }
[ $# -ge 1 ] || usage
version="$1"; shift
reuse=""
while [ $# -gt 0 ]; do
    case "$1" in
        --reuse) [ $# -ge 2 ] || usage; reuse="$2"; shift 2 ;;
        *) usage ;;
    esac
done
# The version names a directory and goes to pip: accept only a plain release number.
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "tf-pairing-venv: not a release version: $version" >&2; exit 2
fi

if [ -n "$reuse" ] && [ "${SCOREBEATER_PAIRING_ISOLATED:-0}" != "1" ] && [ -x "$reuse" ]; then
    installed="$("$reuse" -c 'import importlib.metadata as m
try:
    print(m.version("tensorflow-cpu"))
except m.PackageNotFoundError:
    print("")' 2>/dev/null || true)"
    if [ "$installed" = "$version" ]; then
        echo "tf-pairing-venv: $reuse already has tensorflow-cpu $version" >&2
        echo "$reuse"; exit 0
    fi
fi

cache="${SCOREBEATER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/scorebeater}"
venv="$cache/tf-venvs/tensorflow-cpu-$version"
stamp="$venv/.scorebeater-ready"
mkdir -p "$cache/tf-venvs"

ready() { [ -f "$stamp" ] && [ -x "$venv/bin/python" ]; }

exec 9>"$venv.lock"
flock 9
if ! ready; then
    python=""
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))'; then
            python="$candidate"; break
        fi
    done
    [ -n "$python" ] || { echo "tf-pairing-venv: Python >= 3.10 is required" >&2; exit 1; }
    start=$(date +%s)
    echo "tf-pairing-venv: creating $venv (tensorflow-cpu==$version; a few hundred MB, once)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "tensorflow-cpu==$version" >&2
    got="$(TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)"
    if [ "$got" != "$version" ]; then
        echo "tf-pairing-venv: $venv imports TensorFlow $got, not $version" >&2; exit 1
    fi
    echo "$version" > "$stamp"
    echo "tf-pairing-venv: ready in $(( $(date +%s) - start )) s" >&2
fi
echo "$venv/bin/python"
