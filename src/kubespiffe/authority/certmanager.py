"""Intermediates from a cert-manager issuer, through the `cert-manager.io/v1` CertificateRequest API.

    upstream = CertManagerUpstream(client, namespace, IssuerRef.parse("ClusterIssuer/corp-ca"))
    ca = await upstream.sign(trust_domain, key_type, ttl, now)   # creates, waits for Ready, deletes

kubespiffed makes the key (it never leaves kubespiffed), sends a CSR with the trust domain's URI SAN in a
CertificateRequest asking for `isCA: true` and the usages `cert sign`, `crl sign`, waits until the request
is Ready (cert-manager's approver and the issuer act on it), and reads `status.certificate` (the
intermediate, then any certificates above it) and `status.ca` (the issuer's CA: the anchor to publish).
The request is deleted once read, issued or not: the intermediate lives in the authority Secret, and
requests left behind would only pile up at every rotation. A request that is Denied, Failed, marked
InvalidRequest or not Ready within the timeout is an UpstreamError quoting cert-manager's reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta

from kubespiffe.authority.keys import KeyType, generate_key
from kubespiffe.authority.upstream import UpstreamError, check_chain, with_anchor
from kubespiffe.authority.x509ca import X509Authority, intermediate_csr
from kubespiffe.spiffe.bundle import BundleError, parse_pem_certificates
from kubespiffe.spiffe.spiffeid import TrustDomain

GROUP = "cert-manager.io"
CertificateRequest = create_namespaced_resource(GROUP, "v1", "CertificateRequest", "certificaterequests")
LABELS = {"app.kubernetes.io/name": "kubespiffe", "app.kubernetes.io/component": "upstream-authority"}
_TERMINAL = {"Denied": "True", "InvalidRequest": "True"}


@dataclass(frozen=True)
class IssuerRef:
    """`kind/name[/group]`: Issuer (in kubespiffed's namespace) or ClusterIssuer, or an external issuer."""

    kind: str
    name: str
    group: str = GROUP

    @classmethod
    def parse(cls, text: str) -> IssuerRef:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"{text!r} is not kind/name[/group] (e.g. ClusterIssuer/corp-ca)")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" + ("" if self.group == GROUP else f"/{self.group}")


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


class CertManagerUpstream:
    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        issuer: IssuerRef,
        timeout: float = 60.0,
        poll: float = 0.5,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._issuer = issuer
        self._timeout = timeout
        self._poll = poll

    def __str__(self) -> str:
        return f"cert-manager {self._issuer}"

    async def sign(
        self, trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
    ) -> X509Authority:
        key = generate_key(key_type)
        csr = intermediate_csr(key, trust_domain).public_bytes(Encoding.PEM)
        request = CertificateRequest(
            metadata=ObjectMeta(
                generateName="kubespiffe-intermediate-", namespace=self._namespace, labels=dict(LABELS)
            ),
            spec={
                "request": base64.b64encode(csr).decode(),
                "isCA": True,
                "duration": f"{int(ttl.total_seconds())}s",
                "usages": ["cert sign", "crl sign"],
                "issuerRef": {
                    "kind": self._issuer.kind,
                    "name": self._issuer.name,
                    "group": self._issuer.group,
                },
            },
        )
        try:
            created = await self._client.create(request)
        except ApiError as exc:
            raise UpstreamError(
                f"{self}: cannot create a CertificateRequest: {exc.status.code} {exc.status.message}"
            ) from None
        assert created.metadata is not None and created.metadata.name is not None
        name = created.metadata.name
        try:
            status = await self._wait(name)
        finally:
            # Nothing depends on the request once read; a failed delete leaves it for the operator.
            with contextlib.suppress(ApiError):
                await self._client.delete(CertificateRequest, name, namespace=self._namespace)
        where = f"{self} (CertificateRequest {self._namespace}/{name})"
        try:
            chain = parse_pem_certificates(base64.b64decode(status.get("certificate") or "", validate=True))
            roots = (
                parse_pem_certificates(base64.b64decode(status["ca"], validate=True))
                if status.get("ca")
                else []
            )
        except (binascii.Error, BundleError) as exc:
            raise UpstreamError(f"{where}: the issued certificates are not PEM: {exc}") from None
        if chain[0].public_key() != key.public_key():
            raise UpstreamError(f"{where}: the issued certificate is not for the key kubespiffed sent")
        chain = with_anchor(chain, roots, where)
        if len(chain) < 2:
            raise UpstreamError(f"{where}: the issuer returned no CA certificate (status.ca) to publish")
        check_chain(chain, dt.datetime.now(dt.UTC), where)
        return X509Authority(key, chain[0], tuple(chain[1:]))

    async def _wait(self, name: str) -> dict[str, Any]:
        """The request's status once Ready; an UpstreamError with cert-manager's reason otherwise."""
        deadline = time.monotonic() + self._timeout
        last = "no conditions yet"
        while True:
            try:
                obj = (await self._client.get(CertificateRequest, name, namespace=self._namespace)).to_dict()
            except ApiError as exc:
                raise UpstreamError(
                    f"{self}: CertificateRequest {name}: {exc.status.code} {exc.status.message}"
                ) from None
            conditions = _conditions(obj)
            ready = conditions.get("Ready", {})
            status: dict[str, Any] = obj.get("status") or {}
            if ready.get("status") == "True" and status.get("certificate"):
                return status
            for kind, value in _TERMINAL.items():
                if conditions.get(kind, {}).get("status") == value:
                    message = conditions[kind].get("message", "")
                    raise UpstreamError(f"{self}: CertificateRequest {name} is {kind}: {message}")
            if ready.get("status") == "False" and ready.get("reason") == "Failed":
                raise UpstreamError(f"{self}: CertificateRequest {name} failed: {ready.get('message', '')}")
            if ready:
                last = f"Ready={ready.get('status')} {ready.get('reason', '')}: {ready.get('message', '')}"
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"{self}: CertificateRequest {name} not Ready after {self._timeout:.0f}s ({last}); "
                    "is cert-manager running and the issuer Ready?"
                )
            await asyncio.sleep(self._poll)

    def adopts(self, authority: X509Authority) -> bool:
        """Any intermediate will do: which issuer signed it is known only by asking for a new one."""
        return bool(authority.above)
