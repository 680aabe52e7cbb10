"""The trust bundles as ClusterTrustBundles linked to the pod-certificate signer, for `clusterTrustBundle`
projections: one per trust domain, this one's and each federated one's.

    ClusterTrustBundles(client, "kubespiffe.io/svid", authority.trust, leader).run()   # in a task

Every bundle is linked to the signer (`spec.signerName`) because a projection selects by label only
together with a signer name (`signerName` + `labelSelector`; an unlinked bundle can only be named). So each
carries the label `kubespiffe.io/trust-domain=<trust domain>`, and a pod projects exactly the trust domains
its registration federates with:

    clusterTrustBundle:
      signerName: kubespiffe.io/svid
      labelSelector: {matchExpressions: [{key: kubespiffe.io/trust-domain, operator: In,
                                          values: [example.org, partner.example]}]}

Names follow the API's rule for linked bundles, `<signer with '/' as ':'>:<suffix>`, the suffix being the
trust domain (a hash where the trust domain is no DNS subdomain). The Lease holder writes them whenever the
bundle set changes (a rotation's prepared CA appears in the own bundle before it signs; a federated peer's
new keys) and every minute to repair edits; bundles of trust domains no longer federated are deleted.
Trust domains without X.509 authorities (JWT-only peers) have no ClusterTrustBundle: the API requires at
least one certificate.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.certificates_v1beta1 import ClusterTrustBundleSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.certificates_v1beta1 import ClusterTrustBundle

from kubespiffe.constants import GROUP
from kubespiffe.kube.leader import LeaderElector
from kubespiffe.spiffe.bundle import Bundle, BundleSet
from kubespiffe.spiffe.spiffeid import TrustDomain
from kubespiffe.versioned import Versioned

log = logging.getLogger("kubespiffed.clustertrustbundles")

TRUST_DOMAIN_LABEL = f"{GROUP}/trust-domain"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubespiffed"}
RESYNC_SECONDS = 60.0
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _digest(trust_domain: TrustDomain) -> str:
    return "td-" + hashlib.sha256(trust_domain.name.encode()).hexdigest()[:40]


def bundle_name(signer_name: str, trust_domain: TrustDomain) -> str:
    prefix = signer_name.replace("/", ":") + ":"
    suffix = trust_domain.name
    if not _DNS_SUBDOMAIN.match(suffix) or len(prefix + suffix) > 253:
        suffix = _digest(trust_domain)
    return prefix + suffix


def trust_domain_label(trust_domain: TrustDomain) -> str:
    """The label value: the trust domain itself, or its hash if too long (>63) for a label value."""
    return trust_domain.name if _LABEL_VALUE.match(trust_domain.name) else _digest(trust_domain)


def trust_bundle_pem(certificates: Iterable[x509.Certificate]) -> str:
    """CA certificates only, each once: the API refuses anything else in a ClusterTrustBundle."""
    seen: set[bytes] = set()
    pem: list[str] = []
    for cert in certificates:
        der = cert.public_bytes(Encoding.DER)
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca and der not in seen:
            seen.add(der)
            pem.append(cert.public_bytes(Encoding.PEM).decode())
    return "".join(pem)


class ClusterTrustBundles:
    def __init__(
        self, client: AsyncClient, signer_name: str, trust: Versioned[BundleSet], leader: LeaderElector
    ) -> None:
        self._client = client
        self._signer = signer_name
        self._trust = trust
        self._leader = leader

    def desired(self, bundles: BundleSet) -> dict[str, ClusterTrustBundle]:
        result: dict[str, ClusterTrustBundle] = {}
        for bundle in bundles.bundles():
            obj = self._object(bundle)
            if obj is not None and obj.metadata is not None and obj.metadata.name is not None:
                result[obj.metadata.name] = obj
        return result

    def _object(self, bundle: Bundle) -> ClusterTrustBundle | None:
        pem = trust_bundle_pem(bundle.x509_authorities)
        if not pem:
            return None
        return ClusterTrustBundle(
            metadata=ObjectMeta(
                name=bundle_name(self._signer, bundle.trust_domain),
                labels={TRUST_DOMAIN_LABEL: trust_domain_label(bundle.trust_domain), **MANAGED_BY},
                annotations={TRUST_DOMAIN_LABEL: bundle.trust_domain.name},
            ),
            spec=ClusterTrustBundleSpec(signerName=self._signer, trustBundle=pem),
        )

    async def run(self) -> None:
        published, resync_at = -1, 0.0
        while True:
            version = self._trust.version
            if not self._leader.is_leader:
                published = -1  # a later leadership writes everything again
            elif version != published or time.monotonic() >= resync_at:
                try:
                    await self.sync(self._trust.current)
                    published, resync_at = version, time.monotonic() + RESYNC_SECONDS
                except ApiError as exc:
                    log.warning("could not publish ClusterTrustBundles for %s: %s", self._signer, exc)
            await self._trust.wait_newer(version, 1.0)

    async def sync(self, bundles: BundleSet) -> None:
        """Create, update and delete this signer's bundles until they equal `bundles`."""
        want = self.desired(bundles)
        existing = {
            obj.metadata.name: obj
            async for obj in self._client.list(
                ClusterTrustBundle, fields={"spec.signerName": self._signer}, labels=MANAGED_BY
            )
            if obj.metadata is not None and obj.metadata.name
        }
        for name, obj in want.items():
            current = existing.get(name)
            if current is None:
                await self._client.create(obj)
                log.info("ClusterTrustBundle %s created", name)
                continue
            assert current.metadata is not None and obj.metadata is not None
            if (
                current.spec.trustBundle != obj.spec.trustBundle
                or current.metadata.labels != obj.metadata.labels
            ):
                obj.metadata.resourceVersion = current.metadata.resourceVersion
                await self._client.replace(obj)
                log.info("ClusterTrustBundle %s updated", name)
        for name in existing.keys() - want.keys():
            await self._client.delete(ClusterTrustBundle, name)
            log.info("ClusterTrustBundle %s deleted (trust domain no longer federated)", name)
