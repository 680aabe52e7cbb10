"""kubespiffed as a PodCertificateRequest signer, against kube-apiserver alone.

Requests are created as the node (`system:node:<name>`, through the Node authorizer and NodeRestriction),
with real keys and the kubelet's stub CSR or the 1.35 key + proof of possession; kube-apiserver validates
every status kubespiffed writes. Two kubespiffed replicas share one authority (and Lease) under the shipped
RBAC plus the rules the chart renders with `podCertificates.enabled`.

Refusals about the pod itself (deleted, recreated, ServiceAccount recreated) cannot be created as the node
(NodeRestriction checks them at creation), so those requests are created before the signers start and the
world is changed under them: what the signer sees is a request whose pod has changed since.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.certificates_v1beta1 import ClusterTrustBundle
from lightkube.resources.core_v1 import Event, Pod, Secret, ServiceAccount
from lightkube.types import PatchType

from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.constants import ROTATE_ANNOTATION
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.podcerts import (
    Node,
    PodKey,
    grant_signer_rules,
    make_key,
    service_account_uid,
    wait_decided,
)
from kubespiffe.devenv.stack import (
    NAMESPACE,
    Kubespiffed,
    authority_bundle_pem,
    install,
    service_account_token,
)
from kubespiffe.devenv.workloads import create_pod, ensure_namespace
from kubespiffe.kube.client import FederatedTrustDomain
from kubespiffe.registry.podcert import SPIFFE_ID_ANNOTATION
from kubespiffe.server.podcert import missing_apis
from kubespiffe.spiffe.bundle import certificates_to_pem, parse_pem_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import half_life, verify_chain

from .kubespiffed import allow_secret, register

pytestmark = pytest.mark.integration

SIGNER = "kubespiffe.io/svid"  # the chart's default, which its RBAC rules name
SECRET = "podcert-authority"
TD = TrustDomain("example.org")
NODE = "podcert-node"
OWN_BUNDLE = f"kubespiffe.io:svid:{TD.name}"
STALE = {"stale": "true"}


@dataclass
class Cluster:
    kube: AsyncClient
    node: Node
    namespace: str
    daemons: list[Kubespiffed]
    stale: dict[str, Any]

    async def pod(self, name: str, service_account: str = "default", **labels: str) -> tuple[Pod, str]:
        pod = await create_pod(
            self.kube, self.namespace, name, service_account, labels=labels, node_name=NODE
        )
        return pod, await service_account_uid(self.kube, self.namespace, service_account)

    async def ask(self, pod: Pod, sa_uid: str, key: PodKey | None = None, **kwargs: Any) -> dict[str, Any]:
        request = await self.node.request(pod, sa_uid, key or make_key("ECDSAP256"), signer=SIGNER, **kwargs)
        return await wait_decided(self.kube, request)

    async def bundle(self) -> list[x509.Certificate]:
        return parse_pem_certificates(await authority_bundle_pem(self.kube, SECRET))

    def logs(self) -> str:
        return "".join(d.log.read_text() for d in self.daemons)


async def _stale_requests(kube: AsyncClient, node: Node, namespace: str) -> dict[str, Any]:
    """Requests whose pod changes after creation (before any signer runs); the pods are registered, so the
    only reason to refuse them is the change."""
    await register(kube, "stale", {"podSelector": {"matchLabels": {"stale": "true"}}}, namespace, ready=None)
    requests: dict[str, Any] = {}
    for name, account in (("gone", "default"), ("recreated", "default"), ("new-account", "renamed")):
        pod = await create_pod(kube, namespace, name, account, labels=STALE, node_name=NODE)
        uid = await service_account_uid(kube, namespace, account)
        requests[name] = await node.request(pod, uid, make_key("ECDSAP256"), signer=SIGNER)
    await kube.delete(Pod, "gone", namespace=namespace, grace_period=0)
    await kube.delete(Pod, "recreated", namespace=namespace, grace_period=0)
    while True:  # a pod deleted with grace 0 is gone at once; wait for it anyway before reusing the name
        try:
            await kube.get(Pod, "recreated", namespace=namespace)
        except ApiError:
            break
        await asyncio.sleep(0.1)
    await create_pod(kube, namespace, "recreated", "default", labels=STALE, node_name=NODE)
    await kube.delete(ServiceAccount, "renamed", namespace=namespace)
    await kube.create(ServiceAccount(metadata=ObjectMeta(name="renamed", namespace=namespace)))
    return requests


@pytest.fixture(scope="module")
async def cluster(control_plane: ControlPlane, kube: AsyncClient) -> AsyncIterator[Cluster]:
    await install(kube)
    await allow_secret(kube, SECRET)
    await grant_signer_rules(kube)
    node = await Node.ensure(control_plane, kube, NODE)
    namespace = f"pc-{uuid.uuid4().hex[:8]}"
    await ensure_namespace(kube, namespace)
    stale = await _stale_requests(kube, node, namespace)
    daemons = [
        Kubespiffed(
            control_plane,
            extra_args=(
                f"--authority-secret={SECRET}",
                f"--pod-certificate-signer={SIGNER}",
                "--bundle-endpoint-port=0",
                "--bundle-configmap=",
            ),
        )
        for _ in range(2)
    ]
    token = await service_account_token(kube)
    daemons[0].start(token)
    bundle = await authority_bundle_pem(kube, SECRET)  # the first replica creates the authority
    daemons[1].start(token)
    await asyncio.gather(*(asyncio.to_thread(d.wait_ready, bundle) for d in daemons))
    yield Cluster(kube, node, namespace, daemons, stale)
    for daemon in daemons:
        daemon.stop()
    await node.close()


def _condition(status: dict[str, Any]) -> dict[str, Any]:
    conditions = status["conditions"]
    assert len(conditions) == 1, conditions
    assert conditions[0]["status"] == "True"
    return dict(conditions[0])


def _denied(status: dict[str, Any], reason: str, *needles: str) -> str:
    condition = _condition(status)
    assert (condition["type"], condition["reason"]) == ("Denied", reason), condition
    assert "certificateChain" not in status
    for needle in needles:
        assert needle in condition["message"], condition["message"]
    return str(condition["message"])


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _issued(status: dict[str, Any], bundle: list[x509.Certificate], key: PodKey) -> x509.Certificate:
    """The leaf, after checking it is an X.509-SVID for `key` under the bundle and the times match it."""
    assert _condition(status)["type"] == "Issued"
    chain = parse_pem_certificates(status["certificateChain"].encode())
    leaf = chain[0]
    verify_chain(chain, {TD: bundle}, dt.datetime.now(dt.UTC))
    spki = PublicFormat.SubjectPublicKeyInfo
    assert leaf.public_key().public_bytes(Encoding.DER, spki) == key.public_key().public_bytes(
        Encoding.DER, spki
    )
    assert _time(status["notBefore"]) == leaf.not_valid_before_utc
    assert _time(status["notAfter"]) == leaf.not_valid_after_utc
    refresh = half_life(leaf.not_valid_before_utc, leaf.not_valid_after_utc)
    assert abs(_time(status["beginRefreshAt"]) - refresh) <= dt.timedelta(seconds=1)
    return leaf


def _uris(leaf: x509.Certificate) -> list[str]:
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


async def test_registered_pod_gets_exactly_its_svid(cluster: Cluster) -> None:
    await register(
        cluster.kube,
        "web",
        {"serviceAccountNames": ["web"], "dnsNameTemplates": ["{podName}.{namespace}.svc"]},
        cluster.namespace,
        ready=None,
    )
    pod, sa_uid = await cluster.pod("web-1", "web")
    key = make_key("ECDSAP256")
    status = await cluster.ask(pod, sa_uid, key)
    leaf = _issued(status, await cluster.bundle(), key)
    wanted = SpiffeId.parse(f"spiffe://example.org/ns/{cluster.namespace}/sa/web")
    assert verify_chain([leaf], {TD: await cluster.bundle()}, dt.datetime.now(dt.UTC)) == wanted
    assert _uris(leaf) == [str(wanted)]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"web-1.{cluster.namespace}.svc"]
    # The default X.509 TTL (1 h) is the API's minimum; the leaf starts 30 s early.
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=1, seconds=30)


async def test_lifetime_is_raised_to_one_hour_and_capped_by_max_expiration(cluster: Cluster) -> None:
    await register(
        cluster.kube,
        "short",
        {"serviceAccountNames": ["short"], "x509SVIDTTL": "10m"},
        cluster.namespace,
        ready=None,
    )
    await register(
        cluster.kube,
        "long",
        {"serviceAccountNames": ["long"], "x509SVIDTTL": "48h"},
        cluster.namespace,
        ready=None,
    )
    bundle = await cluster.bundle()
    pod, sa_uid = await cluster.pod("short-1", "short")
    key = make_key("RSA3072")
    leaf = _issued(await cluster.ask(pod, sa_uid, key, legacy=True), bundle, key)  # the 1.35 form
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=1, seconds=30)
    pod, sa_uid = await cluster.pod("long-1", "long")
    key = make_key("ECDSAP384")
    leaf = _issued(await cluster.ask(pod, sa_uid, key, max_expiration_seconds=7200), bundle, key)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(seconds=7200)


async def test_deleted_pod_is_denied(cluster: Cluster) -> None:
    status = await wait_decided(cluster.kube, cluster.stale["gone"])
    _denied(status, "PodNotFound", "gone", "does not exist")

    async def warned() -> None:
        events = [e async for e in cluster.kube.list(Event, namespace=cluster.namespace)]
        assert any(
            e.involvedObject.kind == "PodCertificateRequest" and e.reason == "PodCertificateDenied"
            for e in events
        ), "with no pod, the Warning goes on the request"

    await _eventually(warned)


async def test_recreated_pod_uid_mismatch_is_denied(cluster: Cluster) -> None:
    status = await wait_decided(cluster.kube, cluster.stale["recreated"])
    _denied(status, "PodMismatch", "UID", cluster.stale["recreated"].spec["podUID"])


async def test_recreated_service_account_is_denied(cluster: Cluster) -> None:
    status = await wait_decided(cluster.kube, cluster.stale["new-account"])
    _denied(
        status,
        "PodMismatch",
        "ServiceAccount",
        "renamed",
        cluster.stale["new-account"].spec["serviceAccountUID"],
    )


async def test_unregistered_pod_is_denied_with_a_warning_on_the_pod(cluster: Cluster) -> None:
    namespace = f"pc-{uuid.uuid4().hex[:8]}"
    await ensure_namespace(cluster.kube, namespace)
    pod = await create_pod(cluster.kube, namespace, "nobody-1", "nobody-sa", node_name=NODE)
    sa_uid = await service_account_uid(cluster.kube, namespace, "nobody-sa")
    status = await cluster.ask(pod, sa_uid)
    _denied(status, "NotRegistered", f"{namespace}/nobody-1")

    async def warned() -> None:
        events = [e async for e in cluster.kube.list(Event, namespace=namespace)]
        warnings = [e for e in events if e.involvedObject.name == "nobody-1"]
        assert [(e.type, e.reason, e.involvedObject.kind) for e in warnings] == [
            ("Warning", "PodCertificateDenied", "Pod")
        ]

    await _eventually(warned)


async def test_several_identities_need_a_choice(cluster: Cluster) -> None:
    namespace = f"pc-{uuid.uuid4().hex[:8]}"
    await ensure_namespace(cluster.kube, namespace)
    await register(cluster.kube, "by-sa", {"serviceAccountNames": ["api"]}, namespace, ready=None)
    await register(
        cluster.kube,
        "by-label",
        {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace}/app/{label:app}"},
        namespace,
        ready=None,
    )
    by_sa, by_label = (f"spiffe://example.org/ns/{namespace}/{p}" for p in ("sa/api", "app/api"))
    pod = await create_pod(cluster.kube, namespace, "api-1", "api", labels={"app": "api"}, node_name=NODE)
    sa_uid = await service_account_uid(cluster.kube, namespace, "api")
    _denied(await cluster.ask(pod, sa_uid), "IdentityNotChosen", by_sa, by_label, SPIFFE_ID_ANNOTATION)
    key = make_key("ECDSAP256")
    status = await cluster.ask(pod, sa_uid, key, annotations={SPIFFE_ID_ANNOTATION: by_label})
    assert _uris(_issued(status, await cluster.bundle(), key)) == [by_label]
    other = f"spiffe://example.org/ns/{namespace}/sa/admin"
    _denied(
        await cluster.ask(pod, sa_uid, annotations={SPIFFE_ID_ANNOTATION: other}), "IdentityNotGranted", other
    )
    _denied(
        await cluster.ask(pod, sa_uid, annotations={"example.com/colour": "blue"}),
        "InvalidUnverifiedUserAnnotations",
        "example.com/colour",
    )


@pytest.mark.parametrize("key_type", ["ED25519", "ECDSAP521"])
async def test_key_types_the_ca_does_not_certify_are_denied(cluster: Cluster, key_type: str) -> None:
    name = f"keys-{key_type.lower()}"
    await register(cluster.kube, name, {"serviceAccountNames": [name]}, cluster.namespace, ready=None)
    pod, sa_uid = await cluster.pod(name, name)
    status = await cluster.ask(pod, sa_uid, make_key(key_type))
    _denied(status, "UnsupportedKeyType", "ECDSAP256")


async def test_tenancy_violation_is_denied(cluster: Cluster) -> None:
    namespace = f"pc-{uuid.uuid4().hex[:8]}"
    await ensure_namespace(cluster.kube, namespace)
    await register(
        cluster.kube,
        "escape",
        {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/kube-system/sa/admin"},
        namespace,
        ready=None,
    )
    pod = await create_pod(cluster.kube, namespace, "escaper", "default", node_name=NODE)
    sa_uid = await service_account_uid(cluster.kube, namespace, "default")
    _denied(await cluster.ask(pod, sa_uid), "NotRegistered", "escape", "TenancyViolation")


async def test_two_replicas_never_double_sign(cluster: Cluster) -> None:
    namespace = f"pc-{uuid.uuid4().hex[:8]}"
    await ensure_namespace(cluster.kube, namespace)
    await register(cluster.kube, "burst", {"podSelector": {}}, namespace, ready=None)
    requests = []
    for i in range(30):
        pod = await create_pod(cluster.kube, namespace, f"burst-{i}", "default", node_name=NODE)
        sa_uid = await service_account_uid(cluster.kube, namespace, "default")
        requests.append(await cluster.node.request(pod, sa_uid, make_key("ECDSAP256"), signer=SIGNER))
    statuses = await asyncio.gather(*(wait_decided(cluster.kube, r) for r in requests))
    assert {_condition(s)["type"] for s in statuses} == {"Issued"}
    logs = cluster.logs()
    for request in requests:
        name = f"{namespace}/{request.metadata.name}"
        lines = [line for line in logs.splitlines() if f"pcr={name} " in line]
        assert len(lines) == 1 and " issued " in lines[0], lines


async def _own_bundle(kube: AsyncClient) -> list[x509.Certificate]:
    obj = await kube.get(ClusterTrustBundle, OWN_BUNDLE)
    assert obj.spec.signerName == SIGNER
    assert (obj.metadata.labels or {})["kubespiffe.io/trust-domain"] == TD.name
    return parse_pem_certificates(obj.spec.trustBundle.encode())


async def _eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, ApiError):
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.2)


async def test_cluster_trust_bundle_is_the_bundle_across_rotation(cluster: Cluster) -> None:
    async def equal() -> list[x509.Certificate]:
        bundle = await cluster.bundle()
        assert await _own_bundle(cluster.kube) == bundle
        return bundle

    before = await _eventually(equal)
    await cluster.kube.patch(
        Secret,
        SECRET,
        {"metadata": {"annotations": {ROTATE_ANNOTATION: "test"}}},
        namespace=NAMESPACE,
        patch_type=PatchType.MERGE,
    )

    async def rotated() -> None:
        after = await equal()
        assert len(after) == len(before) + 1, "the prepared CA is published before it signs"

    await _eventually(rotated)


async def test_federated_trust_domain_has_its_own_labelled_bundle(cluster: Cluster) -> None:
    partner = TrustDomain(f"partner-{uuid.uuid4().hex[:6]}.example")
    ca = create_self_signed_ca(partner, KeyType.EC_P256, dt.timedelta(days=1), dt.datetime.now(dt.UTC))
    name = f"kubespiffe.io:svid:{partner.name}"
    ftd = FederatedTrustDomain(
        metadata=ObjectMeta(name=partner.name),
        spec={
            "trustDomain": partner.name,
            "bundleEndpointURL": "https://192.0.2.1/",  # never reached: not an allowed network
            "bundleEndpointProfile": {"type": "https_web"},
            "trustDomainBundle": certificates_to_pem([ca.certificate]).decode(),
        },
    )
    await cluster.kube.create(ftd)

    async def published() -> None:
        obj = await cluster.kube.get(ClusterTrustBundle, name)
        assert obj.spec.signerName == SIGNER
        assert (obj.metadata.labels or {})["kubespiffe.io/trust-domain"] == partner.name
        assert parse_pem_certificates(obj.spec.trustBundle.encode()) == [ca.certificate]
        selected = [
            o.metadata.name
            async for o in cluster.kube.list(
                ClusterTrustBundle, labels={"kubespiffe.io/trust-domain": partner.name}
            )
        ]
        assert selected == [name]

    await _eventually(published)
    await cluster.kube.delete(FederatedTrustDomain, partner.name)

    async def removed() -> None:
        names = [o.metadata.name async for o in cluster.kube.list(ClusterTrustBundle)]
        assert name not in names and OWN_BUNDLE in names, names  # the own bundle stays

    await _eventually(removed)


async def test_readyz_says_it_signs(cluster: Cluster) -> None:
    bundle = await authority_bundle_pem(cluster.kube, SECRET)
    context = ssl.create_default_context(cadata=bundle.decode())
    context.check_hostname = False
    url = f"https://127.0.0.1:{cluster.daemons[0].health_port}/readyz"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5, context=context).read())
    assert body == f"ok\npod-certificates: signer {SIGNER}\n".encode()
    assert re.search(rf"signing PodCertificateRequests for {re.escape(SIGNER)}", cluster.logs())


async def test_detection_says_what_is_missing(control_plane: ControlPlane, kube: AsyncClient) -> None:
    assert await missing_apis(kube) is None
    config = KubeConfig.from_dict(yaml.safe_load(control_plane.client_kubeconfig("podcert-nobody")))
    nobody = AsyncClient(config, trust_env=False)
    try:
        missing = await missing_apis(nobody)
    finally:
        await nobody.close()
    assert missing is not None and "may not list podcertificaterequests" in missing
