"""What stands between the network and the index: the Host check against DNS rebinding,
and request bodies read into memory under a size cap (nothing uploaded touches disk)."""

from __future__ import annotations

import ipaddress
import json

from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartParser

LOOPBACK_NAMES = ("localhost", "localhost.")
BODY_SLACK = 64 * 1024  # room for a multipart body's headers and other fields


class TooLarge(Exception):
    """A request body over the upload cap."""


def is_loopback(host: str) -> bool:
    """A loopback name or address (localhost, *.localhost, 127.0.0.0/8, ::1)."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port ('[::1]:8000' -> '::1')."""
    h = header.strip()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class LoopbackHostOnly:
    """ASGI middleware: refuse (403, JSON) HTTP requests whose Host header is not a
    loopback name or address. A server bound to loopback runs behind it, so a page on
    the internet whose name was re-pointed at 127.0.0.1 (DNS rebinding) cannot read it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if not is_loopback(host_name(host)):
                body = json.dumps(
                    {"error": f"Host {host!r} is not a loopback name: refused (DNS rebinding)"}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def read_body(request, cap: int) -> bytes:
    """The whole request body, in memory; TooLarge past `cap` (checked on the declared
    length first, then on what actually arrives)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise TooLarge
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > cap:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _InMemoryParser(MultiPartParser):
    spool_max_size = 1 << 62  # the body is capped before parsing: never spilled to disk


async def parse_multipart(headers, body: bytes) -> FormData:
    """A multipart/form-data body already in memory, parsed without temporary files."""

    async def stream():
        yield body
        yield b""

    return await _InMemoryParser(headers, stream(), max_files=1, max_fields=20).parse()
