"""Client side of the issuer API: make a key, send a CSR with the pod's token, check who answered.

Used by `kubespiffe fetch` (and by the in-pod agent). The private key is made here and never leaves the
process. Before any token is sent over a connection, its TLS handshake proves the server holds an
X.509-SVID for exactly the expected SPIFFE ID (by default spiffe://<trust domain>/kubespiffe/kubespiffed),
chained to the trust bundle the pod was given, and valid for the Service DNS name, which no workload can
be granted (kubespiffed refuses to put its own names in workload SVIDs).

gRPC over grpclib (pure-Python, asyncio, h2), not grpcio: the agent runs in every pod, and grpcio's core
would be most of its memory (docs/agent.md, "Cost per pod"); kubespiffed serves with grpcio.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.protocol import H2Protocol

from kubespiffe.constants import SERVER_ID_PATH, SERVER_NAME
from kubespiffe.errors import KubespiffeError
from kubespiffe.proto import issuer_pb2
from kubespiffe.proto.issuer_pb2_grpclib import IssuerStub
from kubespiffe.spiffe.bundle import BundleSet, certificates_to_pem, parse_bundle_json
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509Svid, X509SvidError, id_from_certificate

DEFAULT_SERVER_NAME = SERVER_NAME
_DROP_GRACE = 5.0  # seconds calls in flight keep a replaced channel


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


def _check_server_identity(address: str, der: bytes | None, expected: SpiffeId) -> None:
    """The certificate a server presented (already verified against the trust bundle) names `expected`."""
    if der is None:
        raise ServerIdentityWrong(f"the server at {address} presented no certificate")
    try:
        actual = id_from_certificate(x509.load_der_x509_certificate(der))
    except (X509SvidError, ValueError) as exc:
        raise ServerIdentityWrong(f"the server at {address} has no SPIFFE ID ({exc})") from None
    if actual != expected:
        raise ServerIdentityWrong(f"the server at {address} is {actual}, not {expected}")


class _KubespiffedChannel(Channel):
    """A grpclib channel whose every connection proves kubespiffed's SPIFFE ID before a call is sent on it.

    The check runs on the connection the token then travels over, each time grpclib opens one (it
    reconnects on its own after a connection closes), in the event loop: no second handshake, no thread.
    """

    def __init__(self, address: str, context: ssl.SSLContext, server_name: str, expected: SpiffeId) -> None:
        host, port = _split(address)
        super().__init__(host, port, ssl=context, config=Configuration(ssl_target_name_override=server_name))
        self._address, self._target = address, (host, port)
        self._tls, self._server_name, self._expected = context, server_name, expected

    async def _create_connection(self) -> H2Protocol:  # grpclib's hook for opening a connection
        try:
            transport, protocol = await asyncio.get_running_loop().create_connection(
                self._protocol_factory, *self._target, ssl=self._tls, server_hostname=self._server_name
            )
        except ssl.SSLCertVerificationError as exc:
            raise ServerIdentityWrong(
                f"the server at {self._address} is not kubespiffed: its certificate is not valid for "
                f"{self._server_name} under the trust bundle ({exc.verify_message})"
            ) from None
        try:
            tls = transport.get_extra_info("ssl_object")
            _check_server_identity(self._address, tls.getpeercert(binary_form=True), self._expected)
        except BaseException:
            transport.close()
            raise
        return protocol


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
    """One TLS channel to kubespiffed; each of its connections proves kubespiffed's SPIFFE ID before use.

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
        self._channel: Channel | None = None
        self._retired: dict[Channel, asyncio.TimerHandle] = {}  # replaced channels, closed after a grace
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
            # Calls in flight get 5 s to finish on the old channel (grpclib closes without a grace).
            self._retired[channel] = asyncio.get_running_loop().call_later(_DROP_GRACE, self._retire, channel)

    def _retire(self, channel: Channel) -> None:
        self._retired.pop(channel).cancel()
        channel.close()

    def _stub(self) -> IssuerStub:
        if self._channel is None:
            context = ssl.create_default_context(cadata=self._trust_pem)
            context.set_alpn_protocols(["h2"])
            self._channel = _KubespiffedChannel(self.address, context, self._server_name, self._expected)
        return IssuerStub(self._channel)

    async def close(self) -> None:
        for channel in list(self._retired):
            self._retire(channel)
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _metadata(self, token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    async def mint_x509(self, token: str, spiffe_id: str = "") -> X509Result:
        key, csr = new_csr()
        async with self._call():
            response = await self._stub().MintX509SVID(
                issuer_pb2.MintX509SVIDRequest(csr=csr, spiffe_id=spiffe_id),
                metadata=self._metadata(token),
                timeout=self._timeout,
            )
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
        async with self._call():
            response = await self._stub().MintJWTSVID(
                issuer_pb2.MintJWTSVIDRequest(audience=audience, spiffe_id=spiffe_id),
                metadata=self._metadata(token),
                timeout=self._timeout,
            )
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
        async for message in self._watch("WatchBundles", issuer_pb2.WatchBundlesRequest(), token):
            assert isinstance(message, issuer_pb2.BundlesResponse)
            with _answer("bundle"):
                bundles = _bundle_set(message.bundles)
            yield bundles

    async def watch_identity(self, token: str) -> AsyncIterator[Grant]:
        """Every message of the WatchIdentity stream, parsed: the pod's grant and bundles."""
        async for message in self._watch("WatchIdentity", issuer_pb2.WatchIdentityRequest(), token):
            assert isinstance(message, issuer_pb2.IdentityResponse)
            with _answer("identity"):
                grant = Grant(
                    spiffe_ids=tuple(SpiffeId.parse(i.spiffe_id) for i in message.identities),
                    digest=message.grant,
                    reason=message.reason,
                    bundles=_bundle_set(message.bundles),
                )
            yield grant

    async def _watch(self, method: str, request: Any, token: str) -> AsyncIterator[Any]:
        """The messages of a server-streaming call; its end or failure as an IssuerError."""
        async with self._call():
            stub = self._stub()
            async with contextlib.AsyncExitStack() as opened:
                # kubespiffed answers a new stream at once with the complete state: no first message within
                # the timeout means the connection is stalled (e.g. to a replica that is going away), and
                # waiting on would leave the agent without bundle updates, silently, for good.
                async with asyncio.timeout(self._timeout):
                    stream = await opened.enter_async_context(
                        getattr(stub, method).open(metadata=self._metadata(token))
                    )
                    await stream.send_message(request, end=True)
                    first = await stream.recv_message()
                if first is None:
                    return
                yield first
                async for message in stream:
                    yield message

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """kubespiffed's status, or a failure to reach it, as an IssuerError (the channel is dropped then)."""
        task = asyncio.current_task()
        requests = task.cancelling() if task is not None else 0
        try:
            yield
        except GRPCError as exc:
            _withdraw_grpclib_cancel(task, requests)
            if exc.status == Status.UNAVAILABLE:
                self._drop()
            raise _translate(exc.status, exc.message or "", self.address) from None
        except (OSError, TimeoutError, StreamTerminatedError, ProtocolError) as exc:
            _withdraw_grpclib_cancel(task, requests)
            self._drop()
            raise ServerUnreachable(
                f"cannot reach kubespiffed at {self.address}: {exc or type(exc).__name__}"
            ) from None


def _withdraw_grpclib_cancel(task: asyncio.Task[Any] | None, requests: int) -> None:
    """Take back the cancel request grpclib left on the calling task when it interrupted a call.

    grpclib wakes a call whose connection is lost (or whose deadline passes) by cancelling the task that
    waits in it, then raises its own error instead of the CancelledError, but never withdraws the request.
    The task is the agent's long-lived loop: with the request left, asyncio.timeout in Python 3.11.0-3.11.3
    (Debian 12's 3.11.2 runs the image) turns the loop's next expiry into a CancelledError, and the loop
    ended without a word: on the real node, the identity stream stopped for good after a kubespiffed pod
    was deleted. The caller's own cancel requests, counted when the call began, stay.
    """
    if task is not None:
        while task.cancelling() > requests:
            task.uncancel()


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


def _translate(code: Status, detail: str, address: str) -> IssuerError:
    if code == Status.PERMISSION_DENIED:
        return NoIdentity(f"no identity for this pod: {detail}")
    if code == Status.UNAUTHENTICATED:
        return TokenRefused(f"kubespiffed refused the token: {detail}")
    if code in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
        return ServerUnreachable(f"cannot reach kubespiffed at {address}: {detail}")
    if code == Status.INVALID_ARGUMENT:
        return RequestInvalid(f"kubespiffed refused the request as invalid: {detail}")
    return RequestFailed(f"kubespiffed refused the request ({code.name}): {detail}")
