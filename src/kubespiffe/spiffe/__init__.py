"""Pure SPIFFE domain logic: IDs, X.509-SVID and JWT-SVID rules and types, bundles. No I/O.

    td = TrustDomain.parse("example.org"); sid = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
    svid = X509Svid(sid, chain, key)                 # svid.chain_pem(), svid.key_der(), svid.renew_at
    verify_chain(chain, bundles_by_trust_domain, now)        # x509svid: the X.509-SVID rules (checklist B)
    jwtsvid.mint(...); jwtsvid.validate(token, audience, jwt_bundles, now)   # checklist C
    bundle = parse_bundle_json(td, data); bundle_to_json(bundle)             # checklist D
    BundleSet(own, federated).for_federation({other_td})                      # what one workload may trust

Modules: `spiffeid` (IDs, trust domains), `x509svid` (verifier rules, the `X509Svid` type, the half-life
rule), `jwtsvid` (mint and validate), `bundle` (PEM/DER, SPIFFE bundle JSON, `Bundle`, `BundleSet`).
Everything here is a pure function of its inputs; the only kubespiffe module it imports is `errors`.
"""
