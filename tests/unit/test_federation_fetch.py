"""Bundle endpoint client against real TLS servers on 127.0.0.1 (checklist E): both profiles, the
server checks on every redirect hop, size and time limits, and the newest-sequence / refresh-hint rules."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import itertools
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kubespiffe.federation import fetch
from kubespiffe.federation.fetch import BundleFetchError, Endpoint, choose, next_refresh, parse_networks
from kubespiffe.spiffe.bundle import Bundle, bundle_to_json
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from tests.unit.certs import Issued, der, make_ca, make_leaf

TD = TrustDomain("b.test")
ENDPOINT_ID = SpiffeId.parse("spiffe://b.test/kubespiffe/kubespiffed")
SLOW = b"<slow>"
LOOPBACK = parse_networks("127.0.0.0/8,::1/128")


async def fetch_bundle(endpoint: Endpoint, trust: Bundle | None, **kwargs: Any) -> Bundle:
    """The test servers listen on loopback, which kubespiffed refuses unless allowed: allow it here."""
    return await fetch.fetch_bundle(endpoint, trust, **{"allowed_networks": LOOPBACK, **kwargs})


# ---------------------------------------------------------------- PKI


def _issue(
    cn: str,
    issuer: Issued | None,
    *,
    ca: bool,
    uri: str | None = None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> Issued:
    """A CA or leaf for a real TLS handshake: valid around the wall clock, with SKI and AKI."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
    names += [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)
    if ca:
        return make_ca(cn, issuer, names=names, not_before=start, not_after=end, key_identifiers=True)
    assert issuer is not None
    return make_leaf(issuer, names=names, not_before=start, not_after=end, key_identifiers=True)


@dataclass(frozen=True)
class Pki:
    spiffe_ca: Issued  # authority of b.test
    svid: Issued  # the bundle endpoint's X509-SVID, spiffe://b.test/kubespiffe/kubespiffed
    other_svid: Issued  # trusted CA, another SPIFFE ID
    rogue_svid: Issued  # the right SPIFFE ID from a CA outside the bundle
    web_ca: Issued
    web: Issued  # localhost / 127.0.0.1
    web_elsewhere: Issued  # elsewhere.test only
    rogue_ca: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    spiffe_ca = _issue("b.test CA", None, ca=True, uri="spiffe://b.test")
    rogue_ca = _issue("rogue CA", None, ca=True, uri="spiffe://b.test")
    web_ca = _issue("web CA", None, ca=True)
    return Pki(
        spiffe_ca=spiffe_ca,
        svid=_issue("kubespiffed", spiffe_ca, ca=False, uri=str(ENDPOINT_ID)),
        other_svid=_issue("other", spiffe_ca, ca=False, uri="spiffe://b.test/other"),
        rogue_svid=_issue("kubespiffed", rogue_ca, ca=False, uri=str(ENDPOINT_ID)),
        web_ca=web_ca,
        web=_issue("localhost", web_ca, ca=False, dns=["localhost"], ips=["127.0.0.1"]),
        web_elsewhere=_issue("elsewhere.test", web_ca, ca=False, dns=["elsewhere.test"]),
        rogue_ca=rogue_ca,
    )


@pytest.fixture(scope="module")
def served_bundle(pki: Pki) -> Bundle:
    jwt_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return Bundle(TD, (pki.spiffe_ca.cert,), {"k1": jwt_key}, sequence=7, refresh_hint=60)


@pytest.fixture(scope="module")
def bootstrap(pki: Pki) -> Bundle:
    return Bundle(TD, (pki.spiffe_ca.cert,))


# ---------------------------------------------------------------- HTTP servers


def http(
    status: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = (), *, length: bool = True
) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int = 100) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return head + chunks + b"0\r\nX-Trailer: t\r\n\r\n"


def redirect(location: str, status: str = "302 Found") -> bytes:
    return http(status, headers=[("Location", location)])


@dataclass
class Server:
    base: str
    routes: dict[str, bytes]
    requests: list[str] = field(default_factory=list)


_names = itertools.count()


@asynccontextmanager
async def serve(tmp_path: Path, identity: Issued, routes: dict[str, bytes]) -> AsyncIterator[Server]:
    n = next(_names)
    cert_file, key_file = tmp_path / f"cert{n}.pem", tmp_path / f"key{n}.pem"
    cert_file.write_bytes(identity.cert_pem)
    key_file.write_bytes(identity.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    state = Server("", routes)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            state.requests.append(head)
            response = state.routes.get(head.split(" ")[1], http("404 Not Found"))
            if response == SLOW:
                await asyncio.wait_for(reader.read(), 3)  # until the client gives up
                return
            writer.write(response.removesuffix(SLOW))
            await writer.drain()
            if response.endswith(SLOW):  # a response that stalls after its first bytes
                await asyncio.wait_for(reader.read(), 3)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # any request byte counts, so "requests == []" means nothing was sent
                state.requests.append(exc.partial.decode("latin-1"))
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    state.base = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def spiffe_endpoint(url: str, endpoint_id: SpiffeId = ENDPOINT_ID) -> Endpoint:
    return Endpoint(TD, url, "https_spiffe", endpoint_id=endpoint_id)


def web_endpoint(url: str, roots: Issued) -> Endpoint:
    return Endpoint(TD, url, "https_web", web_roots_pem=roots.cert_pem)


def bundle_routes(body: bytes) -> dict[str, bytes]:
    return {"/bundle": http("200 OK", body, [("Content-Type", "application/json")])}


# ---------------------------------------------------------------- https_spiffe


async def test_https_spiffe_fetches_and_parses(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    async with serve(tmp_path, pki.svid, bundle_routes(bundle_to_json(served_bundle))) as server:
        got = await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)
    assert got.trust_domain == TD
    assert got.x509_authorities == (pki.spiffe_ca.cert,)
    assert set(got.jwt_authorities) == {"k1"}
    assert (got.sequence, got.refresh_hint) == (7, 60)
    request = server.requests[0]
    assert request.startswith("GET /bundle HTTP/1.1\r\n")
    assert f"Host: {server.base.removeprefix('https://')}\r\n" in request
    assert "Connection: close\r\n" in request


async def test_chunked_body_is_read(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    routes = {"/bundle": chunked(bundle_to_json(served_bundle))}
    async with serve(tmp_path, pki.svid, routes) as server:
        got = await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)
    assert got.sequence == 7


async def test_wrong_endpoint_id_refused(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    async with serve(tmp_path, pki.svid, bundle_routes(bundle_to_json(served_bundle))) as server:
        endpoint = spiffe_endpoint(server.base + "/bundle", SpiffeId.parse("spiffe://b.test/kubespiffe"))
        with pytest.raises(BundleFetchError, match=r"expected exactly spiffe://b\.test/kubespiffe$"):
            await fetch_bundle(endpoint, bootstrap)
    assert server.requests == []  # refused before the request was sent


async def test_untrusted_svid_refused(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    async with serve(tmp_path, pki.rogue_svid, bundle_routes(bundle_to_json(served_bundle))) as server:
        with pytest.raises(BundleFetchError, match="not a trusted X509-SVID"):
            await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)
    assert server.requests == []


async def test_https_spiffe_needs_a_trust_bundle(tmp_path: Path, pki: Pki, served_bundle: Bundle) -> None:
    async with serve(tmp_path, pki.svid, bundle_routes(bundle_to_json(served_bundle))) as server:
        with pytest.raises(BundleFetchError, match="bootstrap bundle"):
            await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), None)


async def test_https_spiffe_does_not_fall_back_to_web_pki(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    async with serve(tmp_path, pki.web, bundle_routes(bundle_to_json(served_bundle))) as server:
        with pytest.raises(BundleFetchError, match="not a trusted X509-SVID"):
            await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)


def test_endpoint_config_is_explicit(pki: Pki) -> None:
    with pytest.raises(ValueError, match="endpoint SPIFFE ID"):
        Endpoint(TD, "https://x.test/", "https_spiffe")
    with pytest.raises(ValueError, match="https_spiffe profile only"):
        Endpoint(TD, "https://x.test/", "https_web", endpoint_id=ENDPOINT_ID)
    with pytest.raises(ValueError, match="https_web profile only"):
        Endpoint(TD, "https://x.test/", "https_spiffe", endpoint_id=ENDPOINT_ID, web_roots_pem=b"x")


# ---------------------------------------------------------------- https_web


async def test_https_web_fetches(tmp_path: Path, pki: Pki, served_bundle: Bundle) -> None:
    async with serve(tmp_path, pki.web, bundle_routes(bundle_to_json(served_bundle))) as server:
        got = await fetch_bundle(web_endpoint(server.base + "/bundle", pki.web_ca), None)
        port = server.base.rsplit(":", 1)[1]
        by_name = await fetch_bundle(web_endpoint(f"https://localhost:{port}/bundle", pki.web_ca), None)
    assert got.sequence == by_name.sequence == 7


async def test_https_web_hostname_mismatch_refused(tmp_path: Path, pki: Pki, served_bundle: Bundle) -> None:
    async with serve(tmp_path, pki.web_elsewhere, bundle_routes(bundle_to_json(served_bundle))) as server:
        with pytest.raises(BundleFetchError, match=r"TLS verification .* failed: IP address mismatch"):
            await fetch_bundle(web_endpoint(server.base + "/bundle", pki.web_ca), None)
    assert server.requests == []


async def test_https_web_untrusted_ca_refused(tmp_path: Path, pki: Pki, served_bundle: Bundle) -> None:
    async with serve(tmp_path, pki.web, bundle_routes(bundle_to_json(served_bundle))) as server:
        with pytest.raises(BundleFetchError, match=r"TLS verification .* failed: unable to get local issuer"):
            await fetch_bundle(web_endpoint(server.base + "/bundle", pki.rogue_ca), None)
    assert server.requests == []


async def test_https_web_does_not_fall_back_to_spiffe(
    tmp_path: Path, pki: Pki, served_bundle: Bundle
) -> None:
    # The SVID chains to the roots given, but names no host: RFC 6125 still applies, no SPIFFE ID check.
    async with serve(tmp_path, pki.svid, bundle_routes(bundle_to_json(served_bundle))) as server:
        with pytest.raises(BundleFetchError, match=r"TLS verification .* failed: IP address mismatch"):
            await fetch_bundle(web_endpoint(server.base + "/bundle", pki.spiffe_ca), None)


# ---------------------------------------------------------------- URLs, connection, HTTP


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:9/bundle", "is not https"),
        ("ftp://127.0.0.1:9/bundle", "is not https"),
        ("https://user:pw@127.0.0.1:9/bundle", "userinfo"),
        ("https://user@127.0.0.1:9/bundle", "userinfo"),
        ("https:///bundle", "has no host"),
        ("https://127.0.0.1:99999/bundle", "not a valid URL"),
    ],
)
async def test_bad_urls_refused_before_connecting(url: str, message: str, bootstrap: Bundle) -> None:
    with pytest.raises(BundleFetchError, match=message):
        await fetch_bundle(spiffe_endpoint(url), bootstrap)


async def test_connect_failure(bootstrap: Bundle) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BundleFetchError, match="could not connect"):
        await fetch_bundle(spiffe_endpoint(f"https://127.0.0.1:{port}/bundle"), bootstrap)


def _two_x5c(bundle: Bundle) -> bytes:
    document = json.loads(bundle_to_json(bundle))
    x509_key = next(k for k in document["keys"] if k["use"] == "x509-svid")
    x509_key["x5c"] = x509_key["x5c"] * 2
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("/missing", "answered HTTP 404"),
        ("/error", "answered HTTP 500"),
        ("/malformed", "not valid JSON"),
        ("/not-jwks", "no 'keys' array"),
        ("/two-x5c", "exactly one certificate"),
        ("/garbage", "HTTP/1.x status line"),
        ("/truncated", "before the body was complete"),
        ("/gzip", "unsupported transfer coding"),
    ],
)
async def test_bad_responses_refused(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle, route: str, message: str
) -> None:
    routes = {
        "/error": http("500 Internal Server Error", b"oops"),
        "/malformed": http("200 OK", b"{not json"),
        "/not-jwks": http("200 OK", b'{"spiffe_sequence": 1}'),
        "/two-x5c": http("200 OK", _two_x5c(served_bundle)),
        "/garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
        "/truncated": http("200 OK", b"{}", [("Content-Length", "100")], length=False),
        "/gzip": http("200 OK", b"{}", [("Transfer-Encoding", "gzip")], length=False),
    }
    async with serve(tmp_path, pki.svid, routes) as server:
        with pytest.raises(BundleFetchError, match=message):
            await fetch_bundle(spiffe_endpoint(server.base + route), bootstrap)


@pytest.mark.parametrize("route", ["/content-length", "/chunked", "/until-eof"])
async def test_oversized_body_refused(tmp_path: Path, pki: Pki, bootstrap: Bundle, route: str) -> None:
    big = b'{"keys": [], "pad": "' + b"x" * 4000 + b'"}'
    routes = {
        "/content-length": http("200 OK", big),
        "/chunked": chunked(big, 512),
        "/until-eof": http("200 OK", big, length=False),
    }
    async with serve(tmp_path, pki.svid, routes) as server:
        with pytest.raises(BundleFetchError, match="larger than 1024 bytes"):
            await fetch_bundle(spiffe_endpoint(server.base + route), bootstrap, max_bytes=1024)


async def test_body_within_limit_without_length(tmp_path: Path, pki: Pki, bootstrap: Bundle) -> None:
    routes = {"/bundle": http("200 OK", b'{"keys": [], "spiffe_sequence": 3}', length=False)}
    async with serve(tmp_path, pki.svid, routes) as server:
        got = await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)
    assert got.x509_authorities == () and got.sequence == 3  # {"keys": []} = everything revoked (D.1)


async def test_slow_server_times_out(tmp_path: Path, pki: Pki, bootstrap: Bundle) -> None:
    async with serve(tmp_path, pki.svid, {"/slow": SLOW}) as server:
        started = time.monotonic()
        with pytest.raises(BundleFetchError, match=r"did not answer within 0\.5 s"):
            await fetch_bundle(spiffe_endpoint(server.base + "/slow"), bootstrap, timeout=0.5)
    assert time.monotonic() - started < 1.5


# ---------------------------------------------------------------- HTTP framing (h11)

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("size", [1, 10, 255, 1 << 20])  # hex digits A, FF in upper case
async def test_chunked_bodies_of_any_chunk_size(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle, size: int
) -> None:
    body = bundle_to_json(served_bundle)
    upper = chunked(body, size).replace(b"%x;" % min(size, len(body)), b"%X;" % min(size, len(body)))
    async with serve(tmp_path, pki.svid, {"/bundle": upper}) as server:
        got = await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)
    assert got == served_bundle


async def test_interim_responses_skipped(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" * 5
    routes = {"/bundle": early + http("200 OK", bundle_to_json(served_bundle))}
    async with serve(tmp_path, pki.svid, routes) as server:
        assert (await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)).sequence == 7


@pytest.mark.parametrize(
    "route",
    ["/many-1-byte-chunks", "/declared-huge-then-stalls", "/huge-chunk-size-field", "/http10-until-eof"],
)
async def test_oversized_chunked_and_unframed_bodies_refused(
    tmp_path: Path, pki: Pki, bootstrap: Bundle, route: str
) -> None:
    big = b'{"keys": [], "pad": "' + b"x" * 2000 + b'"}'
    routes = {
        "/many-1-byte-chunks": chunked(big, 1),
        # Refused once the limit is passed, not when the declared chunk ends (it never does here).
        "/declared-huge-then-stalls": CHUNKED_HEAD + b"100000\r\n" + big + SLOW,
        "/huge-chunk-size-field": CHUNKED_HEAD + b"ffffffffffffffffffff\r\n" + big + SLOW,
        "/http10-until-eof": b"HTTP/1.0 200 OK\r\n\r\n" + big,
    }
    async with serve(tmp_path, pki.svid, routes) as server:
        started = time.monotonic()
        with pytest.raises(BundleFetchError, match="larger than 1024 bytes"):
            await fetch_bundle(spiffe_endpoint(server.base + route), bootstrap, max_bytes=1024)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", "did not answer with an HTTP/1.x status line"),
        (b"HTTP/1.1 OK\r\n\r\n", r"valid HTTP/1\.x status line and headers: illegal status line"),
        (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "status line and headers: illegal header line"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "status line and headers: .*proposal"),
        (b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n", "status line and headers: continuation line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            "status line and headers: conflicting Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "status line and headers: bad Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "unsupported transfer coding: multiple Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "unsupported transfer coding",
        ),
        (CHUNKED_HEAD + b"zz\r\n{}\r\n0\r\n\r\n", "malformed HTTP body: illegal chunk header"),
        (CHUNKED_HEAD + b"-2\r\n{}\r\n0\r\n\r\n", "malformed HTTP body: illegal chunk header"),
        (CHUNKED_HEAD + b"2\r\n{}XX0\r\n\r\n", "malformed HTTP body: malformed chunk footer"),
        (CHUNKED_HEAD + b"1" + b"0" * 70_000 + SLOW, "too many bytes in a chunk header or trailer"),
        (
            CHUNKED_HEAD + b"0\r\nX-Trailer: " + b"t" * 70_000 + SLOW,
            "too many bytes in a chunk header or trailer",
        ),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 70_000 + SLOW, "too many header bytes"),
        (CHUNKED_HEAD + b"10\r\n{}", "closed the connection before the body was complete"),
        (b"HTTP/1.1 200 OK\r\nContent-", "closed the connection before the response head was complete"),
        (b"", "closed the connection before the response head was complete"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 70_000 + b"\r\n\r\n", "too many header bytes"),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 101 + b"Content-Length: 2\r\n\r\n{}",
            "more than 100 headers",
        ),
        (b"HTTP/1.1 103 Early Hints\r\n\r\n" * 6 + http("200 OK", b"{}"), "too many interim"),
    ],
)
async def test_malformed_http_is_a_fetch_error(
    tmp_path: Path, pki: Pki, bootstrap: Bundle, response: bytes, message: str
) -> None:
    async with serve(tmp_path, pki.svid, {"/bundle": response}) as server:
        with pytest.raises(BundleFetchError, match=message):
            await fetch_bundle(spiffe_endpoint(server.base + "/bundle"), bootstrap)


async def test_non_ascii_url_refused_before_connecting(tmp_path: Path, pki: Pki, bootstrap: Bundle) -> None:
    async with serve(tmp_path, pki.svid, {}) as server:
        with pytest.raises(BundleFetchError, match="not ASCII"):
            await fetch_bundle(spiffe_endpoint(server.base + "/b\u00fcndle"), bootstrap)
    assert server.requests == []


# ---------------------------------------------------------------- redirects


async def test_redirect_followed(tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle) -> None:
    routes = {
        **bundle_routes(bundle_to_json(served_bundle)),
        "/old": redirect("/moved", "301 Moved Permanently"),
        "/moved": redirect("/bundle?v=2", "307 Temporary Redirect"),
        "/bundle?v=2": http("200 OK", bundle_to_json(served_bundle)),
    }
    async with serve(tmp_path, pki.svid, routes) as server:
        got = await fetch_bundle(spiffe_endpoint(server.base + "/old"), bootstrap)
    assert got.sequence == 7
    assert [r.split(" ")[1] for r in server.requests] == ["/old", "/moved", "/bundle?v=2"]


async def test_redirect_to_another_server_gets_the_same_checks(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    body = bundle_to_json(served_bundle)
    async with (
        serve(tmp_path, pki.svid, bundle_routes(body)) as good,
        serve(tmp_path, pki.other_svid, bundle_routes(body)) as impostor,
        serve(tmp_path, pki.svid, {}) as front,
    ):
        front.routes["/to-good"] = redirect(good.base + "/bundle", "308 Permanent Redirect")
        front.routes["/to-impostor"] = redirect(impostor.base + "/bundle")
        assert (await fetch_bundle(spiffe_endpoint(front.base + "/to-good"), bootstrap)).sequence == 7
        with pytest.raises(BundleFetchError, match=r"presented SPIFFE ID spiffe://b\.test/other,"):
            await fetch_bundle(spiffe_endpoint(front.base + "/to-impostor"), bootstrap)
    assert impostor.requests == []


async def test_redirect_to_http_refused(tmp_path: Path, pki: Pki, bootstrap: Bundle) -> None:
    async with serve(tmp_path, pki.svid, {}) as server:
        plain = server.base.replace("https://", "http://")
        server.routes["/redirect"] = redirect(plain + "/bundle", "303 See Other")
        with pytest.raises(BundleFetchError, match="is not https"):
            await fetch_bundle(spiffe_endpoint(server.base + "/redirect"), bootstrap)
    assert len(server.requests) == 1


async def test_redirect_loop_refused(tmp_path: Path, pki: Pki, bootstrap: Bundle) -> None:
    async with serve(tmp_path, pki.svid, {"/loop": redirect("/loop")}) as server:
        with pytest.raises(BundleFetchError, match="redirected more than 3 times"):
            await fetch_bundle(spiffe_endpoint(server.base + "/loop"), bootstrap, max_redirects=3)
    assert len(server.requests) == 4  # the configured URL plus 3 redirects


async def test_redirect_without_location_refused(tmp_path: Path, pki: Pki, bootstrap: Bundle) -> None:
    async with serve(tmp_path, pki.svid, {"/r": http("302 Found")}) as server:
        with pytest.raises(BundleFetchError, match="without one Location"):
            await fetch_bundle(spiffe_endpoint(server.base + "/r"), bootstrap)


# ---------------------------------------------------------------- choose / next_refresh


def _bundle(sequence: int | None, hint: int | None = None) -> Bundle:
    return Bundle(TD, sequence=sequence, refresh_hint=hint)


def test_choose_newest_sequence_wins(caplog: pytest.LogCaptureFixture) -> None:
    current = _bundle(5)
    assert choose(None, current) is current
    newer, same, older = _bundle(6), _bundle(5), _bundle(4)
    assert choose(current, newer) is newer
    assert choose(current, same) is same
    assert choose(current, older) is current
    assert "older than the 5 in hand" in caplog.text
    unnumbered = _bundle(None)
    assert choose(current, unnumbered) is unnumbered
    assert choose(unnumbered, older) is older


def test_choose_never_mixes_trust_domains() -> None:
    with pytest.raises(ValueError, match="never compared"):
        choose(Bundle(TrustDomain("a.test")), _bundle(1))


def test_next_refresh_clamps_hint() -> None:
    assert next_refresh(_bundle(1, 60), 30, 600) == 60
    assert next_refresh(_bundle(1, 0), 30, 600) == 30
    assert next_refresh(_bundle(1, 86400), 30, 600) == 600
    assert next_refresh(_bundle(1, None), 30, 600) == 300
    assert next_refresh(None, 30, 600, default=120) == 120
    assert next_refresh(None, 30, 100) == 100  # the default is bounded too
    with pytest.raises(ValueError, match="above the maximum"):
        next_refresh(None, 600, 30)


# ---------------------------------------------------------------- redirect and address rules (issue 12, 9)


async def test_cross_host_redirect_refused_before_connecting(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    body = bundle_to_json(served_bundle)
    async with serve(tmp_path, pki.svid, bundle_routes(body)) as good, serve(tmp_path, pki.svid, {}) as front:
        port = good.base.rsplit(":", 1)[1]
        front.routes["/elsewhere"] = redirect(f"https://localhost:{port}/bundle")
        with pytest.raises(BundleFetchError, match="redirected to another host"):
            await fetch_bundle(spiffe_endpoint(front.base + "/elsewhere"), bootstrap)
    assert good.requests == []


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("::1", "loopback"),
    ],
)
async def test_non_public_addresses_refused_unless_allowed(
    address: str, kind: str, bootstrap: Bundle
) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(BundleFetchError, match=f"{kind}.*--federation-allowed-networks"):
        await fetch.fetch_bundle(spiffe_endpoint(f"https://{host}:1/bundle"), bootstrap, timeout=2)


async def test_loopback_allowed_explicitly(
    tmp_path: Path, pki: Pki, served_bundle: Bundle, bootstrap: Bundle
) -> None:
    async with serve(tmp_path, pki.svid, bundle_routes(bundle_to_json(served_bundle))) as server:
        endpoint = spiffe_endpoint(server.base + "/bundle")
        with pytest.raises(BundleFetchError, match="loopback"):
            await fetch.fetch_bundle(endpoint, bootstrap)
        assert server.requests == []
        allowed = parse_networks("127.0.0.1/32")
        assert (await fetch.fetch_bundle(endpoint, bootstrap, allowed_networks=allowed)).sequence == 7


def test_parse_networks() -> None:
    assert parse_networks("") == ()
    assert [str(n) for n in parse_networks(" 10.0.0.0/8 , fd00::/8 ")] == ["10.0.0.0/8", "fd00::/8"]
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("10.0.0.0/33")


class _PeerCertificate:
    """What the TLS layer hands over from a peer: its leaf as DER, nothing verified (https_spiffe)."""

    def __init__(self, leaf: bytes) -> None:
        self._leaf = leaf

    def getpeercert(self, binary_form: bool) -> bytes:
        assert binary_form
        return self._leaf


def test_a_peer_certificate_with_an_unknown_version_is_a_fetch_error() -> None:
    """A federated peer controls its TLS certificate: one cryptography cannot load for its version
    (InvalidVersion, not a ValueError) is refused like any other unusable certificate."""
    data = der(make_ca("peer").cert)
    assert data.count(bytes.fromhex("a003020102")) == 1
    bad = data.replace(bytes.fromhex("a003020102"), bytes.fromhex("a00302010a"))
    with pytest.raises(BundleFetchError, match="unparsable certificate"):
        fetch._peer_chain(_PeerCertificate(bad))  # type: ignore[arg-type]
