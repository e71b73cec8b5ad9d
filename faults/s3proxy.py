"""A pass-through HTTP proxy in front of moto's S3 server that can answer 503 bursts.

moto cannot be restarted without losing its buckets, so an S3 outage is played by this proxy on
loopback: the daemon talks to the proxy; while :attr:`S3Proxy.failing` is set, every request
gets S3's ``503 SlowDown`` (which botocore retries), otherwise it is forwarded byte for byte.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate (injected).</Message></Error>"
)


@dataclass
class S3Proxy:
    url: str
    failing: bool = False
    failed: int = field(default=0)


@contextlib.asynccontextmanager
async def s3_proxy(upstream: str) -> AsyncIterator[S3Proxy]:
    """Serve a proxy to ``upstream`` on a free loopback port for the duration of the block."""
    proxy = S3Proxy(url="")
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            if proxy.failing:
                proxy.failed += 1
                return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            async with session.request(
                request.method, upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
            ) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
                if request.method == "HEAD":
                    # No body, but the object's length is the answer.
                    out["Content-Length"] = resp.headers.get("Content-Length", "0")
                    return web.Response(status=resp.status, headers=out)
                return web.Response(status=resp.status, body=payload, headers=out)

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield proxy
        finally:
            await runner.cleanup()
