"""Client side of the issuer API: make a key, send a CSR with the pod's token, check who answered.

Used by `kubespiffe fetch` (and by the in-pod agent). The private key is made here and never leaves the
process. Before any token is sent, a TLS handshake proves the server holds an X.509-SVID for exactly the
expected SPIFFE ID (by default spiffe://<trust domain>/kubespiffe/kubespiffed), chained to the trust
bundle the pod was given. gRPC itself checks the chain and the Service DNS name, which no workload can be
granted (kubespiffed refuses to put its own names in workload SVIDs).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from kubespiffe.constants import SERVER_ID_PATH, SERVER_NAME
from kubespiffe.errors import KubespiffeError
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.spiffe.bundle import BundleSet, certificates_to_pem, parse_bundle_json
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509Svid, X509SvidError, id_from_certificate

DEFAULT_SERVER_NAME = SERVER_NAME


class IssuerError(KubespiffeError):
    """kubespiffed said no or could not be asked: one sentence, and the CLI's distinct exit code."""

    exit_code = 1


class NoIdentity(IssuerError):
    """The pod has no identity, or not the one asked for (gRPC PERMISSION_DENIED)."""

    exit_code = 3


class TokenRefused(IssuerError):
    """kubespiffed refused the pod's token (UNAUTHENTICATED)."""

    exit_code = 4


class ServerUnreachable(IssuerError):
    exit_code = 5


class ServerIdentityWrong(IssuerError):
    """Whoever answered does not hold kubespiffed's SPIFFE ID under the pod's trust bundle."""

    exit_code = 6


class RequestFailed(IssuerError):
    """kubespiffed refused the request for another reason, or its answer cannot be used."""

    exit_code = 7


class RequestInvalid(RequestFailed):
    """kubespiffed found the request itself invalid (INVALID_ARGUMENT): asking again will not help."""


@dataclass(frozen=True)
class X509Result:
    svids: tuple[X509Svid, ...]
    bundle: tuple[x509.Certificate, ...]
    grant: bytes = b""  # the grant they were signed for (Grant.digest)


@dataclass(frozen=True)
class Grant:
    """One WatchIdentity message: what the pod is granted now (no identity: `reason` says why)."""

    spiffe_ids: tuple[SpiffeId, ...]
    digest: bytes
    reason: str
    bundles: BundleSet


def trust_domain_of(bundle: list[x509.Certificate]) -> TrustDomain:
    """The trust domain named by the bundle's CA (its URI SAN spiffe://<td>)."""
    for cert in bundle:
        try:
            return id_from_certificate(cert).trust_domain
        except X509SvidError:
            continue
    raise ValueError("the trust bundle's certificates carry no spiffe://<trust domain> URI SAN")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"server address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _check_server_identity(address: str, bundle_pem: str, expected: SpiffeId, timeout: float) -> None:
    host, port = _split(address)
    context = ssl.create_default_context(cadata=bundle_pem)
    context.check_hostname = False  # the SPIFFE ID is checked below instead
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise ServerIdentityWrong(
            f"the server at {address} is not kubespiffe: its certificate does not chain to the trust "
            f"bundle ({exc.verify_message})"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ServerUnreachable(f"cannot reach kubespiffed at {address}: {exc}") from None
    if der is None:
        raise ServerIdentityWrong(f"the server at {address} presented no certificate")
    try:
        actual = id_from_certificate(x509.load_der_x509_certificate(der))
    except (X509SvidError, ValueError) as exc:
        raise ServerIdentityWrong(f"the server at {address} has no SPIFFE ID ({exc})") from None
    if actual != expected:
        raise ServerIdentityWrong(f"the server at {address} is {actual}, not {expected}")


def new_csr() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return key, csr.public_bytes(Encoding.DER)


@dataclass(frozen=True)
class JWTSVID:
    spiffe_id: SpiffeId
    token: str
    hint: str
    expires_at: dt.datetime


class IssuerClient:
    """One TLS channel to kubespiffed, opened after the server proved its SPIFFE ID.

    `trust` is the trust bundle that authenticates kubespiffed; the agent replaces it with the newest
    bundle it receives so that kubespiffed stays verifiable across CA rotation.
    """

    def __init__(
        self,
        address: str,
        trust: list[x509.Certificate],
        *,
        server_id: SpiffeId | None = None,
        server_name: str = DEFAULT_SERVER_NAME,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        self._server_id = server_id
        self._server_name = server_name
        self._timeout = timeout
        self._trust_pem = ""
        self._channel: grpc.aio.Channel | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.set_trust(trust)

    def set_trust(self, trust: list[x509.Certificate]) -> None:
        pem = certificates_to_pem(trust).decode()
        if pem != self._trust_pem:
            self._trust_pem = pem
            self._expected = self._server_id or SpiffeId(trust_domain_of(trust), SERVER_ID_PATH)
            self._drop()

    def _drop(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            # Calls in flight finish on the old channel; keep the closing task referenced until done.
            closing = asyncio.get_running_loop().create_task(channel.close(grace=5))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _stub(self) -> issuer_pb2_grpc.IssuerAsyncStub:
        if self._channel is None:
            await asyncio.to_thread(
                _check_server_identity, self.address, self._trust_pem, self._expected, self._timeout
            )
            credentials = grpc.ssl_channel_credentials(root_certificates=self._trust_pem.encode())
            options = [("grpc.ssl_target_name_override", self._server_name)]
            self._channel = grpc.aio.secure_channel(self.address, credentials, options=options)
        return issuer_pb2_grpc.IssuerStub(self._channel)  # an IssuerAsyncStub for an aio channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    def _metadata(self, token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    async def mint_x509(self, token: str, spiffe_id: str = "") -> X509Result:
        key, csr = new_csr()
        stub = await self._stub()
        try:
            response = await stub.MintX509SVID(
                issuer_pb2.MintX509SVIDRequest(csr=csr, spiffe_id=spiffe_id),
                metadata=self._metadata(token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        with _answer("X.509-SVID"):
            svids = tuple(
                X509Svid(
                    spiffe_id=SpiffeId.parse(svid.spiffe_id),
                    chain=tuple(x509.load_der_x509_certificate(c) for c in svid.cert_chain),
                    private_key=key,
                    hint=svid.hint,
                )
                for svid in response.svids
            )
            if not svids or any(not s.chain for s in svids):
                raise ValueError("no X.509-SVID in it")
            bundle = tuple(x509.load_der_x509_certificate(c) for c in response.bundle)
            return X509Result(svids, bundle, response.grant)

    async def mint_jwt(self, token: str, audience: list[str], spiffe_id: str = "") -> list[JWTSVID]:
        stub = await self._stub()
        try:
            response = await stub.MintJWTSVID(
                issuer_pb2.MintJWTSVIDRequest(audience=audience, spiffe_id=spiffe_id),
                metadata=self._metadata(token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        with _answer("JWT-SVID"):
            svids = [
                JWTSVID(
                    SpiffeId.parse(s.spiffe_id),
                    s.token,
                    s.hint,
                    dt.datetime.fromtimestamp(s.expires_at, dt.UTC),
                )
                for s in response.svids
            ]
            if not svids:
                raise ValueError("no JWT-SVID in it")
            return svids

    async def watch_bundles(self, token: str) -> AsyncIterator[BundleSet]:
        """Every message of the WatchBundles stream, parsed (the first bundle is the pod's own)."""
        stub = await self._stub()
        stream = stub.WatchBundles(issuer_pb2.WatchBundlesRequest(), metadata=self._metadata(token))
        try:
            async for message in stream:
                with _answer("bundle"):
                    bundles = _bundle_set(message.bundles)
                yield bundles
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None

    async def watch_identity(self, token: str) -> AsyncIterator[Grant]:
        """Every message of the WatchIdentity stream, parsed: the pod's grant and bundles."""
        stub = await self._stub()
        stream = stub.WatchIdentity(issuer_pb2.WatchIdentityRequest(), metadata=self._metadata(token))
        try:
            async for message in stream:
                with _answer("identity"):
                    grant = Grant(
                        spiffe_ids=tuple(SpiffeId.parse(i.spiffe_id) for i in message.identities),
                        digest=message.grant,
                        reason=message.reason,
                        bundles=_bundle_set(message.bundles),
                    )
                yield grant
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: grpc.aio.AioRpcError) -> IssuerError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            self._drop()
        return _translate(exc, self.address)


def _bundle_set(bundles: Iterable[issuer_pb2.TrustBundle]) -> BundleSet:
    return BundleSet.from_bundles(
        [parse_bundle_json(TrustDomain.parse(b.trust_domain), b.spiffe_bundle) for b in bundles]
    )


@contextlib.contextmanager
def _answer(kind: str) -> Iterator[None]:
    """Parsing kubespiffed's answer: whatever is wrong with it is kubespiffed's fault, a RequestFailed.

    (Parsers raise InvalidInput/ValueError; a timestamp out of range raises OverflowError or OSError.)
    """
    try:
        yield
    except (ValueError, OverflowError, OSError) as exc:
        raise RequestFailed(f"kubespiffed's {kind} answer is malformed: {exc}") from None


async def fetch_x509(
    address: str,
    token: str,
    bundle: list[x509.Certificate],
    *,
    spiffe_id: str = "",
    server_id: SpiffeId | None = None,
    server_name: str = DEFAULT_SERVER_NAME,
    timeout: float = 10.0,
) -> X509Result:
    """One-shot: X.509-SVIDs for every identity granted to the token's pod (or just `spiffe_id`)."""
    client = IssuerClient(address, bundle, server_id=server_id, server_name=server_name, timeout=timeout)
    try:
        return await client.mint_x509(token, spiffe_id)
    finally:
        await client.close()


def _translate(exc: grpc.aio.AioRpcError, address: str) -> IssuerError:
    code, detail = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return NoIdentity(f"no identity for this pod: {detail}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return TokenRefused(f"kubespiffed refused the token: {detail}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServerUnreachable(f"cannot reach kubespiffed at {address}: {detail}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return RequestInvalid(f"kubespiffed refused the request as invalid: {detail}")
    return RequestFailed(f"kubespiffed refused the request ({code.name}): {detail}")
