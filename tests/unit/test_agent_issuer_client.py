"""The issuer API client facing a kubespiffed that answers nonsense: a RequestFailed, not a parse error.

A fake kubespiffed serves the issuer API over TLS with a certificate for kubespiffed's SPIFFE ID, so the
client's identity check passes and only the answer is wrong.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509

from kubespiffe.agent.issuer_client import IssuerClient, RequestFailed, RequestInvalid, ServerUnreachable
from kubespiffe.constants import SERVER_ID_PATH, SERVER_NAME
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from tests.unit.certs import make_ca, make_leaf, uris

NOW = dt.datetime.now(dt.UTC)


class FakeIssuer(issuer_pb2_grpc.IssuerServicer):
    silent_stream = False
    ca: x509.Certificate | None = None  # what its certificate chains to

    def __init__(self) -> None:
        self.answer = issuer_pb2.MintJWTSVIDResponse()
        self.refusal: grpc.StatusCode | None = None

    async def MintJWTSVID(
        self,
        request: issuer_pb2.MintJWTSVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> issuer_pb2.MintJWTSVIDResponse:
        if self.refusal is not None:
            await context.abort(self.refusal, "refused")
        return self.answer

    async def MintX509SVID(
        self,
        request: issuer_pb2.MintX509SVIDRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> issuer_pb2.MintX509SVIDResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def WatchBundles(
        self,
        request: issuer_pb2.WatchBundlesRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[issuer_pb2.BundlesResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        yield issuer_pb2.BundlesResponse()

    async def WatchIdentity(
        self,
        request: issuer_pb2.WatchIdentityRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[issuer_pb2.IdentityResponse]:
        if self.silent_stream:  # a stream that opens and then says nothing (a stalled connection)
            await asyncio.sleep(3600)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        yield issuer_pb2.IdentityResponse()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[IssuerClient, FakeIssuer]]:
    ca = make_ca("ca", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=1))
    names = [*uris(f"spiffe://example.org{SERVER_ID_PATH}"), x509.DNSName(SERVER_NAME)]
    leaf = make_leaf(
        ca, names=names, not_before=NOW - dt.timedelta(hours=1), not_after=NOW + dt.timedelta(hours=1)
    )
    issuer = FakeIssuer()
    issuer.ca = ca.cert
    server = grpc.aio.server()
    issuer_pb2_grpc.add_IssuerServicer_to_server(issuer, server)
    credentials = grpc.ssl_server_credentials([(leaf.key_pem, leaf.cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    client = IssuerClient(f"127.0.0.1:{port}", [ca.cert], timeout=5)
    yield client, issuer
    await client.close()
    await server.stop(None)


@pytest.mark.parametrize(
    "svid",
    [
        issuer_pb2.JWTSVID(spiffe_id="not a SPIFFE ID", token="a.b.c", expires_at=2_000_000_000),
        issuer_pb2.JWTSVID(spiffe_id="spiffe://example.org/w", token="a.b.c", expires_at=2**62),
    ],
    ids=["bad SPIFFE ID", "expiry out of range"],
)
async def test_a_malformed_answer_is_a_request_failure(
    fake: tuple[IssuerClient, FakeIssuer], svid: issuer_pb2.JWTSVID
) -> None:
    client, issuer = fake
    issuer.answer = issuer_pb2.MintJWTSVIDResponse(svids=[svid])
    with pytest.raises(RequestFailed, match="malformed"):
        await client.mint_jwt("token", ["db"])


async def test_an_empty_answer_is_a_request_failure(fake: tuple[IssuerClient, FakeIssuer]) -> None:
    client, _ = fake
    with pytest.raises(RequestFailed, match="no JWT-SVID"):
        await client.mint_jwt("token", ["db"])


async def test_invalid_argument_keeps_its_meaning(fake: tuple[IssuerClient, FakeIssuer]) -> None:
    client, issuer = fake
    issuer.refusal = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(RequestInvalid):
        await client.mint_jwt("token", ["db"])
    issuer.refusal = grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(RequestFailed) as caught:
        await client.mint_jwt("token", ["db"])
    assert not isinstance(caught.value, RequestInvalid)


async def test_a_stream_that_never_answers_is_unreachable_within_the_timeout(
    fake: tuple[IssuerClient, FakeIssuer],
) -> None:
    """kubespiffed sends the complete state at once; a stream that stays silent (its connection stalled,
    e.g. to a terminating replica) must end so the agent reconnects, not wait forever for bundles."""
    client, issuer = fake
    issuer.silent_stream = True
    assert issuer.ca is not None
    short = IssuerClient(client.address, [issuer.ca], timeout=0.5)
    try:
        start = time.monotonic()
        async with asyncio.timeout(10):  # without the client's bound this waits for an hour: fail, not hang
            with pytest.raises(ServerUnreachable):
                async for _ in short.watch_identity("token"):
                    pass
        assert time.monotonic() - start < 3
    finally:
        await short.close()


async def test_a_lost_connection_leaves_the_calling_task_cancellable_only_by_its_caller() -> None:
    """grpclib interrupts a call whose connection is lost by cancelling the calling task, and turns the
    CancelledError into StreamTerminatedError without withdrawing the cancel request. Left so, the agent's
    long-lived loop (the same task) sees its next asyncio.timeout expire as a CancelledError on Python
    3.11.0-3.11.3 (the image's Debian 3.11.2; later versions count requests from the block's entry), ends
    silently, and gets no bundle update again: the defect seen on the real node (issue 8)."""
    ca = make_ca("ca", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=1))
    names = [*uris(f"spiffe://example.org{SERVER_ID_PATH}"), x509.DNSName(SERVER_NAME)]
    leaf = make_leaf(
        ca, names=names, not_before=NOW - dt.timedelta(hours=1), not_after=NOW + dt.timedelta(hours=1)
    )
    issuer = FakeIssuer()
    issuer.silent_stream = True
    server = grpc.aio.server()
    issuer_pb2_grpc.add_IssuerServicer_to_server(issuer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(leaf.key_pem, leaf.cert_pem)]))
    await server.start()
    client = IssuerClient(f"127.0.0.1:{port}", [ca.cert], timeout=5)
    task = asyncio.current_task()
    assert task is not None
    try:

        async def stop_soon() -> None:
            await asyncio.sleep(0.5)
            await server.stop(None)  # the connection goes, with the stream waiting on it

        stopping = asyncio.create_task(stop_soon())
        with pytest.raises(ServerUnreachable):
            async for _ in client.watch_identity("token"):
                pass
        await stopping
        assert task.cancelling() == 0, "a cancel request nobody made is left on the caller's task"
        with pytest.raises(TimeoutError):  # not CancelledError: the loop's own pauses still work
            async with asyncio.timeout(0.05):
                await asyncio.sleep(1)
    finally:
        await client.close()
        await server.stop(None)
