"""A tiny HTTPS server for kubespiffed's HTTP endpoints (health, metrics, the SPIFFE bundle endpoint).

GET only, one response per connection, bodies produced by plain callables: the daemon needs no web
framework. TLS follows certificate renewals: each handshake picks the context of the newest certificate
(an SNI callback swaps it in), so a renewed SVID is served without a restart.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

Response = tuple[int, bytes, str]
Route = Callable[[], Response]

_MAX_REQUEST_LINE = 4096
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
# Mozilla "intermediate": TLS 1.2+ with forward-secret AEAD suites (TLS 1.3 suites are always on).
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsSource(Protocol):
    generation: int

    def refresh(self) -> int: ...

    def ssl_context(self) -> ssl.SSLContext: ...


def server_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context from PEM; ssl loads keys only from files, so they pass through tmpfs briefly."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_CIPHERS)
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=str(shm) if shm.is_dir() else None) as tmp:
        chain, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        chain.write_bytes(chain_pem)
        key.touch(0o600)
        key.write_bytes(key_pem)
        context.load_cert_chain(chain, key)
    return context


async def serve(host: str, port: int, tls: TlsSource, routes: Mapping[str, Route]) -> asyncio.Server:
    current = {tls.generation: tls.ssl_context()}

    def pick(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        generation = tls.refresh()
        if generation not in current:
            current.clear()
            current[generation] = tls.ssl_context()
        sock.context = current[generation]

    outer = tls.ssl_context()
    outer.sni_callback = pick

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = line[:_MAX_REQUEST_LINE].decode("latin-1").split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body, ctype = 405, b"only GET\n", "text/plain"
            else:
                route = routes.get(parts[1].split("?", 1)[0])
                status, body, ctype = route() if route else (404, b"not found\n", "text/plain")
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if parts and parts[0] == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, ssl=outer)


class StaticTls:
    """A fixed certificate (e.g. an operator's web PKI certificate for the https_web bundle endpoint)."""

    generation = 0

    def __init__(self, chain_pem: bytes, key_pem: bytes) -> None:
        self._context = server_context(chain_pem, key_pem)

    def refresh(self) -> int:
        return 0

    def ssl_context(self) -> ssl.SSLContext:
        return self._context
