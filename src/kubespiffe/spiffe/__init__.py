"""Pure SPIFFE domain logic (IDs, X.509-SVID and JWT-SVID rules, bundles). No I/O, imports nothing of ours."""
