"""Client side of the issuer API: make a key, send a CSR with the pod's token, check who answered.

Used by `kubespiffe fetch` (and by the in-pod agent). The private key is made here and never leaves the
process. Before any token is sent, a TLS handshake proves the server holds an X.509-SVID for exactly the
expected SPIFFE ID (by default spiffe://<trust domain>/kubespiffe/kubespiffed), chained to the trust
bundle the pod was given. gRPC itself checks the chain and the Service DNS name, which no workload can be
granted (kubespiffed refuses to put its own names in workload SVIDs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.spiffe.bundle import certificates_to_pem
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509SvidError, id_from_certificate

SERVER_ID_PATH = "/kubespiffe/kubespiffed"
DEFAULT_SERVER_NAME = "kubespiffed"


class FetchError(Exception):
    """A failure the CLI reports with one sentence and a distinct exit code."""

    exit_code = 1


class NoIdentity(FetchError):
    exit_code = 3


class TokenRefused(FetchError):
    exit_code = 4


class ServerUnreachable(FetchError):
    exit_code = 5


class ServerIdentityWrong(FetchError):
    exit_code = 6


class RequestFailed(FetchError):
    exit_code = 7


@dataclass(frozen=True)
class X509SVID:
    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: ec.EllipticCurvePrivateKey
    hint: str

    @property
    def expires_at(self) -> dt.datetime:
        return self.chain[0].not_valid_after_utc


@dataclass(frozen=True)
class X509Result:
    svids: tuple[X509SVID, ...]
    bundle: tuple[x509.Certificate, ...]


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
    """Fetch X.509-SVIDs for every identity granted to the token's pod (or just `spiffe_id`)."""
    bundle_pem = certificates_to_pem(bundle).decode()
    expected = server_id or SpiffeId(trust_domain_of(bundle), SERVER_ID_PATH)
    await asyncio.to_thread(_check_server_identity, address, bundle_pem, expected, timeout)
    key, csr = new_csr()
    credentials = grpc.ssl_channel_credentials(root_certificates=bundle_pem.encode())
    options = [("grpc.ssl_target_name_override", server_name)]
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        stub = issuer_pb2_grpc.IssuerStub(channel)
        try:
            response = await stub.MintX509SVID(
                issuer_pb2.MintX509SVIDRequest(csr=csr, spiffe_id=spiffe_id),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, address) from None
    svids = tuple(
        X509SVID(
            spiffe_id=SpiffeId.parse(svid.spiffe_id),
            chain=tuple(x509.load_der_x509_certificate(c) for c in svid.cert_chain),
            private_key=key,
            hint=svid.hint,
        )
        for svid in response.svids
    )
    return X509Result(svids, tuple(x509.load_der_x509_certificate(c) for c in response.bundle))


def _translate(exc: grpc.aio.AioRpcError, address: str) -> FetchError:
    code, detail = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return NoIdentity(f"no identity for this pod: {detail}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return TokenRefused(f"kubespiffed refused the token: {detail}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServerUnreachable(f"cannot reach kubespiffed at {address}: {detail}")
    return RequestFailed(f"kubespiffed refused the request ({code.name}): {detail}")
