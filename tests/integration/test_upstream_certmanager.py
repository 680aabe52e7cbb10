"""kubespiffed's intermediates from cert-manager (--upstream-cert-manager-issuer): cert-manager's own
controllers (CA issuer, approver, Issuer readiness) and CRDs against the tests' kube-apiserver."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from lightkube import AsyncClient
from lightkube.codecs import load_all_yaml
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from kubespiffe.agent.issuer_client import fetch_x509
from kubespiffe.authority.certmanager import LABELS, CertificateRequest
from kubespiffe.constants import SERVER_ID_PATH
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import NAMESPACE, Kubespiffed, authority_bundle_pem, service_account_token
from kubespiffe.spiffe.bundle import parse_pem_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import verify_chain

from .certmanager import CertManager, crd_paths
from .kubespiffed import Running, allow_secret, pod_with_token, register
from .upstream import authority_state, corp_ca, create_secret, grant_as_the_chart_does, rotate

pytestmark = pytest.mark.integration

TD = TrustDomain("example.org")
Issuer = create_namespaced_resource("cert-manager.io", "v1", "Issuer", "issuers")


@pytest.fixture
async def cert_manager(
    control_plane: ControlPlane, kube: AsyncClient, admin_kubeconfig: Path, kubespiffed: Running
) -> AsyncIterator[CertManager]:
    for path in await asyncio.to_thread(crd_paths):
        for obj in load_all_yaml(path.read_text()):
            await kube.apply(obj, field_manager="kubespiffe-tests", force=True)
            assert obj.metadata is not None and obj.metadata.name is not None
            await kube.wait(CustomResourceDefinition, obj.metadata.name, for_conditions=["Established"])
    log = control_plane.log_dir / "certmanager-controller.log"
    manager = await asyncio.to_thread(CertManager.start, admin_kubeconfig, NAMESPACE, log)
    yield manager
    manager.stop()


async def _ca_issuer(kube: AsyncClient, name: str, secret: str) -> None:
    """A cert-manager CA Issuer in kubespiffed's namespace, waited for until cert-manager says Ready."""
    await kube.create(
        Issuer(metadata=ObjectMeta(name=name, namespace=NAMESPACE), spec={"ca": {"secretName": secret}})
    )
    deadline = time.monotonic() + 60
    while True:
        status = (await kube.get(Issuer, name, namespace=NAMESPACE)).to_dict().get("status") or {}
        if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []):
            return
        assert time.monotonic() < deadline, f"Issuer {name} never Ready: {status}"
        await asyncio.sleep(0.5)


async def test_a_cert_manager_ca_issuer_signs_kubespiffeds_intermediates(
    control_plane: ControlPlane, kube: AsyncClient, namespace: str, cert_manager: CertManager
) -> None:
    suffix = uuid.uuid4().hex[:8]
    corp = corp_ca()
    root = corp.certificate
    issuer, issuer_secret, authority = f"corp-{suffix}", f"corp-issuer-{suffix}", f"cm-authority-{suffix}"
    await create_secret(kube, issuer_secret, corp.secret_data())
    await _ca_issuer(kube, issuer, issuer_secret)
    await allow_secret(kube, authority)
    await grant_as_the_chart_does(
        kube, f"kubespiffe:{issuer}", f"upstreamAuthority.certManagerIssuer=Issuer/{issuer}"
    )
    daemon = Kubespiffed(
        control_plane,
        extra_args=(
            f"--authority-secret={authority}",
            "--bundle-configmap=",
            f"--upstream-cert-manager-issuer=Issuer/{issuer}",
            "--bundle-refresh-hint=1s",
        ),
    )
    daemon.start(await service_account_token(kube))
    try:
        bundle_pem = await authority_bundle_pem(kube, secret=authority, timeout=90)
        assert parse_pem_certificates(bundle_pem) == [root]  # status.ca: the issuer's root, alone
        await asyncio.to_thread(daemon.wait_ready, bundle_pem)

        intermediate = (await authority_state(kube, authority)).active_x509().certificate
        assert intermediate.issuer == root.subject
        assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        san = intermediate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]

        await register(kube, "cm", {"serviceAccountNames": ["cm"]}, namespace)
        _, token = await pod_with_token(kube, namespace, "cm", "cm")
        server_id = SpiffeId(TD, SERVER_ID_PATH)
        first = await fetch_x509(daemon.address, token, [root], server_id=server_id)
        expected = SpiffeId(TD, f"/ns/{namespace}/sa/cm")
        assert first.svids[0].chain[1:] == (intermediate,) and first.bundle == (root,)
        assert verify_chain(list(first.svids[0].chain), {TD: [root]}, dt.datetime.now(dt.UTC)) == expected

        after = await rotate(kube, authority, timeout=90)
        renewed = after.active_x509().certificate
        assert renewed != intermediate and renewed.issuer == root.subject
        assert after.trust_bundle() == [root]
        deadline = time.monotonic() + 15
        while (second := await fetch_x509(daemon.address, token, [root], server_id=server_id)).svids[0].chain[
            1
        ] != renewed:
            assert time.monotonic() < deadline, "kubespiffed kept signing with the old intermediate"
            await asyncio.sleep(0.3)
        assert verify_chain(list(second.svids[0].chain), {TD: [root]}, dt.datetime.now(dt.UTC)) == expected
        # Every CertificateRequest kubespiffed made (start, rotation) was read and deleted.
        left = [r async for r in kube.list(CertificateRequest, namespace=NAMESPACE, labels=dict(LABELS))]
        assert left == []
    finally:
        daemon.stop()
