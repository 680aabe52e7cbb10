"""What the agent currently holds for its pod, as immutable snapshots that streams wait on.

Every change (renewal, bundle update, loss of identity) publishes a new snapshot and wakes the open
Workload API streams, which then send the complete current state, as the spec requires.

    state: AgentState = Versioned(None)
    await state.publish(Snapshot(bundles, svids))
    version, snapshot = await state.wait_newer(seen)   # None only before the first publish
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from kubespiffe.spiffe.bundle import BundleSet
from kubespiffe.spiffe.spiffeid import TrustDomain
from kubespiffe.spiffe.x509svid import X509Svid
from kubespiffe.versioned import Versioned


@dataclass(frozen=True)
class Snapshot:
    """The pod's identities and the bundles it trusts. `denied` means: the pod has no identity (any more)."""

    bundles: BundleSet
    svids: tuple[X509Svid, ...] = ()
    denied: str | None = None

    @property
    def trust_domain(self) -> TrustDomain:
        return self.bundles.trust_domain

    @property
    def x509_bundles(self) -> Mapping[TrustDomain, tuple[x509.Certificate, ...]]:
        return {b.trust_domain: tuple(b.x509_authorities) for b in self.bundles.bundles()}

    @property
    def jwt_bundles(self) -> Mapping[TrustDomain, Mapping[str, PublicKeyTypes]]:
        return {b.trust_domain: b.jwt_authorities for b in self.bundles.bundles()}

    @property
    def federated_x509(self) -> dict[TrustDomain, tuple[x509.Certificate, ...]]:
        return {td: tuple(b.x509_authorities) for td, b in self.bundles.federated.items()}


AgentState = Versioned[Snapshot | None]
