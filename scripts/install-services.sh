#!/usr/bin/env bash
# Install the Debian packages the test suite starts (PostgreSQL 15, Prometheus + promtool,
# chromium for the browser tests: Playwright drives it, it never downloads a browser of its own).
# Idempotent: installs only what is missing. The tests start and stop the servers themselves
# (scorebeater/testing/postgres.py); moto's S3 server comes from the virtualenv.
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || need+=(postgresql-15)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "install-services: installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The server runs as `postgres`, which must reach the data directories tests create.
id postgres >/dev/null 2>&1
echo "install-services: postgresql-15, prometheus and chromium present"
