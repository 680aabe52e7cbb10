"""The agent's Workload API against real clients (py-spiffe) and the spec's MUSTs (checklist C, D, F, G)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_private_key
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.reflection.v1alpha import reflection_pb2
from lightkube import AsyncClient
from spiffe import JwtSource, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.spiffe.bundle import parse_der_certificates
from kubespiffe.spiffe.x509svid import check_leaf
from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.integration.kubespiffed import Running, register, unregister

pytestmark = pytest.mark.e2e

HEADER = (("workload.spiffe.io", "true"),)


def _stub(agent: AgentProcess) -> tuple[grpc.Channel, workload_pb2_grpc.SpiffeWorkloadAPIStub]:
    channel = grpc.insecure_channel(agent.address)
    return channel, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def _first(stream: Iterator[Any]) -> Any:
    message = next(iter(stream))
    stream.cancel()  # type: ignore[attr-defined]
    return message


@pytest.fixture
async def web(kube: AsyncClient, namespace: str, start_agent: AgentFactory) -> AgentProcess:
    await register(kube, "web", {"serviceAccountNames": ["web"], "hint": "web"}, namespace)
    await register(
        kube,
        "web-app",
        {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace}/app/{label:app}", "podSelector": {}},
        namespace,
    )
    agent: AgentProcess = await start_agent("web-1", "web", labels={"app": "shop"})
    return agent


def test_py_spiffe_fetches_x509_context_and_bundles(web: AgentProcess, namespace: str) -> None:
    with WorkloadApiClient(socket_path=web.address) as client:
        context = client.fetch_x509_context()
        ids = [str(s.spiffe_id) for s in context.x509_svids]
        assert ids == [
            f"spiffe://example.org/ns/{namespace}/sa/web",
            f"spiffe://example.org/ns/{namespace}/app/shop",
        ]
        assert str(context.default_svid.spiffe_id) == ids[0]
        bundles = client.fetch_x509_bundles()
        bundle = bundles.get_bundle_for_trust_domain(context.default_svid.spiffe_id.trust_domain)
        assert bundle is not None and len(bundle.x509_authorities) == 1
        leaf = context.default_svid.leaf
        assert check_leaf(leaf) is not None
        leaf.verify_directly_issued_by(next(iter(bundle.x509_authorities)))


def test_py_spiffe_fetches_and_validates_jwt_svids(web: AgentProcess, namespace: str) -> None:
    with WorkloadApiClient(socket_path=web.address) as client:
        svid = client.fetch_jwt_svid(audience={"payments"})
        assert str(svid.spiffe_id) == f"spiffe://example.org/ns/{namespace}/sa/web"
        header = jwt.get_unverified_header(svid.token)
        assert set(header) <= {"alg", "kid", "typ"} and header["alg"] == "ES256" and header["kid"]
        claims = jwt.decode(svid.token, options={"verify_signature": False})
        assert claims["aud"] in ("payments", ["payments"])
        assert 0 < claims["exp"] - time.time() <= 300
        validated = client.validate_jwt_svid(svid.token, "payments")
        assert str(validated.spiffe_id) == str(svid.spiffe_id)
        jwt_bundles = client.fetch_jwt_bundles()
        bundle = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None and header["kid"] in bundle.jwt_authorities
        all_svids = client.fetch_jwt_svids(audience={"payments"})
        assert len(all_svids) == 2


def test_py_spiffe_sources(web: AgentProcess, namespace: str) -> None:
    with X509Source(socket_path=web.address) as source:
        assert (
            str(source.get_x509_context().default_svid.spiffe_id)
            == f"spiffe://example.org/ns/{namespace}/sa/web"
        )
    with JwtSource(socket_path=web.address) as jwt_source:
        svid = jwt_source.fetch_svid(audience={"orders"})
        assert str(svid.spiffe_id) == f"spiffe://example.org/ns/{namespace}/sa/web"


def test_wire_format_is_der_with_default_first_and_unique_hints(web: AgentProcess) -> None:
    channel, stub = _stub(web)
    with channel:
        response = _first(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER))
    assert len(response.svids) == 2
    for svid in response.svids:
        assert svid.spiffe_id and svid.x509_svid and svid.x509_svid_key and svid.bundle
        assert not svid.x509_svid.startswith(b"-----")
        chain = parse_der_certificates(svid.x509_svid)
        key = load_der_private_key(svid.x509_svid_key, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert chain[0].public_key() == key.public_key()
        assert parse_der_certificates(svid.bundle)
    hints = [s.hint for s in response.svids if s.hint]
    assert hints == ["web"] and len(set(hints)) == len(hints)
    assert dict(response.federated_bundles) == {}


def test_missing_security_header_is_invalid_argument_on_every_rpc(web: AgentProcess) -> None:
    channel, stub = _stub(web)
    with channel:
        calls: list[Callable[[], object]] = [
            lambda: _first(stub.FetchX509SVID(workload_pb2.X509SVIDRequest())),
            lambda: _first(stub.FetchX509Bundles(workload_pb2.X509BundlesRequest())),
            lambda: _first(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest())),
            lambda: stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"])),
            lambda: stub.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x")),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_arguments_are_invalid_argument(web: AgentProcess) -> None:
    channel, stub = _stub(web)
    with channel:
        for request in (workload_pb2.JWTSVIDRequest(), workload_pb2.JWTSVIDRequest(audience=[""])):
            with pytest.raises(grpc.RpcError) as caught:
                stub.FetchJWTSVID(request, metadata=HEADER)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for validate in (
            workload_pb2.ValidateJWTSVIDRequest(audience="", svid="x.y.z"),
            workload_pb2.ValidateJWTSVIDRequest(audience="a", svid=""),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ValidateJWTSVID(validate, metadata=HEADER)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unentitled_spiffe_id_is_permission_denied(web: AgentProcess, namespace: str) -> None:
    channel, stub = _stub(web)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(
                audience=["a"], spiffe_id=f"spiffe://example.org/ns/{namespace}/sa/other"
            ),
            metadata=HEADER,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _forge(valid: str, **changes: Any) -> dict[str, str]:
    """Variants of a valid JWT-SVID that ValidateJWTSVID must refuse."""
    header = jwt.get_unverified_header(valid)
    claims = jwt.decode(valid, options={"verify_signature": False})
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    return {
        "alg none": jwt.encode(claims, cast(Any, None), algorithm="none", headers={"kid": header["kid"]}),
        "HS256": jwt.encode(claims, "secret-" * 8, algorithm="HS256", headers={"kid": header["kid"]}),
        "no kid": jwt.encode(claims, other, algorithm="ES256"),
        "unknown key": jwt.encode(claims, other, algorithm="ES256", headers={"kid": header["kid"]}),
        "unknown kid": jwt.encode(claims, other, algorithm="ES256", headers={"kid": "nope"}),
        "expired": jwt.encode({**claims, "exp": now - 10}, other, algorithm="ES256", headers={"kid": "nope"}),
        "garbage": "not-a-jwt",
        **changes,
    }


def test_validate_refuses_bad_jwt_svids(web: AgentProcess) -> None:
    channel, stub = _stub(web)
    with channel:
        valid = (
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["payments"]), metadata=HEADER)
            .svids[0]
            .svid
        )
        ok = stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="payments", svid=valid), metadata=HEADER
        )
        assert ok.spiffe_id and ok.claims["sub"] == ok.spiffe_id
        with pytest.raises(grpc.RpcError) as caught:
            stub.ValidateJWTSVID(
                workload_pb2.ValidateJWTSVIDRequest(audience="other", svid=valid), metadata=HEADER
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for case, token in _forge(valid).items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.ValidateJWTSVID(
                    workload_pb2.ValidateJWTSVIDRequest(audience="payments", svid=token), metadata=HEADER
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case


def test_jwt_bundles_are_plain_jwks_keyed_by_trust_domain_id(web: AgentProcess) -> None:
    channel, stub = _stub(web)
    with channel:
        response = _first(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER))
        x509_bundles = _first(stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER))
    assert set(response.bundles) == {"spiffe://example.org"} == set(x509_bundles.bundles)
    jwks = json.loads(response.bundles["spiffe://example.org"])
    assert jwks["keys"] and all(k["kid"] and "use" not in k for k in jwks["keys"])
    assert [c.subject for c in parse_der_certificates(x509_bundles.bundles["spiffe://example.org"])]


def test_server_reflection_lists_the_workload_api(web: AgentProcess) -> None:
    channel = grpc.insecure_channel(web.address)
    with channel:
        # The agent serves grpclib's copy of reflection.proto (one copy per process: grpcio-reflection's
        # would clash in the default descriptor pool), so the call is made with its messages.
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        responses = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for s in next(iter(responses)).list_services_response.service}
        described = next(
            iter(
                info(
                    iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="SpiffeWorkloadAPI")])
                )
            )
        )
    assert "SpiffeWorkloadAPI" in services
    # What grpcurl does next: describe the service (its descriptors live in our own pool).
    assert not described.HasField("error_response"), described.error_response.error_message
    files = [
        FileDescriptorProto.FromString(f) for f in described.file_descriptor_response.file_descriptor_proto
    ]
    assert any(svc.name == "SpiffeWorkloadAPI" for f in files for svc in f.service)


async def test_pod_without_identity_gets_permission_denied(start_agent: AgentFactory) -> None:
    agent: AgentProcess = await start_agent("nobody-1", "nobody", wait_ready=False)
    channel, stub = _stub(agent)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(
                lambda: _first(
                    stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
                )
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_losing_the_identity_ends_open_streams_with_permission_denied(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory
) -> None:
    await register(kube, "temp", {"serviceAccountNames": ["temp"]}, namespace)
    agent: AgentProcess = await start_agent("temp-1", "temp")
    channel, stub = _stub(agent)
    with channel:
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=60)
        first = await asyncio.to_thread(lambda: next(iter(stream)))
        assert first.svids
        await unregister(kube, "temp", namespace)

        def rest() -> grpc.StatusCode:
            try:
                for _ in stream:
                    pass
            except grpc.RpcError as exc:
                return exc.code()
            raise AssertionError("stream ended without an error")

        assert await asyncio.to_thread(rest) == grpc.StatusCode.PERMISSION_DENIED


async def test_files_mode_writes_and_keeps_files(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, kubespiffed: Running
) -> None:
    await register(kube, "files", {"serviceAccountNames": ["files"]}, namespace)
    agent: AgentProcess = await start_agent("files-1", "files", files=True, jwt_audience="vault")
    assert agent.write_dir is not None
    deadline = time.monotonic() + 20
    names = ("svid.0.pem", "svid.0.key", "bundle.0.pem", "jwt.0.token")
    while not all((agent.write_dir / n).exists() for n in names):
        assert time.monotonic() < deadline, (
            list(agent.write_dir.iterdir()) if agent.write_dir.exists() else []
        )
        await asyncio.sleep(0.1)
    leaf = x509.load_pem_x509_certificate((agent.write_dir / "svid.0.pem").read_bytes())
    assert check_leaf(leaf).path == f"/ns/{namespace}/sa/files"
    assert (agent.write_dir / "svid.0.key").stat().st_mode & 0o777 == 0o600
    assert (agent.write_dir / "bundle.0.pem").read_bytes() == kubespiffed.bundle_pem
    claims = jwt.decode((agent.write_dir / "jwt.0.token").read_text(), options={"verify_signature": False})
    assert claims["aud"] in ("vault", ["vault"])
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC)
