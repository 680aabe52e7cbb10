"""Keys and signing: the X.509 CA, JWT keys, the rotation journal, their Secret, and the live authority.

    stored = await store.load_or_create(client, namespace, secret, new_state)   # one CA per cluster
    authority = LiveAuthority(client, ..., stored=stored, leader=leader)
    leaf = sign_x509_svid(authority.active_x509(), csr, spiffe_id, dns_names, ttl, now)
    kid, key = authority.active_jwt()
    await authority.run()    # follow the Secret on every replica; rotate (prepare/activate/drop) as leader

Modules: `keys` (key types and PEM), `x509ca` (CA creation, CSR loading, leaf signing), `state` (the
journal of slots as a document), `rotation` (pure plan: when to prepare, activate, drop), `store` (the
Secret, with optimistic concurrency), `live` (all of it running in kubespiffed), `upstream` (the CA
as an intermediate under an operator's CA in a Secret) and `certmanager` (or from a cert-manager issuer).
"""
