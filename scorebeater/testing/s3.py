"""moto's S3 server on loopback, for the tests and the benchmark.

``run_moto()`` starts ``moto.server.ThreadedMotoServer`` on ``127.0.0.1`` with port 0 (the
kernel picks a free port, so there is no race with other test runs), yields its endpoint URL,
and stops it on exit. The server speaks S3 over real HTTP; it accepts any credentials, and
buckets live as long as the server.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def run_moto() -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yield ``http://127.0.0.1:<port>``."""
    # werkzeug logs one line per request at INFO: thousands per run, and nothing we assert on.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
