"""OIDC discovery on a local cluster: a throwaway web PKI for the issuer's host, its TLS Secret, and the one
RBAC rule the chart adds with `oidc.enabled` (get on that Secret).

    oidc = await enable_oidc(client, port)            # before kubespiffed starts
    daemon.extra_args += oidc.args()                  # --oidc-port, --oidc-issuer, --oidc-tls-secret
    oidc.write(directory)                             # DIR/oidc-issuer and DIR/oidc-ca.pem
    ensure_oidcverify()                               # tools/oidcverify (go-oidc), built once, cached

The issuer is `https://localhost:<port>`: on loopback, with a certificate from a CA made here, so anyone can
point an OIDC library at it (trusting oidc-ca.pem) the way a cloud points at a public issuer.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule
from lightkube.resources.core_v1 import Secret
from lightkube.resources.rbac_authorization_v1 import Role

from kubespiffe.devenv.build import ensure_tool
from kubespiffe.devenv.pki import ClusterCA
from kubespiffe.devenv.stack import NAMESPACE

TLS_SECRET = "kubespiffe-oidc-tls"  # noqa: S105 (a Secret name)
ROLE = "kubespiffe:kubespiffed"


@dataclass(frozen=True)
class OidcSetup:
    issuer: str
    ca_pem: bytes
    port: int
    secret: str

    def args(self) -> tuple[str, ...]:
        return (
            f"--oidc-port={self.port}",
            f"--oidc-issuer={self.issuer}",
            f"--oidc-tls-secret={self.secret}",
        )

    def write(self, directory: Path) -> None:
        (directory / "oidc-issuer").write_text(self.issuer + "\n")
        (directory / "oidc-ca.pem").write_bytes(self.ca_pem)


async def enable_oidc(
    client: AsyncClient, port: int, secret: str = TLS_SECRET, host: str = "localhost", path: str = ""
) -> OidcSetup:
    """Create (or replace) the TLS Secret for `host` and let kubespiffed's Role read it; the issuer is
    `https://<host>:<port><path>`."""
    ca = ClusterCA()
    pair = ca.issue(host, server_names=(host,), server_ips=("127.0.0.1",))
    tls = Secret(
        metadata=ObjectMeta(name=secret, namespace=NAMESPACE),
        type="kubernetes.io/tls",
        data={
            "tls.crt": base64.b64encode(pair.cert_pem).decode(),
            "tls.key": base64.b64encode(pair.key_pem).decode(),
        },
    )
    await client.apply(tls, field_manager="kubespiffe-devenv", force=True)
    await grant_get(client, secret)
    return OidcSetup(f"https://{host}:{port}{path}", ca.cert_pem, port, secret)


async def grant_get(client: AsyncClient, secret: str) -> None:
    """Add the chart's `oidc.enabled` rule to the shipped Role (retried if another writer came first)."""
    rule = PolicyRule(apiGroups=[""], resources=["secrets"], resourceNames=[secret], verbs=["get"])
    for _ in range(5):
        role = await client.get(Role, ROLE, namespace=NAMESPACE)
        if rule in (role.rules or []):
            return
        role.rules = [*(role.rules or []), rule]
        try:
            await client.replace(role)
            return
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    raise RuntimeError(f"could not add get on Secret {secret} to Role {ROLE}: it kept changing")


def ensure_oidcverify() -> Path:
    """tools/oidcverify (go-oidc, an independent OIDC verifier)."""
    return ensure_tool("oidcverify", "oidcverify")
