"""/healthz, /readyz and /metrics over HTTPS: a tiny asyncio server, so the daemon needs no web framework."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubespiffe.server.tls import ServingIdentity

_MAX_REQUEST_LINE = 4096


class HealthServer:
    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    async def start(self, host: str, port: int, identity: ServingIdentity) -> asyncio.Server:
        """TLS with kubespiffed's own SVID; the context follows the SVID's renewals (SNI callback)."""
        current = {identity.generation: identity.ssl_context()}

        def renew(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
            generation = identity.refresh()
            if generation not in current:
                current.clear()
                current[generation] = identity.ssl_context()
            sock.context = current[generation]

        outer = identity.ssl_context()
        outer.sni_callback = renew
        return await asyncio.start_server(self._handle, host, port, ssl=outer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = line[:_MAX_REQUEST_LINE].decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 and parts[0] == "GET" else ""
            if path == "/healthz":
                status, body, ctype = 200, b"ok\n", "text/plain"
            elif path == "/readyz":
                ok = self._ready()
                status, body, ctype = (200 if ok else 503), (b"ok\n" if ok else b"not ready\n"), "text/plain"
            elif path == "/metrics":
                status, body, ctype = 200, generate_latest(), CONTENT_TYPE_LATEST
            else:
                status, body, ctype = 404, b"not found\n", "text/plain"
            head = (
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
