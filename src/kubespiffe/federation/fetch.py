"""SPIFFE bundle endpoint client (checklist sections D and E), on asyncio streams with h11 for HTTP/1.1.

A federated bundle is a trust anchor, so every byte of this path is treated as hostile: https only, no
userinfo, the profile's server check before the request is sent and on every redirect hop, bounded size and
time, and the document parsed by the strict `parse_bundle_json`. The profile is explicit, never a fallback.

Peer chain under https_spiffe: Python's `ssl` only verifies against web PKI rules, so the handshake runs with
CERT_NONE and the chain is checked by `verify_chain` afterwards (before the request is sent). Python < 3.13
exposes only the peer's leaf (`getpeercert(binary_form=True)`), so there the leaf must be signed directly by
an authority of the trust bundle; intermediates the server sends are not used. kubespiffe's own endpoint
serves an SVID signed by a bundle CA, which passes. On 3.13+ the public `SSLObject.get_unverified_chain()`
is used when present, so intermediates are honoured there.

Where it may connect: a redirect stays on the configured URL's host (the port may change), and every
address a URL resolves to must be public (not loopback, link-local, private, shared, multicast or
otherwise reserved) unless it lies in `allowed_networks` (kubespiffed's --federation-allowed-networks).
The connection goes to the address that was checked, so a DNS answer cannot change between check and use.
A hostile peer therefore cannot make kubespiffed reach the API server, a cloud metadata service or
anything else on the cluster's networks.

Bounds: `timeout` (10 s) for the whole fetch, redirects included; `max_redirects` (3) hops; the response head
at most `MAX_HEADER_BYTES` of header fields and `MAX_HEADERS` fields, after at most `MAX_INTERIM_RESPONSES`
1xx responses (h11 holds at most `MAX_HEADER_BYTES` plus one `_READ_CHUNK` read of an incomplete head, chunk
header or trailer block); the body at most
`max_bytes` (1 MiB), refused up front from Content-Length and otherwise counted as it arrives, whether
chunked or delimited by the connection's close.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, urljoin, urlsplit

import h11
from cryptography import x509

from kubespiffe.errors import KubespiffeError
from kubespiffe.spiffe.bundle import MAX_BUNDLE_BYTES, Bundle, BundleError, parse_bundle_json
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509SvidError, verify_chain

log = logging.getLogger(__name__)

Profile = Literal["https_spiffe", "https_web"]
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_INTERIM_RESPONSES = 5  # 1xx responses (e.g. 103 Early Hints) skipped before the final one
_READ_CHUNK = 16 * 1024
_CLOSE_WAIT = 1.0


class BundleFetchError(KubespiffeError):
    """A bundle fetch failed; the message is one sentence naming what failed (connect, TLS, HTTP...)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (the --federation-allowed-networks flag); ValueError names a bad one."""
    networks: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def _address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why kubespiffed must not connect to `ip` by default (None: a public address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "non-public"
    return None


async def _resolve(target: _Target, allowed: tuple[Network, ...]) -> str:
    """The address to connect to: every address the host resolves to must be public or allowed."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise BundleFetchError(
            f"bundle endpoint host {target.host} does not resolve: {exc.strerror}"
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise BundleFetchError(f"bundle endpoint host {target.host} does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        kind = _address_kind(ip)
        if kind is not None and not any(ip in network for network in allowed):
            raise BundleFetchError(
                f"bundle endpoint {target.host} resolves to {ip}, a {kind} address; allow its network with "
                "--federation-allowed-networks if this peer is meant to be there"
            )
    return addresses[0]


@dataclass(frozen=True)
class Endpoint:
    """A federation relationship's bundle endpoint, configured explicitly (E.2: never derived from the URL).

    https_spiffe needs `endpoint_id`; https_web may add `web_roots_pem`, CA certificates trusted in addition
    to the system roots (for locally trusted CAs). Fields of the other profile are refused, not ignored.
    """

    trust_domain: TrustDomain
    url: str
    profile: Profile
    endpoint_id: SpiffeId | None = None
    web_roots_pem: bytes | None = None

    def __post_init__(self) -> None:
        if self.profile == "https_spiffe":
            if self.endpoint_id is None:
                raise ValueError("https_spiffe bundle endpoint needs an endpoint SPIFFE ID")
            if self.web_roots_pem is not None:
                raise ValueError("web_roots_pem applies to the https_web profile only")
        elif self.profile == "https_web":
            if self.endpoint_id is not None:
                raise ValueError("endpoint_id applies to the https_spiffe profile only")
        else:
            raise ValueError(f"unknown bundle endpoint profile {self.profile!r}")


@dataclass(frozen=True)
class _Target:
    url: str
    host: str
    port: int
    request_target: str
    host_header: str


def _parse_url(url: str) -> _Target:
    """E.2: scheme https, no userinfo. Checked for the configured URL and every redirect target."""
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port or 443
        host = parts.hostname
    except ValueError:
        raise BundleFetchError(f"bundle endpoint URL {url!r} is not a valid URL") from None
    if parts.scheme != "https":
        raise BundleFetchError(f"bundle endpoint URL {url!r} is not https")
    if "@" in parts.netloc:
        raise BundleFetchError("bundle endpoint URL must not carry userinfo (user:password@)")
    if not host:
        raise BundleFetchError(f"bundle endpoint URL {url!r} has no host")
    if any(c in url for c in "\r\n\t "):
        raise BundleFetchError("bundle endpoint URL contains whitespace or control characters")
    try:
        is_v6 = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        is_v6 = False
    authority = f"[{host}]" if is_v6 else host
    host_header = authority if port == 443 else f"{authority}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(url, host, port, target, host_header)


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    if endpoint.profile == "https_web":
        context = ssl.create_default_context()  # CERT_REQUIRED + check_hostname (RFC 6125), system roots
        if endpoint.web_roots_pem is not None:
            try:
                context.load_verify_locations(cadata=endpoint.web_roots_pem.decode("ascii"))
            except (ssl.SSLError, ValueError, UnicodeDecodeError):
                raise BundleFetchError("web_roots_pem holds no valid PEM CA certificate") from None
    else:
        # https_spiffe: SPIFFE rules are checked by verify_chain right after the handshake.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[x509.Certificate]:
    leaf_der = ssl_object.getpeercert(binary_form=True)
    if not leaf_der:
        raise BundleFetchError("bundle endpoint presented no certificate")
    ders: list[bytes] = [leaf_der]
    unverified = getattr(ssl_object, "get_unverified_chain", None)  # public from Python 3.13 only
    if callable(unverified):
        with contextlib.suppress(Exception):
            extra = [c for c in unverified() or [] if isinstance(c, bytes)]
            ders = [leaf_der, *(c for c in extra if c != leaf_der)]
    try:
        return [x509.load_der_x509_certificate(der) for der in ders]
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        raise BundleFetchError("bundle endpoint presented an unparsable certificate") from None


def _check_spiffe_peer(
    endpoint: Endpoint,
    trust: Bundle | None,
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
    now: dt.datetime,
) -> None:
    """E.4: the server's X509-SVID verifies against `trust` and carries EXACTLY the endpoint ID."""
    assert endpoint.endpoint_id is not None
    if ssl_object is None:
        raise BundleFetchError("bundle endpoint connection is not TLS")
    if trust is None:
        raise BundleFetchError("https_spiffe bundle endpoint needs a bootstrap bundle to verify the server")
    if trust.trust_domain != endpoint.endpoint_id.trust_domain:
        raise BundleFetchError(
            f"trust bundle is for {trust.trust_domain}, "
            f"the endpoint ID is in {endpoint.endpoint_id.trust_domain}"
        )
    chain = _peer_chain(ssl_object)
    try:
        server_id = verify_chain(chain, {trust.trust_domain: trust.x509_authorities}, now)
    except X509SvidError as exc:
        raise BundleFetchError(f"bundle endpoint TLS certificate is not a trusted X509-SVID: {exc}") from None
    if server_id != endpoint.endpoint_id:
        raise BundleFetchError(
            f"bundle endpoint presented SPIFFE ID {server_id}, expected exactly {endpoint.endpoint_id}"
        )


@dataclass(frozen=True)
class _Response:
    status: int
    location: str | None
    body: bytes


class _Exchange:
    """One request/response on an open stream, parsed by h11. Every h11 protocol error becomes a
    BundleFetchError naming what the peer got wrong; the reads are bounded by h11's incomplete-event
    limit (the response head, chunk headers and trailers) and by `max_bytes` (the body)."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._eof = False
        self._head_seen = False

    def request(self, target: _Target) -> bytes:
        """The request's bytes, built before connecting: a URL h11 will not send never reaches the peer."""
        try:
            return self._h11.send(
                h11.Request(
                    method="GET",
                    target=target.request_target,
                    headers=[
                        ("Host", target.host_header),
                        ("Accept", "application/json"),
                        ("User-Agent", "kubespiffe"),
                        ("Connection", "close"),
                    ],
                )
            ) + self._h11.send(h11.EndOfMessage())
        except UnicodeEncodeError:
            raise BundleFetchError("bundle endpoint URL is not ASCII") from None
        except h11.LocalProtocolError as exc:
            raise BundleFetchError(f"bundle endpoint URL cannot be sent in an HTTP request: {exc}") from None

    async def _next(self, reader: asyncio.StreamReader) -> h11.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._refusal(exc) from None
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)  # h11.PAUSED cannot occur: we send one request only
                return event
            data = await reader.read(_READ_CHUNK)
            self._eof = not data
            self._h11.receive_data(data)

    def _refusal(self, exc: h11.RemoteProtocolError) -> BundleFetchError:
        part = "body" if self._head_seen else "response head"
        if self._eof:
            return BundleFetchError(f"bundle endpoint closed the connection before the {part} was complete")
        if exc.error_status_hint == 431:  # h11's max_incomplete_event_size
            what = "header bytes" if not self._head_seen else "bytes in a chunk header or trailer"
            return BundleFetchError(f"bundle endpoint {self._where} sent too many {what}")
        if exc.error_status_hint == 501:  # a Transfer-Encoding other than one "chunked"
            return BundleFetchError(
                f"bundle endpoint {self._where} used an unsupported transfer coding: {exc}"
            )
        if not self._head_seen:
            return BundleFetchError(
                f"bundle endpoint {self._where} did not answer with a valid HTTP/1.x status line and "
                f"headers: {exc}"
            )
        return BundleFetchError(f"bundle endpoint {self._where} sent a malformed HTTP body: {exc}")

    async def response_head(self, reader: asyncio.StreamReader) -> h11.Response:
        """The final (non-1xx) response's head."""
        for _ in range(MAX_INTERIM_RESPONSES + 1):
            event = await self._next(reader)
            if isinstance(event, h11.InformationalResponse):
                continue
            if not isinstance(event, h11.Response):  # ConnectionClosed: h11 saw EOF before any response
                raise BundleFetchError(
                    "bundle endpoint closed the connection before the response head was complete"
                )
            self._head_seen = True
            if event.http_version not in (b"1.0", b"1.1"):
                raise BundleFetchError(
                    f"bundle endpoint {self._where} did not answer with an HTTP/1.x status line"
                )
            if len(event.headers) > MAX_HEADERS:
                raise BundleFetchError(f"bundle endpoint {self._where} sent more than {MAX_HEADERS} headers")
            # h11 only bounds a head still incomplete after a read; this bounds a head that came in one.
            if sum(len(name) + len(value) for name, value in event.headers) > MAX_HEADER_BYTES:
                raise BundleFetchError(f"bundle endpoint {self._where} sent too many header bytes")
            return event
        raise BundleFetchError("bundle endpoint sent too many interim (1xx) responses")

    async def body(self, reader: asyncio.StreamReader, head: h11.Response, max_bytes: int) -> bytes:
        too_large = f"bundle endpoint response is larger than {max_bytes} bytes"
        lengths = [value for name, value in head.headers if name == b"content-length"]
        if lengths and int(lengths[0]) > max_bytes:  # h11 checked it is one decimal number
            raise BundleFetchError(too_large)
        body = bytearray()
        while True:
            event = await self._next(reader)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_bytes:
                    raise BundleFetchError(too_large)
            elif isinstance(event, h11.EndOfMessage):  # trailers, if any, are ignored
                return bytes(body)
            else:
                raise BundleFetchError("bundle endpoint closed the connection before the body was complete")


def _header(head: h11.Response, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in head.headers if key == name]


async def _get(
    endpoint: Endpoint,
    trust: Bundle | None,
    target: _Target,
    max_bytes: int,
    now: dt.datetime,
    allowed: tuple[Network, ...],
) -> _Response:
    """One verified GET. The body is read only for a 200; the peer is checked before the request is sent."""
    where = f"{target.host}:{target.port}"
    exchange = _Exchange(where)
    request = exchange.request(target)
    address = await _resolve(target, allowed)
    try:
        reader, writer = await asyncio.open_connection(
            address, target.port, ssl=_ssl_context(endpoint), server_hostname=target.host
        )
    except ssl.SSLCertVerificationError as exc:
        raise BundleFetchError(
            f"TLS verification of bundle endpoint {where} failed: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise BundleFetchError(f"TLS handshake with bundle endpoint {where} failed: {exc.reason}") from None
    except OSError as exc:
        raise BundleFetchError(
            f"could not connect to bundle endpoint {where}: {exc.strerror or exc}"
        ) from None
    try:
        if endpoint.profile == "https_spiffe":
            _check_spiffe_peer(endpoint, trust, writer.get_extra_info("ssl_object"), now)
        writer.write(request)
        await writer.drain()
        head = await exchange.response_head(reader)
        if head.status_code in REDIRECT_STATUSES:
            locations = _header(head, b"location")
            if len(locations) != 1 or not locations[0]:
                raise BundleFetchError(
                    f"bundle endpoint {where} redirected (HTTP {head.status_code}) without one Location"
                )
            return _Response(head.status_code, locations[0], b"")
        if head.status_code != 200:
            raise BundleFetchError(f"bundle endpoint {target.url} answered HTTP {head.status_code}")
        return _Response(head.status_code, None, await exchange.body(reader, head, max_bytes))
    except (ConnectionError, ssl.SSLError) as exc:
        raise BundleFetchError(f"connection to bundle endpoint {where} failed: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_WAIT):  # not wait_for: it can drop a cancellation on 3.11
                await writer.wait_closed()


async def fetch_bundle(
    endpoint: Endpoint,
    trust: Bundle | None,
    *,
    timeout: float = 10.0,
    max_bytes: int = MAX_BUNDLE_BYTES,
    max_redirects: int = 3,
    now: dt.datetime | None = None,
    allowed_networks: tuple[Network, ...] = (),
) -> Bundle:
    """GET and parse `endpoint`'s bundle, or raise BundleFetchError (E.7: the caller keeps its last good
    bundle).

    `trust` (https_spiffe only) is the bootstrap bundle on the first fetch and the latest fetched bundle
    afterwards (E.4). Redirects get the same checks on every hop (E.5); the caller starts from the
    configured URL on every refresh. `timeout` bounds the whole fetch, redirects included. A redirect to
    another host is refused, and so is any non-public address outside `allowed_networks`.
    """
    when = now or dt.datetime.now(dt.UTC)
    url = endpoint.url
    origin = _parse_url(url).host.lower()
    try:
        async with asyncio.timeout(timeout):
            for _ in range(max_redirects + 1):
                target = _parse_url(url)
                if target.host.lower() != origin:
                    raise BundleFetchError(
                        f"bundle endpoint {endpoint.url} redirected to another host; only redirects within "
                        f"{origin} are followed"
                    )
                response = await _get(endpoint, trust, target, max_bytes, when, allowed_networks)
                if response.location is None:
                    break
                url = urljoin(url, response.location)
            else:
                raise BundleFetchError(
                    f"bundle endpoint {endpoint.url} redirected more than {max_redirects} times"
                )
    except TimeoutError:
        raise BundleFetchError(f"bundle endpoint {endpoint.url} did not answer within {timeout} s") from None
    try:
        return parse_bundle_json(endpoint.trust_domain, response.body, max_bytes)
    except BundleError as exc:
        raise BundleFetchError(
            f"bundle endpoint {endpoint.url} did not serve a valid SPIFFE bundle: {exc}"
        ) from None


def choose(current: Bundle | None, fetched: Bundle) -> Bundle:
    """E.6: keep the newest by spiffe_sequence; an older one (stale replica or cache) is not applied."""
    if current is None:
        return fetched
    if current.trust_domain != fetched.trust_domain:
        raise ValueError(f"bundles of {current.trust_domain} and {fetched.trust_domain} are never compared")
    if current.sequence is not None and fetched.sequence is not None and fetched.sequence < current.sequence:
        log.warning(
            "bundle endpoint of %s served sequence %d, older than the %d in hand; keeping the newer",
            fetched.trust_domain,
            fetched.sequence,
            current.sequence,
        )
        return current
    return fetched


def next_refresh(bundle: Bundle | None, minimum: float, maximum: float, default: float = 300.0) -> float:
    """Seconds until the next poll (E.6): the advisory refresh hint, bounded so a publisher can neither make
    us hammer it nor stop us from polling. The default applies when there is no hint, bounded the same way."""
    if minimum > maximum:
        raise ValueError(f"minimum refresh {minimum} s is above the maximum {maximum} s")
    hint = bundle.refresh_hint if bundle is not None else None
    seconds = default if hint is None else float(hint)
    return min(max(seconds, minimum), maximum)
