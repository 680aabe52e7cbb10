"""Which SDS resources a request names, decided from the pod's snapshot: pure, no Envoy protos.

The names are SPIRE agent's, so Envoy and Istio configurations written for SPIRE work unchanged:

- `default`: the TLS certificate of the pod's first identity (the Secret is named `default`);
- a SPIFFE ID the pod holds: that identity's TLS certificate;
- `ROOTCA`: a validation context for the pod's own trust domain;
- `ALL`: one validation context for the own and every federated trust domain;
- `spiffe://<trust domain>`: a validation context for that trust domain, own or federated;
- no name at all (an xDS wildcard request): every identity by SPIFFE ID and every trust domain by ID.

Validation contexts use Envoy's SPIFFE certificate validator (`envoy.tls.cert_validator.spiffe`), which
binds each bundle to its trust domain; a plain `trusted_ca` is given when the node's metadata says
`disable_spiffe_cert_validation: true`. `ALL` is refused then, because one pool of CAs cannot keep a
federated trust domain from vouching for SPIFFE IDs of another. A name the pod does not hold is the
caller's mistake (InvalidArgument on the wire): nothing is served for it, as the issue and SPIRE say.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from kubespiffe.agent.state import Snapshot
from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.spiffeid import TrustDomain
from kubespiffe.spiffe.x509svid import X509Svid

DEFAULT_SVID = "default"
ROOT_CA = "ROOTCA"
ALL_BUNDLES = "ALL"
DISABLE_SPIFFE_VALIDATION = "disable_spiffe_cert_validation"

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # strconv.ParseBool's true spellings


class SdsRequestError(InvalidInput):
    """An SDS request names a resource the pod does not hold, or one that cannot be served as asked."""


@dataclass(frozen=True)
class TlsCertificate:
    """A Secret holding an identity: its chain (leaf first) and private key."""

    name: str
    svid: X509Svid


@dataclass(frozen=True)
class ValidationContext:
    """A Secret holding trust: CA certificates per trust domain, and how Envoy should apply them.

    `spiffe_validator` True: the SPIFFE certificate validator config, one entry per trust domain.
    False: `trusted_ca`, which only ever holds one trust domain's CAs (see the module docstring).
    """

    name: str
    trust_domains: tuple[tuple[TrustDomain, tuple[x509.Certificate, ...]], ...]
    spiffe_validator: bool


Resource = TlsCertificate | ValidationContext


def spiffe_validation_disabled(value: object) -> bool:
    """The node metadata's `disable_spiffe_cert_validation`, read as SPIRE reads it.

    A bool, or a string Go's strconv.ParseBool accepts; anything else (absent, a number, "yes") keeps the
    SPIFFE validator, the safer of the two.
    """
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value in _TRUE


def select(snapshot: Snapshot, names: Iterable[str], spiffe_validator: bool = True) -> tuple[Resource, ...]:
    """The resources `names` ask for, in the order asked (duplicates and empty names dropped).

    Raises SdsRequestError naming every resource the pod does not hold. The snapshot must hold SVIDs:
    a pod without any (not yet, or expired) has nothing to answer with yet, which the caller decides.
    """
    wanted = list(dict.fromkeys(n for n in names if n))
    if not wanted:
        wanted = [str(s.spiffe_id) for s in snapshot.svids]
        wanted += [str(b.trust_domain.id) for b in snapshot.bundles.bundles()]
    by_id = {str(s.spiffe_id): s for s in snapshot.svids}
    bundles = {str(td.id): (td, certs) for td, certs in snapshot.x509_bundles.items()}
    own = snapshot.trust_domain
    resources: list[Resource] = []
    missing: list[str] = []
    for name in wanted:
        if name == DEFAULT_SVID and snapshot.svids:
            resources.append(TlsCertificate(name, snapshot.svids[0]))
        elif name in by_id:
            resources.append(TlsCertificate(name, by_id[name]))
        elif name == ROOT_CA:
            resources.append(_validation(name, [bundles[str(own.id)]], spiffe_validator))
        elif name in bundles:
            resources.append(_validation(name, [bundles[name]], spiffe_validator))
        elif name == ALL_BUNDLES:
            if not spiffe_validator:
                raise SdsRequestError(
                    f"{ALL_BUNDLES} needs the SPIFFE certificate validator: a trusted_ca cannot keep trust "
                    f"domains apart (the node metadata sets {DISABLE_SPIFFE_VALIDATION})"
                )
            resources.append(_validation(name, list(bundles.values()), spiffe_validator))
        else:
            missing.append(name)
    if missing:
        raise SdsRequestError(f"the pod does not hold the requested resources: {', '.join(sorted(missing))}")
    return tuple(resources)


def _validation(
    name: str, domains: Sequence[tuple[TrustDomain, tuple[x509.Certificate, ...]]], spiffe_validator: bool
) -> ValidationContext:
    return ValidationContext(name, tuple(sorted(domains, key=lambda d: d[0].name)), spiffe_validator)
