"""A throwaway PostgreSQL 15 cluster on loopback, for the tests and the benchmark.

``run_postgres()`` creates a cluster in a fresh directory under ``/tmp`` (Debian's
``postgresql-15`` binaries in ``/usr/lib/postgresql/15/bin``), starts it on ``127.0.0.1`` and a
free port with durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``: a test
cluster never survives a crash anyway), yields its DSN, then stops it (``pg_ctl -m fast``) and
removes the directory.

Users: Postgres refuses to run as root. As root (CI, our machines) every command runs as the
``postgres`` system user through ``su``, and the directory is handed to that user (``/tmp``
is world-searchable, so the user can reach it). As any other user the commands run directly
as that user, who then owns the cluster; nothing else changes.

``SCOREBEATER_TEST_PG_DSN``, when set, points at an existing server instead: nothing is
started or stopped, and the caller is responsible for it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

PG_BIN = Path(os.environ.get("SCOREBEATER_PG_BIN", "/usr/lib/postgresql/15/bin"))
EXTERNAL_DSN_ENV = "SCOREBEATER_TEST_PG_DSN"
SERVICE_USER = "postgres"
START_TIMEOUT_S = 30
_START_ATTEMPTS = 3


_clusters: dict[str, tuple[Path, Path, str]] = {}
"""DSN -> (data directory, log file, server options) of the clusters this process runs."""


class PostgresStartError(RuntimeError):
    """The cluster could not be created or started; the message carries the server log tail."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_service_user(argv: Sequence[str]) -> list[str]:
    """Wrap a command so it runs as the ``postgres`` user when we are root, else as ourselves."""
    if os.geteuid() != 0:
        return list(argv)
    return ["su", SERVICE_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]


def _run(argv: Sequence[str], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    proc = subprocess.run(  # noqa: S603 - argv built here from fixed binaries and paths, no shell
        _as_service_user(argv), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise PostgresStartError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _log_tail(log_file: Path) -> str:
    try:
        return log_file.read_text(errors="replace")[-2000:]
    except OSError:
        return "<no server log>"


@contextlib.contextmanager
def run_postgres() -> Iterator[str]:
    """Start a fresh cluster and yield ``postgresql://postgres@127.0.0.1:PORT/postgres``.

    Trust authentication on loopback only; the superuser is ``postgres``. The cluster and its
    directory are gone when the context exits, whatever happened inside.

    Raises:
        PostgresStartError: the binaries are missing or the cluster did not start (with the
            server log's tail).
    """
    external = os.environ.get(EXTERNAL_DSN_ENV)
    if external:
        yield external
        return
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not initdb.exists() or not pg_ctl.exists():
        raise PostgresStartError(
            f"PostgreSQL 15 binaries not found in {PG_BIN} (apt-get install postgresql-15)"
        )
    root = Path(tempfile.mkdtemp(prefix="scorebeater-pg-", dir="/tmp"))
    data, sock, log_file = root / "data", root / "sock", root / "server.log"
    started = False
    try:
        sock.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVICE_USER)
            for path in (root, sock):
                os.chown(path, user.pw_uid, user.pw_gid)
        _run(
            [str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            "initdb",
            timeout_s=120,
        )
        port, options = 0, ""
        for attempt in range(1, _START_ATTEMPTS + 1):
            # The port is free when chosen but another process may take it before the server
            # binds it: retry with a new one rather than fail the whole session.
            port = _free_port()
            options = (
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                _run(
                    [
                        str(pg_ctl),
                        "-D",
                        str(data),
                        "-l",
                        str(log_file),
                        "-w",
                        "-t",
                        str(START_TIMEOUT_S),
                        "-o",
                        options,
                        "start",
                    ],
                    "pg_ctl start",
                    timeout_s=START_TIMEOUT_S + 10,
                )
            except PostgresStartError as exc:
                if attempt == _START_ATTEMPTS:
                    raise PostgresStartError(f"{exc}; server log: {_log_tail(log_file)}") from exc
                continue
            started = True
            break
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _clusters[dsn] = (data, log_file, options)
        try:
            yield dsn
        finally:
            _clusters.pop(dsn, None)
    finally:
        # A start that timed out may still have left a server running: stop whatever has a pid file.
        if started or (data / "postmaster.pid").exists():
            try:
                _run([str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop")
            except (PostgresStartError, subprocess.TimeoutExpired):
                _run([str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"], "pg_ctl stop")
        shutil.rmtree(root, ignore_errors=True)


def restart_postgres(dsn: str) -> None:
    """Restart the cluster serving ``dsn`` (``pg_ctl restart -m fast``): every connection drops.

    Raises:
        KeyError: ``dsn`` is not a cluster this process started.
        PostgresStartError: the restart failed.
    """
    data, log_file, options = _clusters[dsn]
    _run(
        [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log_file),
            "-m",
            "fast",
            "-w",
            "-o",
            options,
            "restart",
        ],
        "pg_ctl restart",
        timeout_s=START_TIMEOUT_S + 10,
    )
