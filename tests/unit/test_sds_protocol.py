"""The agent's SDS service over a real gRPC server (grpclib, as in the agent) on a Unix socket, driven
through xds-protos' generated grpcio stub (Envoy's own message definitions), as the agent registers it
(the lazily loaded servicer).

The protocol's edge cases live here because they need exact timing control: the agent state is a
`Versioned` the test publishes to (a rotation is one publish). tests/e2e/test_sds.py runs the same
service inside real agents against kubespiffed, checked by go-control-plane's types.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import struct_pb2
from grpclib.server import Server

from kubespiffe.agent.sdslazy import LazySecretDiscovery
from kubespiffe.agent.state import AgentState, Snapshot
from kubespiffe.spiffe.bundle import Bundle, BundleSet
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509Svid
from kubespiffe.versioned import Versioned
from tests.unit.certs import make_ca, make_leaf

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DISABLE = "disable_spiffe_cert_validation"
OWN, FED = TrustDomain("example.org"), TrustDomain("fed.test")
OWN_CA, FED_CA = make_ca("own"), make_ca("fed", trust_domain="fed.test")
WEB = "spiffe://example.org/ns/a/sa/web"
PUSH_BOUND = 2.0  # seconds from a publish to the pushed response


def _svid(spiffe_id: str = WEB) -> X509Svid:
    leaf = make_leaf(OWN_CA, spiffe_id)
    return X509Svid(SpiffeId.parse(spiffe_id), (leaf.cert,), leaf.key)


def _snapshot() -> Snapshot:
    return Snapshot(BundleSet(Bundle(OWN, (OWN_CA.cert,)), {FED: Bundle(FED, (FED_CA.cert,))}), (_svid(),))


def _request(*names: str, version: str = "", nonce: str = "", error: str = "", **metadata: Any) -> Any:
    request = discovery_pb2.DiscoveryRequest(
        version_info=version, resource_names=list(names), type_url=SECRET, response_nonce=nonce
    )
    if error:
        request.error_detail.code, request.error_detail.message = (
            grpc.StatusCode.INVALID_ARGUMENT.value[0],
            error,
        )
    if metadata:
        node = base_pb2.Node(id="envoy-1", cluster="test", metadata=struct_pb2.Struct())
        node.metadata.update(metadata)
        request.node.CopyFrom(node)
    return request


def _secrets(response: Any) -> dict[str, Any]:
    found = {}
    for item in response.resources:
        assert item.type_url == SECRET
        secret = secret_pb2.Secret()
        assert item.Unpack(secret)
        found[secret.name] = secret
    return found


def _trust_domains(secret: Any) -> dict[str, list[x509.Certificate]]:
    validator = secret.validation_context.custom_validator_config
    assert validator.name == "envoy.tls.cert_validator.spiffe"
    config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
    assert validator.typed_config.Unpack(config)
    return {
        td.name: x509.load_pem_x509_certificates(td.trust_bundle.inline_bytes) for td in config.trust_domains
    }


class Stream:
    """One StreamSecrets call; responses are read by a task into a queue so waits can time out safely."""

    def __init__(self, stub: Any) -> None:
        self.call = stub.StreamSecrets()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self.responses.put(response)
        except grpc.aio.AioRpcError as exc:
            await self.responses.put(exc)

    async def send(self, request: Any) -> None:
        await self.call.write(request)

    async def recv(self, timeout: float = PUSH_BOUND) -> Any:
        response = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(response, grpc.aio.AioRpcError):
            raise response
        return response

    async def silent(self, seconds: float = 0.5) -> None:
        await asyncio.sleep(seconds)
        assert self.responses.empty(), f"unexpected response: {self.responses.get_nowait()}"

    async def ack(self, response: Any, *names: str) -> None:
        await self.send(_request(*names, version=response.version_info, nonce=response.nonce))

    def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[AgentState, Any]]:
    state: AgentState = Versioned(None)
    server = Server([LazySecretDiscovery(state)])
    socket = tmp_path / "agent.sock"
    await server.start(path=str(socket))
    channel = grpc.aio.insecure_channel(f"unix://{socket}")
    yield state, sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    await channel.close(grace=None)
    server.close()
    await server.wait_closed()


@pytest.fixture
async def stream(served: tuple[AgentState, Any]) -> AsyncIterator[Stream]:
    s = Stream(served[1])
    yield s
    s.close()


async def test_first_response_carries_the_certificate_and_spiffe_validation(
    served: tuple[AgentState, Any], stream: Stream
) -> None:
    state, _ = served
    snapshot = _snapshot()
    await stream.send(_request("default", "ROOTCA", "ALL"))
    await stream.silent()  # nothing held yet: the stream waits
    await state.publish(snapshot)
    response = await stream.recv()
    assert response.type_url == SECRET and response.version_info and response.nonce
    found = _secrets(response)
    assert list(found) == ["default", "ROOTCA", "ALL"]
    tls = found["default"].tls_certificate
    chain = x509.load_pem_x509_certificates(tls.certificate_chain.inline_bytes)
    assert chain == list(snapshot.svids[0].chain)
    key = load_pem_private_key(tls.private_key.inline_bytes, None)
    assert key.public_key() == chain[0].public_key()
    assert _trust_domains(found["ROOTCA"]) == {"example.org": [OWN_CA.cert]}
    assert _trust_domains(found["ALL"]) == {"example.org": [OWN_CA.cert], "fed.test": [FED_CA.cert]}


async def test_ack_settles_and_rotation_is_pushed_with_a_new_version_and_nonce(
    served: tuple[AgentState, Any], stream: Stream
) -> None:
    state, _ = served
    await state.publish(_snapshot())
    await stream.send(_request("default"))
    first = await stream.recv()
    await stream.ack(first, "default")
    await stream.silent()
    # A bundle change nobody asked for (JWT keys, a federated bundle) pushes nothing either.
    current = state.current
    assert current is not None
    await state.publish(replace(current, bundles=current.bundles.with_federated({})))
    await stream.silent()
    rotated = replace(current, svids=(_svid(),))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await state.publish(rotated)
    pushed = await stream.recv()
    assert loop.time() - started < PUSH_BOUND
    assert pushed.version_info != first.version_info and pushed.nonce != first.nonce
    leaf = x509.load_pem_x509_certificates(
        _secrets(pushed)["default"].tls_certificate.certificate_chain.inline_bytes
    )
    assert leaf[0] == rotated.svids[0].leaf != current.svids[0].leaf


async def test_nack_is_logged_not_answered_and_the_next_change_is_pushed(
    served: tuple[AgentState, Any], stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    state, _ = served
    await state.publish(_snapshot())
    await stream.send(_request("default"))
    first = await stream.recv()
    await stream.ack(first, "default")
    current = state.current
    assert current is not None
    await state.publish(replace(current, svids=(_svid(),)))
    second = await stream.recv()
    with caplog.at_level(logging.WARNING, logger="kubespiffe.agent"):
        await stream.send(
            _request("default", version=first.version_info, nonce=second.nonce, error="bad certificate")
        )
        await stream.silent()  # the rejected resources are not resent
    assert f"Envoy rejected version {second.version_info}" in caplog.text
    assert "bad certificate" in caplog.text and f"keeps version '{first.version_info}'" in caplog.text
    await state.publish(replace(current, svids=(_svid(),)))
    third = await stream.recv()
    assert third.version_info not in (first.version_info, second.version_info)


async def test_stale_nonce_is_ignored_and_new_names_with_the_current_one_are_served(
    served: tuple[AgentState, Any], stream: Stream
) -> None:
    state, _ = served
    await state.publish(_snapshot())
    await stream.send(_request("default"))
    first = await stream.recv()
    await stream.ack(first, "default")
    current = state.current
    assert current is not None
    await state.publish(replace(current, svids=(_svid(),)))
    second = await stream.recv()
    # Answers the first response after the second was sent: stale, even though it asks for more.
    await stream.send(_request("default", "ROOTCA", version=first.version_info, nonce=first.nonce))
    await stream.silent()
    await stream.send(_request("default", "ROOTCA", version=second.version_info, nonce=second.nonce))
    third = await stream.recv()
    assert list(_secrets(third)) == ["default", "ROOTCA"]


async def test_node_metadata_asks_for_a_plain_trusted_ca(
    served: tuple[AgentState, Any], stream: Stream
) -> None:
    state, stub = served
    await state.publish(_snapshot())
    await stream.send(_request("ROOTCA", "spiffe://fed.test", disable_spiffe_cert_validation=True))
    found = _secrets(await stream.recv())
    for name, ca in (("ROOTCA", OWN_CA), ("spiffe://fed.test", FED_CA)):
        context = found[name].validation_context
        assert not context.HasField("custom_validator_config")
        assert x509.load_pem_x509_certificates(context.trusted_ca.inline_bytes) == [ca.cert]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FetchSecrets(_request("ALL", disable_spiffe_cert_validation="true"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    response = await stub.FetchSecrets(_request("ALL", disable_spiffe_cert_validation="no"))
    assert set(_trust_domains(_secrets(response)["ALL"])) == {"example.org", "fed.test"}


async def test_node_metadata_with_an_unset_value_is_read_around(served: tuple[AgentState, Any]) -> None:
    """Found by fuzzing (tests/fuzz, sds): one metadata Value without a kind made reading the Struct raise
    ValueError, so the call failed as UNKNOWN; only the one key the agent reads is looked at now."""
    state, stub = served
    await state.publish(_snapshot())
    request = _request("ALL", disable_spiffe_cert_validation="true")
    request.node.metadata.fields["other"].SetInParent()  # a Value with no kind set
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FetchSecrets(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the setting is still read
    request = _request("ALL", other="x")
    request.node.metadata.fields[DISABLE].SetInParent()
    response = await stub.FetchSecrets(request)
    assert set(_trust_domains(_secrets(response)["ALL"])) == {"example.org", "fed.test"}


async def test_a_resource_the_pod_does_not_hold_is_invalid_argument(
    served: tuple[AgentState, Any], stream: Stream
) -> None:
    state, stub = served
    await state.publish(_snapshot())
    other = "spiffe://example.org/ns/a/sa/other"
    with pytest.raises(grpc.aio.AioRpcError) as fetched:
        await stub.FetchSecrets(_request("default", other))
    assert fetched.value.code() == grpc.StatusCode.INVALID_ARGUMENT and other in (
        fetched.value.details() or ""
    )
    await stream.send(_request("spiffe://nowhere.test"))
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await stream.recv()
    assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_identity_taken_away_ends_a_stream_that_names_it(
    served: tuple[AgentState, Any], stream: Stream
) -> None:
    state, _ = served
    await state.publish(_snapshot())
    await stream.send(_request(WEB))
    await stream.ack(await stream.recv(), WEB)
    current = state.current
    assert current is not None
    await state.publish(replace(current, svids=(_svid("spiffe://example.org/ns/a/sa/renamed"),)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.recv()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_fetch_answers_once_without_nonce(served: tuple[AgentState, Any]) -> None:
    state, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FetchSecrets(_request("default"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await state.publish(_snapshot())
    response = await stub.FetchSecrets(_request())
    assert not response.nonce and response.type_url == SECRET
    assert list(_secrets(response)) == [WEB, "spiffe://example.org", "spiffe://fed.test"]


async def test_denied_is_permission_denied_and_ends_streams(
    served: tuple[AgentState, Any], stream: Stream
) -> None:
    state, stub = served
    await state.publish(_snapshot())
    await stream.send(_request("default"))
    await stream.recv()
    current = state.current
    assert current is not None
    await state.publish(replace(current, svids=(), denied="no registration matches"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.recv()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as fetched:
        await stub.FetchSecrets(_request("default"))
    assert fetched.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_other_types_are_invalid_and_delta_is_unimplemented(served: tuple[AgentState, Any]) -> None:
    state, stub = served
    await state.publish(_snapshot())
    request = _request("default")
    request.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FetchSecrets(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    delta = stub.DeltaSecrets()
    await delta.write(
        discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET, resource_names_subscribe=["default"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
        await delta.read()
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_agent_loads_envoy_protos_only_when_sds_is_called() -> None:
    """Importing the agent and registering SDS must not import xds-protos: pods without Envoy pay nothing."""
    code = (
        "import asyncio, sys\n"
        "import kubespiffe.agent.run\n"
        "from kubespiffe.agent.sdslazy import LazySecretDiscovery\n"
        "from kubespiffe.versioned import Versioned\n"
        "servicer = LazySecretDiscovery(Versioned(None))\n"
        "handler = servicer.__mapping__()['/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets']\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('envoy', 'xds', 'udpa')], 'loaded early'\n"
        "class Stream:\n"
        "    async def recv_message(self): return None\n"
        "try:\n"
        "    asyncio.run(handler.func(Stream()))\n"
        "except Exception as exc:\n"
        "    assert 'not implemented' in str(exc), exc\n"
        "assert 'envoy.service.discovery.v3.discovery_pb2' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
