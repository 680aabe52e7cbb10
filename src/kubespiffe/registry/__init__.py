"""Registrations: which pods get which SPIFFE IDs.

    registry = Registry(client, trust_domain, reserved_dns_names)   # live: watch caches + status writer
    await registry.run()
    registry.identities(pod).identities      # the Identity values (ID, DNS names, TTLs, hint, federation)

Modules: `models` (WorkloadRegistration / ClusterWorkloadRegistration parsed and validated), `template`
(SPIFFE ID and DNS name templates), `tenancy` (what a namespaced registration may grant), `selector`
(label selectors), `match` (pod -> identities), `status` (the Ready condition), `federation`
(FederatedTrustDomain model and status), `crds` (CRDs generated from the models), `live` (running).
"""
