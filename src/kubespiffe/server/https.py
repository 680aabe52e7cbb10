"""kubespiffed's HTTPS endpoints (health, metrics, the SPIFFE bundle endpoint) on `aiohttp.web`.

aiohttp parses HTTP and routes; this module adds what the daemon needs around it:

* TLS follows certificate renewals without a restart. Every handshake runs an SNI callback that asks the
  `TlsSource` to `refresh()` and swaps in the context of the newest `generation`, so a renewed SVID is
  served from the next handshake on. TLS 1.2+ only, forward-secret AEAD suites (`server_context`).
* Routes are `Route`s (an async handler that gets the `aiohttp.web.Request`, and the methods it accepts), or
  plain callables returning `(status, body, content type)`, which become GET/HEAD-only routes. A method a
  route does not accept gets 405, a path no route names gets 404.

Every bound, and why it is there (hostile or broken clients reach these ports):

* TLS handshake: `HANDSHAKE_TIMEOUT` (5 s), then the connection is dropped.
* Request head: the request line and headers must arrive within `header_timeout` (5 s) of the handshake or
  of the previous response; the same timer closes keep-alive connections idle that long. (aiohttp arms its
  keep-alive timer when the connection is made, which is what makes it a header timeout.)
* Request line `MAX_REQUEST_LINE` (4 KiB), one header line `MAX_HEADER_LINE` (8 KiB), `MAX_HEADERS` (64)
  headers: anything longer is answered 400 and the connection closed.
* Request body: `MAX_BODY` (1 MiB) through aiohttp's `client_max_size` (413 past it), for future POST routes.
* Concurrent connections: `max_connections` (256) established connections per server; a handshake past it
  is refused with a TLS alert, so a flood cannot exhaust memory or file descriptors of the daemon.
* Shutdown: `wait_closed()` gives in-flight handlers `SHUTDOWN_TIMEOUT` (5 s).

Connection handling is HTTP/1.1's: keep-alive unless the client sends `Connection: close` (or speaks
HTTP/1.0 without keep-alive), bounded by the idle timer above.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from socket import socket
from typing import Protocol

from aiohttp import web

Response = tuple[int, bytes, str]
StaticRoute = Callable[[], Response]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HANDSHAKE_TIMEOUT = 5.0
HEADER_TIMEOUT = 5.0
MAX_REQUEST_LINE = 4096
MAX_HEADER_LINE = 8192
MAX_HEADERS = 64
MAX_BODY = 1024 * 1024
MAX_CONNECTIONS = 256
SHUTDOWN_TIMEOUT = 5.0
# Mozilla "intermediate": TLS 1.2+ with forward-secret AEAD suites (TLS 1.3 suites are always on).
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsSource(Protocol):
    generation: int

    def refresh(self) -> int: ...

    def ssl_context(self) -> ssl.SSLContext: ...


@dataclass(frozen=True)
class Route:
    """An async handler and the methods it accepts (GET also answers HEAD, without the body)."""

    handler: Handler
    methods: Collection[str] = ("GET",)


def static(route: StaticRoute) -> Route:
    """A GET/HEAD route whose response comes from a plain callable (health, metrics, the bundle)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        status, body, content_type = route()
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return Route(handler)


def _policy_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_CIPHERS)
    return context


def server_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context from PEM; ssl loads keys only from files, so they pass through tmpfs briefly."""
    context = _policy_context()
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=str(shm) if shm.is_dir() else None) as tmp:
        chain, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        chain.write_bytes(chain_pem)
        key.touch(0o600)
        key.write_bytes(key_pem)
        context.load_cert_chain(chain, key)
    return context


class HttpsServer:
    """A listening endpoint. `close()` stops accepting (like `asyncio.Server.close`); `wait_closed()` then
    closes the open connections, giving in-flight handlers `SHUTDOWN_TIMEOUT` to finish."""

    def __init__(self, listener: asyncio.Server, runner: web.AppRunner) -> None:
        self._listener = listener
        self._runner = runner

    @property
    def sockets(self) -> tuple[socket, ...]:
        return tuple(self._listener.sockets)

    def close(self) -> None:
        self._listener.close()

    async def wait_closed(self) -> None:
        self._listener.close()
        await self._runner.cleanup()


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "kubespiffe"  # instead of aiohttp's, which names Python's and its versions


async def serve(
    host: str,
    port: int,
    tls: TlsSource,
    routes: Mapping[str, Route | StaticRoute],
    *,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> HttpsServer:
    """Listen on `host:port` with `tls`'s newest certificate and answer `routes` (exact paths)."""
    app = web.Application(client_max_size=MAX_BODY)
    for path, route in routes.items():
        spec = route if isinstance(route, Route) else static(route)
        for method in spec.methods:
            if method == "GET":
                app.router.add_get(path, spec.handler)  # also HEAD
            else:
                app.router.add_route(method, path, spec.handler)
    app.on_response_prepare.append(_server_header)
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=header_timeout,
        max_line_size=MAX_REQUEST_LINE,
        max_field_size=MAX_HEADER_LINE,
        max_headers=MAX_HEADERS,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    protocols = runner.server
    assert protocols is not None  # set by setup()

    current = {tls.generation: tls.ssl_context()}

    def pick(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> int | None:
        if len(protocols.connections) >= max_connections:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        generation = tls.refresh()
        if generation not in current:
            current.clear()
            current[generation] = tls.ssl_context()
        sock.context = current[generation]
        return None

    # The listening context holds no certificate: `pick` always swaps one in. Protocol versions and ciphers
    # stay those of the context the connection started with (OpenSSL does not take them from the swapped-in
    # one), so it carries the same policy. It is our own, so servers sharing a TlsSource never share it.
    outer = _policy_context()
    outer.sni_callback = pick
    try:
        listener = await asyncio.get_running_loop().create_server(
            protocols, host, port, ssl=outer, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
        )
    except BaseException:
        await runner.cleanup()
        raise
    return HttpsServer(listener, runner)


class StaticTls:
    """A fixed certificate (e.g. an operator's web PKI certificate for the https_web bundle endpoint)."""

    generation = 0

    def __init__(self, chain_pem: bytes, key_pem: bytes) -> None:
        self._context = server_context(chain_pem, key_pem)

    def refresh(self) -> int:
        return 0

    def ssl_context(self) -> ssl.SSLContext:
        return self._context
