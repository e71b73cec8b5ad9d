#!/usr/bin/env bash
# Create or reuse a virtualenv and install scorebeater with its pinned dependencies.
# Idempotent; Debian 12 + Python 3.11 as root, registries only.
set -euo pipefail
venv="${1:-.venv}"
cd "$(dirname "$0")/.."

python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
        python="$candidate"; break
    fi
done
if [ -z "$python" ]; then
    echo "bootstrap: Python >= 3.11 is required" >&2; exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian splits venv/ensurepip out of the interpreter package.
        rm -rf "$venv"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv "$venv"
    fi
fi
"$venv/bin/python" -m pip install -q --upgrade "pip>=24"
"$venv/bin/python" -m pip install -q -c constraints.txt -e ".[model,dev]"
echo "bootstrap: $("$venv/bin/python" --version) ready in $venv"
