"""FetchJWTSVID's status codes for each way minting can fail (SPIFFE Workload API: never UNKNOWN).

The Workload API servicer runs on a real gRPC server (grpclib, as in the agent) on a Unix socket with a
minter that fails on cue; the client is a plain gRPC stub (grpcio), as a workload's library would call it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpclib.server import Server

from kubespiffe.agent.issuer_client import (
    JWTSVID,
    NoIdentity,
    RequestFailed,
    RequestInvalid,
    ServerIdentityWrong,
    ServerUnreachable,
    TokenRefused,
)
from kubespiffe.agent.state import AgentState, Snapshot
from kubespiffe.agent.workloadapi import WorkloadAPI
from kubespiffe.constants import JWT_AUDIENCE_MAX_COUNT, JWT_AUDIENCE_MAX_LENGTH
from kubespiffe.proto import workload_pb2, workload_pb2_grpc
from kubespiffe.spiffe.bundle import Bundle, BundleSet
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.versioned import Versioned

HEADER = (("workload.spiffe.io", "true"),)
FAILURES: dict[str, tuple[Exception, grpc.StatusCode]] = {
    "no identity": (NoIdentity("no registration matches"), grpc.StatusCode.PERMISSION_DENIED),
    "token refused": (TokenRefused("token expired"), grpc.StatusCode.PERMISSION_DENIED),
    "unreachable": (ServerUnreachable("connection refused"), grpc.StatusCode.UNAVAILABLE),
    "impostor": (ServerIdentityWrong("not kubespiffed"), grpc.StatusCode.UNAVAILABLE),
    "refused otherwise": (RequestFailed("RESOURCE_EXHAUSTED: too many"), grpc.StatusCode.UNAVAILABLE),
    "malformed answer": (RequestFailed("kubespiffed's answer is malformed"), grpc.StatusCode.UNAVAILABLE),
    "invalid request": (RequestInvalid("audience too long"), grpc.StatusCode.INVALID_ARGUMENT),
    "no token file": (FileNotFoundError(2, "No such file", "/var/run/token"), grpc.StatusCode.UNAVAILABLE),
}


class Minter:
    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.calls = 0

    async def __call__(self, audience: Sequence[str], spiffe_id: str) -> Sequence[JWTSVID]:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        return [JWTSVID(SpiffeId.parse("spiffe://example.org/w"), "a.b.c", "", expires)]


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[workload_pb2_grpc.SpiffeWorkloadAPIAsyncStub, Minter]]:
    state: AgentState = Versioned(None)
    await state.publish(Snapshot(BundleSet(Bundle(TrustDomain.parse("example.org")))))
    minter = Minter()
    server = Server([WorkloadAPI(state, minter)])
    await server.start(path=str(tmp_path / "agent.sock"))
    async with grpc.aio.insecure_channel(f"unix://{tmp_path / 'agent.sock'}") as channel:
        yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel), minter
    server.close()
    await server.wait_closed()


async def _status(stub: workload_pb2_grpc.SpiffeWorkloadAPIAsyncStub, audience: list[str]) -> grpc.StatusCode:
    try:
        await stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=audience), metadata=HEADER, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("case", FAILURES)
async def test_each_failure_has_its_status(
    served: tuple[workload_pb2_grpc.SpiffeWorkloadAPIAsyncStub, Minter], case: str
) -> None:
    stub, minter = served
    minter.failure, expected = FAILURES[case]
    assert await _status(stub, ["db"]) == expected


@pytest.mark.parametrize(
    ("audience", "allowed"),
    [
        ([f"a{i}" for i in range(JWT_AUDIENCE_MAX_COUNT)], True),
        ([f"a{i}" for i in range(JWT_AUDIENCE_MAX_COUNT + 1)], False),
        (["a" * JWT_AUDIENCE_MAX_LENGTH], True),
        (["a" * (JWT_AUDIENCE_MAX_LENGTH + 1)], False),
        (["https://db.example.org/api v2"], True),
        (["db\nforged"], False),
        (["db\x00"], False),
        (["dbé"], False),
        ([""], False),
        ([], False),
    ],
)
async def test_audiences_are_bounded_before_anything_is_minted(
    served: tuple[workload_pb2_grpc.SpiffeWorkloadAPIAsyncStub, Minter], audience: list[str], allowed: bool
) -> None:
    stub, minter = served
    expected = grpc.StatusCode.OK if allowed else grpc.StatusCode.INVALID_ARGUMENT
    assert await _status(stub, audience) == expected
    assert minter.calls == int(allowed)
