"""Issue 12's findings against the running daemon: each test reproduces one weakness through the issuer API
(or the shipped manifests) of a real kubespiffed under its shipped RBAC, on a real kube-apiserver."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import ssl
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import grpc
import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hpack import Decoder, Encoder
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, RstStreamFrame, SettingsFrame
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Pod, ServiceAccount, ServiceAccountToken

from kubespiffe.agent.issuer_client import NoIdentity, TokenRefused, X509Result, new_csr
from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, service_account_token
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import FederatedTrustDomain
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.spiffe.bundle import Bundle, bundle_to_json, certificates_to_pem
from kubespiffe.spiffe.spiffeid import TrustDomain

from .kubespiffed import Running, pod_with_token, register, unregister, wait_events

pytestmark = pytest.mark.integration


async def _tokenreviews(kube: AsyncClient) -> int:
    """TokenReviews the API server has served so far, from its own /metrics (admin credentials)."""
    http = kube._client._client
    response = await http.get("/metrics")
    response.raise_for_status()
    total = 0.0
    for line in response.text.splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="tokenreviews"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@pytest.fixture
async def stub(kubespiffed: Running) -> AsyncIterator[issuer_pb2_grpc.IssuerAsyncStub]:
    credentials = grpc.ssl_channel_credentials(certificates_to_pem(kubespiffed.bundle))
    options = [("grpc.ssl_target_name_override", "kubespiffed")]
    async with grpc.aio.secure_channel(kubespiffed.address, credentials, options=options) as channel:
        yield issuer_pb2_grpc.IssuerStub(channel)  # an IssuerAsyncStub for an aio channel


async def _mint_code(stub: issuer_pb2_grpc.IssuerAsyncStub, token: str) -> grpc.StatusCode:
    try:
        await stub.MintX509SVID(
            issuer_pb2.MintX509SVIDRequest(csr=new_csr()[1]),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# Finding 1: forged tokens with an unknown kid and public-looking claims went to TokenReview every time.
async def test_forged_tokens_with_unknown_kid_cost_at_most_a_constant_of_token_reviews(
    kube: AsyncClient, kubespiffed: Running, namespace: str, stub: issuer_pb2_grpc.IssuerAsyncStub
) -> None:
    await register(kube, "forged", {"serviceAccountNames": ["forged"]}, namespace)
    _, real = await pod_with_token(kube, namespace, "forged", "forged")
    claims = jwt.decode(real, options={"verify_signature": False})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    distinct = [
        jwt.encode({**claims, "jti": str(i)}, key, algorithm="RS256", headers={"kid": f"forged-{i}"})
        for i in range(200)
    ]
    same = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "forged-same"})
    before = await _tokenreviews(kube)
    codes = await asyncio.gather(*(_mint_code(stub, t) for t in [*distinct, *[same] * 100]))
    after = await _tokenreviews(kube)
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    assert after - before <= 2, f"300 forged tokens cost {after - before} TokenReviews"


# Finding 5: a token for several audiences is also a credential for the others (e.g. the API server).
async def test_token_with_several_audiences_is_refused(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    await register(kube, "multi", {"serviceAccountNames": ["multi"]}, namespace)
    pod, token = await pod_with_token(kube, namespace, "multi", "multi")
    assert (await kubespiffed.fetch(token)).svids
    request = ServiceAccountToken(
        metadata=ObjectMeta(namespace=namespace),
        spec=TokenRequestSpec(
            audiences=["kubespiffe", "https://kubernetes.default.svc.cluster.local"],
            expirationSeconds=600,
            boundObjectRef=BoundObjectReference(
                apiVersion="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
            ),
        ),
    )
    response = await kube.create(request, "multi", namespace=namespace)
    with pytest.raises(TokenRefused, match="audience"):
        await kubespiffed.fetch(response.status.token)
    assert re.search(r"rejected .*reason=.*audience", kubespiffed.log.read_text())


# Finding 4: pod binding looser than the API server's own (TokenReview refuses both of these).
async def test_pod_being_deleted_is_refused(kube: AsyncClient, kubespiffed: Running, namespace: str) -> None:
    """A pod on no node is deleted without a grace period: held by a finalizer, it is refused at once."""
    await register(kube, "held", {"serviceAccountNames": ["held"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "held", "held")
    await kube.patch(
        Pod, "held", {"metadata": {"finalizers": ["kubespiffe.io/test-hold"]}}, namespace=namespace
    )
    assert (await kubespiffed.fetch(token)).svids
    await kube.delete(Pod, "held", namespace=namespace)
    try:
        stored = await kube.get(Pod, "held", namespace=namespace)
        assert stored.metadata is not None and stored.metadata.deletionTimestamp is not None
        with pytest.raises(TokenRefused, match="grace period is over"):
            await kubespiffed.fetch(token)
    finally:
        await kube.patch(Pod, "held", {"metadata": {"finalizers": []}}, namespace=namespace)


async def test_pod_in_its_grace_period_keeps_its_identity_until_the_period_ends(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    """A pod shutting down gracefully still drains work that may need SVIDs: until its deletionTimestamp
    (deletion + grace period) it is served, after it refused (the API server's own check allows a minute
    more). The pod names a node, so the API server keeps it, waiting for a kubelet, through its grace."""
    await register(kube, "drain", {"serviceAccountNames": ["drain"]}, namespace)
    pod = await create_pod(kube, namespace, "drain", "drain", node_name="node-without-kubelet")
    token = await pod_token(kube, pod)
    await kube.delete(Pod, "drain", namespace=namespace, grace_period=4)
    stored = await kube.get(Pod, "drain", namespace=namespace)
    assert stored.metadata is not None and stored.metadata.deletionTimestamp is not None
    ends = stored.metadata.deletionTimestamp
    assert ends > dt.datetime.now(dt.UTC), "the grace period is already over"
    assert (await kubespiffed.fetch(token)).svids, "a pod in its grace period was refused"
    await asyncio.sleep(max(0.0, (ends - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    with pytest.raises(TokenRefused, match="grace period"):
        await kubespiffed.fetch(token)
    await kube.delete(Pod, "drain", namespace=namespace, grace_period=0)


async def test_token_of_deleted_or_recreated_service_account_is_refused(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    await register(kube, "sa", {"serviceAccountNames": ["doomed"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "doomed", "doomed")
    assert (await kubespiffed.fetch(token)).svids
    await kube.delete(ServiceAccount, "doomed", namespace=namespace)
    await _refused_soon(kubespiffed, token, "service account no longer exists")
    await kube.create(ServiceAccount(metadata=ObjectMeta(name="doomed", namespace=namespace)))
    await _refused_soon(kubespiffed, token, "service account was deleted")


async def _refused_soon(kubespiffed: Running, token: str, reason: str) -> None:
    """Refused within 3 s: kubespiffed reads ServiceAccounts from its watch, which may be a moment behind
    (a fetch right after the delete once got an SVID)."""
    deadline = time.monotonic() + 3
    while True:
        try:
            await kubespiffed.fetch(token)
        except TokenRefused as exc:
            refusal = str(exc)
            break
        assert time.monotonic() < deadline, f"still issued 3 s later; expected a refusal: {reason}"
        await asyncio.sleep(0.1)
    assert reason in refusal


def _dns_names(result: X509Result) -> list[str]:
    leaf = result.svids[0].chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


# Finding 2: a namespaced registration put kubernetes.default.svc and other namespaces' names in an SVID.
async def test_namespaced_registration_cannot_grant_dns_names_outside_its_namespace(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    condition = await register(
        kube,
        "wide",
        {
            "serviceAccountNames": ["wide"],
            "dnsNameTemplates": ["kubernetes.default.svc", "db.other.svc.cluster.local", "www.google.com"],
        },
        namespace,
        ready=False,
    )
    assert condition["reason"] == "DNSNameOutsideNamespace"
    _, token = await pod_with_token(kube, namespace, "wide", "wide")
    with pytest.raises(NoIdentity):
        await kubespiffed.fetch(token)
    await register(
        kube,
        "narrow",
        {
            "serviceAccountNames": ["narrow"],
            "dnsNameTemplates": ["{podName}.{namespace}.svc", f"api.{namespace}.svc.cluster.local"],
        },
        namespace,
    )
    _, token = await pod_with_token(kube, namespace, "narrow", "narrow")
    assert _dns_names(await kubespiffed.fetch(token)) == [
        f"narrow.{namespace}.svc",
        f"api.{namespace}.svc.cluster.local",
    ]


# Finding 3: a ClusterWorkloadRegistration rendered another namespace's /ns/<X>/ ID from pod labels.
async def test_pod_labels_cannot_pick_another_namespaces_id(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    name = f"labels-{uuid.uuid4().hex[:6]}"
    condition = await register(
        kube,
        name,
        {
            "spiffeIDTemplate": "spiffe://{trustDomain}/{label:p1}/{label:p2}/sa/{label:p3}",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        },
    )
    try:
        assert condition["reason"] == "NamespaceFromPod"
        assert "namespace segment" in condition["message"]
        labels = {"p1": "ns", "p2": "other", "p3": "db"}
        _, token = await pod_with_token(kube, namespace, "sneaky", "sneaky", labels=labels)
        with pytest.raises(NoIdentity):
            await kubespiffed.fetch(token)
        assert "ForeignNamespaceID" in kubespiffed.log.read_text()
        labels = {"p1": "ns", "p2": namespace, "p3": "db"}
        _, token = await pod_with_token(kube, namespace, "honest", "honest", labels=labels)
        result = await kubespiffed.fetch(token)
        assert [str(s.spiffe_id) for s in result.svids] == [f"spiffe://example.org/ns/{namespace}/sa/db"]
    finally:
        await unregister(kube, name)


async def _mint_jwt_code(stub: issuer_pb2_grpc.IssuerAsyncStub, token: str, audience: list[str]) -> str:
    try:
        await stub.MintJWTSVID(
            issuer_pb2.MintJWTSVIDRequest(audience=audience),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return "OK"


# Finding 6: a newline in an audience forged a log line; 35,000 audiences made a 4.8 MB token.
async def test_jwt_svid_audiences_are_bounded_and_logged_escaped(
    kube: AsyncClient, kubespiffed: Running, namespace: str, stub: issuer_pb2_grpc.IssuerAsyncStub
) -> None:
    await register(kube, "jwt", {"serviceAccountNames": ["jwt"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "jwt", "jwt")
    assert await _mint_jwt_code(stub, token, ["a", "https://b.example/x?y=1"]) == "OK"
    forged = "x\nINFO kubespiffed.issuer attested pod=admin namespace=kube-system"
    for audience in (
        [forged],
        [f"aud-{i}" for i in range(1000)],
        ["a" * 5000],
        ["caf\u00e9"],
        ["tab\there"],
    ):
        assert (await _mint_jwt_code(stub, token, audience)).startswith("INVALID_ARGUMENT"), audience[:2]
    log = kubespiffed.log.read_text()
    assert not any(line.startswith("INFO kubespiffed.issuer attested pod=admin") for line in log.splitlines())
    assert "audience=['a', 'https://b.example/x?y=1']" in log


@pytest.fixture(scope="module")
async def limited(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running
) -> AsyncIterator[Running]:
    """A second replica with small caps (it shares the session's authority Secret and trust bundle)."""
    daemon = Kubespiffed(
        control_plane,
        extra_args=(
            "--max-streams-per-pod=2",
            "--max-concurrent-rpcs=3",
            "--grpc-max-connection-idle=1s",
            "--grpc-handshake-timeout=2s",
        ),
    )
    daemon.start(await service_account_token(kube))
    await asyncio.to_thread(daemon.wait_ready, kubespiffed.bundle_pem)
    yield Running(daemon, kubespiffed.bundle_pem)
    daemon.stop()


def _channel(running: Running) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(certificates_to_pem(running.bundle))
    options = [("grpc.ssl_target_name_override", "kubespiffed")]
    return grpc.aio.secure_channel(running.address, credentials, options=options)


async def _open_stream(channel: grpc.aio.Channel, token: str) -> Any:
    """A WatchBundles stream that has delivered its first message (so the server counts it)."""
    call = issuer_pb2_grpc.IssuerStub(channel).WatchBundles(
        issuer_pb2.WatchBundlesRequest(), metadata=(("authorization", f"Bearer {token}"),)
    )
    await call.read()
    return call


async def _refusals(running: Running, limit: str) -> float:
    """kubespiffed's count of calls refused by one bound, from its /metrics."""
    return await _metric(running, f'kubespiffe_issuer_limit_refusals_total{{limit="{limit}"}}')


async def _metric(running: Running, sample: str) -> float:
    """One sample (name and labels) of kubespiffed's /metrics, 0 when absent."""
    prefix = sample + " "

    def get() -> str:
        context = ssl.create_default_context(cadata=running.bundle_pem.decode())
        context.check_hostname = False
        url = f"https://127.0.0.1:{running.daemon.health_port}/metrics"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return str(response.read().decode())

    for line in (await asyncio.to_thread(get)).splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


# Finding 7: 4,387 WatchBundles streams from one pod token took kubespiffed over its memory limit.
async def test_watch_bundles_streams_are_capped_per_pod_and_calls_overall(
    kube: AsyncClient, limited: Running, namespace: str
) -> None:
    await register(kube, "streams", {"serviceAccountNames": ["streams"]}, namespace)
    _, token_a = await pod_with_token(kube, namespace, "streams-a", "streams")
    _, token_b = await pod_with_token(kube, namespace, "streams-b", "streams")
    async with _channel(limited) as channel:
        streams = [await _open_stream(channel, token_a), await _open_stream(channel, token_a)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _open_stream(channel, token_a)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _refusals(limited, "streams_per_pod") == 1
        streams.append(await _open_stream(channel, token_b))
        stub = issuer_pb2_grpc.IssuerStub(channel)
        assert await _mint_code(stub, token_b) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _refusals(limited, "concurrent_rpcs") == 1
        for stream in streams:
            stream.cancel()
        await asyncio.sleep(0.5)
        assert await _mint_code(stub, token_b) == grpc.StatusCode.OK
        streams = [await _open_stream(channel, token_a), await _open_stream(channel, token_a)]
        for stream in streams:
            stream.cancel()


async def test_idle_and_unfinished_connections_are_closed(limited: Running) -> None:
    host, port = limited.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b"", "a silent connection is closed, not kept"
    assert time.monotonic() - started < 5
    writer.close()
    async with _channel(limited) as channel:
        await channel.channel_ready()
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        await asyncio.sleep(3)
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE, "an idle connection is closed"


# Finding: grpc enforces its 16 KiB metadata bound only once the client has acknowledged the server's
# SETTINGS; before that a header block may be 16 MiB, and 20 such calls, each waiting for a request that
# never came, held 567 MB in a kubespiffed-like server. These tests speak HTTP/2 frame by frame.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MINT = "/kubespiffe.issuer.v1.Issuer/MintX509SVID"


async def _h2_connection(running: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cadata=running.bundle_pem.decode())
    context.set_alpn_protocols(["h2"])
    host, port = running.address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port), ssl=context, server_hostname="kubespiffed")


def _header_frames(path: str, token: str, *, end_headers: bool, stream: int = 1) -> bytes:
    """A call's HEADERS (+ CONTINUATION) frames, its token not Huffman-coded (so its size is what is sent)."""
    block = Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "kubespiffed"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", f"Bearer {token}"),
        ],
        huffman=False,
    )
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames: list[HeadersFrame | ContinuationFrame] = [HeadersFrame(stream, chunks[0])]
    frames += [ContinuationFrame(stream, chunk) for chunk in chunks[1:]]
    if end_headers:
        frames[-1].flags.add("END_HEADERS")
    else:
        frames.pop()  # the block never ends
    return b"".join(frame.serialize() for frame in frames)


async def _read_frame(reader: asyncio.StreamReader) -> Frame:
    frame, length = Frame.parse_frame_header(memoryview(await reader.readexactly(9)))
    frame.parse_body(memoryview(await reader.readexactly(length)))
    return frame


@pytest.mark.parametrize("method", ["MintX509SVID", "WatchBundles"], ids=["unary", "server-streaming"])
async def test_megabytes_of_metadata_sent_before_the_settings_ack_are_refused_at_once(
    limited: Running, method: str
) -> None:
    """The call is refused (RESOURCE_EXHAUSTED) as soon as its headers are in, without waiting for its
    request, so its metadata does not stay in memory; the connection goes on.

    grpc itself rejects some oversized blocks at random (its soft limit: here with a probability of about
    (1 MB - 8 KiB) / (16 MiB - 8 KiB), 6%); that is a refusal too, and the test tries again (3 times)."""
    before = await _refusals(limited, "metadata_size")
    for _ in range(3):
        reader, writer = await _h2_connection(limited)
        try:
            writer.write(_PREFACE + SettingsFrame(0).serialize())
            path = f"/kubespiffe.issuer.v1.Issuer/{method}"
            writer.write(_header_frames(path, "A" * 1_000_000, end_headers=True))
            writer.write(SettingsFrame(0, flags=["ACK"]).serialize())
            await writer.drain()
            decoder = Decoder()
            async with asyncio.timeout(3):  # the call itself would wait for its request forever
                while True:
                    frame = await _read_frame(reader)
                    if isinstance(frame, HeadersFrame) and frame.stream_id == 1:
                        headers = dict(decoder.decode(frame.data, raw=True))
                        if b"grpc-status" in headers:
                            break
            assert headers[b"grpc-status"] == _EXHAUSTED
            message = unquote(headers[b"grpc-message"].decode())
            if "exceeds soft limit" in message:
                continue  # grpc's own random early refusal
            assert "metadata is larger than 16384 bytes" in message
            # (grpc's own refusals may reach kubespiffed's bound too: counted as well)
            assert await _refusals(limited, "metadata_size") > before
            reason = "call metadata is larger than 16384 bytes"
            assert _refusal_logged(limited, writer, reason)
            # The connection, now past its SETTINGS ack, still takes calls (grpc's own bound refuses this).
            writer.write(_header_frames(_MINT, "A" * 20_000, end_headers=True, stream=3))
            await writer.drain()
            async with asyncio.timeout(3):
                while (frame := await _read_frame(reader)).stream_id != 3:
                    pass
            assert isinstance(frame, HeadersFrame | RstStreamFrame)
            return
        finally:
            writer.transport.abort()  # at once: a TLS close() waits for the peer's close_notify
    pytest.fail("grpc refused the call itself 3 times in a row; kubespiffed's bound was not reached")


async def _status_of(reader: asyncio.StreamReader, decoder: Decoder, stream: int) -> bytes:
    """The grpc-status the server ends `stream` with; fails if any other call ends first (within 3 s)."""
    async with asyncio.timeout(3):
        while True:
            frame = await _read_frame(reader)
            if isinstance(frame, HeadersFrame):
                headers = dict(decoder.decode(frame.data, raw=True))
                assert frame.stream_id == stream, f"call {frame.stream_id} ended; it should be waiting"
                if b"grpc-status" in headers:
                    return headers[b"grpc-status"]


async def _known_token(kube: AsyncClient, running: Running, namespace: str, name: str) -> str:
    """A registered pod's token, verified once by `running` (so known to it from then on)."""
    await register(kube, name, {"serviceAccountNames": [name]}, namespace)
    _, token = await pod_with_token(kube, namespace, name, name)
    async with _channel(running) as channel:
        assert await _mint_code(issuer_pb2_grpc.IssuerStub(channel), token) == grpc.StatusCode.OK
    return token


def _refusal_logged(
    running: Running, writer: asyncio.StreamWriter, reason: str, *, exact: bool = True
) -> bool:
    """Whether `running` logged refusing a call of this connection, for `reason` (or one containing it)."""
    host, port = writer.get_extra_info("sockname")[:2]
    prefix = f"rejected peer=ipv4:{host}:{port} reason="
    if exact:
        return prefix + repr(reason) in running.log.read_text()
    return any(prefix in line and reason in line for line in running.log.read_text().splitlines())


_EXHAUSTED = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]).encode()


_UNAUTHENTICATED = str(grpc.StatusCode.UNAUTHENTICATED.value[0]).encode()


async def test_calls_without_a_valid_token_are_refused_at_their_start(
    kube: AsyncClient, limited: Running, namespace: str
) -> None:
    """No token, a garbage one, a forged signature, a made-up key id right after a JWKS fetch: each call
    is refused (UNAUTHENTICATED) as soon as its headers are in, before any request, and holds nothing:
    a pod goes on minting while 12 such calls stay open on a replica that admits 3 calls at once."""
    token = await _known_token(kube, limited, namespace, "valid")
    header, payload, _ = token.split(".")
    forged = f"{header}.{payload}.{'A' * 342}"  # the cluster's key id, a signature it did not make
    claims = jwt.decode(token, options={"verify_signature": False})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    made_up = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "made-up"})
    refused = {"": "no token", "garbage": "not a well-formed JWT", forged: "signature", made_up: "made-up"}
    async with _channel(limited) as channel:  # its key id is now settled unknown for 10 s (one fetch)
        assert (
            await _mint_code(issuer_pb2_grpc.IssuerStub(channel), made_up) == grpc.StatusCode.UNAUTHENTICATED
        )
    reader, writer = await _h2_connection(limited)
    decoder = Decoder()
    try:
        writer.write(_PREFACE + SettingsFrame(0).serialize() + SettingsFrame(0, flags=["ACK"]).serialize())
        for round_ in range(3):
            for i, (bad, reason) in enumerate(refused.items()):
                stream = 1 + 2 * (round_ * len(refused) + i)
                writer.write(_header_frames(_MINT, bad, end_headers=True, stream=stream))  # no request
                await writer.drain()
                assert await _status_of(reader, decoder, stream) == _UNAUTHENTICATED, reason
                assert _refusal_logged(limited, writer, reason, exact=False)
        async with _channel(limited) as channel:
            assert await _mint_code(issuer_pb2_grpc.IssuerStub(channel), token) == grpc.StatusCode.OK
    finally:
        writer.transport.abort()  # at once: a TLS close() waits for the peer's close_notify


async def test_calls_that_never_send_their_request_count_until_they_end(
    kube: AsyncClient, limited: Running, namespace: str
) -> None:
    """Calls count from their start, before their request (3 at most here), and stop counting when their
    connection goes. A starting pod's first call is verified at its start and counts for its pod."""
    token = await _known_token(kube, limited, namespace, "shares")
    await register(kube, "starting", {"serviceAccountNames": ["starting"]}, namespace)
    _, new_token = await pod_with_token(kube, namespace, "starting", "starting")
    busy = await _refusals(limited, "concurrent_rpcs")
    reader, writer = await _h2_connection(limited)
    decoder = Decoder()
    async with _channel(limited) as channel:
        stream = await _open_stream(channel, new_token)  # in flight for as long as it is open
        try:
            writer.write(_PREFACE + SettingsFrame(0).serialize())
            writer.write(SettingsFrame(0, flags=["ACK"]).serialize())
            for call, in_flight in ((1, 2), (3, 3)):  # the known pod's calls that never send their request
                writer.write(_header_frames(_MINT, token, end_headers=True, stream=call))
                await writer.drain()
                await _in_flight(limited, in_flight)  # grpc may start calls sent together in any order
            writer.write(_header_frames(_MINT, token, end_headers=True, stream=5))
            await writer.drain()
            assert await _status_of(reader, decoder, 5) == _EXHAUSTED
            assert await _refusals(limited, "concurrent_rpcs") == busy + 1
            assert _refusal_logged(limited, writer, "3 calls in flight")
        finally:
            writer.transport.abort()
            stream.cancel()
    async with _channel(limited) as channel:
        stub = issuer_pb2_grpc.IssuerStub(channel)
        deadline = time.monotonic() + 5
        while (code := await _mint_code(stub, token)) == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert time.monotonic() < deadline, "the calls of a closed connection still count"
            await asyncio.sleep(0.1)
        assert code == grpc.StatusCode.OK


async def _in_flight(running: Running, count: int) -> None:
    """Until `running` has `count` calls in flight (its gauge), within 3 s."""
    deadline = time.monotonic() + 3
    while (now := await _metric(running, "kubespiffe_issuer_calls_in_flight")) != count:
        assert time.monotonic() < deadline, f"{now:.0f} calls in flight, not {count}"
        await asyncio.sleep(0.05)


def _jwks_loads(running: Running) -> list[dt.datetime]:
    """When `running` loaded the cluster JWKS, from its log."""
    return [
        dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in running.log.read_text().splitlines()
        if "cluster JWKS loaded" in line
    ]


async def test_a_call_only_a_jwks_fetch_can_decide_waits_in_a_share_and_a_deadline(
    kube: AsyncClient, limited: Running, namespace: str
) -> None:
    """A key id the JWKS lacks, once a fetch is due (10 s after the last): the API server may have a new
    key, so the call waits for its request in the share of such calls (1 here), at most the handshake
    timeout (2 s here), and the fetch starts at once: the next made-up key id is refused at its start."""
    _, real = await pod_with_token(kube, namespace, "rotating", "rotating")
    claims = jwt.decode(real, options={"verify_signature": False})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    waits, refused = (
        jwt.encode(claims, key, algorithm="RS256", headers={"kid": k}) for k in ("new-1", "new-2")
    )
    loads = _jwks_loads(limited)
    if loads:  # a fetch is due 10 s after the last
        await asyncio.sleep(max(0.0, 10.5 - (dt.datetime.now() - loads[-1]).total_seconds()))
    timeouts = await _refusals(limited, "request_timeout")
    reader, writer = await _h2_connection(limited)
    decoder = Decoder()
    try:
        writer.write(_PREFACE + SettingsFrame(0).serialize() + SettingsFrame(0, flags=["ACK"]).serialize())
        writer.write(_header_frames(_MINT, waits, end_headers=True, stream=1))  # no request
        await writer.drain()
        deadline = time.monotonic() + 3
        while len(_jwks_loads(limited)) == len(loads):
            assert time.monotonic() < deadline, "the call's start did not fetch the JWKS"
            await asyncio.sleep(0.05)
        writer.write(_header_frames(_MINT, refused, end_headers=True, stream=3))
        await writer.drain()
        assert await _status_of(reader, decoder, 3) == _UNAUTHENTICATED
        assert _refusal_logged(limited, writer, "'new-2' is not in the cluster JWKS", exact=False)
        assert await _status_of(reader, decoder, 1) == _EXHAUSTED  # 2 s after its start
        assert await _refusals(limited, "request_timeout") == timeouts + 1
        assert _refusal_logged(limited, writer, "no request within 2 s")
    finally:
        writer.transport.abort()


async def test_one_pod_holds_at_most_64_calls_at_once(
    kube: AsyncClient, patient: Running, namespace: str
) -> None:
    """Calls from a token kubespiffed verified before count for its pod from their start (64 at most);
    another pod's calls go on."""
    token = await _known_token(kube, patient, namespace, "greedy")
    other = await _known_token(kube, patient, namespace, "modest")
    before = await _refusals(patient, "calls_per_pod")
    reader, writer = await _h2_connection(patient)
    try:
        writer.write(_PREFACE + SettingsFrame(0).serialize() + SettingsFrame(0, flags=["ACK"]).serialize())
        for stream in range(1, 2 * 64, 2):  # 64 calls, none sends its request
            writer.write(_header_frames(_MINT, token, end_headers=True, stream=stream))
        await writer.drain()
        deadline = time.monotonic() + 3  # all started (grpc may start calls sent together in any order)
        while await _metric(patient, "kubespiffe_issuer_busiest_pod_calls") != 64:
            assert time.monotonic() < deadline, "the pod's 64 calls did not all start"
            await asyncio.sleep(0.05)
        writer.write(_header_frames(_MINT, token, end_headers=True, stream=129))
        await writer.drain()
        assert await _status_of(reader, Decoder(), 129) == _EXHAUSTED
        assert await _refusals(patient, "calls_per_pod") == before + 1
        assert _refusal_logged(patient, writer, "64 calls in flight for this pod")
        async with _channel(patient) as channel:
            assert await _mint_code(issuer_pb2_grpc.IssuerStub(channel), other) == grpc.StatusCode.OK
    finally:
        writer.transport.abort()  # at once: a TLS close() waits for the peer's close_notify


@pytest.mark.parametrize("size", [16 * 1024 + 1, 4 * 1024 * 1024 - 64], ids=["16KiB+1", "4MiB"])
async def test_a_request_over_16_kib_is_refused_from_its_length_prefix(
    kube: AsyncClient, kubespiffed: Running, namespace: str, stub: issuer_pb2_grpc.IssuerAsyncStub, size: int
) -> None:
    """grpc's default would buffer 4 MiB per call before kubespiffed sees it; 16 KiB is several times the
    largest legitimate request (tests/unit/test_callbounds.py). From a valid token: any other is refused
    before its request is read at all."""
    token = await _known_token(kube, kubespiffed, namespace, f"big-{size}")
    request = issuer_pb2.MintX509SVIDRequest(csr=b"\x30" * size)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.MintX509SVID(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in str(caught.value.details())


@pytest.fixture(scope="module")
async def patient(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running
) -> AsyncIterator[Running]:
    """A replica that keeps idle connections for the default 5 minutes, with a 2 s handshake timeout."""
    daemon = Kubespiffed(control_plane, extra_args=("--grpc-handshake-timeout=2s",))
    daemon.start(await service_account_token(kube))
    await asyncio.to_thread(daemon.wait_ready, kubespiffed.bundle_pem)
    yield Running(daemon, kubespiffed.bundle_pem)
    daemon.stop()


async def test_connection_that_never_acknowledges_settings_is_closed(patient: Running) -> None:
    """A header block of megabytes that never ends, on a connection that never acknowledges the server's
    SETTINGS, is dropped with the connection within the handshake timeout (2 s), not the idle one (5 min)."""
    reader, writer = await _h2_connection(patient)
    try:
        writer.write(_PREFACE + SettingsFrame(0).serialize())
        writer.write(_header_frames(_MINT, "A" * 1_000_000, end_headers=False))
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass
        assert time.monotonic() - started < 6
    finally:
        writer.transport.abort()  # at once: a TLS close() waits for the peer's close_notify


# Finding 8: kubespiffed's `create` on ConfigMaps cannot be limited by name in RBAC; the shipped
# ValidatingAdmissionPolicy limits it to the bundle ConfigMap.
async def test_kubespiffed_may_create_only_the_bundle_configmap(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    served = await kube._client._client.get("/apis/admissionregistration.k8s.io/v1")
    kinds = {r["kind"] for r in served.json()["resources"]}
    assert "ValidatingAdmissionPolicy" in kinds, "the API server serves VAP v1 (GA since 1.30)"
    token = await service_account_token(kube)
    as_kubespiffed = AsyncClient(KubeConfig.from_dict(yaml.safe_load(control_plane.token_kubeconfig(token))))
    try:
        refused: ApiError | None = None
        deadline = time.monotonic() + 15
        while refused is None:  # the policy takes effect once the API server has loaded the binding
            name = f"coredns-custom-{uuid.uuid4().hex[:4]}"
            try:
                await as_kubespiffed.create(ConfigMap(metadata=ObjectMeta(name=name, namespace=namespace)))
            except ApiError as exc:
                refused = exc
                break
            assert time.monotonic() < deadline, "kubespiffed created a ConfigMap of another name"
            await asyncio.sleep(0.5)
        assert refused.status.code in (403, 422), refused.status.message
        assert "kubespiffe-bundle" in (refused.status.message or "")
        other = f"bundle-{uuid.uuid4().hex[:6]}"
        await ensure_namespace(kube, other)
        await as_kubespiffed.create(ConfigMap(metadata=ObjectMeta(name="kubespiffe-bundle", namespace=other)))
        with pytest.raises(ApiError) as caught:
            await as_kubespiffed.create(
                ConfigMap(metadata=ObjectMeta(name="coredns-custom", namespace="kube-system"))
            )
        assert caught.value.status.code in (403, 422)
        # Only kubespiffed is constrained: the admin still creates any ConfigMap.
        await kube.create(ConfigMap(metadata=ObjectMeta(name="anything", namespace=namespace)))
    finally:
        await as_kubespiffed.close()


# Finding 9: federation: a slow peer delayed every other; a recreated FederatedTrustDomain kept the old
# one's schedule (no fetch for minutes); Events told the failure apart (a port-scan oracle).
_PEER_CA = create_self_signed_ca(
    TrustDomain("peer.test"), KeyType.EC_P256, dt.timedelta(days=1), dt.datetime.now(dt.UTC)
)


def _ftd(name: str, url: str) -> FederatedTrustDomain:
    return FederatedTrustDomain(
        metadata=ObjectMeta(name=name),
        spec={
            "trustDomain": f"{name}.test",
            "bundleEndpointURL": url,
            "bundleEndpointProfile": {
                "type": "https_spiffe",
                "endpointSPIFFEID": f"spiffe://{name}.test/kubespiffe/kubespiffed",
            },
            "trustDomainBundle": bundle_to_json(
                Bundle(TrustDomain(f"{name}.test"), (_PEER_CA.certificate,))
            ).decode(),
        },
    )


async def _fetch_outcome(kube: AsyncClient, name: str, uid: str, timeout: float) -> dict[str, Any]:
    """The Ready condition kubespiffed wrote after fetching object `uid` (waits up to `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        obj = (await kube.get(FederatedTrustDomain, name)).to_dict()
        assert obj["metadata"]["uid"] == uid
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Ready" and condition["reason"] in ("Fetched", "FetchFailed"):
                return dict(condition)
        assert time.monotonic() < deadline, f"{name} was not fetched within {timeout} s"
        await asyncio.sleep(0.2)


@pytest.fixture
async def silent_peer() -> AsyncIterator[str]:
    """A bundle endpoint that accepts connections and never answers (kubespiffed waits its 10 s timeout)."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    server.close()


async def test_federation_fetches_concurrently_and_a_recreated_peer_at_once(
    kube: AsyncClient, kubespiffed: Running, silent_peer: str
) -> None:
    names = [f"slow-{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:6]}"]
    try:
        await kube.create(_ftd(names[0], silent_peer))
        await asyncio.sleep(1.5)  # the slow fetch is under way
        created = await kube.create(_ftd(names[1], "https://127.0.0.1:1/"))
        failed = await _fetch_outcome(kube, names[1], created.metadata.uid, timeout=5)
        assert failed["reason"] == "FetchFailed"
        assert "127.0.0.1:1" in failed["message"], (
            "status keeps the reason for the FederatedTrustDomain's owner"
        )
        events = await wait_events(kube, "default", lambda e: e.involvedObject.name == names[1])
        assert events and all("127.0.0.1" not in (e.message or "") for e in events), "Event text is generic"
        assert all("refused" not in (e.message or "") for e in events)
        await kube.delete(FederatedTrustDomain, names[1])
        await asyncio.sleep(1)
        again = await kube.create(_ftd(names[1], "https://127.0.0.1:1/"))
        assert again.metadata.uid != created.metadata.uid
        assert (await _fetch_outcome(kube, names[1], again.metadata.uid, timeout=5))[
            "reason"
        ] == "FetchFailed"
    finally:
        for name in names:
            with contextlib.suppress(ApiError):
                await kube.delete(FederatedTrustDomain, name)
