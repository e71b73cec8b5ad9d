#!/usr/bin/env bash
# Replay a real season (default 2014) through the daemon with the published model (default: the
# latest version) and compare its realized metrics on /metrics with `scorebeater evaluate` on the
# daemon's rows and on the training rows. Options: see scripts/daemon_vs_evaluate.py (--help).
# Takes a few minutes on 2 cores; everything goes to a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/daemon_vs_evaluate.py "$@"
