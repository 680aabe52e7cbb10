"""SPIFFE bundle endpoint client (checklist sections D and E), on asyncio and the stdlib only.

A federated bundle is a trust anchor, so every byte of this path is treated as hostile: https only, no
userinfo, the profile's server check before the request is sent and on every redirect hop, bounded size and
time, and the document parsed by the strict `parse_bundle_json`. The profile is explicit, never a fallback.

Peer chain under https_spiffe: Python's `ssl` only verifies against web PKI rules, so the handshake runs with
CERT_NONE and the chain is checked by `verify_chain` afterwards (before the request is sent). Python < 3.13
exposes only the peer's leaf (`getpeercert(binary_form=True)`), so there the leaf must be signed directly by
an authority of the trust bundle; intermediates the server sends are not used. kubespiffe's own endpoint
serves an SVID signed by a bundle CA, which passes. On 3.13+ the public `SSLObject.get_unverified_chain()`
is used when present, so intermediates are honoured there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, urljoin, urlsplit

from cryptography import x509

from kubespiffe.spiffe.bundle import MAX_BUNDLE_BYTES, Bundle, BundleError, parse_bundle_json
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509SvidError, verify_chain

log = logging.getLogger(__name__)

Profile = Literal["https_spiffe", "https_web"]
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_INTERIM_RESPONSES = 5  # 1xx responses (e.g. 103 Early Hints) skipped before the final one
_READ_CHUNK = 64 * 1024
_CLOSE_WAIT = 1.0


class FetchError(Exception):
    """A bundle fetch failed; the message is one sentence naming what failed (connect, TLS, HTTP...)."""


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
        raise FetchError(f"bundle endpoint URL {url!r} is not a valid URL") from None
    if parts.scheme != "https":
        raise FetchError(f"bundle endpoint URL {url!r} is not https")
    if "@" in parts.netloc:
        raise FetchError("bundle endpoint URL must not carry userinfo (user:password@)")
    if not host:
        raise FetchError(f"bundle endpoint URL {url!r} has no host")
    if any(c in url for c in "\r\n\t "):
        raise FetchError("bundle endpoint URL contains whitespace or control characters")
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
                raise FetchError("web_roots_pem holds no valid PEM CA certificate") from None
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
        raise FetchError("bundle endpoint presented no certificate")
    ders: list[bytes] = [leaf_der]
    unverified = getattr(ssl_object, "get_unverified_chain", None)  # public from Python 3.13 only
    if callable(unverified):
        with contextlib.suppress(Exception):
            extra = [c for c in unverified() or [] if isinstance(c, bytes)]
            ders = [leaf_der, *(c for c in extra if c != leaf_der)]
    try:
        return [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError:
        raise FetchError("bundle endpoint presented an unparsable certificate") from None


def _check_spiffe_peer(
    endpoint: Endpoint,
    trust: Bundle | None,
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
    now: dt.datetime,
) -> None:
    """E.4: the server's X509-SVID verifies against `trust` and carries EXACTLY the endpoint ID."""
    assert endpoint.endpoint_id is not None
    if ssl_object is None:
        raise FetchError("bundle endpoint connection is not TLS")
    if trust is None:
        raise FetchError("https_spiffe bundle endpoint needs a bootstrap bundle to verify the server")
    if trust.trust_domain != endpoint.endpoint_id.trust_domain:
        raise FetchError(
            f"trust bundle is for {trust.trust_domain}, "
            f"the endpoint ID is in {endpoint.endpoint_id.trust_domain}"
        )
    chain = _peer_chain(ssl_object)
    try:
        server_id = verify_chain(chain, {trust.trust_domain: trust.x509_authorities}, now)
    except X509SvidError as exc:
        raise FetchError(f"bundle endpoint TLS certificate is not a trusted X509-SVID: {exc}") from None
    if server_id != endpoint.endpoint_id:
        raise FetchError(
            f"bundle endpoint presented SPIFFE ID {server_id}, expected exactly {endpoint.endpoint_id}"
        )


async def _readline(reader: asyncio.StreamReader, what: str) -> bytes:
    try:
        line = await reader.readline()
    except ValueError:
        raise FetchError(f"bundle endpoint sent an over-long {what}") from None
    if not line.endswith(b"\n"):
        raise FetchError(f"bundle endpoint closed the connection in the {what}")
    return line.rstrip(b"\r\n")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]]]:
    """Status code and headers (lower-cased names) of the final, non-1xx response."""
    for _ in range(MAX_INTERIM_RESPONSES + 1):
        status_line = await _readline(reader, "status line")
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or fields[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not fields[1].isdigit():
            raise FetchError("bundle endpoint did not answer with an HTTP/1.x status line")
        status = int(fields[1])
        headers: dict[str, list[str]] = {}
        size = 0
        while True:
            line = await _readline(reader, "header")
            size += len(line)
            if not line:
                break
            if size > MAX_HEADER_BYTES or sum(map(len, headers.values())) >= MAX_HEADERS:
                raise FetchError("bundle endpoint sent too many header bytes")
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise FetchError("bundle endpoint sent a malformed header line")
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.strip().decode("latin-1"))
        if not 100 <= status < 200:
            return status, headers
    raise FetchError("bundle endpoint sent too many interim (1xx) responses")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, list[str]], max_bytes: int) -> bytes:
    too_large = f"bundle endpoint response is larger than {max_bytes} bytes"
    try:
        encodings = [e.strip().lower() for v in headers.get("transfer-encoding", []) for e in v.split(",")]
        if encodings:
            if encodings != ["chunked"]:
                raise FetchError(f"bundle endpoint used unsupported transfer coding {','.join(encodings)!r}")
            return await _read_chunked(reader, max_bytes, too_large)
        lengths = {v.strip() for value in headers.get("content-length", []) for v in value.split(",")}
        if lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise FetchError("bundle endpoint sent an invalid Content-Length")
            length = int(next(iter(lengths)))
            if length > max_bytes:
                raise FetchError(too_large)
            return await reader.readexactly(length)
        body = bytearray()  # no length: the body ends when the server closes (Connection: close)
        while chunk := await reader.read(_READ_CHUNK):
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(too_large)
        return bytes(body)
    except asyncio.IncompleteReadError:
        raise FetchError("bundle endpoint closed the connection before the body was complete") from None


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int, too_large: str) -> bytes:
    body = bytearray()
    while True:
        size_field = (await _readline(reader, "chunk size")).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise FetchError("bundle endpoint sent a malformed chunk size") from None
        if size < 0 or size_field.startswith((b"-", b"+", b"0x", b"0X")):
            raise FetchError("bundle endpoint sent a malformed chunk size")
        if size == 0:
            break
        if len(body) + size > max_bytes:
            raise FetchError(too_large)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise FetchError("bundle endpoint sent a malformed chunk")
    while await _readline(reader, "trailer"):  # trailers are ignored
        pass
    return bytes(body)


@dataclass(frozen=True)
class _Response:
    status: int
    location: str | None
    body: bytes


async def _get(
    endpoint: Endpoint, trust: Bundle | None, target: _Target, max_bytes: int, now: dt.datetime
) -> _Response:
    """One verified GET. The body is read only for a 200; the peer is checked before the request is sent."""
    where = f"{target.host}:{target.port}"
    try:
        reader, writer = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=_ssl_context(endpoint),
            server_hostname=target.host,
            limit=MAX_HEADER_BYTES,
        )
    except ssl.SSLCertVerificationError as exc:
        raise FetchError(
            f"TLS verification of bundle endpoint {where} failed: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise FetchError(f"TLS handshake with bundle endpoint {where} failed: {exc.reason}") from None
    except OSError as exc:
        raise FetchError(f"could not connect to bundle endpoint {where}: {exc.strerror or exc}") from None
    try:
        if endpoint.profile == "https_spiffe":
            _check_spiffe_peer(endpoint, trust, writer.get_extra_info("ssl_object"), now)
        request = (
            f"GET {target.request_target} HTTP/1.1\r\n"
            f"Host: {target.host_header}\r\n"
            "Accept: application/json\r\n"
            "User-Agent: kubespiffe\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(request.encode("ascii", errors="strict"))
        await writer.drain()
        status, headers = await _read_head(reader)
        if status in REDIRECT_STATUSES:
            locations = headers.get("location", [])
            if len(locations) != 1 or not locations[0]:
                raise FetchError(f"bundle endpoint {where} redirected (HTTP {status}) without one Location")
            return _Response(status, locations[0], b"")
        if status != 200:
            raise FetchError(f"bundle endpoint {target.url} answered HTTP {status}")
        return _Response(status, None, await _read_body(reader, headers, max_bytes))
    except (ConnectionError, ssl.SSLError) as exc:
        raise FetchError(f"connection to bundle endpoint {where} failed: {exc}") from None
    except UnicodeEncodeError:
        raise FetchError("bundle endpoint URL is not ASCII") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT)


async def fetch_bundle(
    endpoint: Endpoint,
    trust: Bundle | None,
    *,
    timeout: float = 10.0,
    max_bytes: int = MAX_BUNDLE_BYTES,
    max_redirects: int = 3,
    now: dt.datetime | None = None,
) -> Bundle:
    """GET and parse `endpoint`'s bundle, or raise FetchError (E.7: the caller keeps its last good bundle).

    `trust` (https_spiffe only) is the bootstrap bundle on the first fetch and the latest fetched bundle
    afterwards (E.4). Redirects get the same checks on every hop (E.5); the caller starts from the
    configured URL on every refresh. `timeout` bounds the whole fetch, redirects included.
    """
    when = now or dt.datetime.now(dt.UTC)
    url = endpoint.url
    try:
        async with asyncio.timeout(timeout):
            for _ in range(max_redirects + 1):
                target = _parse_url(url)
                response = await _get(endpoint, trust, target, max_bytes, when)
                if response.location is None:
                    break
                url = urljoin(url, response.location)
            else:
                raise FetchError(f"bundle endpoint {endpoint.url} redirected more than {max_redirects} times")
    except TimeoutError:
        raise FetchError(f"bundle endpoint {endpoint.url} did not answer within {timeout} s") from None
    try:
        return parse_bundle_json(endpoint.trust_domain, response.body, max_bytes)
    except BundleError as exc:
        raise FetchError(
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
