"""Session-wide fixtures: the real services (moto's S3 server, Postgres 15) and test hygiene.

Services are started once per session on loopback by ``scorebeater.testing.postgres`` and
``scorebeater.testing.s3``. When one cannot start, the tests that need it are skipped locally
but *fail* when ``SCOREBEATER_REQUIRE_SERVICES=1`` (set by ``make test`` and so by CI): a
missing service is never a silent skip there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import CollectorRegistry

from scorebeater.metrics import Metrics

REQUIRE_SERVICES = os.environ.get("SCOREBEATER_REQUIRE_SERVICES") == "1"


def service_unavailable(what: str, why: str) -> None:
    """Fail (CI) or skip (a developer's machine) a test whose service could not start."""
    message = f"{what} is not available: {why}"
    if REQUIRE_SERVICES:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(name="s3_endpoint", scope="session")
def _s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on loopback (path-style, any credentials)."""
    from scorebeater.testing.s3 import run_moto

    try:
        ctx = run_moto()
        url = ctx.__enter__()
    except Exception as exc:  # any failure to start means "unavailable"
        service_unavailable("moto S3 server", repr(exc))
        return
    try:
        yield url
    finally:
        ctx.__exit__(None, None, None)


@pytest.fixture(name="s3_bucket", scope="session")
def _s3_bucket(s3_endpoint: str) -> str:
    """The session's bucket on the moto server (sync: session fixtures never share a loop)."""
    from tests.services.storage import BUCKET, create_bucket

    # May be first requested from inside a running test loop (getfixturevalue): run the
    # creation on a loop of its own in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, create_bucket(s3_endpoint, BUCKET)).result()
    return BUCKET


@pytest.fixture(name="pg_dsn", scope="session")
def _pg_dsn() -> Iterator[str]:
    """DSN of a throwaway Postgres 15 cluster on loopback."""
    from scorebeater.testing.postgres import run_postgres

    try:
        ctx = run_postgres()
        dsn = ctx.__enter__()
    except Exception as exc:
        service_unavailable("PostgreSQL 15", repr(exc))
        return
    try:
        yield dsn
    finally:
        ctx.__exit__(None, None, None)


@pytest.fixture(name="metrics")
def _metrics() -> Metrics:
    """A Metrics object on a fresh registry, so tests never share counters."""
    return Metrics(CollectorRegistry())


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
