"""SPIFFE federation (checklist E): serve our bundle, fetch other trust domains' bundles, keep them fresh.

    route = bundle_endpoint(trust)                    # handler: our bundle endpoint's document
    bundle = await fetch_bundle(endpoint, current)    # fetch: one peer, https_spiffe or https_web
    await Federation(client, own_td, trust, leader, min_refresh, max_refresh).run()   # watch: all peers
    discovery_document(issuer, own), jwks_document(own)   # oidc: our JWT keys for clouds' OIDC verifiers

Modules mirror go-spiffe's `federation/{handler,fetch,watch}.go`.
"""
