"""The issuer API client sends the pod's token only over a connection whose server proved kubespiffed's
SPIFFE ID, chained to the pod's trust bundle: every connection, including the ones grpclib opens again on
its own after the previous one closed."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509

from kubespiffe.agent.issuer_client import IssuerClient, ServerIdentityWrong
from kubespiffe.constants import SERVER_ID_PATH, SERVER_NAME
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from tests.unit.certs import Issued, make_ca, make_leaf, uris
from tests.unit.test_agent_issuer_client import FakeIssuer

NOW = dt.datetime.now(dt.UTC)
SERVER_ID = f"spiffe://example.org{SERVER_ID_PATH}"
IMPOSTOR_ID = "spiffe://example.org/not/kubespiffed"
ANSWER = issuer_pb2.MintJWTSVIDResponse(
    svids=[issuer_pb2.JWTSVID(spiffe_id="spiffe://example.org/w", token="a.b.c", expires_at=2_000_000_000)]
)


class Recorder(FakeIssuer):
    """Answers MintJWTSVID and remembers every token it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = ANSWER
        self.tokens: list[str] = []

    async def MintJWTSVID(
        self,
        request: issuer_pb2.MintJWTSVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> issuer_pb2.MintJWTSVIDResponse:
        self.tokens.extend(str(v) for k, v in context.invocation_metadata() or () if k == "authorization")
        return await super().MintJWTSVID(request, context)


def ca() -> Issued:
    return make_ca("ca", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=1))


def server_cert(issuer: Issued, spiffe_id: str) -> Issued:
    """A serving certificate with kubespiffed's DNS name: only the SPIFFE ID differs between tests."""
    names = [*uris(spiffe_id), x509.DNSName(SERVER_NAME)]
    return make_leaf(
        issuer, names=names, not_before=NOW - dt.timedelta(hours=1), not_after=NOW + dt.timedelta(hours=1)
    )


class Servers:
    """Fake issuer APIs started by a test, each with its certificate, stopped at its end."""

    def __init__(self) -> None:
        self._running: list[grpc.aio.Server] = []

    async def start(self, cert: Issued, port: int = 0) -> tuple[int, Recorder]:
        """Serve with this certificate on this port (0: any free one); the port and who answers there."""
        recorder = Recorder()
        server = grpc.aio.server()
        issuer_pb2_grpc.add_IssuerServicer_to_server(recorder, server)
        credentials = grpc.ssl_server_credentials([(cert.key_pem, cert.cert_pem)])
        bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
        assert bound, f"port {port} could not be bound again"
        await server.start()
        self._running.append(server)
        return bound, recorder

    async def stop(self) -> None:
        while self._running:
            await self._running.pop().stop(None)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    yield started
    await started.stop()


async def test_a_server_with_another_spiffe_id_never_sees_the_token(servers: Servers) -> None:
    authority = ca()
    port, impostor = await servers.start(server_cert(authority, IMPOSTOR_ID))
    client = IssuerClient(f"127.0.0.1:{port}", [authority.cert], timeout=5)
    try:
        with pytest.raises(ServerIdentityWrong, match=f"is {IMPOSTOR_ID}, not {SERVER_ID}"):
            await client.mint_jwt("secret", ["db"])
    finally:
        await client.close()
    assert impostor.tokens == []


async def test_a_server_outside_the_trust_bundle_is_not_kubespiffed(servers: Servers) -> None:
    port, stranger = await servers.start(server_cert(ca(), SERVER_ID))
    client = IssuerClient(f"127.0.0.1:{port}", [ca().cert], timeout=5)
    try:
        with pytest.raises(ServerIdentityWrong, match="not valid for kubespiffed under the trust bundle"):
            await client.mint_jwt("secret", ["db"])
    finally:
        await client.close()
    assert stranger.tokens == []


async def test_a_new_connection_is_checked_too(servers: Servers) -> None:
    """kubespiffed goes away between calls and something else answers on its address: grpclib connects
    again on its own at the next call, and that connection must prove the SPIFFE ID as the first did."""
    authority = ca()
    port, kubespiffed = await servers.start(server_cert(authority, SERVER_ID))
    client = IssuerClient(f"127.0.0.1:{port}", [authority.cert], timeout=5)
    try:
        await client.mint_jwt("first", ["db"])
        assert kubespiffed.tokens == ["Bearer first"]
        await servers.stop()
        _, impostor = await servers.start(server_cert(authority, IMPOSTOR_ID), port)
        with pytest.raises(ServerIdentityWrong):
            await client.mint_jwt("second", ["db"])
        assert impostor.tokens == []
    finally:
        await client.close()
