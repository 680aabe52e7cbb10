"""Stand-in for the kubelet's part of pod certificates, for tests and benchmarks on kube-apiserver alone.

    node = await Node.ensure(plane, admin, "node-a")          # the Node object, and a client as that node
    key = make_key("ECDSAP256")
    pcr = await node.request(pod, key, signer="kubespiffe.io/svid")   # created as system:node:node-a
    status = await wait_decided(admin, pcr)                   # the status the signer wrote

Requests are created the way the kubelet creates them: authenticated as `system:node:<name>` (so the Node
authorizer and the NodeRestriction admission plugin check them against the Node, the Pod bound to it and
its ServiceAccount), with a real key and an empty PKCS#10 request signed by it (1.36), or the 1.35 form,
the bare PKIX key plus a proof of possession (the pod UID signed with the key).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node as NodeResource
from lightkube.resources.core_v1 import Pod, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole
from lightkube.types import PatchType

from kubespiffe.devenv import helm
from kubespiffe.devenv.controlplane import ControlPlane

PodCertificateRequest = create_namespaced_resource(
    "certificates.k8s.io", "v1beta1", "PodCertificateRequest", "podcertificaterequests"
)
PodKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KEY_TYPES = ("ECDSAP256", "ECDSAP384", "ECDSAP521", "ED25519", "RSA3072", "RSA4096")


async def grant_signer_rules(admin: AsyncClient, cluster_role: str = "kubespiffe:kubespiffed") -> None:
    """Add to the shipped ClusterRole the rules the chart renders with podCertificates.enabled (exactly as
    rendered), as a chart install with that value would grant them."""
    rendered = helm.template("--set", "podCertificates.enabled=true", "--show-only", "templates/rbac.yaml")
    roles = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ClusterRole"]
    rules = [r for r in roles[0]["rules"] if r["apiGroups"] == ["certificates.k8s.io"]]
    if not {"sign", "attest"} <= {v for r in rules for v in r["verbs"]}:
        raise RuntimeError(f"the chart's pod-certificate rules lack sign/attest: {rules}")
    role = await admin.get(ClusterRole, cluster_role)
    current = [r.to_dict() for r in role.rules or []]
    missing = [r for r in rules if r not in current]
    if missing:
        await admin.patch(
            ClusterRole, cluster_role, {"rules": [*current, *missing]}, patch_type=PatchType.MERGE
        )


def make_key(key_type: str) -> PodKey:
    """A key of one of the podCertificate projection's `keyType`s."""
    curves: dict[str, ec.EllipticCurve] = {
        "ECDSAP256": ec.SECP256R1(),
        "ECDSAP384": ec.SECP384R1(),
        "ECDSAP521": ec.SECP521R1(),
    }
    if key_type in curves:
        return ec.generate_private_key(curves[key_type])
    if key_type == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type in ("RSA3072", "RSA4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise ValueError(f"unknown key type {key_type}")


def stub_csr(key: PodKey) -> bytes:
    """The kubelet's empty PKCS#10 request (no subject, no extensions), DER."""
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, digest)
    return csr.public_bytes(serialization.Encoding.DER)


def proof_of_possession(key: PodKey, pod_uid: str) -> bytes:
    """The 1.35 proof: the pod UID's ASCII bytes signed (ECDSA ASN.1 / RSA-PSS over SHA-256, Ed25519)."""
    data = pod_uid.encode()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    # Go's rsa.SignPSS with nil options salts as long as the key allows; its verifier detects the length.
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    return key.sign(data, pss, hashes.SHA256())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Node:
    """A Node object and an API client authenticated as that node."""

    name: str
    uid: str
    client: AsyncClient

    @classmethod
    async def ensure(cls, plane: ControlPlane, admin: AsyncClient, name: str) -> Node:
        try:
            node = await admin.create(NodeResource(metadata=ObjectMeta(name=name)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            node = await admin.get(NodeResource, name)
        assert node.metadata is not None and node.metadata.uid
        config = KubeConfig.from_dict(
            yaml.safe_load(plane.client_kubeconfig(f"system:node:{name}", "system:nodes"))
        )
        return cls(name, node.metadata.uid, AsyncClient(config, field_manager="kubelet", trust_env=False))

    async def request(
        self,
        pod: Pod,
        service_account_uid: str,
        key: PodKey,
        *,
        signer: str,
        max_expiration_seconds: int | None = None,
        annotations: Mapping[str, str] | None = None,
        legacy: bool = False,
    ) -> Any:
        """Create a PodCertificateRequest for `pod` as this node; `legacy` sends the 1.35 form."""
        assert pod.metadata is not None and pod.spec is not None
        spec: dict[str, Any] = {
            "signerName": signer,
            "podName": pod.metadata.name,
            "podUID": pod.metadata.uid,
            "serviceAccountName": pod.spec.serviceAccountName,
            "serviceAccountUID": service_account_uid,
            "nodeName": self.name,
            "nodeUID": self.uid,
        }
        if max_expiration_seconds is not None:
            spec["maxExpirationSeconds"] = max_expiration_seconds
        if annotations:
            spec["unverifiedUserAnnotations"] = dict(annotations)
        if legacy:
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            spec["pkixPublicKey"] = _b64(public)
            spec["proofOfPossession"] = _b64(proof_of_possession(key, pod.metadata.uid or ""))
        else:
            spec["stubPKCS10Request"] = _b64(stub_csr(key))
        request = PodCertificateRequest(
            metadata=ObjectMeta(generateName=f"{pod.metadata.name}-", namespace=pod.metadata.namespace),
            spec=spec,
        )
        # NodeRestriction reads pods, nodes and ServiceAccounts from informers: right after they are created
        # it may not see them yet and answers 500 ("retries may succeed"), so retry as the kubelet does.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                return await self.client.create(request)
            except ApiError as exc:
                if exc.status.code != 500 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.client.close()


async def service_account_uid(admin: AsyncClient, namespace: str, name: str) -> str:
    account = await admin.get(ServiceAccount, name, namespace=namespace)
    assert account.metadata is not None and account.metadata.uid
    return str(account.metadata.uid)


def decision(obj: Any) -> str | None:
    """Issued, Denied or Failed once the signer has written the status, else None."""
    for condition in (obj.status or {}).get("conditions") or []:
        kind = str(condition.get("type"))
        if kind in ("Issued", "Denied", "Failed"):
            return kind
    return None


async def wait_decided(admin: AsyncClient, request: Any, timeout: float = 20.0) -> dict[str, Any]:
    """The request's status once it carries a terminal condition (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        current = await admin.get(
            PodCertificateRequest, request.metadata.name, namespace=request.metadata.namespace
        )
        if decision(current):
            status: dict[str, Any] = current.status
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{request.metadata.name} not decided after {timeout:.0f}s")
        await asyncio.sleep(0.1)
