"""HTTP requests written byte by byte, for what a well-behaved client refuses to send.

aiohttp's client (like any careful client) will not put bytes that are not ASCII into a header
or an unencoded request target; the surfaces must still answer them with a clean 4xx.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import yarl


@dataclass(frozen=True)
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


async def raw_request(
    base_url: str,
    method: str,
    target: bytes,
    *,
    headers: list[bytes] | tuple[bytes, ...] = (),
    body: bytes = b"",
) -> RawReply:
    """Send one request (``Connection: close``) with ``target`` and ``headers`` as given; read the reply."""
    url = yarl.URL(base_url)
    assert url.host is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        head = [
            method.encode("ascii") + b" " + target + b" HTTP/1.1",
            b"Host: " + url.host.encode("ascii"),
            *headers,
            b"Content-Length: " + str(len(body)).encode("ascii"),
            b"Connection: close",
        ]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()
    raw_head, _, payload = reply.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return RawReply(status=int(status_line.split()[1]), headers=fields, body=payload)
