"""kubespiffed against a real kube-apiserver: who gets an X.509-SVID, who is refused, and what is issued."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap, Pod

from kubespiffe.agent.issuer_client import NoIdentity, TokenRefused
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.workloads import pod_token
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.spiffe.bundle import certificates_to_pem
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import check_leaf, verify_chain

from .kubespiffed import Running, pod_with_token, register, unregister, wait_events

pytestmark = pytest.mark.integration

TD = TrustDomain("example.org")


def _san(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier), san.get_values_for_type(x509.DNSName)


async def test_registered_pod_gets_svid_with_exact_names_and_ttl(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    await register(
        kube,
        "web",
        {"serviceAccountNames": ["web"], "dnsNameTemplates": ["{podName}.{namespace}.svc"]},
        namespace,
    )
    _, token = await pod_with_token(kube, namespace, "web-1", "web")
    result = await kubespiffed.fetch(token)
    assert [str(s.spiffe_id) for s in result.svids] == [f"spiffe://example.org/ns/{namespace}/sa/web"]
    svid = result.svids[0]
    leaf = svid.chain[0]
    uris, dns = _san(leaf)
    assert uris == [f"spiffe://example.org/ns/{namespace}/sa/web"]
    assert dns == [f"web-1.{namespace}.svc"]
    assert check_leaf(leaf) == svid.spiffe_id
    now = dt.datetime.now(dt.UTC)
    assert verify_chain(list(svid.chain), {TD: list(result.bundle)}, now) == svid.spiffe_id
    lifetime = leaf.not_valid_after_utc - now
    assert dt.timedelta(minutes=58) < lifetime <= dt.timedelta(hours=1)
    assert leaf.public_key() == svid.private_key.public_key()
    assert result.bundle == tuple(kubespiffed.bundle)


async def test_registration_ttl_and_several_identities_in_stable_order(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    await register(kube, "first", {"serviceAccountNames": ["api"], "x509SVIDTTL": "10m"}, namespace)
    await register(
        kube,
        "second",
        {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace}/app/{label:app}", "hint": "app"},
        namespace,
    )
    _, token = await pod_with_token(kube, namespace, "api-1", "api", labels={"app": "billing"})
    result = await kubespiffed.fetch(token)
    assert [str(s.spiffe_id) for s in result.svids] == [
        f"spiffe://example.org/ns/{namespace}/sa/api",
        f"spiffe://example.org/ns/{namespace}/app/billing",
    ]
    assert [s.hint for s in result.svids] == ["", "app"]
    first_life = result.svids[0].chain[0].not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=8) < first_life <= dt.timedelta(minutes=10)
    only = await kubespiffed.fetch(token, spiffe_id=f"spiffe://example.org/ns/{namespace}/app/billing")
    assert [str(s.spiffe_id) for s in only.svids] == [f"spiffe://example.org/ns/{namespace}/app/billing"]
    with pytest.raises(NoIdentity, match="not granted"):
        await kubespiffed.fetch(token, spiffe_id=f"spiffe://example.org/ns/{namespace}/sa/other")


async def test_unregistered_pod_is_refused(kube: AsyncClient, kubespiffed: Running, namespace: str) -> None:
    _, token = await pod_with_token(kube, namespace, "lonely", "nobody")
    with pytest.raises(NoIdentity, match="no registration matches"):
        await kubespiffed.fetch(token)
    assert f"rejected pod=lonely namespace={namespace}" in kubespiffed.log.read_text()


async def test_registration_changes_apply_without_restart(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    _, token = await pod_with_token(kube, namespace, "late", "late")
    with pytest.raises(NoIdentity):
        await kubespiffed.fetch(token)
    await register(kube, "late", {"serviceAccountNames": ["late"]}, namespace)
    assert len((await kubespiffed.fetch(token)).svids) == 1
    await unregister(kube, "late", namespace)
    for _ in range(100):
        try:
            await kubespiffed.fetch(token)
        except NoIdentity:
            return
    pytest.fail("deleting the registration did not take effect")


async def test_token_of_deleted_pod_is_refused(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    await register(kube, "gone", {"serviceAccountNames": ["gone"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "gone", "gone")
    assert (await kubespiffed.fetch(token)).svids
    await kube.delete(Pod, "gone", namespace=namespace, grace_period=0)
    with pytest.raises(TokenRefused, match="no longer exists"):
        await kubespiffed.fetch(token)
    # Same name, new pod: the old token is bound to the old UID.
    await pod_with_token(kube, namespace, "gone", "gone")
    with pytest.raises(TokenRefused, match="was deleted"):
        await kubespiffed.fetch(token)


def _forge(control_plane: ControlPlane, claims: dict[str, object], **header: str) -> str:
    key = serialization.load_pem_private_key(control_plane.service_account_key.read_bytes(), None)
    return jwt.encode(claims, key, algorithm="RS256", headers=header)  # type: ignore[arg-type]


@pytest.fixture
async def bound_token(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> tuple[str, dict[str, object]]:
    """A valid token of a registered pod, and its claims, to derive bad tokens from."""
    await register(kube, "victim", {"serviceAccountNames": ["victim"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "victim", "victim")
    assert (await kubespiffed.fetch(token)).svids
    return token, jwt.decode(token, options={"verify_signature": False})


def _resign(control_plane: ControlPlane, token: str, **changes: object) -> str:
    claims = {**jwt.decode(token, options={"verify_signature": False}), **changes}
    return _forge(control_plane, claims, kid=jwt.get_unverified_header(token)["kid"])


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other_key", "signature does not verify"),
        ("unknown_kid", "not in the cluster JWKS"),
        ("expired", "expired"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("alg_none", "algorithm 'none'"),
        ("hs256", "algorithm 'HS256'"),
        ("truncated", "well-formed|signature"),
        ("oversized", "larger than"),
        ("empty", "no token"),
        ("garbage", "not a well-formed JWT"),
        ("not_pod_bound", "not bound to a pod"),
    ],
)
async def test_bad_tokens_are_refused(
    control_plane: ControlPlane,
    kubespiffed: Running,
    bound_token: tuple[str, dict[str, object]],
    case: str,
    reason: str,
) -> None:
    token, claims = bound_token
    kid = jwt.get_unverified_header(token)["kid"]
    now = int(dt.datetime.now(dt.UTC).timestamp())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    makers: dict[str, Callable[[], str]] = {
        "other_key": lambda: jwt.encode(claims, other, algorithm="RS256", headers={"kid": kid}),
        "unknown_kid": lambda: jwt.encode(claims, other, algorithm="RS256", headers={"kid": "forged"}),
        "expired": lambda: _resign(control_plane, token, exp=now - 60, iat=now - 700, nbf=now - 700),
        "wrong_audience": lambda: _resign(control_plane, token, aud=["not-kubespiffe"]),
        "wrong_issuer": lambda: _resign(control_plane, token, iss="https://evil.example"),
        "alg_none": lambda: jwt.encode(claims, cast(Any, None), algorithm="none", headers={"kid": kid}),
        "hs256": lambda: jwt.encode(
            claims,
            control_plane.service_account_key.read_bytes()[:64],
            algorithm="HS256",
            headers={"kid": kid},
        ),
        "truncated": lambda: token[: len(token) - 20],
        "oversized": lambda: token + "A" * 5500,
        "empty": lambda: "",
        "garbage": lambda: "not.a.jwt",
        "not_pod_bound": lambda: _resign(
            control_plane,
            token,
            **{"kubernetes.io": {**claims["kubernetes.io"], "pod": None}},  # type: ignore[dict-item]
        ),
    }
    bad = makers[case]()
    with pytest.raises(TokenRefused, match=reason):
        await kubespiffed.fetch(bad)
    log = kubespiffed.log.read_text()
    assert token not in log
    assert not bad or bad not in log


async def test_token_for_another_audience_from_the_api_server_is_refused(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    await register(kube, "aud", {"serviceAccountNames": ["aud"]}, namespace)
    pod, _ = await pod_with_token(kube, namespace, "aud", "aud")
    with pytest.raises(TokenRefused, match="audience"):
        await kubespiffed.fetch(await pod_token(kube, pod, audience="vault"))


async def _mint(kubespiffed: Running, token: str, csr: bytes) -> issuer_pb2.MintX509SVIDResponse:
    credentials = grpc.ssl_channel_credentials(certificates_to_pem(kubespiffed.bundle))
    options = [("grpc.ssl_target_name_override", "kubespiffed")]
    async with grpc.aio.secure_channel(kubespiffed.address, credentials, options=options) as channel:
        response: issuer_pb2.MintX509SVIDResponse = await issuer_pb2_grpc.IssuerStub(channel).MintX509SVID(
            issuer_pb2.MintX509SVIDRequest(csr=csr), metadata=(("authorization", f"Bearer {token}"),)
        )
        return response


async def test_csr_with_bad_signature_is_refused(
    kubespiffed: Running, bound_token: tuple[str, dict[str, object]]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )
    der[-5] ^= 0xFF
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _mint(kubespiffed, bound_token[0], bytes(der))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _mint(kubespiffed, bound_token[0], b"garbage")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_csr_asking_for_ca_rights_and_names_gets_a_plain_leaf(
    kubespiffed: Running, bound_token: tuple[str, dict[str, object]]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubespiffed")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("kubespiffed"),
                    x509.UniformResourceIdentifier("spiffe://example.org/kubespiffe/kubespiffed"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    response = await _mint(kubespiffed, bound_token[0], csr.public_bytes(Encoding.DER))
    leaf = x509.load_der_x509_certificate(response.svids[0].cert_chain[0])
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    uris, dns = _san(leaf)
    assert uris == [response.svids[0].spiffe_id]
    assert "kubespiffe" not in uris[0]
    assert dns == []
    assert check_leaf(leaf) == SpiffeId.parse(response.svids[0].spiffe_id)


async def test_tenancy_violation_is_not_ready_and_grants_nothing(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    condition = await register(
        kube,
        "escape",
        {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/kube-system/sa/admin"},
        namespace,
        ready=False,
    )
    assert condition["reason"] == "TenancyViolation"
    assert "kube-system" in condition["message"] or namespace in condition["message"]
    _, token = await pod_with_token(kube, namespace, "escaper", "default")
    with pytest.raises(NoIdentity):
        await kubespiffed.fetch(token)
    warnings = await wait_events(
        kube, namespace, lambda e: e.involvedObject.name == "escape" and e.reason == "TenancyViolation"
    )
    assert warnings and warnings[0].type == "Warning", "the refusal is visible with kubectl describe"


async def test_reserved_path_is_refused_even_for_cluster_registrations(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    name = f"reserved-{uuid.uuid4().hex[:6]}"
    await register(
        kube,
        name,
        {
            "spiffeIDTemplate": "spiffe://{trustDomain}/kubespiffe/kubespiffed",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        },
        ready=False,
    )
    _, token = await pod_with_token(kube, namespace, "impostor", "impostor")
    with pytest.raises(NoIdentity):
        await kubespiffed.fetch(token)
    await unregister(kube, name)


async def test_cluster_registration_selects_by_namespace_labels(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    await register(
        kube,
        name,
        {
            "spiffeIDTemplate": "spiffe://{trustDomain}/cluster/{namespace}/{podName}",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]},
        },
    )
    try:
        _, token = await pod_with_token(kube, namespace, "db-0", "db", labels={"tier": "db"})
        result = await kubespiffed.fetch(token)
        assert [str(s.spiffe_id) for s in result.svids] == [f"spiffe://example.org/cluster/{namespace}/db-0"]
        _, other = await pod_with_token(kube, namespace, "web-0", "db", labels={"tier": "web"})
        with pytest.raises(NoIdentity):
            await kubespiffed.fetch(other)
    finally:
        await unregister(kube, name)


async def test_no_token_material_is_logged(
    kubespiffed: Running, bound_token: tuple[str, dict[str, object]]
) -> None:
    log = kubespiffed.log.read_text()
    assert bound_token[0] not in log
    assert bound_token[0].split(".")[2] not in log
    assert "PRIVATE KEY" not in log
    assert f"attested pod=victim namespace={bound_token[1]['kubernetes.io']['namespace']}" in log  # type: ignore[index]


async def test_oversized_token_is_refused_before_it_is_parsed(
    kubespiffed: Running, bound_token: tuple[str, dict[str, object]]
) -> None:
    """A valid token with 6 KB appended: refused on its size (MAX_TOKEN_BYTES), nothing decoded or issued.

    (Metadata past 16 KiB is refused before any of this: tests/integration/test_hardening.py.)"""
    with pytest.raises(TokenRefused, match="larger than 6144 bytes"):
        await kubespiffed.fetch(bound_token[0] + "A" * 6000)


async def test_trust_bundle_is_published_to_every_namespace(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    """Pods mount ConfigMap kubespiffe-bundle as the agent's bootstrap trust; new namespaces get it too."""
    deadline = time.monotonic() + 15
    while True:
        try:
            config_map = await kube.get(ConfigMap, "kubespiffe-bundle", namespace=namespace)
            break
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            assert time.monotonic() < deadline, "the bundle ConfigMap never appeared in a new namespace"
            await asyncio.sleep(0.2)
    assert config_map.data is not None
    assert config_map.data["ca.crt"].encode() == kubespiffed.bundle_pem
    assert json.loads(config_map.data["bundle.spiffe.json"])["keys"]
