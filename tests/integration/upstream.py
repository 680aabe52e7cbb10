"""An operator's CA for the upstream authority tests: made with cryptography, stored as the Secret the docs
describe, and granted to kubespiffed with exactly the Role rules the chart renders for it."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from lightkube import AsyncClient
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from kubespiffe.authority.state import AuthorityState
from kubespiffe.constants import ROTATE_ANNOTATION
from kubespiffe.devenv import helm
from kubespiffe.devenv.stack import NAMESPACE, SERVICE_ACCOUNT


@dataclass(frozen=True)
class CorpCa:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def secret_data(self) -> dict[str, str]:
        """tls.crt and tls.key, base64 (a kubernetes.io/tls Secret's data)."""
        crt = self.certificate.public_bytes(Encoding.PEM)
        key = self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()}


def corp_ca(
    common_name: str = "Corp Root CA",
    *,
    ca: bool = True,
    lifetime: dt.timedelta = dt.timedelta(days=3650),
    start: dt.timedelta = dt.timedelta(days=-1),
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> CorpCa:
    """A self-signed root as an enterprise PKI makes one: no SPIFFE ID, key identifiers, digitalSignature."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + start + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical)
    return CorpCa(key, builder.sign(key, hashes.SHA256()))


async def create_secret(kube: AsyncClient, name: str, data: dict[str, str]) -> None:
    """kubernetes.io/tls when it has both keys (the API server requires them for that type), else Opaque."""
    kind = "kubernetes.io/tls" if {"tls.crt", "tls.key"} <= set(data) else "Opaque"
    await kube.create(Secret(metadata=ObjectMeta(name=name, namespace=NAMESPACE), type=kind, data=data))


async def grant_as_the_chart_does(kube: AsyncClient, name: str, *values: str) -> None:
    """The Role rules the chart adds for `values` (e.g. upstreamAuthority.secret=X), in a Role of their own
    bound to kubespiffed's ServiceAccount: the grant under test is the shipped one, nothing more."""

    def role_rules(*extra: str) -> list[dict[str, object]]:
        text = helm.template("--show-only", "templates/rbac.yaml", *extra)
        role = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Role")
        rules: list[dict[str, object]] = role["rules"]
        return rules

    defaults = role_rules()
    added = [r for r in role_rules(*[a for v in values for a in ("--set", v)]) if r not in defaults]
    assert added, f"the chart grants nothing for {values}"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "rules": added,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
    }
    for obj in (role, binding):
        await kube.apply(from_dict(obj), field_manager="kubespiffe-tests", force=True)


async def authority_state(kube: AsyncClient, secret: str) -> AuthorityState:
    obj = await kube.get(Secret, secret, namespace=NAMESPACE)
    return AuthorityState.from_secret_data(obj.data)


async def rotate(kube: AsyncClient, secret: str, timeout: float = 30.0) -> AuthorityState:
    """Ask for a rotation as `kubespiffe ca rotate` does and wait until the prepared slot is active."""
    before = await authority_state(kube, secret)
    await kube.patch(
        Secret,
        secret,
        Secret(metadata=ObjectMeta(annotations={ROTATE_ANNOTATION: "test"})),
        namespace=NAMESPACE,
        patch_type=PatchType.MERGE,
    )
    deadline = time.monotonic() + timeout
    while (after := await authority_state(kube, secret)).active.id == before.active.id:
        assert time.monotonic() < deadline, "the prepared intermediate never became active"
        await asyncio.sleep(0.5)
    return after
