"""kubespiffed: wiring and protocol adapters only; policy lives in the domain packages.

    kubespiffed --trust-domain example.org        # main -> config.parse_args -> app.run

Modules: `app` (startup steps, in order), `config` (flags with their bounds), `issuer` (the issuer API,
gRPC), `tls` (kubespiffed's own SVID for its TLS), `https` (the HTTPS endpoints: health, metrics, the
bundle endpoint), `bundle_configmaps` (the bundle as a ConfigMap in every namespace), `oidc` (OIDC
discovery on its own port).
"""
