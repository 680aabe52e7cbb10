"""Server reflection on the agent's socket, loaded on its first call (agent/reflection.py), answers exactly as
grpclib's servicers registered from the start: both protocol versions, over real grpclib servers on Unix
sockets, asked by grpclib's own reflection client."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_grpc as v1_grpc
from grpclib.reflection.v1 import reflection_pb2 as v1
from grpclib.reflection.v1alpha import reflection_grpc as v1alpha_grpc
from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha
from grpclib.server import Server

from kubespiffe.agent.reflection import LazyReflection
from kubespiffe.agent.sdslazy import LazySecretDiscovery, Raw
from kubespiffe.agent.state import AgentState
from kubespiffe.agent.workloadapi import WorkloadAPI
from kubespiffe.proto import workload_pool
from kubespiffe.versioned import Versioned

QUESTIONS: list[dict[str, Any]] = [
    {"list_services": ""},
    {"file_containing_symbol": "SpiffeWorkloadAPI"},
    {"file_containing_symbol": "grpc.health.v1.Health"},
    {"file_by_filename": "workload.proto"},
    {"file_containing_symbol": "no.such.Symbol"},
    {"all_extension_numbers_of_type": "X509SVIDRequest"},
    {},  # no question: INVALID_ARGUMENT
]


async def _no_jwt(audience: Sequence[str], spiffe_id: str) -> Sequence[Any]:
    raise AssertionError("not asked")


def _services() -> list[Any]:
    state: AgentState = Versioned(None)
    return [WorkloadAPI(state, _no_jwt), Health({OVERALL: [ServiceStatus()]}), LazySecretDiscovery(state)]


async def _answers(servicers: list[Any], socket: Path) -> dict[str, list[bytes]]:
    """Each protocol version's answers to QUESTIONS, asked on one stream, as bytes."""
    server = Server(servicers)
    await server.start(path=str(socket))
    answers = {}
    try:
        channel = Channel(path=str(socket))
        for name, stub, messages in (
            ("v1", v1_grpc.ServerReflectionStub(channel), v1),
            ("v1alpha", v1alpha_grpc.ServerReflectionStub(channel), v1alpha),
        ):
            requests = [messages.ServerReflectionRequest(**question) for question in QUESTIONS]
            replies = await stub.ServerReflectionInfo(requests)
            answers[name] = [reply.SerializeToString() for reply in replies]
        channel.close()
    finally:
        server.close()
        await server.wait_closed()
    return answers


async def test_lazy_reflection_answers_as_grpclibs(tmp_path: Path) -> None:
    services = _services()
    eager = await _answers(ServerReflection.extend(services, pool=workload_pool.POOL), tmp_path / "e.sock")
    services = _services()
    lazy = await _answers([*services, LazyReflection(services, workload_pool.POOL)], tmp_path / "l.sock")
    assert lazy == eager
    listed = v1.ServerReflectionResponse.FromString(lazy["v1"][0]).list_services_response.service
    assert {s.name for s in listed} == {
        "SpiffeWorkloadAPI",
        "grpc.health.v1.Health",
        "envoy.service.secret.v3.SecretDiscoveryService",
    }
    described = v1alpha.ServerReflectionResponse.FromString(lazy["v1alpha"][1])
    protos = described.file_descriptor_response.file_descriptor_proto
    assert [s.name for f in map(FileDescriptorProto.FromString, protos) for s in f.service] == [
        "SpiffeWorkloadAPI"
    ]
    assert (
        v1.ServerReflectionResponse.FromString(lazy["v1"][-1]).error_response.error_code == 3
    )  # INVALID_ARGUMENT


async def _ask_raw(channel: Channel, request: bytes) -> None:
    path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    async with channel.request(path, Cardinality.STREAM_STREAM, Raw, Raw) as stream:
        await stream.send_message(Raw(request), end=True)
        await stream.recv_message()
        await stream.recv_trailing_metadata()


async def _garbage_status(servicers: list[Any], socket: Path) -> tuple[Status, list[bytes]]:
    """The status an undecodable reflection request ends with, then a valid question's answer (the server
    goes on serving)."""
    server = Server(servicers)
    await server.start(path=str(socket))
    try:
        channel = Channel(path=str(socket))
        with pytest.raises(GRPCError) as refused:
            await _ask_raw(channel, b"\xff\xff\xff\xff")
        replies = await v1_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            [v1.ServerReflectionRequest(list_services="")]
        )
        channel.close()
    finally:
        server.close()
        await server.wait_closed()
    return refused.value.status, [reply.SerializeToString() for reply in replies]


async def test_an_undecodable_request_is_refused_as_grpclibs_servicer_refuses_it(tmp_path: Path) -> None:
    services = _services()
    eager = await _garbage_status(
        ServerReflection.extend(services, pool=workload_pool.POOL), tmp_path / "e.sock"
    )
    services = _services()
    lazy = await _garbage_status(
        [*services, LazyReflection(services, workload_pool.POOL)], tmp_path / "l.sock"
    )
    assert lazy == eager
    assert lazy[0] != Status.OK
