"""kubespiffed's HTTPS endpoints on a real loopback socket: routing and methods, keep-alive, every bound the
module documents (handshake policy, request head size and time, concurrent connections) and certificate
renewal without a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from kubespiffe.server.https import (
    MAX_REQUEST_LINE,
    HttpsServer,
    Route,
    StaticRoute,
    StaticTls,
    serve,
    server_context,
)
from tests.unit.certs import DAY, Issued, build, name

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def _issue(label: str) -> Issued:
    now = dt.datetime.now(dt.UTC)
    return build(name(label), None, not_before=now - DAY, not_after=now + DAY)


def _pem(issued: Issued) -> tuple[bytes, bytes]:
    key = issued.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return issued.cert.public_bytes(Encoding.PEM), key


class RotatingTls:
    """A TlsSource whose certificate the test replaces, counting the handshakes that asked for it."""

    def __init__(self, first: Issued) -> None:
        self.generation = 1
        self.refreshes = 0
        self._issued = first

    def rotate(self, issued: Issued) -> None:
        self._issued = issued
        self.generation += 1

    def refresh(self) -> int:
        self.refreshes += 1
        return self.generation

    def ssl_context(self) -> ssl.SSLContext:
        return server_context(*_pem(self._issued))


def client_context(*, maximum: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the tests compare the served certificate themselves
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def peer_cert(self) -> bytes:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der
        return bytes(der)

    async def request(self, raw: str) -> tuple[int, dict[str, str], bytes]:
        """Send one request head and read one response (Content-Length framed, as all of ours are)."""
        self.writer.write(raw.encode("latin-1"))
        await self.writer.drain()
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
        status_line, *lines = head.removesuffix("\r\n\r\n").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = 0 if raw.startswith("HEAD ") else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return int(status_line.split(" ")[1]), headers, body

    async def closed_by_server(self, within: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(), within) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1)


async def connect(port: int, context: ssl.SSLContext | None = None) -> Conn:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context or client_context(), server_hostname="localhost"
    )
    return Conn(reader, writer)


async def refused(port: int, context: ssl.SSLContext | None = None, alert: str = "") -> None:
    """The server ends the handshake: the client reads its alert (matching `alert`) or, when asyncio's
    transport closes first, a reset. A failure of the client's own (nothing sent) does not count."""
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as caught:
        await connect(port, context)
    if isinstance(caught.value, ssl.SSLError):
        assert "alert" in str(caught.value).lower() and re.search(alert, str(caught.value))


def port_of(server: HttpsServer) -> int:
    return int(server.sockets[0].getsockname()[1])


async def _echo(request: web.Request) -> web.StreamResponse:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


ROUTES: Mapping[str, Route | StaticRoute] = {
    "/healthz": lambda: (200, b"ok\n", "text/plain"),
    "/readyz": lambda: (503, b"not ready\n", "text/plain"),
    "/metrics": lambda: (200, b"# metrics\n", PROMETHEUS),
    "/echo": Route(_echo, methods=("POST",)),
}


@asynccontextmanager
async def running(
    tls: RotatingTls | StaticTls | None = None,
    routes: Mapping[str, Route | StaticRoute] = ROUTES,
    **bounds: float,
) -> AsyncIterator[HttpsServer]:
    source = tls or StaticTls(*_pem(_issue("localhost")))
    server = await serve("127.0.0.1", 0, source, routes, **bounds)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- routing and methods


async def test_static_routes_answer_get() -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        status, headers, body = await conn.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body, headers["content-type"]) == (200, b"ok\n", "text/plain")
        status, headers, body = await conn.request("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body, headers["content-type"]) == (200, b"# metrics\n", PROMETHEUS)
        status, _, body = await conn.request("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (503, b"not ready\n")
        assert headers["server"] == "kubespiffe"  # no framework or Python version advertised
        await conn.close()


async def test_head_has_headers_and_no_body() -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        status, headers, _ = await conn.request("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and headers["content-length"] == "3"
        # The next response starts right after the head: no body bytes were sent for HEAD.
        status, _, body = await conn.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (200, b"ok\n")
        await conn.close()


async def test_unknown_path_is_404() -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        status, _, _ = await conn.request("GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404
        status, _, _ = await conn.request("GET /healthz/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404  # exact paths only
        await conn.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"])
async def test_other_methods_on_static_routes_are_405(method: str) -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        status, headers, _ = await conn.request(
            f"{method} /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        assert status == 405
        assert set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
        await conn.close()


async def test_async_route_takes_post_and_only_post() -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        status, _, body = await conn.request(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        )
        assert (status, body) == (200, b"hello")
        status, _, _ = await conn.request("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405
        await conn.close()


async def test_connection_close_is_honoured() -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        status, headers, _ = await conn.request(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 200 and headers["connection"].lower() == "close"
        assert await conn.closed_by_server(2)
        conn = await connect(port_of(server))
        status, _, _ = await conn.request("GET /healthz HTTP/1.0\r\n\r\n")
        assert status == 200
        assert await conn.closed_by_server(2)  # HTTP/1.0 without keep-alive


# ---------------------------------------------------------------- bounds


async def test_oversized_request_line_refused() -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        fits = "/" + "a" * (MAX_REQUEST_LINE - 100)
        status, _, _ = await conn.request(f"GET {fits} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404
        status, _, _ = await conn.request(f"GET /{'a' * MAX_REQUEST_LINE} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400
        assert await conn.closed_by_server(2)


async def test_oversized_header_and_too_many_headers_refused() -> None:
    async with running() as server:
        conn = await connect(port_of(server))
        status, _, _ = await conn.request(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 9000}\r\n\r\n")
        assert status == 400
        assert await conn.closed_by_server(2)
        conn = await connect(port_of(server))
        many = "".join(f"X-H{i}: v\r\n" for i in range(100))
        status, _, _ = await conn.request(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n")
        assert status == 400
        assert await conn.closed_by_server(2)


async def test_silent_connection_closed_after_header_timeout() -> None:
    async with running(header_timeout=0.5) as server:
        conn = await connect(port_of(server))
        started = time.monotonic()
        assert await conn.closed_by_server(3)
        assert 0.4 < time.monotonic() - started < 2


async def test_slow_request_head_closed_after_header_timeout() -> None:
    async with running(header_timeout=0.5) as server:
        conn = await connect(port_of(server))
        started = time.monotonic()
        for byte in "GET /healthz HTTP/1.1\r\nHost: x\r\n":  # a slowloris never finishes its head
            conn.writer.write(byte.encode())
            await asyncio.sleep(0.05)
            if conn.writer.is_closing() or conn.reader.at_eof():
                break
        assert await conn.closed_by_server(3)
        assert time.monotonic() - started < 2.5


async def test_idle_keepalive_connection_closed() -> None:
    async with running(header_timeout=0.5) as server:
        conn = await connect(port_of(server))
        await asyncio.sleep(0.3)
        status, _, _ = await conn.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        started = time.monotonic()
        assert await conn.closed_by_server(3)
        assert 0.4 < time.monotonic() - started < 2


async def test_concurrent_connections_bounded() -> None:
    async with running(max_connections=2) as server:
        port = port_of(server)
        first, second = await connect(port), await connect(port)
        for conn in (first, second):
            assert (await conn.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
        await refused(port, alert="(?i)internal.error")
        await first.close()
        await asyncio.sleep(0.2)  # the server notices the close
        third = await connect(port)
        assert (await third.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
        await second.close()
        await third.close()


async def test_wait_closed_closes_open_connections_and_stops_listening() -> None:
    server = await serve("127.0.0.1", 0, StaticTls(*_pem(_issue("localhost"))), ROUTES)
    port = port_of(server)
    conn = await connect(port)
    assert (await conn.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
    server.close()
    with pytest.raises(OSError, match=r"Connect call failed|Connection refused"):
        await connect(port)
    await asyncio.wait_for(server.wait_closed(), 6)
    assert await conn.closed_by_server(1)


# ---------------------------------------------------------------- TLS


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_1_refused() -> None:
    legacy = "DEFAULT:@SECLEVEL=0"  # lets this client offer TLS 1.0/1.1 at all
    async with running() as server:
        ok = await connect(port_of(server), client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=legacy))
        assert ok.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        await ok.close()
        old = client_context(maximum=ssl.TLSVersion.TLSv1_1, ciphers=legacy)
        await refused(port_of(server), old, alert="(?i)protocol.version")


async def test_tls_1_2_without_forward_secret_aead_refused() -> None:
    async with running() as server:
        for ciphers in ("ECDHE-ECDSA-AES128-SHA256", "AES128-GCM-SHA256"):  # CBC; no ECDHE
            context = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
            await refused(port_of(server), context, alert="(?i)handshake.failure")


async def test_renewed_certificate_served_on_next_handshake() -> None:
    first, second = _issue("first"), _issue("second")
    tls = RotatingTls(first)
    async with running(tls) as server:
        before = await connect(port_of(server))
        assert before.peer_cert == first.cert.public_bytes(Encoding.DER)
        tls.rotate(second)
        after = await connect(port_of(server))
        assert after.peer_cert == second.cert.public_bytes(Encoding.DER)
        assert tls.refreshes == 2  # asked on every handshake
        # The connection made before the renewal keeps working on its session.
        assert (await before.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
        await before.close()
        await after.close()


async def test_servers_sharing_a_tls_source_keep_their_own_bounds() -> None:
    tls = StaticTls(*_pem(_issue("shared")))
    async with running(tls, max_connections=1) as small, running(tls, max_connections=5) as large:
        held = await connect(port_of(small))
        assert (await held.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
        conns = [await connect(port_of(large)) for _ in range(3)]
        for conn in conns:
            assert (await conn.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
            await conn.close()
        await refused(port_of(small))
        await held.close()
