"""The CA survives restarts and is shared by replicas: real kubespiffed processes, one Secret."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import uuid

import pytest
from cryptography import x509
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from kubespiffe.agent.issuer_client import fetch_x509
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import NAMESPACE, Kubespiffed, authority_bundle_pem, service_account_token
from kubespiffe.spiffe.bundle import parse_pem_certificates

from .kubespiffed import Running, allow_secret, pod_with_token, register

pytestmark = pytest.mark.integration


async def _ca_of(kube: AsyncClient, secret: str) -> bytes:
    obj = await kube.get(Secret, secret, namespace=NAMESPACE)
    assert obj.data is not None
    return base64.b64decode(obj.data["ca.crt"])


async def test_restart_keeps_the_ca(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    """A second process with the same Secret (the shipped one) serves the same CA, and its SVIDs verify."""
    before = await _ca_of(kube, "kubespiffe-authority")
    assert parse_pem_certificates(before) == kubespiffed.bundle
    restarted = Kubespiffed(control_plane)
    restarted.start(await service_account_token(kube))
    try:
        await asyncio.to_thread(restarted.wait_ready, before)
        await register(kube, "restart", {"serviceAccountNames": ["restart"]}, namespace)
        _, token = await pod_with_token(kube, namespace, "restart", "restart")
        result = await fetch_x509(restarted.address, token, parse_pem_certificates(before))
        assert result.svids[0].chain[0].issuer == parse_pem_certificates(before)[0].subject
        assert result.bundle == tuple(parse_pem_certificates(before))
    finally:
        restarted.stop()
    assert await _ca_of(kube, "kubespiffe-authority") == before


async def test_two_replicas_started_together_share_one_ca(
    control_plane: ControlPlane, kube: AsyncClient
) -> None:
    """Two processes racing to create a new authority Secret end up with exactly one CA."""
    secret = f"race-{uuid.uuid4().hex[:8]}"
    await allow_secret(kube, secret)
    # Another authority in the same cluster: it must not overwrite the session's bundle ConfigMaps.
    args = (f"--authority-secret={secret}", "--bundle-configmap=")
    replicas = [Kubespiffed(control_plane, extra_args=args) for _ in range(2)]
    token = await service_account_token(kube)
    for replica in replicas:
        replica.start(token)
    try:
        bundle = await authority_bundle_pem(kube, secret=secret)
        await asyncio.gather(*(asyncio.to_thread(r.wait_ready, bundle) for r in replicas))
        served = []
        for replica in replicas:
            served.append(await asyncio.to_thread(_served_ca_issuer, replica))
        ca = x509.load_pem_x509_certificate(bundle)
        ca_key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert served == [ca_key_id, ca_key_id]
    finally:
        for replica in replicas:
            replica.stop()
    assert len(parse_pem_certificates(await _ca_of(kube, secret))) == 1


def _served_ca_issuer(daemon: Kubespiffed) -> bytes | None:
    """The authority key identifier of the certificate the replica serves: the CA it signs with."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    served = x509.load_der_x509_certificate(der)
    return served.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
